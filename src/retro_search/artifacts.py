"""Artifact files: the one atomic write every stage uses, and the read and write functions of the
file types stages exchange (JSON lines, JSON, YAML, text, trace records, search outcomes and
rollouts, eval generations and metrics).

Every write goes to a temp file beside its target, is fsynced and renamed over the target: a
reader (or a resumed job, or Snakemake after a crash) sees the old file or the complete new one,
never a partial file. Temp files start with "." so globs and the audit do not take them for
outputs.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from retro_search.records import RecordError, TraceRecord, reference_problem
from retro_search.search_types import Rollout, SearchOutcome
from retro_search.sources import JsonLine, json_kind, json_lines

__all__ = ["atomic_open", "atomic_path", "drop_progress", "json_safe", "open_progress",
           "progress_path",
           "outcome_from_dict", "outcome_to_dict", "read_eval_metrics", "read_generations",
           "read_json", "rollout_from_dict", "rollout_to_dict", "read_jsonl", "read_records",
           "readable_mode", "write_json", "write_jsonl", "write_records", "write_text",
           "write_generations", "write_yaml"]


def readable_mode() -> int:
    """The mode a plain `open()` would give a new file under the current umask (usually 0644);
    mkstemp's 0600 would hide outputs from the rest of a shared project."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` for the caller (or a library: pyarrow, matplotlib) to
    write; on success fsync it and rename it over `path`, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, readable_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[str]]:
    """A text file handle whose content appears at `path` only once the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        yield fh


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path) as fh:
        fh.write(text)
    return Path(path)


def json_safe(value: Any) -> Any:
    """A copy in which NaN and infinities are null: JSON has no NaN, and strict readers refuse
    Python's `NaN` token."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Indented JSON; NaN and infinities are written as null (`json_safe`)."""
    return write_text(path, json.dumps(json_safe(data), indent=2, ensure_ascii=False,
                                       allow_nan=False) + "\n")


def write_yaml(path: str | Path, data: Any, *, sort_keys: bool = False) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(data, sort_keys=sort_keys, allow_unicode=True))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """One JSON object per line; returns the row count."""
    count = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


# ----------------------------------------------------------------------------- JSON lines
# Read line by line (`sources.json_lines`): a bad line is an error naming its file and line.

