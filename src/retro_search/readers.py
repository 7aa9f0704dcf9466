"""Read raw reasoning traces and normalise them into `TraceRecord`s.

One generic normaliser, driven by a declarative `FieldMap` (see `formats.py` for the presets),
turns a raw record into a `TraceRecord`: `reasoning` is the text between the reasoning markers and
`solution` the text after them, both stripped, markers removed. `load_traces` reads a local
.jsonl/.json/.parquet file, a directory or glob of them, or a hub dataset through `datasets`, and
normalises every record; bad records either stop the load or go to a quarantine file, never
silently away. `artifacts.write_records` / `read_records` store normalised records as JSONL.

Positions are 0-based and count records across the whole source (files in sorted order); every
error and quarantine entry also names where the record sits ("FILE line N" for JSON Lines, see
`sources.RawRow`). Reference answers are text exactly as the file writes them: a string as is
(stripped), a JSON number as written ("3.10", "1e3", "-0"), never re-typed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from retro_search.formats import (ALL_MARKERS, PRESETS, RAW_ANSWER_KEY, FieldMap, resolve_format,
                                  split_response)
from retro_search.artifacts import atomic_open, read_records
from retro_search.records import RecordError, TraceRecord, reference_problem
from retro_search.sources import (JsonFloat, JsonInt, json_kind, json_text, local_files,
                                  plain_json, raw_rows)

__all__ = ["FieldMap", "PRESETS", "LoadReport", "normalise_record", "split_response",
           "load_traces", "read_traces"]

_MISSING = object()
log = logging.getLogger(__name__)


class _Bad(Exception):
    """A field-level problem; `normalise_record` adds the record's position and id."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


# ----------------------------------------------------------------------------- field access

# What each FieldMap slot holds, for the message about a record without it (metadata: anything).
_EXPECTED = {"question": "a string", "response": "a string", "reasoning": "a string",
             "solution": "a string", "source_model": "a string",
             "answer": "a string (or a number or list)", "id": "a string or an integer",
             "messages": "a list of chat turns"}


def _get(raw: Any, path: str, slot: str) -> Any:
    """The value at a dotted path; raises `_Bad` naming the path (and the `FieldMap` slot that
    holds it, so the user knows what to change) when any segment is absent."""
    value = raw
    segments = path.split(".")
    hint = f"; fix FieldMap.{slot} if the layout keeps it elsewhere"
    for depth, segment in enumerate(segments):
        parent = ".".join(segments[:depth]) or "the record"
        if isinstance(value, Mapping):
            value = value.get(segment, _MISSING)
            if value is _MISSING:
                if depth == len(segments) - 1 and slot in _EXPECTED:
                    raise _Bad(path, f"expected {_EXPECTED[slot]}, got nothing: missing, no "
                                     f"key {segment!r} in {parent}{hint}")
                raise _Bad(path, f"missing: no key {segment!r} in {parent}{hint}")
        elif isinstance(value, (list, tuple)):
            try:
                value = value[int(segment)]
            except ValueError:
                raise _Bad(path, f"{parent} is a list; {segment!r} is not an index{hint}") from None
            except IndexError:
                raise _Bad(path, f"missing: {parent} has {len(value)} items, no index {segment}"
                                 f"{hint}") from None
        else:
            raise _Bad(path, f"missing: {parent} is {json_kind(value)}, not an object or list"
                             f"{hint}")
    return value


def _text(value: Any, field: str, *, allow_empty: bool = False) -> str:
    """A string field, stripped; non-strings and (unless allowed) blank strings are errors."""
    if not isinstance(value, str):
        raise _Bad(field, f"expected a string, got {json_kind(value)}"
                          + (" (null)" if value is None else ""))
    if not allow_empty and not value.strip():
        raise _Bad(field, "empty string")
    return value.strip()


def _answer_text(value: Any, field: str) -> str:
    """The reference answer as a string, without benchmark-specific normalisation.

    Strings are stripped; a number read from JSON is its text as the file writes it ("3.10",
    "1e3", "-0"), other ints and floats (parquet, hub) go through `str()` (27.0 stays "27.0":
    the grader's `normalize_reference` decides what that means); lists become JSON (their
    numbers as written). Objects, bools and nulls are no answer. The raw value is kept in
    metadata["raw_answer"] either way.
    """
    if isinstance(value, bool):  # before int: bool is an int subclass, and never an answer
        raise _Bad(field, "expected an answer, got a bool; is the answer path right?")
    if isinstance(value, (JsonInt, JsonFloat)):
        return value.text
    if isinstance(value, float) and not math.isfinite(value):
        raise _Bad(field, f"expected an answer, got {value} (a missing value in the source?)")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        raise _Bad(field, f"expected an answer (a string, number or list), got an object "
                          f"{json_text(value)[:60]}; is the answer path right?")
    if isinstance(value, list):
        if not value:
            raise _Bad(field, "empty list")
        return json_text(value)
    return _text(value, field)


