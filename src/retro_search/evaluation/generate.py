"""Generate and grade the samples of one benchmark.

One request per problem x sample. Each request's seed derives from (eval seed, benchmark, problem
id, sample index) with SHA-256 (`retro_search.search.derive_seed`), so a sample's text does not
depend on which other problems, shards or limits a run has. Requests go to the engine in chunks
of `chunk_size` (one tqdm step each); results come back in request order.

The graded solution is the text after the first reasoning closer (`</think>`) when the response
has one, else the whole response. A response that hit `max_tokens` (finish_reason "length") is
truncated whether or not it closed its reasoning; it is graded like any other.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from retro_search.engines.base import Engine, GenerationRequest, GenerationResult
from retro_search.evaluation.benchmarks import Problem
from retro_search.evaluation.config import EvalSettings
from retro_search.search import derive_seed

__all__ = ["COLUMNS", "build_requests", "evaluate_benchmark", "generate_rows", "grade_rows",
           "prompt_renderer", "run_requests", "sample_seed", "shard_problems", "split_solution"]

# Columns of generations.parquet, in order.
COLUMNS = ("benchmark", "problem_id", "sample", "seed", "question", "gold", "response",
           "reasoning_closed", "extracted", "correct", "grade_error", "num_tokens",
           "finish_reason", "model")


class _Grader(Protocol):
    def grade_many(self, pairs, progress: bool = False) -> list: ...


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


def run_requests(engine: Engine, requests: Sequence[GenerationRequest], chunk_size: int = 1024,
                 progress: bool = True, desc: str = "generating") -> list[GenerationResult]:
    """All results in request order, from `engine.generate` calls of at most `chunk_size`."""
    from tqdm.auto import tqdm

    results: list[GenerationResult] = []
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
            results.extend(out)
            bar.update(len(chunk))
    return results


def split_solution(text: str, think_close: str = "</think>") -> tuple[str, bool]:
    """(the text graded, whether the reasoning was closed): the text after the first closer, or
    the whole text when there is no closer."""
    if think_close and think_close in text:
        return text.partition(think_close)[2], True
    return text, False


def generate_rows(benchmark: str, problems: Sequence[Problem], engine: Engine,
                  settings: EvalSettings, render_prompt: Callable[[str], str], *,
                  model: str = "", progress: bool = True) -> list[dict[str, Any]]:
    """One ungraded row per generation (extracted/correct/grade_error still None)."""
    n = settings.samples_for(benchmark)
    planned = build_requests(benchmark, problems, n, settings, render_prompt)
    results = run_requests(engine, [r for _, _, r in planned], settings.chunk_size, progress,
                           desc=f"{benchmark}")
    rows = []
    for (problem, sample, request), result in zip(planned, results):
        _, closed = split_solution(result.text, settings.think_close)
        rows.append({"benchmark": benchmark, "problem_id": problem.id, "sample": sample,
                     "seed": request.seed, "question": problem.question, "gold": problem.gold,
                     "response": result.text, "reasoning_closed": closed, "extracted": None,
                     "correct": None, "grade_error": None, "num_tokens": int(result.num_tokens),
                     "finish_reason": result.finish_reason, "model": model})
    return rows


def grade_rows(rows: list[dict[str, Any]], grader: _Grader, think_close: str = "</think>",
               progress: bool = False, think_open: str = "<think>\n") -> list[dict[str, Any]]:
    """Fill extracted / correct / grade_error of each row in place (and return the rows).

    A response whose reasoning never closed is graded with its opener put back in front (the
    prompt held it): a box written in it still counts, but the grader does not read the last
    number of unfinished reasoning as an answer (`grading.answer_tail`)."""
    pairs = []
    for row in rows:
        solution, closed = split_solution(row["response"], think_close)
        pairs.append((row["gold"], solution if closed else think_open + solution))
    grades = grader.grade_many(pairs, progress=progress)
    for row, grade in zip(rows, grades):
        row.update(extracted=grade.extracted, correct=bool(grade.correct), grade_error=grade.error)
    return rows


def evaluate_benchmark(benchmark: str, problems: Sequence[Problem], engine: Engine,
                       settings: EvalSettings, render_prompt: Callable[[str], str],
                       grader: _Grader, *, model: str = "", progress: bool = True
                       ) -> list[dict[str, Any]]:
    """Generate `settings.samples_for(benchmark)` samples per problem and grade them: the rows
    of generations.parquet (see COLUMNS)."""
    rows = generate_rows(benchmark, problems, engine, settings, render_prompt, model=model,
                         progress=progress)
    return grade_rows(rows, grader, settings.think_close, progress=progress,
                      think_open=settings.think_open)
