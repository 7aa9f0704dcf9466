"""The standalone commands that are not pipeline stages, each a function over explicit paths:
`normalize` (raw traces -> records), `segment` (steps, thoughts, boundaries of each trace) and
`grade` (rows with a reference and a response -> graded rows). Each returns a line for the log."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def normalize(source: str, output: str | Path, *, format: str = "r1", split: str = "train",
              name: str | None = None, limit: int | None = None,
              quarantine: str | Path | None = None) -> str:
    """Records of a raw source; bad records (named by file, line and field) stop the call, or
    go to `quarantine` when given (see `readers.load_traces`, also for an empty file)."""
    from retro_search.artifacts import write_records
    from retro_search.readers import load_traces

    report = load_traces(source, format=format, split=split, limit=limit, name=name,
                         on_bad_record="quarantine" if quarantine else "error",
                         quarantine_path=quarantine)
    write_records(report.records, output)
    return report.summary()


def segment(input_path: str | Path, output: str | Path, *, format: str = "records",
            keywords: Sequence[str] | None = None) -> str:
    """Steps, thoughts and boundaries of each trace. The input is checked whole first: a bad
    line, a record with a blank id, question, reasoning or reference, a reference the grader
    cannot read, or a repeated id is an error naming the file, line and field
    (`artifacts.read_records`; a raw preset: `readers.load_traces` in error mode)."""
    from retro_search.artifacts import write_jsonl
    from retro_search.readers import read_traces
    from retro_search.segmentation import DEFAULT_KEYWORDS, segment as split_trace

    keywords = tuple(keywords) if keywords else DEFAULT_KEYWORDS
    rows = []
    for trace in read_traces(input_path, format):
        seg = split_trace(trace.reasoning, keywords)
        rows.append({"id": trace.id, "steps": seg.num_steps, "thoughts": seg.num_thoughts,
                     "boundaries": seg.num_boundaries,
                     # boundary i sits right before step boundary_steps[i - 1] (0-based step index)
                     "boundary_steps": list(seg.thought_starts[1:]),
                     "thought_lengths": [len(t) for t in seg.thoughts()]})
    write_jsonl(output, rows)
    return f"segmented {len(rows)} traces -> {output}"


def grade(input_path: str | Path, output: str | Path, *, gold_field: str = "gold",
          response_field: str = "response", processes: int | None = None,
          timeout: float = 10.0, progress: bool = True) -> str:
    """Each row with `correct`, `extracted` and `grade_error` added. A bad line (not UTF-8, not
    JSON, nested too deep, not an object), a row without either field, or a reference the
    grader cannot read (`records.reference_problem`: blank, `\\boxed{}`, `\\frac{`) is an error
    naming the file, line, id and field, raised before any grading."""
    from retro_search.artifacts import write_jsonl
    from retro_search.grading import Grader, normalize_reference
    from retro_search.records import reference_problem
    from retro_search.sources import json_kind, json_lines

    rows, pairs = [], []
    for line in json_lines(input_path):
        where = f"{input_path} line {line.number}"
        if line.error is not None:
            raise ValueError(f"{where}: {line.error}")
        row = line.value
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {json_kind(row)}")
        for field in (gold_field, response_field):
            if field not in row:
                raise ValueError(f"{where} (id={row.get('id')!r}) has no field {field!r}")
        problem = reference_problem(row[gold_field])
        if problem is not None:
            raise ValueError(f"{where} (id={row.get('id')!r}), field {gold_field!r}: {problem}")
        rows.append(row)
        pairs.append((normalize_reference(row[gold_field]), row[response_field]))
    with Grader(processes=processes, timeout=timeout) as grader:
        grades = grader.grade_many(pairs, progress=progress)
    for row, result in zip(rows, grades):
        row.update(correct=result.correct, extracted=result.extracted, grade_error=result.error)
    write_jsonl(output, rows)
    return f"graded {len(rows)} rows: {sum(g.correct for g in grades)} correct -> {output}"
