"""Questions with reference answers: what the `sample` stage asks a model to answer.

A `QuestionMap` says, with the dotted paths of `formats.FieldMap`, where a raw record keeps the
question, its reference answer, an id and extra metadata; `load_questions` reads any source
`readers.load_traces` reads (a local .jsonl/.json/.parquet file, folder or glob, or a hub dataset)
with the same rules: bad records stop the load or go to a quarantine file with their reason, ids
are the mapped id or "{source_dataset}:{position}", a repeated id is a bad record.

The map is a preset (`QUESTION_PRESETS`), the question part of a trace preset (`formats.PRESETS`,
e.g. `r1_response`: a traces file can be asked again), or a mapping
`{"preset": name, **fields}` / the fields themselves, as a YAML config holds it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

from retro_search.formats import (PRESETS, RAW_ANSWER_KEY, FieldMap, check_metadata_keys,
                                  freeze_id_and_metadata, metadata_items)
from retro_search.readers import (LoadReport, _answer_text, _Bad, _get, _record_id, _text,
                                  load_normalised)
from retro_search.records import RecordError
from retro_search.sources import json_kind, plain_json

__all__ = ["Question", "QuestionMap", "QUESTION_PRESETS", "resolve_question_format",
           "normalise_question", "load_questions"]


@dataclass
class Question:
    """One question and its reference answer (stripped text; the raw value is in
    metadata["raw_answer"]). `position`: its record's 0-based position in the source."""

    id: str
    question: str
    reference_answer: str
    position: int
    source_dataset: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QuestionMap:
    """Where a raw layout keeps a question (`question`), its reference answer (`answer`), an id
    (a path, a tuple of paths joined with "/", or None for "{source_dataset}:{position}") and
    metadata entries ("path" or "key=path", copied as read). Paths as in `formats.FieldMap`."""

    question: str
    answer: str
    id: str | tuple[str, ...] | None = None
    metadata: tuple[str, ...] = ()

    def __post_init__(self):
        freeze_id_and_metadata(self)
        for name in ("question", "answer"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"QuestionMap: `{name}` must be a field path, got "
                                 f"{getattr(self, name)!r}")
        check_metadata_keys(self)

    def metadata_items(self) -> list[tuple[str, str]]:
        """(key, path) pairs, from "path" or "key=path" entries (as `FieldMap.metadata`)."""
        return metadata_items(self.metadata)

    @classmethod
    def from_trace_format(cls, fmap: FieldMap, name: str = "the trace format") -> "QuestionMap":
        if fmap.question is None:
            raise ValueError(f"{name} takes the question from chat messages; give the question "
                             "field instead, e.g. {preset: ..., question: problem}")
        return cls(question=fmap.question, answer=fmap.answer, id=fmap.id,
                   metadata=fmap.metadata)


QUESTION_PRESETS: dict[str, QuestionMap] = {
    # A question and a short answer: MATH-500, OpenR1-Math (`problem`, `answer`), the demo traces.
    "problem_answer": QuestionMap(question="problem", answer="answer"),
    # Hendrycks MATH (e.g. DigitalLearningGmbH/MATH-lighteval): the reference is the worked
    # solution, whose last \boxed{} the grader takes as the answer (grading.normalize_reference).
    "math_solution": QuestionMap(question="problem", answer="solution",
                                 metadata=("level", "subject=type")),
    # GSM8K's train split: the answer is the rationale ending "#### 72".
    "gsm8k": QuestionMap(question="question", answer="answer"),
}


