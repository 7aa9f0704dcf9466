"""The paper-shaped results table: accuracy and length per arm and benchmark.

Input: one metric dict per (arm, benchmark), each with at least
    {"arm", "benchmark", "accuracy" (pass@1 averaged over samples, 0-1), "accuracy_se",
     "mean_tokens" (average response length in tokens of the evaluated model's tokenizer)}
(`metrics_from_eval` builds one from an eval stage's metrics.json).

Output of `results_table`: a DataFrame indexed by arm (rows in the given order), with columns
"{benchmark}/acc" (accuracy in %), "{benchmark}/se" (its standard error in points, NaN when the
metrics have none) and "{benchmark}/len" (mean tokens) for each benchmark, then "average/acc",
"average/se" and "average/len" (plain means over the benchmarks, the standard error of that mean
of independent estimates, sqrt(sum se^2) / k; NaN when the arm lacks one of them, so that every
average covers the same benchmarks). When both the original-trace arm and the Retro-Search arm
are present, a last row "retro vs original" holds, per column, the accuracy difference in points
(retro - original) with its standard error (sqrt(se_retro^2 + se_original^2)) and the length
change in % ((retro - original) / original).

Writers: `write_csv` (numbers as they are) and `to_markdown` / `write_markdown` (a table written
here, not through `tabulate`: accuracy with one decimal, lengths rounded to tokens, the last row
signed, lengths there with a % sign; an accuracy cell reads "acc ± se" where se is known).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from retro_search.artifacts import write_text

__all__ = ["ORIGINAL_ARM", "RETRO_ARM", "RELATIVE_ROW", "metrics_from_eval", "results_table",
           "to_markdown", "write_csv", "write_markdown"]

ORIGINAL_ARM = "original"
RETRO_ARM = "retro_search"
RELATIVE_ROW = "retro vs original"
AVERAGE = "average"

def metrics_from_eval(metrics: Mapping[str, Any], arm: str, *, source: str = "metrics") -> dict:
    """One table input row from an eval metrics.json (`artifacts.read_eval_metrics` checks its
    keys): arm, benchmark, accuracy (0-1), accuracy_se (None for a single problem),
    mean_tokens. `source` names the file in errors."""
    missing = [key for key in ("benchmark", "accuracy", "mean_tokens") if metrics.get(key) is None]
    if missing:
        raise ValueError(f"{source}: no {missing} (an eval stage's metrics.json has them)")
    accuracy = float(metrics["accuracy"])
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"{source}: accuracy {accuracy} is not a fraction in [0, 1]")
    se = metrics.get("accuracy_stderr")
    return {"arm": arm, "benchmark": str(metrics["benchmark"]), "accuracy": accuracy,
            "accuracy_se": None if se is None else float(se),
            "mean_tokens": float(metrics["mean_tokens"])}


def _ordered(values: Iterable[str], order: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(values))
    if order is None:
        return seen
    missing = [v for v in seen if v not in order]
    return [v for v in order if v in seen] + missing


def results_table(metrics: Iterable[Mapping[str, Any]], *, arms: Sequence[str] | None = None,
                  benchmarks: Sequence[str] | None = None, original_arm: str = ORIGINAL_ARM,
                  retro_arm: str = RETRO_ARM) -> pd.DataFrame:
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

    columns = [f"{b}/{stat}" for b in [*bench_order, AVERAGE] for stat in ("acc", "se", "len")]
    table = pd.DataFrame(index=pd.Index(arm_order, name="arm"), columns=columns, dtype=float)
    for (arm, bench), row in cells.items():
        table.loc[arm, f"{bench}/acc"] = 100.0 * float(row["accuracy"])
        se = row.get("accuracy_se")
        table.loc[arm, f"{bench}/se"] = math.nan if se is None else 100.0 * float(se)
        table.loc[arm, f"{bench}/len"] = float(row["mean_tokens"])
    for stat in ("acc", "len"):
        per_bench = table[[f"{b}/{stat}" for b in bench_order]]
        # skipna=False: an arm missing a benchmark gets no average rather than a different one.
        table[f"{AVERAGE}/{stat}"] = per_bench.mean(axis=1, skipna=False)
    ses = table[[f"{b}/se" for b in bench_order]]
    table[f"{AVERAGE}/se"] = (ses ** 2).sum(axis=1, skipna=False) ** 0.5 / len(bench_order)

    if original_arm in table.index and retro_arm in table.index:
        original, retro = table.loc[original_arm], table.loc[retro_arm]
        change = pd.Series(index=columns, dtype=float)
        for column in columns:
            if column.endswith("/acc"):
                change[column] = retro[column] - original[column]
            elif column.endswith("/se"):
                change[column] = math.hypot(retro[column], original[column])
            else:
                change[column] = (100.0 * (retro[column] - original[column]) / original[column]
                                  if original[column] else math.nan)
        table.loc[RELATIVE_ROW] = change
    return table


# ----------------------------------------------------------------------------- writers

def write_csv(table: pd.DataFrame, path: str | Path) -> Path:
    """CSV with the arm as first column; accuracy and its standard error in %, lengths in tokens;
    in the relative row, accuracy in points and lengths in %. Full precision."""
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


def to_markdown(table: pd.DataFrame, *, caption: str | None = None) -> str:
    """A GitHub Markdown table of `results_table` output. Headers read "BENCH acc" / "BENCH len";
    an accuracy cell carries its standard error ("49.5 ± 3.1"); a note under the table gives the
    units."""
    shown = [c for c in table.columns if not c.endswith("/se")]
    header = ["arm"] + [c.replace("/", " ") for c in shown]
    lines = []
    if caption:
        lines += [caption, ""]
    lines += ["| " + " | ".join(header) + " |",
              "|---|" + "|".join("---:" for _ in shown) + "|"]
    for arm, row in table.iterrows():
        relative = arm == RELATIVE_ROW
        cells = [_cell(row[c], c, relative, row.get(c.replace("/acc", "/se")))
                 for c in shown]
        lines.append("| " + " | ".join([str(arm), *cells]) + " |")
    lines += ["", "acc: accuracy (pass@1 averaged over samples) in % ± its standard error; len: "
                  "mean response length in tokens of the evaluated model's tokenizer; average: "
                  "mean over the benchmarks."]
    if RELATIVE_ROW in table.index:
        lines.append(f"{RELATIVE_ROW}: accuracy difference in points, length change in %.")
    return "\n".join(lines) + "\n"


def write_markdown(table: pd.DataFrame, path: str | Path, *, caption: str | None = None) -> Path:
    return write_text(path, to_markdown(table, caption=caption))
