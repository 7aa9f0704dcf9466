"""Generate and grade the samples of one or several benchmarks over one engine.

One request per problem x sample. Each request's seed derives from (eval seed, benchmark, problem
id, sample index) with SHA-256 (`retro_search.engines.base.derive_seed`), so a sample's text does not
depend on which other problems, shards, limits or benchmarks a run has, nor on whether it was
generated before or after a restart. The requests of every benchmark of a call go to the engine
as one stream (`engines.calls.settle`: calls of `chunk_size` requests to a batch engine, at most
`chunk_size` in flight to a streaming one), so the engine stays full across benchmarks;
each generation is handed to the benchmark's log (`outputs.GenerationLog`) as soon as it is in,
the requests already in the log are not sent again, and a benchmark is graded and handed back as
soon as its last request is settled, so a caller can write it before the next one finishes.

A request the engine could not answer (`engines.calls`: retried, then given up) becomes a row with
finish_reason "error", an empty response, 0 tokens, correct False and the reason in `error`.

The graded solution is the text after the first reasoning closer (`</think>`) when the response
has one, else the whole response. A response that hit `max_tokens` (finish_reason "length") is
truncated whether or not it closed its reasoning; it is graded like any other.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

from retro_search.artifacts import GENERATION_COLUMNS
from retro_search.engines.base import (
    Engine,
    GenerationRequest,
    GenerationResult,
    derive_seed,
)
from retro_search.engines.calls import CallStats, EngineCaller, RequestFailure, settle
from retro_search.evaluation.benchmarks import Problem
from retro_search.evaluation.config import EvalSettings
from retro_search.runtime import EngineCallSettings

__all__ = ["COLUMNS", "ERROR", "BenchmarkShard", "build_requests", "evaluate_benchmark",
           "evaluate_benchmarks", "grade_rows", "prompt_renderer", "run_requests", "sample_seed",
           "shard_problems", "split_solution", "stream_results"]

COLUMNS = tuple(GENERATION_COLUMNS)  # of generations.parquet, in order
ERROR = "error"  # the finish_reason of a generation the engine failed to produce


class _Log(Protocol):
    def read(self, requests: Sequence[GenerationRequest]) -> dict[str, GenerationResult]: ...

    def append(self, pairs: Sequence[tuple[GenerationRequest, GenerationResult]]) -> None: ...


class _Grader(Protocol):
    def grade_many(self, pairs, progress: bool = False) -> list: ...


@dataclass(frozen=True)
class BenchmarkShard:
    """The problems of one benchmark that one evaluation call covers (all of them, or one shard),
    and how a question becomes a prompt for it."""

    benchmark: str
    problems: Sequence[Problem]
    render_prompt: Callable[[str], str]


def sample_seed(seed: int, benchmark: str, problem_id: str, sample: int) -> int:
    """The seed of one generation: a stable 31-bit hash of (seed, benchmark, problem id, sample)."""
    return derive_seed("eval", seed, benchmark, problem_id, sample)


def shard_problems(problems: Sequence[Problem], num_shards: int, shard: int) -> list[Problem]:
    """Problems shard, shard + num_shards, ... (interleaved, so shards mix easy and hard ones)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, num_shards), got {shard} of {num_shards}")
    return list(problems[shard::num_shards])


def prompt_renderer(head: Callable[[str], str], user_template: str) -> Callable[[str], str]:
    """question -> full prompt: `user_template` with "{question}" replaced (plain replacement),
    passed to `head` (chat template + reasoning opener, e.g. `PromptFormat.head` of a format built
    with user_template="{question}")."""
    return lambda question: head(user_template.replace("{question}", question))


def build_requests(benchmark: str, problems: Sequence[Problem], n: int, settings: EvalSettings,
                   render_prompt: Callable[[str], str]
                   ) -> list[tuple[Problem, int, GenerationRequest]]:
    """(problem, sample index, request) for every problem and sample, problem-major."""
    out = []
    for problem in problems:
        prompt = render_prompt(problem.question)
        for sample in range(n):
            out.append((problem, sample, GenerationRequest(
                request_id=f"{benchmark}/{problem.id}/{sample}", prompt=prompt,
                max_tokens=settings.max_tokens, temperature=settings.temperature,
                top_p=settings.top_p, seed=sample_seed(settings.seed, benchmark, problem.id, sample))))
    return out


