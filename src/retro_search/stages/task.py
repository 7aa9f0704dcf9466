"""The task stage: the miniature task's files (`retro-search task`, rule `task`).

The task itself, its splits and the teacher's flaws are `retro_search.miniature`'s; this stage
writes them, each to the path it is given, and adds the teacher traces as normalised records
for sft_data (how the demo's reasoning model is trained from scratch). Everything is a function
of the `task` section: a rerun writes the same bytes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from retro_search.stages import StageResult

if TYPE_CHECKING:
    from retro_search.miniature import TaskConfig

# The stage's outputs by name, and the file each is called in the stage folder by default.
OUTPUTS = {
    "teacher_traces": "teacher_traces.jsonl",    # r1_response layout, with each trace's flaws
    "teacher_records": "teacher_records.jsonl",  # the same, normalised: sft_data's input
    "teacher": "teacher.jsonl",                  # the splits' questions {id, question, answer}
    "sample": "sample.jsonl",
    "heldout": "heldout.jsonl",
    "task": "task.json",                         # the TaskConfig that made them
}


def task_config(section: Mapping[str, Any]) -> TaskConfig:
    """The `task` section as a `miniature.TaskConfig`. A key it does not know is a ValueError
    naming the known ones: TaskConfig's own TypeError would reach the user as a traceback."""
    from retro_search.miniature import TaskConfig

    known = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"unknown task setting(s) {unknown}; known: {sorted(known)}")
    return TaskConfig(**section)


def outputs_in(folder: str | Path) -> dict[str, Path]:
    return {name: Path(folder) / file for name, file in OUTPUTS.items()}


def run(section: Mapping[str, Any], outputs: Mapping[str, str | Path]) -> StageResult:
    """Write the task set by `section` to the files `outputs` names (keys of OUTPUTS). The
    summary's `output_dir` is the folder of the teacher records, i.e. the stage folder."""
    from retro_search.artifacts import read_jsonl, write_records
    from retro_search.miniature import write_dataset
    from retro_search.readers import load_traces

    missing = sorted(set(OUTPUTS) - set(outputs))
    if missing:
        raise ValueError(f"task: no path given for the output(s) {missing}")
    out = {name: Path(outputs[name]) for name in OUTPUTS}
    config = task_config(section)
    write_dataset(out, config)
    counts = {name: sum(1 for _ in read_jsonl(out[name])) for name in ("teacher", "sample", "heldout")}
    records = load_traces(out["teacher_traces"],
                          format={"preset": "r1_response", "id": "id"}).records
    write_records(records, out["teacher_records"])
    summary = {"teacher_traces": len(records),
               **{name: counts[name] for name in ("teacher", "sample", "heldout")},
               "output_dir": str(out["teacher_records"].parent)}
    return StageResult(outputs=out, summary=summary)
