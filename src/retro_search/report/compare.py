"""One table across experiments (`retro-search compare`): which config values differ between
them, and what each arm scored on each benchmark. Read-only: it writes no manifest and touches no
stage.

An experiment folder is `results/experiments/NAME/` as `report.experiment_index` writes it:
`index.json` (the stage folders, named from the results folder's parent), `config.yaml` (the
resolved config without runtime settings) and, through the index's "summary" stage, the summary's
`summary.json`, whose "table" holds `report.tables.results_table` at full precision.

`comparison_table(experiments)` gives a DataFrame with one row per (experiment, table row: each
arm, then the relative rows), columns "experiment", the swept keys (dotted config keys whose
values differ between the experiments, in the order the configs list them), "arm", then
"{benchmark}/acc", "/se", "/len" per benchmark (the union, in order of first appearance) and
"average/acc", "/se", "/len"; units as in the results table (relative rows: points and %).
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from retro_search.report.tables import AVERAGE, compared_arms

__all__ = ["ExperimentResults", "comparison_table", "experiment_folders", "read_experiment",
           "swept_keys", "to_csv", "to_markdown"]

STATS = ("acc", "se", "len")
_MISSING = object()  # a key one experiment's config lacks: differs from any value


@dataclass
class ExperimentResults:
    name: str
    folder: Path
    config: dict[str, Any] | None  # None: the folder predates config.yaml
    table: list[dict[str, Any]]    # summary.json's "table": {"arm": row label, column: value}
    benchmarks: list[str]


def _is_experiment(folder: Path) -> bool:
    return (folder / "index.json").is_file()


def experiment_folders(paths: Iterable[str | Path]) -> list[Path]:
    """Experiment folders from the command's arguments: an experiment folder, a folder holding
    several (a sweep's parent, results/experiments), or a glob of either. Raises ValueError, one
    line, for a path that is none of these."""
    found: list[Path] = []
    for given in map(str, paths):
        matches = [given] if Path(given).exists() or not glob.has_magic(given) \
            else sorted(glob.glob(given))
        if not matches:
            raise ValueError(f"{given} matches no folder")
        for match in map(Path, matches):
            if not match.exists():
                raise ValueError(f"{match} does not exist")
            if _is_experiment(match):
                found.append(match)
                continue
            inside = sorted(p for p in match.iterdir() if p.is_dir() and _is_experiment(p)) \
                if match.is_dir() else []
            if not inside:
                raise ValueError(f"{match} is not an experiment folder: no index.json in it or in "
                                 "its subfolders (give results/experiments/NAME, or a folder of "
                                 "them)")
            found.extend(inside)
    return list(dict.fromkeys(p.resolve() for p in found))


def read_experiment(folder: str | Path) -> ExperimentResults:
    """An experiment folder's name, config and results table (see the module docstring)."""
    import yaml

    from retro_search.artifacts import read_json

    folder = Path(folder)
    index = read_json(folder / "index.json")
    try:
        summary_dir = next(s["dir"] for s in index["stages"] if s["role"] == "summary")
    except (KeyError, TypeError, StopIteration):
        raise ValueError(f"{folder}/index.json names no summary stage") from None
    root = folder.parent.parent.parent  # stage folders are named from results/'s parent
    summary_file = Path(summary_dir) if Path(summary_dir).is_absolute() else root / summary_dir
    summary_file = summary_file / "summary.json"
    if not summary_file.is_file():
        raise ValueError(f"{folder}: its summary {summary_file} is missing (run the workflow "
                         "to make it)")
    summary = read_json(summary_file)
    config_file = folder / "config.yaml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) \
        if config_file.is_file() else None
    return ExperimentResults(name=str(index.get("experiment") or folder.name), folder=folder,
                             config=config if isinstance(config, dict) else None,
                             table=list(summary.get("table") or []),
                             benchmarks=list(summary.get("benchmarks") or []))


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def swept_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The dotted keys whose values differ between the configs (one present in some and absent
    from others included), in the order they first appear."""
    flat = [_flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    differ = []
    for key in keys:
        values = {json.dumps(f.get(key, _MISSING), sort_keys=True, default=repr) for f in flat}
        if len(values) > 1:
            differ.append(key)
    return differ


def _value_text(value: Any) -> Any:
    """A config value as one table cell: scalars as they are, lists and mappings as JSON."""
    if value is _MISSING or value is None:
        return None if value is _MISSING else "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def comparison_table(experiments: Sequence[ExperimentResults]) -> pd.DataFrame:
    """The table of the module docstring."""
    keys = swept_keys([e.config for e in experiments if e.config is not None]) \
        if sum(e.config is not None for e in experiments) > 1 else []
    benchmarks = list(dict.fromkeys(b for e in experiments for b in e.benchmarks))
    metric_columns = [f"{b}/{s}" for b in [*benchmarks, AVERAGE] for s in STATS]
    rows = []
    for experiment in experiments:
        flat = _flatten(experiment.config) if experiment.config is not None else {}
        for row in experiment.table:
            out: dict[str, Any] = {"experiment": experiment.name}
            out.update({key: _value_text(flat.get(key, _MISSING)) for key in keys})
            out["arm"] = row.get("arm")
            out.update({column: row.get(column, math.nan) for column in metric_columns})
            rows.append(out)
    return pd.DataFrame(rows, columns=["experiment", *keys, "arm", *metric_columns])


def to_csv(table: pd.DataFrame) -> str:
    """Full precision, value and standard error in separate columns, a missing value empty."""
    return table.to_csv(index=False)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _metric_cell(row: pd.Series, column: str, relative: bool) -> str:
    value = _number(row[column])
    if math.isnan(value):
        return "n/a"
    if column.endswith("/acc"):
        text = f"{value:+.1f}" if relative else f"{value:.1f}"
        se = _number(row[column.replace("/acc", "/se")])
        return text if math.isnan(se) else f"{text} ± {se:.1f}"
    return f"{value:+.1f}%" if relative else f"{value:.0f}"


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table: the swept values, then "acc ± se" and length per benchmark, and
    a note on units."""
    metrics = [c for c in table.columns if "/" in c and c.rsplit("/", 1)[1] in ("acc", "len")]
    settings = [c for c in table.columns if "/" not in c]
    lines = ["| " + " | ".join([*settings, *(c.replace("/", " ") for c in metrics)]) + " |",
             "|" + "|".join(["---"] * len(settings) + ["---:"] * len(metrics)) + "|"]
    for _, row in table.iterrows():
        relative = compared_arms(str(row["arm"])) is not None
        cells = ["n/a" if _missing(row[c]) else str(row[c]) for c in settings]
        cells += [_metric_cell(row, c, relative) for c in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    swept = [c for c in settings if c not in ("experiment", "arm")]
    lines += ["", ("swept: " + ", ".join(swept) if swept else
                   "no config value differs between these experiments") + ".",
              "acc: accuracy (pass@1 averaged over samples) in % ± its standard error; len: mean "
              "response tokens; A vs B rows: accuracy difference in points, length change in %."]
    return "\n".join(lines) + "\n"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