def stream_results(engine: Engine, requests: Sequence[GenerationRequest], chunk_size: int = 1024,
                   progress: bool = True, desc: str = "generating"
                   ) -> Iterator[list[GenerationResult]]:
    """The results of each `engine.generate` call of at most `chunk_size` requests, in request
    order; raises RuntimeError when the engine returns other requests than it was given."""
    from tqdm.auto import tqdm

    with tqdm(total=len(requests), disable=not progress, desc=desc, unit="gen") as bar:
        for start in range(0, len(requests), chunk_size):
            chunk = list(requests[start:start + chunk_size])
            out = engine.generate(chunk)
            if len(out) != len(chunk):
                raise RuntimeError(f"engine returned {len(out)} results for {len(chunk)} requests")
            for request, result in zip(chunk, out):
                if result.request_id != request.request_id:
                    raise RuntimeError(f"engine returned {result.request_id!r} where "
                                       f"{request.request_id!r} was expected")
            bar.update(len(chunk))
            yield out


def run_requests(engine: Engine, requests: Sequence[GenerationRequest], chunk_size: int = 1024,
                 progress: bool = True, desc: str = "generating") -> list[GenerationResult]:
    """All results in request order, from `engine.generate` calls of at most `chunk_size`."""
    return [r for chunk in stream_results(engine, requests, chunk_size, progress, desc)
            for r in chunk]


def split_solution(text: str, think_close: str = "</think>") -> tuple[str, bool]:
    """(the text graded, whether the reasoning was closed): the text after the first closer, or
    the whole text when there is no closer."""
    if think_close and think_close in text:
        return text.partition(think_close)[2], True
    return text, False


def _row(benchmark: str, problem: Problem, sample: int, request: GenerationRequest,
         result: GenerationResult, think_close: str, model: str) -> dict[str, Any]:
    """One ungraded row of generations.parquet (extracted/correct/grade_error still None)."""
    _, closed = split_solution(result.text, think_close)
    return {"benchmark": benchmark, "problem_id": problem.id, "sample": sample,
            "seed": request.seed, "question": problem.question, "gold": problem.gold,
            "response": result.text, "reasoning_closed": closed, "extracted": None,
            "correct": None, "grade_error": None, "num_tokens": int(result.num_tokens),
            "finish_reason": result.finish_reason, "model": model, "error": None}


def _error_row(benchmark: str, problem: Problem, sample: int, request: GenerationRequest,
               error: str, model: str) -> dict[str, Any]:
    """The row of a generation the engine failed to produce: graded incorrect."""
    return {"benchmark": benchmark, "problem_id": problem.id, "sample": sample,
            "seed": request.seed, "question": problem.question, "gold": problem.gold,
            "response": "", "reasoning_closed": False, "extracted": None, "correct": False,
            "grade_error": None, "num_tokens": 0, "finish_reason": ERROR, "model": model,
            "error": error}


def grade_rows(rows: list[dict[str, Any]], grader: _Grader, think_close: str = "</think>",
               progress: bool = False, think_open: str = "<think>\n") -> list[dict[str, Any]]:
    """Fill extracted / correct / grade_error of each row in place (and return the rows).

    A response whose reasoning never closed is graded with its opener put back in front (the
    prompt held it): a box written in it still counts, but the grader does not read the last
    number of unfinished reasoning as an answer (`grading.answer_tail`). Rows of failed
    generations (finish_reason "error") are left as they are."""
    pairs, graded = [], []
    for row in rows:
        if row.get("finish_reason") == ERROR:
            continue
        solution, closed = split_solution(row["response"], think_close)
        pairs.append((row["gold"], solution if closed else think_open + solution))
        graded.append(row)
    grades = grader.grade_many(pairs, progress=progress) if pairs else []
    for row, grade in zip(graded, grades):
        row.update(extracted=grade.extracted, correct=bool(grade.correct), grade_error=grade.error)
    return rows


