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

Engine faults (`engines.calls`): every request goes through an `EngineCaller` with the search
config's `retries` and `request_timeout_s`, which retries a request that fails (same request,
same seed) and gives it up after its retries or past its time limit. The trace of a request given
up ends with status "engine_error" (`TraceSearch.fail`: original trace unchanged, the error in
`skip_reason`); the other traces go on and the shard completes. Such traces are not written to
the progress file, so a rerun searches them again. An engine given up (a batch call that hangs,
failures of many prompts in a row) fails every trace still waiting with that reason
(`ShardProgress.engine_broken`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

from retro_search.artifacts import open_progress, outcome_from_dict, outcome_to_dict
from retro_search.engines.base import Engine, GenerationRequest, GenerationResult
from retro_search.engines.calls import CallStats, EngineCaller, RequestFailure
from retro_search.records import TraceRecord
from retro_search.runtime import EngineCallSettings
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
    traces_failed: int = 0       # traces that ended in an engine error
    empty_results: int = 0       # results with empty text (any request)
    length_results: int = 0      # results that reached their token budget (any request)
    faults: CallStats | None = None  # retries, failed requests, timeouts, a broken engine

    @property
    def engine_broken(self) -> str | None:
        return self.faults.broken if self.faults else None

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
        self._fh = open_progress(path)

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
    `max_model_len` when it has one. `config.retries` and `config.request_timeout_s` bound each
    request (see `engines.calls`); a trace whose request fails ends with status "engine_error"
    and is not saved as progress.
    """
    if context_length is None:
        context_length = getattr(engine, "max_model_len", None)
    ids = [t.id for t in traces]
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise ValueError(f"trace ids in a shard must be unique; found {len(duplicates)} more than "
                         f"once: {', '.join(map(repr, duplicates[:10]))}"
                         + (" ..." if len(duplicates) > 10 else ""))
    finished = read_progress(progress_path) if progress_path else {}
    finished = {k: v for k, v in finished.items() if k in set(ids)}
    caller = EngineCaller(engine, EngineCallSettings.of(config, "search"))
    stats = ShardProgress(traces_resumed=len(finished), faults=caller.stats)
    writer = _ProgressWriter(progress_path) if progress_path else None
    bar = tqdm(total=len(traces), initial=len(finished), desc="retro-search", unit="trace",
               disable=not show_progress, dynamic_ncols=True)
    start = time.perf_counter()

    def on_finished(search: TraceSearch) -> None:
        finished[search.trace.id] = search.outcome
        if search.outcome.status == "engine_error":
            stats.traces_failed += 1  # not progress: a rerun searches it again
        elif writer:
            writer.append(search.outcome)
        stats.traces_done += 1
        bar.update(1)

    def on_results(results: Iterable[GenerationResult]) -> None:
        for res in results:
            stats.requests += 1
            stats.generated_tokens += res.num_tokens
            stats.rollouts += res.request_id.endswith("/step")
            stats.empty_results += not res.text
            stats.length_results += res.finish_reason == "length"
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
        if caller.streaming:
            asyncio.run(_run_streaming(active, caller, on_results, on_finished))
        else:
            _run_waves(active, caller, on_results, on_finished)
    finally:
        caller.close()
        bar.close()
        if writer:
            writer.close()
    stats.seconds = time.perf_counter() - start
    return [finished[i] for i in ids], stats


def _feed(search: TraceSearch, results: Sequence[GenerationResult | RequestFailure]) -> None:
    """Give a trace the results of its pending requests, or fail it on the first failure."""
    failure = next((r for r in results if isinstance(r, RequestFailure)), None)
    if failure is not None:
        search.fail(str(failure))
    else:
        search.feed(results)


def _run_waves(active: list[TraceSearch], caller: EngineCaller, on_results, on_finished) -> None:
    while active:
        requests: list[GenerationRequest] = [req for s in active for req in s.pending]
        results = caller.generate(requests)
        on_results(r for r in results if not isinstance(r, RequestFailure))
        offset, still_active = 0, []
        for search in active:
            count = len(search.pending)
            _feed(search, results[offset: offset + count])
            offset += count
            if search.done:
                on_finished(search)
            else:
                still_active.append(search)
        active = still_active


async def _run_streaming(active: list[TraceSearch], caller: EngineCaller, on_results,
                         on_finished) -> None:
    async def drive(search: TraceSearch) -> None:
        while not search.done:
            results = await asyncio.gather(*(caller.generate_async(r) for r in search.pending))
            on_results(r for r in results if not isinstance(r, RequestFailure))
            _feed(search, results)
        on_finished(search)

    await asyncio.gather(*(drive(s) for s in active))
