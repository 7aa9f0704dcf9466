"""The paper-shaped results table: accuracy, length, sample size and truncation per arm and
benchmark, and each arm relative to the base model and to the original-trace arm.

Input: one metric dict per (arm, benchmark), each with at least
    {"arm", "benchmark", "accuracy" (pass@1 averaged over samples, 0-1), "accuracy_se",
     "mean_tokens" (average response length in tokens of the evaluated model's tokenizer)}
and optionally "problems", "samples" (per problem) and "truncation_rate" (0-1: responses that hit
the token limit); `metrics_from_eval` builds one from an eval stage's metrics.json.

Output of `results_table`: a DataFrame indexed by arm (rows in the given order). Per benchmark the
columns "{benchmark}/acc" (accuracy in %), "/se" (its standard error in points, NaN when the
metrics have none), "/len" (mean tokens), "/problems", "/samples" (samples per problem; NaN when
problems differ) and "/trunc" (truncated responses, %); then "average/acc", "average/se",
"average/len" and "average/trunc" (plain means over the benchmarks; the standard error of that
mean of independent estimates, sqrt(sum se^2) / k; NaN when the arm lacks a benchmark, so that
every average covers the same benchmarks).

Then the relative rows (`relative_rows`): "ARM vs BASE" for every other arm when the base arm is
present (the paper's self-improvement table is relative to the model as it is), and
"retro vs original" when both fine-tuned arms are (the only comparison of the weak-to-strong
preset, which has no base). A relative row holds the accuracy difference in points with its
standard error (sqrt(se^2 + se_reference^2): the arms are taken as independent, which overstates
it when they answer the same problems) and the length change in % of the reference; its counts
and truncation are NaN.

Writers: `write_csv` (numbers as they are, value and standard error in separate columns) and
`to_markdown` / `write_markdown` (accuracy "acc ± se" and length per benchmark; below it, a second
table of n = problems x samples and the truncation rate per arm).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from retro_search.artifacts import write_text

__all__ = ["BASE_ARM", "ORIGINAL_ARM", "RETRO_ARM", "RELATIVE_ROW", "by_benchmark_markdown",
           "compared_arms", "metrics_from_eval", "relative_rows", "results_table", "to_markdown",
           "write_csv", "write_markdown"]

BASE_ARM = "base"
ORIGINAL_ARM = "original"
RETRO_ARM = "retro_search"
RELATIVE_ROW = "retro vs original"
AVERAGE = "average"
BENCH_STATS = ("acc", "se", "len", "problems", "samples", "trunc")
AVERAGE_STATS = ("acc", "se", "len", "trunc")
_VS = " vs "


def metrics_from_eval(metrics: Mapping[str, Any], arm: str, *, source: str = "metrics") -> dict:
    """One table input row from an eval metrics.json (`artifacts.read_eval_metrics` checks its
    keys): arm, benchmark, accuracy (0-1), accuracy_se (None for a single problem),
    mean_tokens, and problems, samples, truncation_rate (None where the file lacks them;
    samples None too when problems had different numbers of samples). `source` names the file
    in errors."""
    missing = [key for key in ("benchmark", "accuracy", "mean_tokens") if metrics.get(key) is None]
    if missing:
        raise ValueError(f"{source}: no {missing} (an eval stage's metrics.json has them)")
    accuracy = float(metrics["accuracy"])
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"{source}: accuracy {accuracy} is not a fraction in [0, 1]")
    se = metrics.get("accuracy_stderr")
    samples = metrics.get("n_samples")  # [min, max] when problems got different numbers
    truncation = metrics.get("truncation_rate")
    return {"arm": arm, "benchmark": str(metrics["benchmark"]), "accuracy": accuracy,
            "accuracy_se": None if se is None else float(se),
            "mean_tokens": float(metrics["mean_tokens"]),
            "problems": None if metrics.get("n_problems") is None else int(metrics["n_problems"]),
            "samples": int(samples) if isinstance(samples, (int, float)) else None,
            "truncation_rate": None if truncation is None else float(truncation)}


def relative_rows(arms: Sequence[str], *, base_arm: str = BASE_ARM,
                  original_arm: str = ORIGINAL_ARM, retro_arm: str = RETRO_ARM
                  ) -> dict[str, tuple[str, str]]:
    """The relative rows a table of `arms` gets: label -> (arm, reference arm)."""
    rows = {}
    if base_arm in arms:
        rows.update({f"{arm}{_VS}{base_arm}": (arm, base_arm) for arm in arms if arm != base_arm})
    if original_arm in arms and retro_arm in arms:
        rows[RELATIVE_ROW] = (retro_arm, original_arm)
    return rows


def compared_arms(row: str, *, original_arm: str = ORIGINAL_ARM, retro_arm: str = RETRO_ARM
                  ) -> tuple[str, str] | None:
    """(arm, reference arm) of a relative row's label, None for an arm's own row."""
    if row == RELATIVE_ROW:
        return retro_arm, original_arm
    if _VS in row:
        arm, reference = row.rsplit(_VS, 1)
        return arm, reference
    return None


def _ordered(values: Iterable[str], order: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(values))
    if order is None:
        return seen
    missing = [v for v in seen if v not in order]
    return [v for v in order if v in seen] + missing


def _number(value: Any, scale: float = 1.0) -> float:
    return math.nan if value is None else scale * float(value)


def _relative(arm: pd.Series, reference: pd.Series, columns: Sequence[str]) -> pd.Series:
    change = pd.Series(index=columns, dtype=float)
    for column in columns:
        stat = column.rsplit("/", 1)[1]
        if stat == "acc":
            change[column] = arm[column] - reference[column]
        elif stat == "se":
            change[column] = math.hypot(arm[column], reference[column])
        elif stat == "len":
            change[column] = (100.0 * (arm[column] - reference[column]) / reference[column]
                              if reference[column] else math.nan)
    return change


def results_table(metrics: Iterable[Mapping[str, Any]], *, arms: Sequence[str] | None = None,
                  benchmarks: Sequence[str] | None = None, original_arm: str = ORIGINAL_ARM,
                  retro_arm: str = RETRO_ARM, base_arm: str = BASE_ARM) -> pd.DataFrame:
    """The results table (see the module docstring). `arms` / `benchmarks` fix the order of rows /
    column groups (others follow in order of first appearance). Raises ValueError on a repeated
    (arm, benchmark) pair or a missing field."""
    rows = list(metrics)
    cells: dict[tuple[str, str], Mapping[str, Any]] = {}
    for number, row in enumerate(rows, 1):
        for key in ("arm", "benchmark", "accuracy", "mean_tokens"):
            if row.get(key) is None:
                raise ValueError(f"metric row {number}: missing {key!r}")
        pair = (row["arm"], row["benchmark"])
        if pair in cells:
            raise ValueError(f"metric row {number}: arm {pair[0]!r} has two results for "
                             f"benchmark {pair[1]!r}")
        cells[pair] = row
    arm_order = _ordered((r["arm"] for r in rows), arms)
    bench_order = _ordered((r["benchmark"] for r in rows), benchmarks)

    columns = ([f"{b}/{stat}" for b in bench_order for stat in BENCH_STATS]
               + [f"{AVERAGE}/{stat}" for stat in AVERAGE_STATS])
    table = pd.DataFrame(index=pd.Index(arm_order, name="arm"), columns=columns, dtype=float)
    for (arm, bench), row in cells.items():
        table.loc[arm, [f"{bench}/{stat}" for stat in BENCH_STATS]] = [
            100.0 * float(row["accuracy"]), _number(row.get("accuracy_se"), 100.0),
            float(row["mean_tokens"]), _number(row.get("problems")), _number(row.get("samples")),
            _number(row.get("truncation_rate"), 100.0)]
    for stat in ("acc", "len", "trunc"):
        per_bench = table[[f"{b}/{stat}" for b in bench_order]]
        # skipna=False: an arm missing a benchmark gets no average rather than a different one.
        table[f"{AVERAGE}/{stat}"] = per_bench.mean(axis=1, skipna=False)
    ses = table[[f"{b}/se" for b in bench_order]]
    table[f"{AVERAGE}/se"] = (ses ** 2).sum(axis=1, skipna=False) ** 0.5 / len(bench_order)

    for label, (arm, reference) in relative_rows(arm_order, base_arm=base_arm,
                                                 original_arm=original_arm,
                                                 retro_arm=retro_arm).items():
        table.loc[label] = _relative(table.loc[arm], table.loc[reference], columns)
    return table


# ----------------------------------------------------------------------------- writers

def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """CSV with the arm as first column; accuracy, its standard error and truncation in %,
    lengths in tokens, problems and samples as counts; in the relative rows, accuracy in points
    and lengths in %. Full precision; a missing value is an empty cell."""
    return write_text(path, table.to_csv(index=True, index_label="arm"))


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value: float, column: str, relative: bool, se: float | None = None) -> str:
    if _missing(value):
        return "n/a"
    if column.endswith("/acc"):
        text = f"{value:+.1f}" if relative else f"{value:.1f}"
        return text if _missing(se) else f"{text} ± {se:.1f}"
    return f"{value:+.1f}%" if relative else f"{value:.0f}"


def _benchmarks(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(c.rsplit("/", 1)[0] for c in table.columns
                              if c.endswith("/problems")))


def _size(row: pd.Series, bench: str) -> str:
    problems, samples = row[f"{bench}/problems"], row[f"{bench}/samples"]
    if _missing(problems):
        return "n/a"
    return f"{problems:.0f} x {'n/a' if _missing(samples) else f'{samples:.0f}'}"


def _n(table: pd.DataFrame, bench: str, arms: Sequence[str]) -> str:
    """n of `bench`: one cell when the arms share it (they share the eval settings), else each
    arm's."""
    sizes = {arm: _size(table.loc[arm], bench) for arm in arms}
    distinct = set(sizes.values())
    return distinct.pop() if len(distinct) == 1 else ", ".join(f"{a} {s}" for a, s in sizes.items())


