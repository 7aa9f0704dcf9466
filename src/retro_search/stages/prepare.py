"""The `prepare` stage: raw traces -> the normalised, graded, filtered training pool.

1. read and normalise: traces from a file or dataset (`data.source`, readers.load_traces; bad
   records, among them unreadable lines and references the grader cannot read, quarantined with
   their reason and line, or the first one an error with `data.on_bad_record: error`; an empty
   source file is an error in that mode and adds nothing in quarantine mode), or the sample
   stage's shards (`data.sample`,
   sampling.read_samples; responses that never closed their reasoning are removed as
   "unclosed", unreadable ones as "malformed");
2. grade each trace's own final answer against the reference (math-verify, worker processes);
3. filter: wrong original answers (`data.drop_incorrect`), over-long reasoning
   (`data.max_reasoning_chars`, in characters so the pool does not depend on a tokenizer);
4. decontaminate: drop questions that share a word n-gram with any evaluation-benchmark question
   (n = `data.decontamination.ngram`, default 8, after lower-casing and removing punctuation and
   LaTeX markup), or equal one outright when shorter than n words;
5. keep at most `data.max_correct_per_question` of the traces left per question (null: all):
   the first ones, i.e. the lowest sample indices of sampled data, file order otherwise.

Nothing is dropped silently: every removed trace is listed with its reason in `removed.jsonl`
and counted in `stats.json`; bad records of the source are in `quarantine.jsonl`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from retro_search.records import TraceRecord
from retro_search.stages import StageResult

# The stage's outputs and their file names in a stage folder (`outputs_in`).
OUTPUTS = {"traces": "traces.jsonl", "stats": "stats.json", "removed": "removed.jsonl",
           "quarantine": "quarantine.jsonl"}

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


def question_key(record: TraceRecord) -> str:
    """What makes two traces answers to the same question: the sampled question's id, else the
    question text."""
    return str(record.metadata.get("question_id", record.question))


def keep_per_question(records: list[TraceRecord], max_per_question: int | None
                      ) -> tuple[list[TraceRecord], list[dict]]:
    """The first `max_per_question` records of each question (`question_key`), in the order
    given; returns (kept, removed rows with reasons). None keeps every record."""
    if max_per_question is None:
        return records, []
    kept, removed, count = [], [], Counter()
    for record in records:
        key = question_key(record)
        count[key] += 1
        if count[key] <= max_per_question:
            kept.append(record)
        else:
            removed.append({"id": record.id, "reason": (
                f"question already has {max_per_question} kept trace(s) "
                f"(data.max_correct_per_question={max_per_question})")})
    return kept, removed


def check_data_section(data: Mapping[str, Any]) -> None:
    """Refuse a data section that names no source or two, or a bad per-question cap; errors
    name the key. (`data.sample` itself is checked by `sampling.sample_settings`.)"""
    source, sample = data.get("source"), data.get("sample")
    if (source is None) == (sample is None):
        raise ValueError("data: set exactly one of data.source (traces from a file or dataset) "
                         "and data.sample (traces sampled from a model), e.g. data.source=null "
                         f"when sampling; got source={source!r}, sample="
                         f"{'set' if sample is not None else None}")
    cap = data.get("max_correct_per_question")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ValueError(f"data.max_correct_per_question must be at least 1 or null (keep "
                         f"all), got {cap!r}")


def outputs_in(folder: str | Path) -> dict[str, Path]:
    return {name: Path(folder) / file for name, file in OUTPUTS.items()}


def run(cfg: Mapping[str, Any], outputs: Mapping[str, str | Path],
        samples: Sequence[str | Path] = (), progress: bool = True) -> StageResult:
    """The stage: reads `cfg` (sections data, grading, decontamination) and `samples` (the
    sample stage's shards, when data.sample is set); writes the files `outputs` names (keys of
    OUTPUTS: traces, stats, removed, quarantine). The summary is the stats, with a line."""
    from retro_search.artifacts import drop_progress, write_json, write_jsonl, write_records
    from retro_search.grading import Grader, normalize_reference
    from retro_search.readers import load_traces

    missing = sorted(set(OUTPUTS) - set(outputs))
    if missing:
        raise ValueError(f"prepare: no path given for the output(s) {missing}")
    out = {name: Path(outputs[name]) for name in OUTPUTS}

    data, grading, decontam = cfg["data"], cfg["grading"], cfg.get("decontamination", {})
    check_data_section(data)
    removed: list[dict] = []
    reasons: Counter = Counter()
    if data.get("sample") is not None:
        from retro_search.sampling import read_samples

        if not samples:
            raise ValueError("data.sample is set: give the sample stage's shards (--samples)")
        records, removed, reasons, read = read_samples(samples, data.get("label") or "samples")
        write_jsonl(out["quarantine"], [])  # bad questions: the sample shards' own
        read_stats = {"read": read, "quarantined": 0, "loaded": len(records)}
        summary = f"{len(samples)} sample shard(s): {read} samples"
    else:
        if samples:
            raise ValueError("--samples given, but the config reads data.source, not data.sample")
        report = load_traces(data["source"], format=data["format"],
                             split=data.get("split", "train"), name=data.get("name"),
                             revision=data.get("revision"),
                             limit=data.get("limit"), source_dataset=data.get("label"),
                             on_bad_record=data.get("on_bad_record", "quarantine"),
                             quarantine_path=out["quarantine"])
        records = report.records
        read_stats = {"read": report.total, "quarantined": report.quarantined,
                      "loaded": len(records)}
        if report.empty:
            read_stats["empty_files"] = report.empty
        summary = report.summary()
    pairs = []
    for record in records:
        try:
            pairs.append((normalize_reference(record.reference_answer), record.solution))
        except ValueError as err:
            raise ValueError(f"trace {record.id!r}, field 'reference_answer': {err}") from None
    with Grader(processes=grading["processes"], timeout=grading["timeout"]) as grader:
        grades = grader.grade_many(pairs, progress=progress)
    decontaminator = None
    if decontam.get("enabled", True) and decontam.get("benchmarks"):
        from retro_search.evaluation.benchmarks import load_problems

        dirs = decontam.get("data_dirs") or {}
        questions = [p.question for name in decontam["benchmarks"]
                     for p in load_problems(name, data_dir=dirs.get(name, decontam.get("data_dir")),
                                            revision=(decontam.get("hub_revisions") or {}).get(name))]
        decontaminator = Decontaminator.from_questions(questions, decontam.get("ngram", 8))
    kept, filtered, filter_reasons = filter_traces(
        records, grades, drop_incorrect=data.get("drop_incorrect", True),
        max_reasoning_chars=data.get("max_reasoning_chars"), decontaminator=decontaminator)
    kept, extra = keep_per_question(kept, data.get("max_correct_per_question"))
    removed += filtered + extra
    reasons += filter_reasons
    if extra:
        reasons["over_max_per_question"] += len(extra)
    write_jsonl(out["removed"], removed)
    stats = {**read_stats, "original_correct": sum(g.correct for g in grades),
             "removed": dict(reasons), "kept": len(kept),
             "questions_kept": len({question_key(r) for r in kept}),
             "kept_by_source": dict(Counter(f"{r.source_model}|{r.source_dataset}" for r in kept))}
    write_json(out["stats"], stats)
    write_records(kept, out["traces"])
    for path in samples:  # the sample jobs are finished: their progress is no longer needed
        drop_progress(path)
    stats["summary"] = f"{summary}; kept {len(kept)} ({dict(reasons)} removed)"
    return StageResult(outputs=out, summary=stats)
