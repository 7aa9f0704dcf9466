"""The `prepare` stage: raw traces -> the normalised, graded, filtered training pool.

1. read and normalise (readers.load_traces; bad records quarantined with their reason);
2. grade each trace's own final answer against the reference (math-verify, worker processes);
3. filter: wrong original answers (`data.drop_incorrect`), over-long reasoning
   (`data.max_reasoning_chars`, in characters so the pool does not depend on a tokenizer);
4. decontaminate: drop questions that share a word n-gram with any evaluation-benchmark question
   (n = `data.decontamination.ngram`, default 8, after lower-casing and removing punctuation and
   LaTeX markup), or equal one outright when shorter than n words.

Nothing is dropped silently: every removed trace is listed with its reason in `removed.jsonl`
and counted in `stats.json`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from retro_search.records import TraceRecord

_WORD = re.compile(r"[a-z0-9]+")


def question_words(text: str) -> list[str]:
    text = re.sub(r"\\[a-zA-Z]+", " ", text.lower())  # LaTeX commands are markup, not content
    return _WORD.findall(text)


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class Decontaminator:
    """Benchmark questions indexed by their word n-grams."""

    n: int
    grams: set[tuple[str, ...]]
    short: set[tuple[str, ...]]

    @classmethod
    def from_questions(cls, questions: Iterable[str], n: int = 8) -> "Decontaminator":
        grams, short = set(), set()
        for question in questions:
            words = question_words(question)
            if len(words) < n:
                short.add(tuple(words))
            grams |= ngrams(words, n)
        return cls(n, grams, short)

    def is_contaminated(self, question: str) -> bool:
        words = question_words(question)
        if len(words) < self.n:
            return tuple(words) in self.short
        return not self.grams.isdisjoint(ngrams(words, self.n))


def filter_traces(records: list[TraceRecord], grades: list, *, drop_incorrect: bool,
                  max_reasoning_chars: int | None, decontaminator: Decontaminator | None
                  ) -> tuple[list[TraceRecord], list[dict], Counter]:
    """Apply the filters in order; returns (kept, removed rows with reasons, reason counts).
    Each record gets `original_correct` and `original_answer` in its metadata."""
    kept, removed, reasons = [], [], Counter()
    for record, grade in zip(records, grades):
        record.metadata["original_correct"] = bool(grade.correct)
        record.metadata["original_answer"] = grade.extracted
        reason = None
        if drop_incorrect and not grade.correct:
            reason = f"incorrect original answer ({grade.extracted!r} vs {record.reference_answer!r})"
            key = "incorrect"
        elif max_reasoning_chars is not None and len(record.reasoning) > max_reasoning_chars:
            reason = f"reasoning has {len(record.reasoning)} characters > {max_reasoning_chars}"
            key = "too_long"
        elif decontaminator is not None and decontaminator.is_contaminated(record.question):
            reason = "question overlaps an evaluation benchmark"
            key = "contaminated"
        if reason is None:
            kept.append(record)
        else:
            reasons[key] += 1
            removed.append({"id": record.id, "reason": reason})
    return kept, removed, reasons
