"""The `sample` stage: a model writes its own reasoning traces for questions with reference answers.

Self-improvement (ALGORITHM.md, "Use cases") starts here: the model answers training questions,
`prepare` grades the answers and keeps the correct ones, and the same model Retro-Searches them.

- `SampleSettings` is the `data.sample` config section (validated when the plan is built);
- `plan_requests` turns questions into generation requests: n per question, the prompt being the
  sampler's chat template applied to its user template, then its reasoning opener
  (`prompts.PromptFormat.head`), each with a seed derived from (seed, question id, sample index),
  so a sample's text depends on nothing else (not the shard, the limit or the batch);
- `run_samples` sends them through one engine: in chunks to a batch engine (transformers), one
  by one to a streaming engine (vLLM). Every finished sample is appended to a progress file; a
  killed run started again skips what is there. The requests go through `engines.calls`
  (retries with the same seed, a time limit, a broken engine given up): a sample the engine
  could not generate becomes a row with an "error" (`failed_row`, not saved as progress, so a
  rerun generates it again), which `read_samples` drops with reason "engine_error";
- `sample_row` is one output row in the layout of the `samples` trace preset
  (`formats.PRESETS["samples"]`, the `r1_response` layout plus provenance), which `read_samples`
  turns into `TraceRecord`s for `prepare`: unclosed and malformed responses are dropped there with
  their reason, not errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from retro_search.artifacts import open_progress
from retro_search.engines.base import (
    Engine,
    GenerationRequest,
    GenerationResult,
    derive_seed,
    rollout_budget,
)
from retro_search.formats import OT_THOUGHT_CLOSE, PRESETS, R1_CLOSE
from retro_search.questions import Question, resolve_question_format
from retro_search.records import RecordError, TraceRecord
from retro_search.runtime import (
    MAX_FAILED_SHARE,
    REQUEST_TIMEOUT_S,
    RETRIES,
    EngineCallSettings,
)

if TYPE_CHECKING:
    from retro_search.engines.calls import CallStats

__all__ = ["SampleSettings", "sample_settings", "PlannedSample", "plan_requests", "sample_seed",
           "sample_row", "failed_row", "run_samples", "read_samples", "MODEL_KEYS"]

# Keys of a model section (config/model/*.yaml); the sampler is one.
MODEL_KEYS = ("label", "path", "tokenizer", "revision", "user_template", "system_prompt",
              "think_open", "think_close")
# Reasoning closers `prepare` can split a response at (formats.split_response).
KNOWN_CLOSERS = (R1_CLOSE, OT_THOUGHT_CLOSE)


@dataclass
class SampleSettings:
    """The `data.sample` section: which questions, which model, how many samples.

    questions: a hub dataset id, or a local .jsonl/.json/.parquet file, folder or glob.
    format: where a record keeps the question and answer (`questions.resolve_question_format`:
        a preset such as "math_solution", a trace preset such as "r1_response", or a mapping).
    split, name, revision: the hub split, config name and commit (None: the latest, unpinned).
    limit: read at most this many records.
    on_bad_record: "quarantine" (bad records, e.g. an answer the grader cannot read, go to the
        shard's quarantine file with their reason) or "error" (the first one stops the job).
    n: samples per question. temperature, top_p, max_tokens (new tokens per response), seed:
        decoding; sample k of question q has the seed derive_seed("sample", seed, q, k).
    num_shards: sample jobs; job i answers the questions at positions i, i + num_shards, ...
    model: the sampler, a model section (`MODEL_KEYS`); None = the experiment's revision model
        `model`, as in self-improvement. The plan resolves it into the stage's `model` section.
    retries, request_timeout_s, max_failed_share: how the job puts up with a faulty engine
        (`runtime.EngineCallSettings`, `engines.calls`): tries of a failed request after the
        first; seconds per request (null: 600 + 0.5 per token of max_tokens; 0: no limit); a
        shard with more of its samples failed than this share fails, keeping its progress.
    """

    questions: str
    format: Any = "problem_answer"
    split: str = "train"
    name: str | None = None
    revision: str | None = None
    limit: int | None = None
    on_bad_record: str = "quarantine"
    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 32768
    seed: int = 0
    num_shards: int = 1
    model: dict[str, Any] | None = None
    retries: int = RETRIES
    request_timeout_s: float | None = REQUEST_TIMEOUT_S
    max_failed_share: float = MAX_FAILED_SHARE

    def validate(self, where: str = "sample") -> None:
        if not isinstance(self.questions, str) or not self.questions.strip():
            raise ValueError(f"{where}.questions must name a hub dataset or a local file, "
                             f"got {self.questions!r}")
        try:
            resolve_question_format(self.format)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{where}.format: {err}") from None
        if self.on_bad_record not in ("error", "quarantine"):
            raise ValueError(f"{where}.on_bad_record must be 'error' or 'quarantine', "
                             f"got {self.on_bad_record!r}")
        for key in ("n", "max_tokens", "num_shards"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{where}.{key} must be an integer of at least 1, "
                                 f"got {value!r}")
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"{where}.limit must be at least 1 or null, got {self.limit!r}")
        if self.temperature < 0:
            raise ValueError(f"{where}.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{where}.top_p must be in (0, 1], got {self.top_p}")
        if self.model is not None:
            if not isinstance(self.model, Mapping):
                raise ValueError(f"{where}.model must be a model section (keys "
                                 f"{list(MODEL_KEYS)}) or null, got {self.model!r}")
            unknown = sorted(set(self.model) - set(MODEL_KEYS))
            if unknown:
                raise ValueError(f"{where}.model: unknown key(s) {unknown}; known: "
                                 f"{list(MODEL_KEYS)}")
            check_sampler(self.model, f"{where}.model")
        EngineCallSettings.of(self, where)


def check_sampler(model: Mapping[str, Any], where: str) -> None:
    """A sampler model section must name a model and close its reasoning with a marker that
    `prepare` can split at; raises ValueError naming the key."""
    if not model.get("path"):
        raise ValueError(f"{where}.path is required (a hub id, a local folder, or tiny)")
    if model.get("think_close", R1_CLOSE) not in KNOWN_CLOSERS:
        raise ValueError(f"{where}.think_close={model.get('think_close')!r}: prepare splits "
                         f"sampled responses at {' or '.join(KNOWN_CLOSERS)} only")


def sample_settings(section: Mapping[str, Any], where: str = "sample") -> SampleSettings:
    """`SampleSettings` from a config mapping; unknown keys and bad values raise ValueError
    naming `where.KEY`."""
    known = {f.name for f in dataclasses.fields(SampleSettings)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    if "questions" not in section:
        raise ValueError(f"{where}.questions is required (a hub dataset id or a local file)")
    settings = SampleSettings(**section)
    settings.validate(where)
    return settings


# --------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class PlannedSample:
    """Sample `sample` of `question`, as the request that generates it."""

    question: Question
    sample: int
    request: GenerationRequest


def sample_seed(seed: int, question_id: str, sample: int) -> int:
    """A stable 31-bit seed for sample `sample` of a question (SHA-256, not Python's hash)."""
    return derive_seed("sample", seed, question_id, sample)


def plan_requests(questions: Sequence[Question], settings: SampleSettings,
                  prompt_head: Callable[[str], str], *,
                  count_tokens: Callable[[str], int] | None = None,
                  context_length: int | None = None
                  ) -> tuple[list[PlannedSample], list[tuple[Question, str]]]:
    """(every sample to generate, question-major; the questions skipped, with the reason).

    `prompt_head(question)` is the sampler's prompt up to its reasoning opener. With a
    `context_length` (tokens, the engine's), a request asks for min(max_tokens, context - prompt)
    tokens; a question whose prompt leaves no room is skipped."""
    planned, skipped = [], []
    for question in questions:
        prompt = prompt_head(question.question)
        prompt_tokens = count_tokens(prompt) if context_length is not None and count_tokens else 0
        budget = rollout_budget(settings.max_tokens, context_length, prompt_tokens)
        if budget < 1:
            skipped.append((question, f"the prompt has {prompt_tokens} tokens, the engine's "
                                      f"context holds {context_length}"))
            continue
        for sample in range(settings.n):
            planned.append(PlannedSample(question, sample, GenerationRequest(
                request_id=f"{question.id}/{sample}", prompt=prompt, max_tokens=budget,
                temperature=settings.temperature, top_p=settings.top_p,
                seed=sample_seed(settings.seed, question.id, sample))))
    return planned, skipped


def sample_row(planned: PlannedSample, result: GenerationResult, *, sampler: str,
               think_open: str) -> dict[str, Any]:
    """One output row (the `samples` trace preset): the question, its answer, and the response
    as the model wrote it after the prompt, with its reasoning opener (which the prompt held)
    put back in front, so the row reads like any R1 response: `<think>\\n...</think>solution`."""
    question = planned.question
    # As JSON will hold it (a parquet date becomes its text), so a resumed run, which reads
    # earlier rows back from the progress file, writes the same rows as an uninterrupted one.
    metadata = json.loads(json.dumps(question.metadata, ensure_ascii=False, default=str))
    return {"id": planned.request.request_id, "question_id": question.id,
            "sample": planned.sample, "position": question.position,
            "problem": question.question, "answer": question.reference_answer,
            "response": think_open + result.text, "model": sampler,
            "seed": planned.request.seed, "finish_reason": result.finish_reason,
            "num_tokens": int(result.num_tokens), "question_metadata": metadata}


def failed_row(planned: PlannedSample, error: str, *, sampler: str) -> dict[str, Any]:
    """The row of a sample the engine could not generate: the layout of `sample_row` with an
    empty response, finish_reason "error", and the reason under "error"."""
    question = planned.question
    metadata = json.loads(json.dumps(question.metadata, ensure_ascii=False, default=str))
    return {"id": planned.request.request_id, "question_id": question.id,
            "sample": planned.sample, "position": question.position,
            "problem": question.question, "answer": question.reference_answer,
            "response": "", "model": sampler, "seed": planned.request.seed,
            "finish_reason": "error", "num_tokens": 0, "question_metadata": metadata,
            "error": error}


# --------------------------------------------------------------------------- running, resuming

@dataclass
class SampleProgress:
    """Counters of one run, for the progress bar and the summary line."""

    resumed: int = 0
    generated: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0
    failed: int = 0              # samples the engine could not generate (rows with "error")
    empty: int = 0               # generated samples with an empty text
    faults: CallStats | None = None  # retries, failed requests, timeouts, a broken engine

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def read_progress(path: Path | None) -> dict[str, dict[str, Any]]:
    """Finished rows of an earlier, killed run, by id. A torn last line (the process died
    while writing it) is ignored: that sample is generated again."""
    done: dict[str, dict[str, Any]] = {}
    if path is None or not path.exists():
        return done
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
                done[row["id"]] = row
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
    return done


def run_samples(planned: Sequence[PlannedSample], engine: Engine, *, sampler: str,
                think_open: str, progress_path: Path | None = None, chunk_size: int = 256,
                show_progress: bool = True, calls: EngineCallSettings | None = None
                ) -> tuple[list[dict[str, Any]], SampleProgress]:
    """Generate every planned sample over `engine`; returns the rows in the order of `planned`
    and the run's counters. Rows found in `progress_path` are not generated again; each new
    row is appended there (flushed and fsynced) as soon as it is back. A batch engine gets
    `chunk_size` requests per `generate` call; an engine with `generate_async` gets each request
    on its own, so no sample waits for the slowest of a chunk. `calls` (retries, time limit)
    bound each request (`engines.calls`); a sample given up is a `failed_row`, counted in
    `SampleProgress.failed`, not saved as progress."""
    from tqdm.auto import tqdm

    from retro_search.engines.calls import EngineCaller, RequestFailure, settle

    ids = [p.request.request_id for p in planned]
    if len(set(ids)) != len(ids):
        raise ValueError("sample ids (question id / sample index) must be unique in a shard")
    wanted = set(ids)
    rows = {k: v for k, v in read_progress(progress_path).items()
            if k in wanted and not v.get("error")}
    todo = {p.request.request_id: p for p in planned if p.request.request_id not in rows}
    writer = None
    if progress_path is not None:
        writer = open_progress(progress_path)
    bar = tqdm(total=len(planned), initial=len(rows), desc="sample", unit="sample",
               disable=not show_progress, dynamic_ncols=True)
    start = time.perf_counter()
    with EngineCaller(engine, calls) as caller:
        stats = SampleProgress(resumed=len(rows), faults=caller.stats)
        try:
            for pairs in settle(caller, [p.request for p in todo.values()],
                                chunk_size=chunk_size):
                for request, result in pairs:
                    item = todo[request.request_id]
                    if isinstance(result, RequestFailure):
                        rows[request.request_id] = failed_row(item, result.error, sampler=sampler)
                        stats.failed += 1  # not progress: a rerun generates it again
                        continue
                    row = sample_row(item, result, sampler=sampler, think_open=think_open)
                    rows[row["id"]] = row
                    stats.generated += 1
                    stats.generated_tokens += row["num_tokens"]
                    stats.empty += not result.text
                    if writer is not None:
                        writer.write(json.dumps(row, ensure_ascii=False) + "\n")
                if writer is not None:
                    writer.flush()
                    os.fsync(writer.fileno())
                bar.update(len(pairs))
                stats.seconds = time.perf_counter() - start
                bar.set_postfix(tok_s=f"{stats.tokens_per_second:.0f}", refresh=False)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
    stats.seconds = time.perf_counter() - start
    return [rows[i] for i in ids], stats


# --------------------------------------------------------------------------- into prepare

def is_unclosed(response: str) -> bool:
    """Whether a response never closed its reasoning (no closer `prepare` knows)."""
    return not any(closer in response for closer in KNOWN_CLOSERS)


def read_samples(paths: Sequence[str | Path], source_dataset: str
                 ) -> tuple[list[TraceRecord], list[dict[str, Any]], Counter, int]:
    """The sample files of every shard -> (records, dropped rows {"id", "reason"}, counts of the
    drop reasons, rows read).

    Records come in the order of the questions' positions in their source, then sample index,
    whatever the number of shards, so the pool does not depend on how sampling was split. A
    response that never closed its reasoning (it reached max_tokens, or the model stopped
    early) is dropped as "unclosed"; one the reader cannot split (a repeated marker, empty
    reasoning) as "malformed"; one the engine could not generate (a `failed_row`) as
    "engine_error". Raises ValueError naming the file and line of a row that is not
    a sample row, or an id found twice."""
    from retro_search.artifacts import read_jsonl
    from retro_search.readers import normalise_record

    rows = []
    for path in paths:
        for line, row in enumerate(read_jsonl(path), 1):
            missing = [k for k in ("id", "position", "sample", "response") if k not in row]
            if missing:
                raise ValueError(f"{path}:{line}: not a `retro-search sample` row (no "
                                 f"{missing}); prepare reads the sample stage's shards here")
            rows.append((row["position"], row["sample"], str(path), line, row))
    rows.sort(key=lambda item: item[:2])
    fmap = PRESETS["samples"]
    records, dropped, reasons, seen = [], [], Counter(), {}
    for number, (_, _, path, line, row) in enumerate(rows):
        if row["id"] in seen:
            raise ValueError(f"{path}:{line}: sample id {row['id']!r} also in {seen[row['id']]}")
        seen[row["id"]] = f"{path}:{line}"
        if row.get("error"):
            reasons["engine_error"] += 1
            dropped.append({"id": row["id"], "reason": f"engine_error: {row['error']}"})
            continue
        if is_unclosed(str(row["response"])):
            reasons["unclosed"] += 1
            dropped.append({"id": row["id"], "reason": (
                f"unclosed: the reasoning never closed (finish_reason {row.get('finish_reason')}"
                f" after {row.get('num_tokens')} tokens)")})
            continue
        try:
            records.append(normalise_record(row, fmap, position=number,
                                            source_dataset=source_dataset))
        except RecordError as err:
            reasons["malformed"] += 1
            dropped.append({"id": row["id"], "reason": f"malformed response: {err.reason}"})
    return records, dropped, reasons, len(rows)
