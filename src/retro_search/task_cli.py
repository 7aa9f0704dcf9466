"""`retro-search task`: write the miniature task's files (the demo's data, made by the pipeline).

The work is `retro_search.stages.task`'s; this module maps the command's flags to it.
"""

from __future__ import annotations

import argparse

from retro_search.stages.task import OUTPUTS

DESCRIPTION = """\
Write the miniature task (sums of small numbers, retro_search.miniature) into OUTPUT_DIR, or each
file where its flag says:
  teacher_traces.jsonl   teacher traces in the r1_response layout, with the flaws each was given
  teacher_records.jsonl  the same, normalised (the input of `retro-search sft-data`)
  teacher.jsonl, sample.jsonl, heldout.jsonl
                         the disjoint splits' questions {id, question, answer}: the teacher's, the
                         ones the trained model samples its own traces on, the evaluation's
                         (the benchmark `arith`)
  task.json              the settings that made them
Everything is a function of the settings (the `task` section of --config): a rerun writes the same
bytes."""

# flag -> the stage's name for the output (retro_search.stages.task.OUTPUTS)
FLAGS = {"--teacher-traces": "teacher_traces", "--teacher-records": "teacher_records",
         "--teacher-questions": "teacher", "--sample": "sample", "--heldout": "heldout",
         "--task-json": "task"}


def cmd_task(args: argparse.Namespace) -> int:
    from retro_search.config import load_config_dict
    from retro_search.stages import task

    section = load_config_dict(args.config).get("task") or {}
    outputs = {name: getattr(args, name) or path
               for name, path in task.outputs_in(args.output_dir).items()}
    vars(args).update(outputs)  # the manifest hashes each, defaults included
    result = task.run(section, outputs)
    return result.report(args.command)


def register(sub) -> None:
    p = sub.add_parser("task", help="write the miniature task's splits and teacher traces",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("output_dir", help="folder for the files no flag names")
    for flag, name in FLAGS.items():
        p.add_argument(flag, dest=name, default=None, metavar="PATH",
                       help=f"write {OUTPUTS[name]} here (default: OUTPUT_DIR/{OUTPUTS[name]})")
    p.add_argument("--config", default=None,
                   help="stage config whose `task` section sets retro_search.miniature.TaskConfig")
    p.set_defaults(func=cmd_task, input_args=(), output_args=tuple(OUTPUTS))