def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file; a bad line (not UTF-8, not JSON, nested too deep, not an
    object) is a ValueError naming the file and line. Blank lines are skipped."""
    for line in json_lines(path):
        if line.error is None and not isinstance(line.value, dict):
            line = JsonLine(line.number, None,
                            f"expected a JSON object, got {json_kind(line.value)}", line.text)
        if line.error is not None:
            raise ValueError(f"{path} line {line.number}: {line.error}")
        yield line.value


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


# ----------------------------------------------------------------------------- trace records

def write_records(records: Iterable[TraceRecord], path: str | Path) -> None:
    """Write records as JSONL (one `TraceRecord.to_dict()` per line), atomically.

    Metadata must hold plain JSON values; anything else is a `RecordError` naming the record.
    """
    current: list[str] = []  # id of the record being written, for the error message

    def rows():
        for record in records:
            if not isinstance(record, TraceRecord):
                raise TypeError(f"write_records takes TraceRecords, got {type(record).__name__}")
            current[:] = [record.id]
            yield record.to_dict()

    try:
        write_jsonl(path, rows())
    except TypeError as e:
        if "JSON serializable" not in str(e):
            raise
        raise RecordError(f"not JSON-serialisable ({e}); store plain JSON values",
                          record_id=current[0], field="metadata") from None


_STRING_FIELDS = ("id", "question", "reference_answer", "reasoning", "solution", "source_model",
                  "source_dataset")
# Fields a trace cannot be used without: a search needs a question, a trace to revise and a
# reference to grade its rollouts against (the solution may be empty).
_REQUIRED_TEXT = ("id", "question", "reference_answer", "reasoning")


def read_records(path: str | Path) -> list[TraceRecord]:
    """Read a JSONL file written by `write_records`. Every line must be a valid record: an
    object with the record's fields as strings, `id`, `question`, `reasoning` and
    `reference_answer` not blank, a reference the grader can read
    (`records.reference_problem`), metadata an object, and an id no earlier line has. Anything
    else is a `RecordError` naming the file and line, the id when known, and the field."""
    records = []
    seen: dict[str, int] = {}
    for line in json_lines(path):
        where = f"{path} line {line.number}"
        if line.error is not None:
            raise RecordError(f"{line.error}; the file is damaged or was not written by "
                              "write_records", source=where)
        row = line.value
        if not isinstance(row, dict):
            raise RecordError(f"expected a JSON object, got {json_kind(row)}", source=where)
        try:
            record = TraceRecord.from_dict(row)
        except RecordError as e:
            raise RecordError(e.reason, record_id=e.record_id, field=e.field,
                              source=where) from None
        record_id = record.id if isinstance(record.id, str) else None
        for field in _STRING_FIELDS:
            value = getattr(record, field)
            if not isinstance(value, str):
                raise RecordError(f"expected a string, got {json_kind(value)}"
                                  + (" (null)" if value is None else ""),
                                  record_id=record_id, field=field, source=where)
            if field in _REQUIRED_TEXT and not value.strip():
                raise RecordError("empty string", record_id=record_id, field=field,
                                  source=where)
        if not isinstance(record.metadata, dict):
            raise RecordError("expected an object", record_id=record.id, field="metadata",
                              source=where)
        problem = reference_problem(record.reference_answer)
        if problem is not None:
            raise RecordError(problem, record_id=record.id, field="reference_answer",
                              source=where)
        if record.id in seen:
            raise RecordError(f"duplicate id: line {seen[record.id]} has the same id",
                              record_id=record.id, field="id", source=where)
        seen[record.id] = line.number
        records.append(record)
    return records


# ----------------------------------------------------------------------------- search outcomes

def rollout_to_dict(rollout: Rollout) -> dict[str, Any]:
    """One rollout as a row of the rollout log (and of a progress file's `log`)."""
    row = dict(vars(rollout))
    row["seeds"] = list(rollout.seeds)
    return row


def rollout_from_dict(row: dict[str, Any]) -> Rollout:
    return Rollout(**{**row, "seeds": tuple(row["seeds"])})


def outcome_to_dict(outcome: SearchOutcome) -> dict[str, Any]:
    """A trace's whole search result, as the scheduler's progress file keeps it."""
    row = outcome.stats()
    row["reasoning"], row["solution"] = outcome.reasoning, outcome.solution
    row["log"] = [rollout_to_dict(r) for r in outcome.log]
    return row


def outcome_from_dict(row: dict[str, Any]) -> SearchOutcome:
    return SearchOutcome(**{**row, "log": [rollout_from_dict(r) for r in row["log"]]})


# ----------------------------------------------------------------------------- eval rows

# The columns of an eval stage's generations.parquet, in order, with their Arrow types. `error`:
# why the engine failed a generation (finish_reason "error"), else null; `grade_error`: the
# grader's.
GENERATION_COLUMNS = {"benchmark": "string", "problem_id": "string", "sample": "int64",
                      "seed": "int64", "question": "string", "gold": "string",
                      "response": "string", "reasoning_closed": "bool", "extracted": "string",
                      "correct": "bool", "grade_error": "string", "num_tokens": "int64",
                      "finish_reason": "string", "model": "string", "error": "string"}
OLD_GENERATION_ERROR = "generation_error: "  # where files without `error` kept it: grade_error


def write_generations(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """One row per generation, typed by GENERATION_COLUMNS (a row missing one is a KeyError)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "int64": pa.int64(), "bool": pa.bool_()}
    schema = pa.schema([(name, types[kind]) for name, kind in GENERATION_COLUMNS.items()])
    table = pa.Table.from_pylist([{c: row[c] for c in GENERATION_COLUMNS} for row in rows],
                                 schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_generations(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a generations.parquet; a file written before the `error` column has the
    engine's error moved there from grade_error ("generation_error: <why>")."""
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for row in rows:
        if "error" not in row:
            old = row.get("grade_error") or ""
            failed = row.get("finish_reason") == "error" and old.startswith(OLD_GENERATION_ERROR)
            row["error"] = old[len(OLD_GENERATION_ERROR):] if failed else None
            if failed:
                row["grade_error"] = None
    return rows


# ----------------------------------------------------------------------------- eval metrics

# What the summary reads of an eval stage's metrics.json (`evaluation.metrics` writes them).
EVAL_METRICS = {"benchmark": str, "accuracy": float, "accuracy_stderr": float,
                "mean_tokens": float}


def read_eval_metrics(path: str | Path) -> dict[str, Any]:
    """An eval stage's metrics.json; a missing or mistyped key of EVAL_METRICS is an error
    naming the file and the key."""
    metrics = read_json(path)
    if not isinstance(metrics, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    for key, kind in EVAL_METRICS.items():
        value = metrics.get(key)
        if value is None and key != "accuracy_stderr":  # one problem: no standard error
            raise ValueError(f"{path}: no {key!r} (an eval stage's metrics.json has "
                             f"{sorted(EVAL_METRICS)})")
        if value is not None and not isinstance(value, (int, float) if kind is float else kind):
            raise ValueError(f"{path}: {key!r} is {value!r}, expected a {kind.__name__}")
    return metrics


def _after_last_newline(path: Path, end: int, block: int = 1 << 16) -> int:
    """The offset just after the last newline of the file's first `end` bytes (0: none), read
    from the end backwards (a progress log of long generations runs to hundreds of MB)."""
    with open(path, "rb") as fh:
        position = end
        while position > 0:
            step = min(block, position)
            position -= step
            fh.seek(position)
            found = fh.read(step).rfind(b"\n")
            if found >= 0:
                return position + found + 1
    return 0


def open_progress(path: str | Path, mode: str = "a"):
    """A progress file opened to append lines (`mode` "a" or "ab"). A torn last line (the
    process died while writing it) is cut first, so the next line does not continue it and get
    lost with it on a later resume; a new file's name is made durable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists()
    if not fresh:
        end = path.stat().st_size
        keep = _after_last_newline(path, end)
        if keep != end:
            os.truncate(path, keep)
    fh = open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    if fresh:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return fh


def progress_path(output: str | Path, fingerprint: str) -> Path:
    """The hidden progress file of `output` for a run whose settings hash to `fingerprint`."""
    output = Path(output)
    return output.with_name(f".{output.name}.progress-{fingerprint}.jsonl")


def drop_progress(output: str | Path) -> list[Path]:
    """Remove the progress a finished job kept beside its `output` (the files
    `.NAME.progress-*.jsonl` of sample and search, the folder `.NAME.progress/` of eval); returns
    what was removed.

    A job keeps its progress after writing its outputs because Snakemake, when it was killed
    before it saw the job end, deletes those outputs and runs the job again (`rerun-incomplete`):
    from its progress the rerun writes them again without generating anything. The stage that
    reads the outputs calls this, when Snakemake has recorded the job as finished."""
    import shutil

    output = Path(output)
    removed = sorted(output.parent.glob(progress_path(output, "*").name))
    for path in removed:
        path.unlink(missing_ok=True)
    folder = output.with_name(f".{output.name}.progress")
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