def _sizes_markdown(table: pd.DataFrame) -> list[str]:
    """n and truncation per benchmark and arm."""
    arms = [arm for arm in table.index if compared_arms(str(arm)) is None]
    lines = ["| benchmark | n (problems x samples) | "
             + " | ".join(f"{arm} truncated" for arm in arms) + " |",
             "|---|---:|" + "|".join("---:" for _ in arms) + "|"]
    for bench in _benchmarks(table):
        n = _n(table, bench, arms)
        truncated = ["n/a" if _missing(v := table.loc[arm, f"{bench}/trunc"]) else f"{v:.1f}%"
                     for arm in arms]
        lines.append("| " + " | ".join([bench, n, *truncated]) + " |")
    return lines


def to_markdown(table: pd.DataFrame, *, caption: str | None = None) -> str:
    """A GitHub Markdown table of `results_table` output: "BENCH acc" (accuracy "49.5 ± 3.1")
    and "BENCH len" per benchmark and their average, one row per arm then the relative rows; a
    note on units; then a second table of n (problems x samples) and the truncation rate per
    benchmark and arm (lineage reads the first table only)."""
    shown = [c for c in table.columns if c.rsplit("/", 1)[1] in ("acc", "len")]
    header = ["arm"] + [c.replace("/", " ") for c in shown]
    lines = []
    if caption:
        lines += [caption, ""]
    lines += ["| " + " | ".join(header) + " |",
              "|---|" + "|".join("---:" for _ in shown) + "|"]
    relative = False
    for arm, row in table.iterrows():
        pair = compared_arms(str(arm))
        relative |= pair is not None
        cells = [_cell(row[c], c, pair is not None, row.get(c.replace("/acc", "/se")))
                 for c in shown]
        lines.append("| " + " | ".join([str(arm), *cells]) + " |")
    lines += ["", "acc: accuracy (pass@1 averaged over samples) in % ± its standard error; len: "
                  "mean response length in tokens of the evaluated model's tokenizer; average: "
                  "mean over the benchmarks."]
    if relative:
        lines.append("A vs B: A's accuracy minus B's in points ± the standard error of the "
                     "difference, A's length change in % of B's"
                     + (f" ({RELATIVE_ROW}: the revised-trace arm vs the original-trace arm)."
                        if RELATIVE_ROW in table.index else "."))
    if _benchmarks(table):
        lines += ["", *_sizes_markdown(table), "",
                  "n: problems x samples per problem; truncated: share of responses that hit "
                  "the token limit (eval max_tokens), in %."]
    return "\n".join(lines) + "\n"