def _id_part(value: Any, field: str) -> str:
    # Integer ids (e.g. `idx`) are common and convert exactly; floats or nulls would not.
    if isinstance(value, int) and not isinstance(value, bool):
        return getattr(value, "text", str(value))
    if not isinstance(value, str) or not value.strip():
        raise _Bad(field, f"an id must be a non-empty string or an integer, got {value!r:.60}")
    return value


def _record_id(raw: Mapping, id_spec: str | tuple[str, ...] | None, *, source_dataset: str,
               position: int) -> str:
    """The record's id from its id path(s) joined by "/", else "{source_dataset}:{position}"."""
    if id_spec is None:
        return f"{source_dataset}:{position}"
    paths = (id_spec,) if isinstance(id_spec, str) else id_spec
    return "/".join(_id_part(_get(raw, p, "id"), p) for p in paths)


# ----------------------------------------------------------------------------- chat turns

_USER_ROLES, _ASSISTANT_ROLES = {"user", "human"}, {"assistant", "gpt"}


def _chat_turns(raw: Mapping, path: str) -> tuple[tuple[str, str] | None, tuple[str, str]]:
    """((user path, text) or None, (assistant path, text)) from a single-turn chat list."""
    turns = _get(raw, path, "messages")
    if not isinstance(turns, (list, tuple)):
        raise _Bad(path, f"expected a list of chat turns, got {json_kind(turns)}")
    found: dict[str, list[tuple[str, str]]] = {"user": [], "assistant": []}
    for i, turn in enumerate(turns):
        where = f"{path}.{i}"
        if not isinstance(turn, Mapping):
            raise _Bad(where, f"expected a chat turn object, got {json_kind(turn)}")
        role_key = "role" if turn.get("role") is not None else "from"
        content_key = "content" if turn.get("content") is not None else "value"
        role = turn.get(role_key)
        if role == "system":
            continue
        side = "user" if role in _USER_ROLES else "assistant" if role in _ASSISTANT_ROLES else None
        if side is None:
            raise _Bad(f"{where}.{role_key}", f"unknown chat role {role!r}")
        found[side].append((f"{where}.{content_key}", turn.get(content_key)))
    if len(found["assistant"]) != 1:
        # Several assistant turns would need the earlier ones as context: not a single trace.
        raise _Bad(path, f"expected exactly one assistant turn, found {len(found['assistant'])}")
    user = found["user"][0] if len(found["user"]) == 1 else None
    return user, found["assistant"][0]


# ----------------------------------------------------------------------------- one record

def normalise_record(raw: Mapping[str, Any], fmap: FieldMap | str, *, position: int,
                     source_dataset: str) -> TraceRecord:
    """Normalise one raw record with a `FieldMap` (or preset name).

    The id is the mapped id (integers become strings; a tuple of paths is joined with "/") or
    "{source_dataset}:{position}". Question, answer, reasoning and solution are stripped;
    metadata gets the mapped extras plus the raw answer under "raw_answer". Raises `RecordError`
    naming the position, the id when known, and the field: a missing path, a non-string where a
    string is required, an empty question or reasoning, a reasoning that never closes, a chat
    list without exactly one assistant turn, or a reference answer the grader cannot read
    (`records.reference_problem`: blank, `\\boxed{}`, unbalanced braces such as `\\frac{`, an
    object).
    """
    fmap = resolve_format(fmap)
    record_id = None
    try:
        if not isinstance(raw, Mapping):
            raise _Bad(None, f"a record must be an object, got {json_kind(raw)}")
        record_id = _record_id(raw, fmap.id, source_dataset=source_dataset, position=position)

        user = assistant = None
        if fmap.messages is not None:
            user, assistant = _chat_turns(raw, fmap.messages)
        if fmap.question is not None:
            question = _text(_get(raw, fmap.question, "question"), fmap.question)
        elif user is None:
            raise _Bad(fmap.messages, "expected exactly one user turn to take the question from")
        else:
            question = _text(user[1], user[0])

        raw_answer = _get(raw, fmap.answer, "answer")
        reference_answer = _answer_text(raw_answer, fmap.answer)
        problem = reference_problem(reference_answer)
        if problem is not None:
            raise _Bad(fmap.answer, problem)

        if fmap.reasoning is not None:
            reasoning = _text(_get(raw, fmap.reasoning, "reasoning"), fmap.reasoning)
            solution = _text(_get(raw, fmap.solution, "solution"), fmap.solution,
                             allow_empty=True)
            for field, value in ((fmap.reasoning, reasoning), (fmap.solution, solution)):
                marker = next((m for m in ALL_MARKERS if m in value), None)
                if marker:  # a marked-up trace mapped as plain text would keep its markers
                    raise _Bad(field, f"contains the marker {marker}; map the text as `response`")
        else:
            field, value = assistant or (fmap.response, _get(raw, fmap.response, "response"))
            try:
                reasoning, solution = split_response(_text(value, field))
            except ValueError as e:
                raise _Bad(field, str(e)) from None

        if fmap.source_model is not None:
            source_model = _text(_get(raw, fmap.source_model, "source_model"),
                                 fmap.source_model)
        else:
            source_model = fmap.source_model_const or ""
        metadata = {key: plain_json(_get(raw, path, "metadata"))
                    for key, path in fmap.metadata_items()}
        metadata[RAW_ANSWER_KEY] = plain_json(raw_answer)
    except _Bad as bad:
        raise RecordError(bad.reason, position=position, record_id=record_id,
                          field=bad.field) from None
    return TraceRecord(id=record_id, question=question, reference_answer=reference_answer,
                       reasoning=reasoning, solution=solution, source_model=source_model,
                       source_dataset=source_dataset, metadata=metadata)


