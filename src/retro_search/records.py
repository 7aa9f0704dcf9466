"""The normalised trace record every stage reads and writes.

A `TraceRecord` is one question with one reasoning trace: the text between the reasoning markers
(`<think>`/`</think>` or `<|begin_of_thought|>`/`<|end_of_thought|>`), without the markers, and the
solution that follows them, without its markers. All lengths elsewhere are counted on these fields.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any


class RecordError(ValueError):
    """A raw record that cannot be normalised.

    The message names the record (position in its file and id, when known) and the field, so the
    user can find and fix the input.
    """

    def __init__(self, reason: str, *, position: int | None = None, record_id: str | None = None,
                 field: str | None = None, source: str | None = None):
        self.reason = reason
        self.position = position
        self.record_id = record_id
        self.field = field
        self.source = source
        where = []
        if source is not None:
            where.append(f"{source}")
        if position is not None:
            where.append(f"record #{position}")
        if record_id is not None:
            where.append(f"id={record_id!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where) or 'record'}: {reason}")


# A LaTeX brace token: a double backslash (a line break, so the brace after it opens a group),
# an escaped brace (a literal brace, no group), or a group brace.
_BRACE_TOKEN = re.compile(r"\\\\|\\[{}]|[{}]")


def _unbalanced_braces(text: str) -> str | None:
    depth = 0
    for token in _BRACE_TOKEN.findall(text):
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth < 0:
                return "a '}' closes no '{'"
    return f"{depth} '{{' never closed" if depth else None


def reference_problem(reference: Any) -> str | None:
    """Why a reference answer cannot be graded, or None when it can.

    The reference goes through `grading.normalize_reference` (what the grader compares against):
    what it refuses (None, blank, a `\\boxed{}` with nothing inside, an empty list, NaN, an
    object) is a problem, and so are braces that do not balance in the answer it reads
    (`\\frac{`): math-verify cannot parse such a gold, and every trace would grade wrong.
    """
    from retro_search.grading.verify import normalize_reference

    try:
        gold = normalize_reference(reference)
    except ValueError as err:
        return f"the reference answer cannot be graded: {err}"
    unbalanced = _unbalanced_braces(gold)
    if unbalanced:
        return f"the reference answer cannot be graded: {unbalanced} in {gold!r:.80}"
    return None


@dataclass
class TraceRecord:
    """One question, its reference answer and one reasoning trace with its solution."""

    id: str
    question: str
    reference_answer: str
    reasoning: str
    solution: str
    source_model: str = ""
    source_dataset: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "TraceRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(row) - {"source_model", "source_dataset", "metadata"}
        if missing:
            raise RecordError(f"missing normalised fields {sorted(missing)}", record_id=row.get("id"),
                              field=sorted(missing)[0])
        return cls(**{k: v for k, v in row.items() if k in names})
