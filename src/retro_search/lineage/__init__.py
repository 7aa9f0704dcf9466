"""Lineage of a results table: from a cell back to the raw input rows (`retro-search lineage`).

`lineage(table, cell=None)` takes an experiment's table (`results/experiments/NAME/results.md`,
or `README.md` / `index.json` in that folder) or a summary stage's `results.md` / `results.csv`,
and returns a dict (keys below, always present; `render_text` / `render_json` print it):

- `table`: the file read, its rows and columns, the summary stage and experiment folder (each a
  stage entry as in `chain`);
- `cells`: the cell asked for (`cell="ROW,COLUMN"`, e.g. "retro_search,arith/acc"), or every
  cell: the text shown, the full-precision value of the summary's results.csv, the value
  recomputed from the eval stages' metrics.json files with the table writer
  (`report.tables`), whether the two agree, and the (arm, benchmark) pairs it comes from (an
  average covers every benchmark of its arm, the "retro vs original" row both arms);
- `evals`: per arm its eval stage and, per benchmark, metrics.json and generations.parquet
  (path, sha256, whether a manifest of the stage records that hash, rows = problems x samples);
- `chain`: every stage the eval stage(s) were made from (without a cell: every stage behind the
  summary), walked through the manifests' `upstream` links (the union over a folder's
  manifests) down to stages with no upstream, each once, in depth-first order (`depth`): role
  (from index.json), kind, id, dir, config.yaml's hash and the values that identify the stage,
  manifests, inputs from outside the results folder, outputs (a folder of many files summarised
  by its file count and the hash of its model.safetensors), code, environment, hub models,
  engine, and the audit lines about it;
- `raw_inputs`: the data rows the chain starts from: the files with rows (.jsonl, .parquet,
  .csv) written by task, sample and prepare stages and by stages with no upstream, and the
  files read from outside the results folder, with their row counts;
- `audit`: `retro_search.audit.audit` run once on the experiment folder (else the summary stage);
  lineage shows where each file sits and what it came from, the audit verifies the hashes;
- `could_not_be_verified`: every problem and unverified line of the audit, and every cell that
  does not reproduce or whose metrics could not be read, each with the stage it names;
- `exit_status`: 0 when the audit found no problems and every cell reproduces, else 1.

A missing stage folder, manifest or file is named, never a traceback. A table outside a results
layout, an unknown row or column or a malformed cell is a ValueError with one clear line (the
valid rows / columns listed). Paths in manifests are relative to the folder the workflow ran in:
the parent of the results folder, found from the table's path; the audit runs there.

Modules: `layout` (where the table, summary and experiment are), `table` (the table file and
`--cell`), `evals` (each arm's eval files), `cells` (each cell recomputed), `chain` (stage
folders and the upstream walk), `render` (text and JSON).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from retro_search.audit import audit
from retro_search.lineage.cells import reproduce, sources_of
from retro_search.lineage.chain import raw_inputs, read_stage, walk
from retro_search.lineage.evals import Evals
from retro_search.lineage.layout import Layout, locate, stage_id
from retro_search.lineage.render import render_json, render_text
from retro_search.lineage.table import parse_cell, read_table
from retro_search.provenance import sha256_file

__all__ = ["lineage", "render_json", "render_text"]


def lineage(table: str | Path, cell: str | None = None) -> dict[str, Any]:
    """The lineage of one cell (`cell="ROW,COLUMN"`) or of every cell of `table` (see the
    module docstring). Raises ValueError for a table outside a results layout, an unknown row or
    column, or a malformed cell."""
    layout = locate(table)
    columns, rows = read_table(layout.table)
    if cell is not None:
        wanted = [parse_cell(cell, layout.name(layout.table), columns, rows)]
    else:
        wanted = [(row, column) for row in rows for column in columns]

    summary_node, summary_upstream = (read_stage(layout, layout.summary) if layout.summary
                                      else (None, []))
    experiment_node = read_stage(layout, layout.experiment)[0] if layout.experiment else None
    evals = Evals(layout, summary_upstream)

    needed = {(row, column): sources_of(row, column, columns, evals) for row, column in wanted}
    pairs = list(dict.fromkeys(p for ps in needed.values() for p in ps))
    sources = {pair: evals.source(*pair) for pair in pairs}
    cells, own_problems = reproduce(layout, rows, needed, sources, evals)

    eval_list = []
    for arm in dict.fromkeys(a for a, _ in pairs):
        eval_dir = evals.dirs.get(arm)
        entries = [sources[(a, b)] for a, b in pairs if a == arm]
        eval_list.append({"arm": arm, "stage": stage_id(eval_dir) if eval_dir else None,
                          "dir": eval_dir, "benchmarks": entries})
        for entry in entries:
            for note in entry["notes"]:
                own_problems.append((f"eval files of {arm}:{entry['benchmark']}: {note}",
                                     eval_dir))

    if cell is None:
        tops = summary_upstream or list(evals.dirs.values())
    else:
        tops = [e["dir"] for e in eval_list if e["dir"]]
    chain = walk(layout, tops)

    audit_result = _run_audit(layout)
    nodes = [n for n in (experiment_node, summary_node) if n] + chain
    unverifiable = []
    for kind, lines in (("problem", audit_result["problems"]),
                        ("unverified", audit_result["unverified"])):
        for line in lines:
            node = _attach(line, nodes, layout)
            if node is not None:
                node["audit"]["problems" if kind == "problem" else "unverified"].append(line)
            unverifiable.append({"kind": kind, "line": line,
                                 "stage": node["id"] if node else None})
    for line, eval_dir in own_problems:
        node = next((n for n in nodes if eval_dir and layout.key(n["dir"]) ==
                     layout.key(eval_dir)), None)
        if node is not None:
            node["notes"].append(line)
        unverifiable.append({"kind": "lineage", "line": line,
                             "stage": node["id"] if node else None})

    markdown = layout.table.suffix != ".csv"
    return {
        "table": {"path": layout.name(layout.given), "read": layout.name(layout.table),
                  "sha256": sha256_file(layout.table), "format": "md" if markdown else "csv",
                  "base": str(layout.base), "rows": list(rows), "columns": columns,
                  "experiment": experiment_node, "summary": summary_node},
        "cell": cell,
        "cells": cells,
        "evals": eval_list,
        "chain": chain,
        "raw_inputs": raw_inputs(chain),
        "audit": audit_result,
        "could_not_be_verified": unverifiable,
        "exit_status": 0 if audit_result["ok"] and not own_problems else 1,
    }


def _run_audit(layout: Layout) -> dict[str, Any]:
    target = layout.experiment or layout.summary
    with contextlib.chdir(layout.base):  # the manifests' paths start there
        report = audit(target)
    return {"target": target, "checked": len(report.checked), "problems": list(report.problems),
            "unverified": list(report.unverified), "ok": not report.problems}


def _attach(line: str, nodes: list[dict[str, Any]], layout: Layout) -> dict[str, Any] | None:
    """The stage whose folder, id or file `line` names first (the longest name at a place)."""
    best: tuple[int, int] | None = None
    found = None
    for node in nodes:
        for key in {node["dir"], layout.key(node["dir"]), node["id"]}:
            match = re.search(rf"(?<![\w./-]){re.escape(key)}(?![\w-])", line)
            if match and (best is None or (match.start(), -len(key)) < best):
                best, found = (match.start(), -len(key)), node
    return found