# ----------------------------------------------------------------------------- loading

@dataclass
class LoadReport:
    """What `load_traces` read: `total` raw records = `len(records)` + `quarantined`.
    `empty`: the files (or dataset) that held no record at all, in quarantine mode."""

    records: list[TraceRecord]
    quarantined: int
    quarantine_path: Path | None
    total: int
    source_dataset: str = ""
    empty: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (f"{self.source_dataset or 'traces'}: "
                f"loaded {len(self.records)} of {self.total} records")
        if self.quarantine_path is not None:
            text += f"; {self.quarantined} quarantined -> {self.quarantine_path}"
        if self.empty:
            text += f"; no records in {', '.join(self.empty)}"
        return text


def load_traces(source: str | Path, *, format: str | FieldMap | Mapping = "r1",
                split: str = "train", data_files=None, source_dataset: str | None = None,
                on_bad_record: Literal["error", "quarantine"] = "error",
                quarantine_path: str | Path | None = None, limit: int | None = None,
                name: str | None = None, cache_dir: str | Path | None = None,
                revision: str | None = None) -> LoadReport:
    """Load and normalise the traces of one source.

    `source`: a local .jsonl/.json/.parquet file, a folder (its files of those types, sorted,
    not recursive) or a glob of them; "json"/"parquet" with `data_files`; otherwise a hub
    dataset id, loaded with `datasets.load_dataset(source, name, split=split,
    data_files=data_files, revision=revision)` (`revision`: a commit, so the data cannot change
    under an experiment; None: the latest) (`split` must stay "train" for local files).
    JSON Lines files (and .json files that are not one array) are read line by line: a line that
    is not UTF-8, not JSON, nested deeper than `artifacts.MAX_JSON_DEPTH` or not an object is a
    bad record named by its file and line; blank lines, a UTF-8 byte-order mark and CRLF line
    ends are fine; values are untyped (a key absent from a line is missing, a number keeps its
    text). Parquet files and hub datasets go through `datasets`, typed by their schema.

    `source_dataset` defaults to the file stem (one file), the folder name (a folder, or the
    folder of the first of several files), or the hub id (with ":name" and ":split" when they
    are not the defaults); default ids are "{source_dataset}:{position}".
    `limit` caps the raw records read (good and bad together), from the start.

    Bad records (unreadable lines, see `normalise_record`; also a repeated id) raise the first
    `RecordError` with `on_bad_record="error"`; its message names the file and line (or row),
    the position, the id when known and the field. With "quarantine" each is written to
    `quarantine_path` (required; replaced atomically at the end of every call, so a rerun does
    not double it) as a JSON line {"position", "id", "field", "reason", "source" (FILE line N),
    "line", "record" (the raw record, or the line's text when it could not be read)} and
    counted; the good records before and after it are kept, in order.

    A file (or hub split) that holds no record at all (empty, or only blank lines) is an error
    in "error" mode; in "quarantine" mode it adds nothing and is listed in `LoadReport.empty`
    (and its summary), since no record of it can be quarantined.
    """
    fmap = resolve_format(format)
    return load_normalised(
        source, lambda raw, position, dataset: normalise_record(
            raw, fmap, position=position, source_dataset=dataset),
        id_field=fmap.id if isinstance(fmap.id, str) else "id", split=split,
        data_files=data_files, source_dataset=source_dataset, on_bad_record=on_bad_record,
        quarantine_path=quarantine_path, limit=limit, name=name, cache_dir=cache_dir,
        revision=revision)


