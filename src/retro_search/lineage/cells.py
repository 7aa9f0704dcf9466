"""Each cell asked for, reproduced: the (arm, benchmark) pairs it comes from, the table
`report.tables` makes of their metrics.json values (the summarize stage's own writer, so the
check covers the table code too), and whether it shows the same text (Markdown) or the same
number (CSV)."""

from __future__ import annotations

import math
from typing import Any

from retro_search.lineage.evals import Evals
from retro_search.lineage.layout import Layout
from retro_search.lineage.table import Cells, as_float, parse_csv, parse_markdown
from retro_search.report.tables import (AVERAGE, compared_arms, metrics_from_eval, results_table,
                                        to_markdown)

Pair = tuple[str, str]  # (arm, benchmark)


def sources_of(row: str, column: str, columns: list[str], evals: Evals) -> list[Pair]:
    """The pairs a cell is computed from: an average covers every benchmark of its arm, a
    relative row ("retro vs original", "original vs base") both arms, the reference first."""
    bench = column.rsplit("/", 1)[0]
    benches = _benchmarks(columns) if bench == AVERAGE else [bench]
    pair = compared_arms(row, original_arm=evals.original_arm, retro_arm=evals.retro_arm)
    arms = [pair[1], pair[0]] if pair else [row]
    return [(arm, b) for arm in arms for b in benches]


def _benchmarks(columns: list[str]) -> list[str]:
    return list(dict.fromkeys(c.rsplit("/", 1)[0] for c in columns
                              if c.rsplit("/", 1)[0] != AVERAGE))


def reproduce(layout: Layout, rows: Cells, needed: dict[Pair, list[Pair]],
              sources: dict[Pair, dict[str, Any]], evals: Evals
              ) -> tuple[list[dict[str, Any]], list[tuple[str, str | None]]]:
    """Per (row, column) of `needed` (-> the pairs it comes from): the text shown, the
    full-precision value of the summary's results.csv, the recomputed text or number and
    whether they agree; and a line, with the eval folder it is about, per cell that does not
    reproduce."""
    markdown = layout.table.suffix != ".csv"
    csv_values: Cells = {}
    csv_file = layout.path(layout.summary) / "results.csv" if layout.summary else None
    if csv_file is not None and csv_file.is_file():
        csv_values = parse_csv(csv_file.read_text(encoding="utf-8"))[1]

    tables: dict[tuple[Pair, ...], Any] = {}  # one per set of pairs (an arm's benchmarks...)
    cells, problems = [], []
    for (row, column), pairs in needed.items():
        if tuple(pairs) not in tables:
            tables[tuple(pairs)] = _recompute(sources, pairs, evals)
        table = tables[tuple(pairs)]
        shown = rows[row].get(column, "")
        recomputed, value = _recomputed_cell(table, row, column, markdown)
        reproduces = _agrees(shown, recomputed, value, markdown)
        csv_text = csv_values.get(row, {}).get(column)
        cells.append({"row": row, "column": column, "shown": shown,
                      "value": None if csv_text is None or math.isnan(as_float(csv_text))
                      else as_float(csv_text),
                      "recomputed": recomputed, "reproduces": reproduces,
                      "from": [f"{arm}:{bench}" for arm, bench in pairs]})
        if not reproduces:
            why = ("its metrics could not be read" if table is None
                   else f"the metrics give {recomputed!r}")
            line = (f"not reproduced: cell {row},{column} of {layout.name(layout.table)} "
                    f"shows {shown!r}; {why}")
            problems.append((line, evals.dirs.get(row)))
    return cells, problems


def _recompute(sources: dict[Pair, dict[str, Any]], pairs: list[Pair], evals: Evals):
    """The table `report.tables` makes of the metrics of `pairs`, or None when one is missing."""
    rows = []
    for arm, bench in pairs:
        metrics = (sources.get((arm, bench)) or {}).get("metrics") or {}
        values = metrics.get("values")
        if values is None:
            return None
        rows.append(metrics_from_eval({**values, "benchmark": bench}, arm,
                                      source=metrics["path"]))
    return results_table(rows, arms=list(dict.fromkeys(a for a, _ in pairs)),
                         benchmarks=list(dict.fromkeys(b for _, b in pairs)),
                         original_arm=evals.original_arm, retro_arm=evals.retro_arm)


def _recomputed_cell(table, row: str, column: str, markdown: bool) -> tuple[str | None, float]:
    """The recomputed cell as the table file shows it: to_markdown's text (written and read
    back), or the number write_csv writes."""
    if table is None or row not in table.index or column not in table.columns:
        return None, math.nan
    value = float(table.loc[row, column])
    if not markdown:
        return repr(value), value
    _, rows = parse_markdown(to_markdown(table))
    return rows.get(row, {}).get(column), value


def _agrees(shown: str, recomputed: str | None, value: float, markdown: bool) -> bool:
    if recomputed is None:
        return False
    if markdown:
        return shown == recomputed
    number = as_float(shown)
    if math.isnan(number) or math.isnan(value):
        return math.isnan(number) and math.isnan(value)
    return math.isclose(number, value, rel_tol=1e-9, abs_tol=1e-9)
