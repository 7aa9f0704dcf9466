"""`retro-search task`: write the miniature task's files (the demo's data, made by the pipeline).

The task itself, its splits and the teacher's flaws are `retro_search.miniature`'s; this command
only writes them into a stage folder, adding the teacher traces as normalised records for
`retro-search sft-data` (how the demo's reasoning model is trained from scratch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

DESCRIPTION = """\
Write the miniature task (sums of small numbers, retro_search.miniature) into OUTPUT_DIR:
  teacher_traces.jsonl   teacher traces in the r1_response layout, with the flaws each was given
  teacher_records.jsonl  the same, normalised (the input of `retro-search sft-data`)
  teacher.jsonl, sample.jsonl, heldout.jsonl
                         the disjoint splits' questions {id, question, answer}: the teacher's, the
                         ones the trained model samples its own traces on, the evaluation's
                         (the benchmark `arith`)
  task.json              the settings that made them
Everything is a function of the settings (the `task` section of --config): a rerun writes the same
bytes."""


def cmd_task(args: argparse.Namespace) -> int:
    from retro_search.config import load_config_dict
    from retro_search.miniature import TaskConfig, write_dataset
    from retro_search.readers import load_traces
    from retro_search.artifacts import write_records

    section = load_config_dict(args.config).get("task") or {}
    known = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"unknown task setting(s) {unknown}; known: {sorted(known)}")
    config = TaskConfig(**section)
    out = Path(args.output_dir)
    paths = write_dataset(out, config)
    records = load_traces(paths["teacher_traces"],
                          format={"preset": "r1_response", "id": "id"}).records
    write_records(records, out / "teacher_records.jsonl")
    print(json.dumps({"teacher_traces": len(records),
                      **{name: sum(1 for _ in open(paths[name], encoding="utf-8"))
                         for name in ("teacher", "sample", "heldout")},
                      "output_dir": str(out)}), file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("task", help="write the miniature task's splits and teacher traces",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="folder to write into")
    p.add_argument("--config", default=None,
                   help="stage config whose `task` section sets retro_search.miniature.TaskConfig")
    p.set_defaults(func=cmd_task, input_args=(), output_args=("output_dir",))