def read_traces(path: str | Path, format: str = "records",
                limit: int | None = None) -> list[TraceRecord]:
    """The traces of a stage's normalised file (`format="records"`, see
    `artifacts.write_records`) or of a raw file in a format preset (`load_traces`)."""
    if format == "records":
        return read_records(path)[:limit] if limit else read_records(path)
    return load_traces(path, format=format, limit=limit).records


def load_normalised(source: str | Path, normalise: Callable[[Any, int, str], Any], *,
                    id_field: str = "id", split: str = "train", data_files=None,
                    source_dataset: str | None = None,
                    on_bad_record: Literal["error", "quarantine"] = "error",
                    quarantine_path: str | Path | None = None, limit: int | None = None,
                    name: str | None = None, cache_dir: str | Path | None = None,
                    select: Callable[[int], bool] | None = None,
                    revision: str | None = None) -> LoadReport:
    """Read every raw record of a source and normalise it with `normalise(raw, position,
    source_dataset)`, which returns an object with an `id` or raises `RecordError`.

    The reading, source naming, duplicate-id check (`id_field` names the field in the error),
    limit and quarantine rules are those of `load_traces`, which is this with `normalise_record`;
    `questions.load_questions` is this with its own normaliser. `select(position)`, when given,
    keeps only the records at the positions it accepts (a shard of the source: positions still
    count every raw record read, `limit` included, and the records not selected are neither
    normalised nor counted in `total`).
    """
    if on_bad_record not in ("error", "quarantine"):
        raise ValueError(f"on_bad_record must be 'error' or 'quarantine', not {on_bad_record!r}")
    if on_bad_record == "quarantine" and quarantine_path is None:
        raise ValueError("on_bad_record='quarantine' needs a quarantine_path for the bad records")
    source = str(source)
    files = local_files(source, data_files)
    if files is not None and split != "train":
        raise ValueError(f"split={split!r}: local files have one split; select files instead")
    if source_dataset is None:
        if files is None:
            source_dataset = ":".join([source] + ([name] if name else [])
                                      + ([split] if split != "train" else []))
        elif Path(source).is_dir():
            source_dataset = Path(source).resolve().name
        else:
            source_dataset = files[0].stem if len(files) == 1 else Path(files[0]).parent.name

    # Written beside its destination and renamed at the end, like every output: a load that fails
    # half-way leaves no quarantine file that looks complete.
    quarantine = (atomic_open(quarantine_path) if on_bad_record == "quarantine"
                  else contextlib.nullcontext())
    records: list[Any] = []
    seen: dict[str, tuple[int, str]] = {}
    empty: list[str] = []
    total = quarantined = 0

    def on_empty(label: str) -> None:
        if on_bad_record == "error":
            raise ValueError(f"{label}: no records (the file is empty or holds only blank "
                             "lines); nothing to load")
        log.warning("%s: no records (empty file); it adds nothing", label)
        empty.append(label)

    rows = raw_rows(files, source, name=name, split=split, data_files=data_files,
                    cache_dir=str(cache_dir) if cache_dir else None, streaming=limit is not None,
                    revision=revision, on_empty=on_empty)
    with quarantine as bad:
        for position, row in enumerate(islice(rows, limit)):
            if select is not None and not select(position):
                continue
            total += 1
            try:
                if row.error is not None:
                    raise RecordError(row.error, position=position)
                record = normalise(row.value, position, source_dataset)
                if record.id in seen:
                    first, where = seen[record.id]
                    raise RecordError(f"duplicate id: record #{first} has the same id ({where})",
                                      position=position, record_id=record.id,
                                      field=id_field)
            except RecordError as e:
                error = RecordError(e.reason, position=e.position, record_id=e.record_id,
                                    field=e.field, source=row.where)
                if bad is None:
                    raise error from None
                bad.write(json.dumps(
                    {"position": position, "id": e.record_id, "field": e.field,
                     "reason": e.reason, "source": row.where, "line": row.line,
                     "record": row.value if row.error is None else row.text},
                    ensure_ascii=False, default=str) + "\n")
                quarantined += 1
                continue
            seen[record.id] = (position, row.where)
            records.append(record)
    return LoadReport(records=records, quarantined=quarantined,
                      quarantine_path=Path(quarantine_path) if on_bad_record == "quarantine" else None,
                      total=total, source_dataset=source_dataset, empty=empty)
