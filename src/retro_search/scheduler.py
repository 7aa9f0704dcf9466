"""Run the Retro-Search of every trace of a shard concurrently over one engine.

Within a trace the search is sequential (boundary i + 1 waits for boundary i), but traces are
independent, so the engine is kept full with requests from all of them:

- a batch engine (`generate` only, e.g. transformers) runs in waves: gather the pending requests
  of every unfinished trace, generate them together, feed each trace its results;
- a streaming engine (`generate_async`, e.g. vLLM's async engine) gets a trace's next request as
  soon as its previous one finished, so no trace waits for the slowest rollout of a wave.

Crash safety: each finished trace is appended (and fsynced) to a progress file that is not a
declared output; a restarted run skips the traces found there. The progress file's name carries a
fingerprint of everything that determines the results, so a run with other settings never reuses
stale progress. Outputs are written elsewhere, atomically (see `artifacts`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

from retro_search.artifacts import outcome_from_dict, outcome_to_dict
from retro_search.engines.base import Engine, GenerationRequest, GenerationResult
from retro_search.records import TraceRecord
from retro_search.search import TraceSearch
from retro_search.search_types import GradeFn, SearchConfig, SearchOutcome


@dataclass
class ShardProgress:
    """Counters shown on the progress bar and returned to the caller."""

    traces_done: int = 0
    traces_resumed: int = 0
    rollouts: int = 0
    generated_tokens: int = 0
    requests: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def read_progress(path: Path) -> dict[str, SearchOutcome]:
    """Finished traces from a progress file. A torn last line (the process died while writing
    it) is ignored: that trace is simply searched again."""
    done: dict[str, SearchOutcome] = {}
    if not path.exists():
        return done
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                outcome = outcome_from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, KeyError):
                continue
            done[outcome.trace_id] = outcome
    return done


class _ProgressWriter:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")

    def append(self, outcome: SearchOutcome) -> None:
        self._fh.write(json.dumps(outcome_to_dict(outcome), ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def run_shard(
    traces: Sequence[TraceRecord],
    engine: Engine,
    *,
    prompt_head: Callable[[str], str],
    config: SearchConfig,
    grade: GradeFn,
    count_tokens: Callable[[str], int],
    think_close: str = "</think>",
    progress_path: Path | None = None,
    show_progress: bool = True,
    context_length: int | None = None,
) -> tuple[list[SearchOutcome], ShardProgress]:
    """Search every trace; returns outcomes in the order of `traces` and the run's counters.

    `prompt_head(question)` gives the revision model's prompt up to its reasoning opener.
    `context_length` (tokens) bounds every request's prompt plus budget; None takes the engine's
    `max_model_len` when it has one.
    """
    if context_length is None:
        context_length = getattr(engine, "max_model_len", None)
    ids = [t.id for t in traces]
    if len(set(ids)) != len(ids):
        raise ValueError("trace ids in a shard must be unique")
    finished = read_progress(progress_path) if progress_path else {}
    finished = {k: v for k, v in finished.items() if k in set(ids)}
    stats = ShardProgress(traces_resumed=len(finished))
    writer = _ProgressWriter(progress_path) if progress_path else None
    bar = tqdm(total=len(traces), initial=len(finished), desc="retro-search", unit="trace",
               disable=not show_progress, dynamic_ncols=True)
    start = time.perf_counter()

    def on_finished(search: TraceSearch) -> None:
        finished[search.trace.id] = search.outcome
        if writer:
            writer.append(search.outcome)
        stats.traces_done += 1
        bar.update(1)

    def on_results(results: Iterable[GenerationResult]) -> None:
        for res in results:
            stats.requests += 1
            stats.generated_tokens += res.num_tokens
            stats.rollouts += res.request_id.endswith("/step")
        stats.seconds = time.perf_counter() - start
        bar.set_postfix(rollouts=stats.rollouts, tok_s=f"{stats.tokens_per_second:.0f}", refresh=False)

    try:
        searches = [TraceSearch(t, prompt_head(t.question), config, grade, count_tokens, think_close,
                                context_length)
                    for t in traces if t.id not in finished]
        for search in searches:
            if search.done:  # e.g. a wrong original answer: nothing to generate
                on_finished(search)
        active = [s for s in searches if not s.done]
        if callable(getattr(engine, "generate_async", None)):
            asyncio.run(_run_streaming(active, engine, on_results, on_finished))
        else:
            _run_waves(active, engine, on_results, on_finished)
    finally:
        bar.close()
        if writer:
            writer.close()
    stats.seconds = time.perf_counter() - start
    return [finished[i] for i in ids], stats


def _run_waves(active: list[TraceSearch], engine: Engine, on_results, on_finished) -> None:
    while active:
        requests: list[GenerationRequest] = [req for s in active for req in s.pending]
        results = engine.generate(requests)
        if len(results) != len(requests):
            raise RuntimeError(f"engine returned {len(results)} results for {len(requests)} requests")
        on_results(results)
        offset, still_active = 0, []
        for search in active:
            count = len(search.pending)
            search.feed(results[offset: offset + count])
            offset += count
            if search.done:
                on_finished(search)
            else:
                still_active.append(search)
        active = still_active


async def _run_streaming(active: list[TraceSearch], engine, on_results, on_finished) -> None:
    async def drive(search: TraceSearch) -> None:
        while not search.done:
            results = await asyncio.gather(*(engine.generate_async(r) for r in search.pending))
            on_results(results)
            search.feed(results)
        on_finished(search)

    await asyncio.gather(*(drive(s) for s in active))