def resolve_question_format(format: str | QuestionMap | FieldMap | Mapping[str, Any]
                            ) -> QuestionMap:
    """A QuestionMap from a question preset, a trace preset, a map, or a config mapping
    (`{"preset": name, **overrides}` or the QuestionMap fields)."""
    if isinstance(format, QuestionMap):
        return format
    if isinstance(format, FieldMap):
        return QuestionMap.from_trace_format(format)
    if isinstance(format, str):
        if format in QUESTION_PRESETS:
            return QUESTION_PRESETS[format]
        if format in PRESETS:
            return QuestionMap.from_trace_format(PRESETS[format], f"trace preset {format!r}")
        raise ValueError(f"unknown question format {format!r}; presets: "
                         f"{sorted(QUESTION_PRESETS)}, or a trace preset {sorted(PRESETS)}, or a "
                         "mapping {question: PATH, answer: PATH, id: PATH, metadata: [...]}")
    if isinstance(format, Mapping):
        fields = dict(format)
        known = {f.name for f in dataclasses.fields(QuestionMap)}
        unknown = set(fields) - known - {"preset"}
        if unknown:
            raise ValueError(f"unknown question-format fields {sorted(unknown)}; known: "
                             f"{sorted(known)} (and preset)")
        preset = fields.pop("preset", None)
        if preset is None:
            return QuestionMap(**fields)
        if preset in PRESETS and "question" in fields:  # e.g. r1: the question is a field here
            trace = PRESETS[preset]
            return dataclasses.replace(QuestionMap(fields["question"], trace.answer, trace.id,
                                                   trace.metadata), **fields)
        return dataclasses.replace(resolve_question_format(preset), **fields)
    raise TypeError(f"a question format is a preset name or a mapping, not {type(format).__name__}")


def normalise_question(raw: Mapping[str, Any], qmap: QuestionMap, *, position: int,
                       source_dataset: str,
                       check_answer: Callable[[str], Any] | None = None) -> Question:
    """One raw record -> a `Question`. `check_answer(reference)` (e.g.
    `grading.normalize_reference`) may refuse an answer with ValueError: a question whose answer
    cannot be graded is a bad record. Raises `RecordError` naming the position, id and field."""
    record_id = None
    try:
        if not isinstance(raw, Mapping):
            raise _Bad(None, f"a record must be an object, got {json_kind(raw)}")
        record_id = _record_id(raw, qmap.id, source_dataset=source_dataset, position=position)
        question = _text(_get(raw, qmap.question, "question"), qmap.question)
        raw_answer = _get(raw, qmap.answer, "answer")
        reference = _answer_text(raw_answer, qmap.answer)
        if check_answer is not None:
            try:
                check_answer(reference)
            except ValueError as err:
                raise _Bad(qmap.answer, f"the reference answer cannot be graded: {err}") from None
        metadata = {key: plain_json(_get(raw, path, "metadata"))
                    for key, path in qmap.metadata_items()}
        metadata[RAW_ANSWER_KEY] = plain_json(raw_answer)
    except _Bad as bad:
        raise RecordError(bad.reason, position=position, record_id=record_id,
                          field=bad.field) from None
    return Question(id=record_id, question=question, reference_answer=reference,
                    position=position, source_dataset=source_dataset, metadata=metadata)


def load_questions(source: str | Path, *, format: Any = "problem_answer", split: str = "train",
                   name: str | None = None, limit: int | None = None,
                   on_bad_record: Literal["error", "quarantine"] = "error",
                   quarantine_path: str | Path | None = None,
                   source_dataset: str | None = None,
                   check_answer: Callable[[str], Any] | None = None,
                   num_shards: int = 1, shard: int = 0,
                   revision: str | None = None) -> LoadReport:
    """The questions of a source (see `readers.load_traces` for sources, ids, `limit` and bad
    records), or of shard `shard` of `num_shards`: the records at positions shard, shard +
    num_shards, ... of the source (round robin, so shards of a source sorted by difficulty cost
    about the same). `LoadReport.records` holds `Question`s."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in 0..{num_shards - 1}, got {shard}")
    qmap = resolve_question_format(format)
    return load_normalised(
        source, lambda raw, position, dataset: normalise_question(
            raw, qmap, position=position, source_dataset=dataset, check_answer=check_answer),
        id_field=qmap.id if isinstance(qmap.id, str) else "id", split=split, name=name,
        limit=limit, on_bad_record=on_bad_record, quarantine_path=quarantine_path,
        source_dataset=source_dataset, revision=revision,
        select=None if num_shards == 1 else (lambda position: position % num_shards == shard))
