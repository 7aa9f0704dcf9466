"""Trace formats: where each field of a raw trace record lives, and how a response is marked up.

A `FieldMap` says, with dotted paths, where a raw record keeps the question, the reference answer
and the trace; `readers.normalise_record` does the rest. Every known layout is one small entry in
`PRESETS`. A new layout needs a new entry (or a `FieldMap` built in place, or a mapping in the
config), never new code.

Paths: `"problem.problem"` reads `raw["problem"]["problem"]`; a segment that indexes a list is an
integer (`"code.0"`, `"messages.-1"`). Keys that contain a dot cannot be addressed. Every path a
`FieldMap` names must exist in every record; a missing one is a `RecordError` for that record.

Marker styles: R1 (`<think>...</think>solution`) and OpenThoughts (`<|begin_of_thought|>...
<|end_of_thought|><|begin_of_solution|>...<|end_of_solution|>`); `split_response` tells them apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

# Metadata key that `normalise_record` always fills with the raw reference answer.
RAW_ANSWER_KEY = "raw_answer"

R1_OPEN, R1_CLOSE = "<think>", "</think>"
OT_THOUGHT_OPEN, OT_THOUGHT_CLOSE = "<|begin_of_thought|>", "<|end_of_thought|>"
OT_SOLUTION_OPEN, OT_SOLUTION_CLOSE = "<|begin_of_solution|>", "<|end_of_solution|>"
ALL_MARKERS = (R1_OPEN, R1_CLOSE, OT_THOUGHT_OPEN, OT_THOUGHT_CLOSE, OT_SOLUTION_OPEN,
               OT_SOLUTION_CLOSE)


@dataclass(frozen=True)
class FieldMap:
    """Where one raw layout keeps each field of a `TraceRecord`.

    The trace comes from exactly one of:
      - `response`: one string holding reasoning and solution with their markers, R1
        (`<think>...</think>solution`, the opener may be missing) or OpenThoughts
        (`<|begin_of_thought|>...<|end_of_thought|><|begin_of_solution|>...<|end_of_solution|>`);
        the style is detected per record;
      - `messages`: a chat list whose single assistant turn is such a string. Turns are dicts with
        `role` or `from` ("user"/"human", "assistant"/"gpt", "system" is ignored) and `content` or
        `value`. With `question=None` the question is the single user turn;
      - `reasoning` and `solution`: two plain strings without markers.

    `id`: a path, or a tuple of paths whose values are joined with "/" (for layouts whose key is
    several fields); None means "{source_dataset}:{position}". `source_model` is a path;
    `source_model_const` a literal model name for layouts that hold only one model's traces (at
    most one of the two). `metadata` entries are `"path"` (stored under the path) or
    `"key=path"`; values are copied as read.
    """

    question: str | None
    answer: str
    response: str | None = None
    messages: str | None = None
    reasoning: str | None = None
    solution: str | None = None
    id: str | tuple[str, ...] | None = None
    source_model: str | None = None
    source_model_const: str | None = None
    metadata: tuple[str, ...] = ()

    def __post_init__(self):
        freeze_id_and_metadata(self)
        sources = [name for name in ("response", "messages", "reasoning") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError("FieldMap needs exactly one trace source: `response`, `messages`, or "
                             f"`reasoning` + `solution` (got {sources or 'none'})")
        if (self.reasoning is None) != (self.solution is None):
            raise ValueError("FieldMap: `reasoning` and `solution` go together; set both or none")
        if self.question is None and self.messages is None:
            raise ValueError("FieldMap: `question` may be None only when `messages` is set "
                             "(the question is then the user turn)")
        if self.source_model and self.source_model_const:
            raise ValueError("FieldMap: set `source_model` (a path) or `source_model_const` "
                             "(a literal), not both")
        check_metadata_keys(self)

    def metadata_items(self) -> list[tuple[str, str]]:
        """(key, path) pairs of `metadata`, parsed from "path" or "key=path" entries."""
        return metadata_items(self.metadata)


def freeze_id_and_metadata(fmap) -> None:
    """A field map's `id` and `metadata` as tuples: lists arrive from YAML/JSON configs, and the
    (frozen) map must stay hashable and immutable."""
    name = type(fmap).__name__
    if isinstance(fmap.id, list):
        object.__setattr__(fmap, "id", tuple(fmap.id))
    if isinstance(fmap.metadata, str):
        raise ValueError(f"{name}: `metadata` is a list of entries, not one string")
    object.__setattr__(fmap, "metadata", tuple(fmap.metadata))


def metadata_items(metadata: tuple[str, ...]) -> list[tuple[str, str]]:
    """(key, path) pairs from "path" or "key=path" entries."""
    items = []
    for entry in metadata:
        key, sep, path = entry.partition("=")
        items.append((key.strip(), path.strip()) if sep else (entry, entry))
    return items


def check_metadata_keys(fmap) -> None:
    """Metadata keys are unique and never the reserved key of the raw reference answer."""
    name = type(fmap).__name__
    keys = [key for key, _ in metadata_items(fmap.metadata)]
    if RAW_ANSWER_KEY in keys:
        raise ValueError(f"{name}: metadata key {RAW_ANSWER_KEY!r} is reserved for the raw "
                         "reference answer")
    if len(set(keys)) != len(keys):
        raise ValueError(f"{name}: duplicate metadata keys in {list(fmap.metadata)}")


def split_response(text: str) -> tuple[str, str]:
    """Split one response into (reasoning, solution), markers removed, both stripped.

    The marker style is detected: R1 (`<think>` optional, `</think>` required, the solution is
    everything after it) or OpenThoughts (`<|begin_of_thought|>` optional, `<|end_of_thought|>`
    required, the solution between `<|begin_of_solution|>` and `<|end_of_solution|>`, or
    everything after the thought when there is no solution marker). Raises `ValueError` with the
    reason when the reasoning never closes (truncated generation), markers repeat or mix, or text
    sits outside the markers; the reasoning must not be empty, the solution may be.
    """
    has_ot = any(m in text for m in (OT_THOUGHT_OPEN, OT_THOUGHT_CLOSE, OT_SOLUTION_OPEN,
                                     OT_SOLUTION_CLOSE))
    has_r1 = R1_OPEN in text or R1_CLOSE in text
    if has_ot and has_r1:
        raise ValueError("mixed marker styles: both <think>-style and <|..._of_thought|> markers")
    opener, closer = (OT_THOUGHT_OPEN, OT_THOUGHT_CLOSE) if has_ot else (R1_OPEN, R1_CLOSE)
    for marker in ALL_MARKERS:
        if text.count(marker) > 1:
            raise ValueError(f"marker {marker} appears {text.count(marker)} times")
    end = text.find(closer)
    if end < 0:
        expected = closer if (has_ot or has_r1) else f"{R1_CLOSE} or {OT_THOUGHT_CLOSE}"
        raise ValueError(f"reasoning never closed: no {expected} marker (generation truncated?)")
    start = text.find(opener)
    if start > end:
        raise ValueError(f"{opener} after {closer}")
    if start >= 0 and text[:start].strip():
        raise ValueError(f"unexpected text before {opener}: {text[:start].strip()[:60]!r}")
    reasoning = text[start + len(opener) if start >= 0 else 0:end].strip()
    if not reasoning:
        raise ValueError("empty reasoning between the markers")
    rest = text[end + len(closer):]
    if not has_ot:
        return reasoning, rest.strip()
    sol_start, sol_end = rest.find(OT_SOLUTION_OPEN), rest.find(OT_SOLUTION_CLOSE)
    if sol_start < 0:
        if sol_end >= 0:
            raise ValueError(f"{OT_SOLUTION_CLOSE} without {OT_SOLUTION_OPEN}")
        return reasoning, rest.strip()
    if rest[:sol_start].strip():
        raise ValueError(f"unexpected text between {OT_THOUGHT_CLOSE} and {OT_SOLUTION_OPEN}")
    if sol_end < 0:
        raise ValueError(f"solution never closed: no {OT_SOLUTION_CLOSE} marker "
                         "(generation truncated?)")
    if rest[sol_end + len(OT_SOLUTION_CLOSE):].strip():
        raise ValueError(f"unexpected text after {OT_SOLUTION_CLOSE}")
    return reasoning, rest[sol_start + len(OT_SOLUTION_OPEN):sol_end].strip()


PRESETS: dict[str, FieldMap] = {
    # OpenR1-Math style: question and trace as chat turns, `<think>...</think>solution`.
    "r1": FieldMap(question=None, messages="messages", answer="answer"),
    # R1 output as one string next to the problem; rename `response` to the layout's field.
    "r1_response": FieldMap(question="problem", response="response", answer="answer"),
    # `retro-search sample` output: the r1_response layout, with the sample's id, the model that
    # wrote it, and how (sampling.sample_row).
    "samples": FieldMap(question="problem", response="response", answer="answer", id="id",
                        source_model="model",
                        metadata=("question_id", "sample", "position", "seed", "finish_reason",
                                  "num_tokens", "question_metadata")),
    # OpenThoughts-114k / Bespoke-Stratos "default" config: system + conversations (from/value).
    # That config has no reference answer: point `answer` at wherever it was joined in
    # (the "metadata" config calls it ground_truth_solution: a full solution text, whose boxed
    # part the grader extracts).
    "openthoughts": FieldMap(question=None, messages="conversations",
                             answer="ground_truth_solution",
                             source_model_const="deepseek-ai/DeepSeek-R1"),
    # OpenThoughts-114k "metadata" config: trace and answer in one row, reasoning without markers.
    "openthoughts_metadata": FieldMap(question="problem", reasoning="deepseek_reasoning",
                                      solution="deepseek_solution",
                                      answer="ground_truth_solution",
                                      source_model_const="deepseek-ai/DeepSeek-R1",
                                      metadata=("domain", "source")),
    # shared/data/traces/thought_anchors_r1_distill_math.jsonl: the prompt ended in "<think>\n",
    # so the solution text starts inside the reasoning and has only the closer.
    "thought_anchors": FieldMap(question="problem.problem", answer="problem.gt_answer",
                                response="base_solution.solution",
                                id=("model", "split", "problem_id"), source_model="model",
                                metadata=("is_correct=base_solution.is_correct",
                                          "model_answer=base_solution.answer",
                                          "level=problem.level", "subject=problem.type")),
    # The SkyThought / Qwen2.5-Math evaluation-harness outputs in shared/data/traces. `idx`
    # restarts at 0 in every benchmark file, so it is kept as metadata, not used as the id.
    # The files do not name their model: set `source_model_const` when loading.
    "skythought": FieldMap(question="question", answer="gt", response="code.0",
                           metadata=("idx", "is_correct=score.0", "model_answer=pred.0")),
}


def resolve_format(format: str | FieldMap | Mapping[str, Any]) -> FieldMap:
    """Turn a preset name, a `FieldMap`, or a config mapping into a `FieldMap`.

    A mapping is either the `FieldMap` fields themselves or `{"preset": name, **overrides}`,
    e.g. `{"preset": "openthoughts", "answer": "answer"}` (the form a YAML config can hold).
    """
    if isinstance(format, FieldMap):
        return format
    if isinstance(format, str):
        if format not in PRESETS:
            raise ValueError(f"unknown trace format {format!r}; presets: {sorted(PRESETS)} "
                             "(or pass a FieldMap)")
        return PRESETS[format]
    if isinstance(format, Mapping):
        fields = dict(format)
        known = {f.name for f in dataclasses.fields(FieldMap)}
        unknown = set(fields) - known - {"preset"}
        if unknown:
            raise ValueError(f"unknown FieldMap fields {sorted(unknown)}; known: {sorted(known)}")
        preset = fields.pop("preset", None)
        if preset is None:
            return FieldMap(**fields)
        return dataclasses.replace(resolve_format(preset), **fields)
    raise TypeError("format must be a preset name, FieldMap or mapping, "
                    f"not {type(format).__name__}")