def evaluate_benchmarks(shards: Sequence[BenchmarkShard], engine: Engine, settings: EvalSettings,
                        grader: _Grader, *, model: str = "", progress: bool = True,
                        logs: Callable[[BenchmarkShard], _Log] | None = None,
                        stats: CallStats | None = None
                        ) -> Iterator[tuple[BenchmarkShard, list[dict[str, Any]]]]:
    """Generate `settings.samples_for(benchmark)` samples per problem of every shard and grade
    them. Yields (shard, its graded rows of generations.parquet, see COLUMNS) in the order of
    `shards`, each as soon as its last request is settled: all requests go to the engine as one
    stream, benchmark after benchmark (`engines.calls.settle` with `settings.chunk_size` and the
    settings' retries and request_timeout_s; `stats` collects its counts). `logs(shard)`, when
    given, is the shard's generation log: the generations found there are not requested again,
    and each new one is appended as soon as it is in. Raises ValueError for a shard without
    problems, or two requests with one id."""
    planned: list[tuple[int, Problem, int, GenerationRequest]] = []  # (shard index, ...)
    for index, shard in enumerate(shards):
        if not shard.problems:
            raise ValueError(f"{shard.benchmark}: no problems to evaluate")
        n = settings.samples_for(shard.benchmark)
        planned += [(index, problem, sample, request) for problem, sample, request in
                    build_requests(shard.benchmark, shard.problems, n, settings,
                                   shard.render_prompt)]
    by_id = {request.request_id: (index, request) for index, _, _, request in planned}
    if len(by_id) != len(planned):
        seen: set[str] = set()
        twice = sorted({r.request_id for *_, r in planned
                        if r.request_id in seen or seen.add(r.request_id)})
        raise ValueError(f"two requests with one id (a problem id twice?): {twice[:5]}")
    shard_logs = [logs(shard) if logs else None for shard in shards]
    settled: dict[str, GenerationResult | str] = {}  # request id -> result, or why it failed
    for index, log in enumerate(shard_logs):
        if log is not None:
            settled.update(log.read([r for i, *_, r in planned if i == index]))
    left = [0] * len(shards)
    todo = []
    for index, _, _, request in planned:
        if request.request_id not in settled:
            left[index] += 1
            todo.append(request)

    from tqdm.auto import tqdm

    desc = shards[0].benchmark if len(shards) == 1 else f"{len(shards)} benchmarks"
    generated = {"tokens": 0, "start": time.perf_counter()}

    def count(bar, results: int, tokens: int) -> None:
        generated["tokens"] += tokens
        bar.update(results)
        seconds = time.perf_counter() - generated["start"]
        bar.set_postfix(tok_s=f"{generated['tokens'] / seconds:.0f}" if seconds else "-",
                        refresh=False)

    done = 0  # shards handed back

    def finished() -> Iterator[tuple[BenchmarkShard, list[dict[str, Any]]]]:
        nonlocal done
        while done < len(shards) and not left[done]:
            shard = shards[done]
            rows = []
            for index, problem, sample, request in planned:
                if index != done:
                    continue
                outcome = settled[request.request_id]
                rows.append(_error_row(shard.benchmark, problem, sample, request, outcome, model)
                            if isinstance(outcome, str) else
                            _row(shard.benchmark, problem, sample, request, outcome,
                                 settings.think_close, model))
            yield shard, grade_rows(rows, grader, settings.think_close, progress=progress,
                                    think_open=settings.think_open)
            done += 1

    with tqdm(total=len(planned), initial=len(planned) - len(todo), disable=not progress,
              desc=desc, unit="gen") as bar, \
            EngineCaller(engine, EngineCallSettings.of(settings, "eval"), stats) as caller, \
            _on_each_result(engine, None if caller.streaming or not progress else
                            lambda result: count(bar, 1, result.num_tokens)) as live:
        yield from finished()
        for batch in settle(caller, todo, chunk_size=settings.chunk_size,
                            max_in_flight=settings.chunk_size):
            new: dict[int, list[tuple[GenerationRequest, GenerationResult]]] = {}
            for request, outcome in batch:
                index, _ = by_id[request.request_id]
                if isinstance(outcome, RequestFailure):
                    settled[request.request_id] = outcome.error
                else:
                    settled[request.request_id] = outcome
                    new.setdefault(index, []).append((request, outcome))
                left[index] -= 1
            for index, pairs in new.items():
                if shard_logs[index] is not None:
                    shard_logs[index].append(pairs)
            if live:  # counted one by one as they finished; retried ones once, here
                bar.n = len(settled)
                bar.refresh()
            else:
                count(bar, len(batch), sum(r.num_tokens for pairs in new.values()
                                           for _, r in pairs))
            yield from finished()
        yield from finished()


@contextmanager
def _on_each_result(engine: Engine, callback: Callable[[GenerationResult], None] | None
                    ) -> Iterator[bool]:
    """Have a batch engine that can report each result as it finishes (`on_result`, the
    transformers engine) call `callback`; yields whether it does."""
    if callback is None or not hasattr(engine, "on_result"):
        yield False
        return
    engine.on_result = callback
    try:
        yield True
    finally:
        engine.on_result = None


def evaluate_benchmark(benchmark: str, problems: Sequence[Problem], engine: Engine,
                       settings: EvalSettings, render_prompt: Callable[[str], str],
                       grader: _Grader, *, model: str = "", progress: bool = True,
                       **kwargs: Any) -> list[dict[str, Any]]:
    """Generate `settings.samples_for(benchmark)` samples per problem and grade them: the rows
    of generations.parquet (see COLUMNS). `kwargs` go to `evaluate_benchmarks`."""
    (_, rows), = evaluate_benchmarks([BenchmarkShard(benchmark, problems, render_prompt)], engine,
                                     settings, grader, model=model, progress=progress, **kwargs)
    return rows