def by_benchmark_markdown(table: pd.DataFrame, *, caption: str | None = None) -> str:
    """The table's headline in Markdown, under `caption`, for the report's front page: a row per
    benchmark and one for the average; a column per arm, then "retro vs original" (every
    relative row where the table lacks it), then n (problems x samples). A cell holds accuracy
    ("acc ± se" in %; the difference in points in a relative column) and length (tokens; the
    change in % in a relative column). Transposed from `to_markdown` so that every benchmark's
    effect shows (an average alone hides a task on which the others score nothing), and narrow
    enough for the page."""
    benchmarks = _benchmarks(table)
    plain = [str(arm) for arm in table.index if compared_arms(str(arm)) is None]
    relative = [str(arm) for arm in table.index if compared_arms(str(arm)) is not None]
    arms = plain + ([RELATIVE_ROW] if RELATIVE_ROW in relative else relative)
    lines = [caption, ""] if caption else []
    lines += ["| benchmark | " + " | ".join(arms) + " | n |",
              "|---|" + "|".join("---:" for _ in arms) + "|---:|"]
    for bench in [*benchmarks, AVERAGE]:
        cells = []
        for arm in arms:
            row, change = table.loc[arm], arm in relative
            cells.append(f"{_cell(row[f'{bench}/acc'], '/acc', change, row[f'{bench}/se'])} / "
                         f"{_cell(row[f'{bench}/len'], '/len', change)}")
        n = "" if bench == AVERAGE else _n(table, bench, plain)
        label = f"{AVERAGE} of {len(benchmarks)}" if bench == AVERAGE else bench
        lines.append("| " + " | ".join([label, *cells, n]) + " |")
    lines += ["", "Each cell: accuracy in % ± its standard error / mean length in tokens; in an "
                  "\"A vs B\" column, A's accuracy minus B's in points / A's length change in %. "
                  "n: problems x samples per problem; n/a where an arm lacks a benchmark. The "
                  "results table has the rows relative to the base model."]
    return "\n".join(lines) + "\n"


def write_markdown(table: pd.DataFrame, path: str | Path, *, caption: str | None = None) -> Path:
    return write_text(path, to_markdown(table, caption=caption))
