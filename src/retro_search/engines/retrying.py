"""Engine calls that survive a faulty engine: bounded retries, a time limit, checked results.

The search scheduler and the sampler send every request through an `EngineCaller`; what it gives
back for a request is either the engine's `GenerationResult` or a `RequestFailure` (the request's
id and why), never an exception from the engine:

- retries: a request whose call raises, or that comes back missing (one result too few) or
  malformed (a result for another id, text not a string, a finish_reason other than "stop" or
  "length"), is sent again, unchanged: same prompt, same seed, so a retry that succeeds gives what
  a fault-free run gives. A batch (`generate`) that fails is split in halves until the failing
  requests are alone, so one bad request does not fail its neighbours; alone, a request is tried
  `1 + retries` times before it becomes a `RequestFailure`.
- time limit (`timeout_s`, seconds per request): a streaming request (`generate_async`) still
  running after it is cancelled (`asyncio.wait_for`) and fails at once, without a retry (a hung
  request would most likely hang again, costing the limit each time). The clock starts when the
  request is sent, so time spent queued inside the engine counts: with many more requests in
  flight than the engine runs at once (vLLM's max_num_seqs), give it room. A batch call runs in a
  worker thread and may take `timeout_s` per round of the engine's batch (`engine.batch_size`
  requests at a time; an engine without one is taken to run its batch at once). A batch call
  that takes longer leaves its thread hung, and a thread cannot be killed: the engine is then
  treated as broken (`broken` says why), that call's unfinished requests and every later one
  fail at once, and the caller finishes its shard with what it has.

Only `Exception`s are caught: a `BaseException` (KeyboardInterrupt, SystemExit, a test's
simulated kill) goes through. A streaming engine that blocks the event loop (a synchronous hang
inside `generate_async`) cannot be timed out.

`ShardFailedError` is what a stage raises when most of its shard failed (`too_many_failures`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from retro_search.engines.base import Engine, GenerationRequest, GenerationResult

# Defaults of the settings (plain keyword arguments of the search and sample stages for now).
REQUEST_RETRIES = 2                 # tries after the first, per request
REQUEST_TIMEOUT_S = 6 * 3600.0      # seconds per request (a 32k-token rollout at >= 2 tok/s)
MAX_FAILED_SHARE = 0.5              # a shard with more of its items failed than this fails

FINISH_REASONS = ("stop", "length")


class ShardFailedError(ValueError):
    """Most of a shard ended in engine errors: the stage wrote no declared output (so the
    workflow runs it again) and kept what finished in its progress file (so the rerun does only
    the rest). A ValueError so that the command line prints it as one line, without a traceback,
    and exits non-zero."""


@dataclass(frozen=True)
class RequestFailure:
    """A request the engine did not answer: its id and why (the last error)."""

    request_id: str
    error: str

    def __str__(self) -> str:
        return f"request {self.request_id!r}: {self.error}"


@dataclass
class FaultStats:
    """What went wrong on the way, for the stage's summary."""

    retries: int = 0          # requests sent again after a fault
    failed: int = 0           # requests given up (RequestFailure), the broken engine's included
    timeouts: int = 0         # requests (streaming) or calls (batch) past the time limit
    broken: str | None = None  # why the engine was given up, when it was


def too_many_failures(failed: int, total: int, max_share: float = MAX_FAILED_SHARE) -> bool:
    """Whether `failed` of `total` items is more than the share a shard may lose."""
    return total > 0 and failed > max_share * total


def describe(err: BaseException, limit: int = 300) -> str:
    """An exception as one short line (an engine's error may span many)."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def result_problem(request: GenerationRequest, result: Any) -> str | None:
    """Why `result` is not a usable answer to `request`, or None when it is."""
    rid = getattr(result, "request_id", None)
    if rid != request.request_id:
        return f"the engine returned a result for {rid!r}, not for this request"
    if not isinstance(getattr(result, "text", None), str):
        return f"the result's text is {type(getattr(result, 'text', None)).__name__}, not a string"
    if getattr(result, "finish_reason", None) not in FINISH_REASONS:
        return f"the result's finish_reason is {getattr(result, 'finish_reason', None)!r}, " \
               f"not one of {FINISH_REASONS}"
    tokens = getattr(result, "num_tokens", None)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        return f"the result's num_tokens is {tokens!r}, not a count"
    return None


class _Hung(Exception):
    pass


class _EngineTimeout(Exception):
    """The engine itself raised a TimeoutError (not our time limit)."""


class _Worker:
    """One daemon thread that runs the batch engine's calls, so a call can be waited for with a
    time limit. Daemon: a hung call does not keep the process alive at exit."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="engine-call")
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, arg, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(arg))
            except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(err)

    def call(self, fn, arg, timeout: float):
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((fn, arg, future))
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            if future.done():  # the engine's own TimeoutError
                raise
            raise _Hung() from None

    def close(self) -> None:
        self._jobs.put(None)


class EngineCaller:
    """Sends requests to `engine` with retries and a time limit (see the module docstring)."""

    def __init__(self, engine: Engine, *, retries: int = REQUEST_RETRIES,
                 timeout_s: float | None = REQUEST_TIMEOUT_S, stats: FaultStats | None = None):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"the request time limit must be > 0 seconds (or None), got {timeout_s}")
        self.engine = engine
        self.retries = retries
        self.timeout_s = timeout_s
        self.stats = stats if stats is not None else FaultStats()
        self._worker: _Worker | None = None

    @property
    def streaming(self) -> bool:
        return callable(getattr(self.engine, "generate_async", None))

    @property
    def broken(self) -> str | None:
        return self.stats.broken

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()  # a hung worker never reads it: it dies with the process
            self._worker = None

    def _fail(self, request: GenerationRequest, error: str) -> RequestFailure:
        self.stats.failed += 1
        return RequestFailure(request.request_id, error)

    # --- batch engines ---------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]
                 ) -> list[GenerationResult | RequestFailure]:
        """One result or failure per request, in request order; never raises an Exception of
        the engine's."""
        items = list(enumerate(requests))
        out: dict[int, GenerationResult | RequestFailure] = {}
        if items and self.broken is None:
            try:
                self._resolve(items, out, retry=False)
            except _Hung:
                pass
        for i, request in items:
            if i not in out:
                out[i] = self._fail(request, f"not generated: {self.broken}")
        return [out[i] for i, _ in items]

    def _limit(self, n: int) -> float | None:
        if self.timeout_s is None:
            return None
        per_round = getattr(self.engine, "batch_size", None)
        rounds = math.ceil(n / per_round) if isinstance(per_round, int) and per_round > 0 else 1
        return self.timeout_s * rounds

    def _call(self, requests: list[GenerationRequest]):
        limit = self._limit(len(requests))
        if limit is None:
            return self.engine.generate(requests)
        if self._worker is None:
            self._worker = _Worker()
        try:
            return self._worker.call(self.engine.generate, requests, limit)
        except _Hung:
            self.stats.timeouts += 1
            self.stats.broken = (f"the engine's generate() did not return within {limit:g} s for "
                                 f"{len(requests)} requests; its thread cannot be stopped, so the "
                                 "engine is treated as broken")
            self._worker = None  # never reused: it is stuck in that call
            raise

    def _resolve(self, items: list[tuple[int, GenerationRequest]], out: dict, *,
                 retry: bool) -> None:
        """Generate `items`, storing each good result in `out`; what fails is split and sent
        again (see the module docstring). Raises _Hung when the engine hangs."""
        if retry:
            self.stats.retries += len(items)
        bad, error = self._attempt(items, out)
        if not bad:
            return
        if len(bad) > 1:
            if len(bad) < len(items):
                self._resolve(bad, out, retry=True)
            else:
                half = len(bad) // 2
                self._resolve(bad[:half], out, retry=True)
                self._resolve(bad[half:], out, retry=True)
            return
        if len(items) > 1:  # one bad request among good ones: alone now
            self._resolve(bad, out, retry=True)
            return
        (i, request), = bad
        tries = 1
        while tries <= self.retries:
            self.stats.retries += 1
            tries += 1
            bad, error = self._attempt(bad, out)
            if not bad:
                return
        out[i] = self._fail(request, f"failed {tries} times on its own; last: {error}")

    def _attempt(self, items, out) -> tuple[list, str | None]:
        """One engine call: (the items still without a good result, the error)."""
        try:
            results = self._call([request for _, request in items])
        except _Hung:
            raise
        except Exception as err:  # noqa: BLE001 - an engine fault, recorded
            return list(items), describe(err)
        try:
            results = list(results)
        except TypeError:
            return list(items), f"generate() returned {type(results).__name__}, not a list"
        positional = len(results) == len(items)
        by_id: dict[str, Any] = {}
        if not positional:
            for res in results:
                by_id.setdefault(getattr(res, "request_id", None), res)
        bad, error = [], None
        for k, (i, request) in enumerate(items):
            res = results[k] if positional else by_id.get(request.request_id)
            if res is None:
                problem = (f"the engine returned {len(results)} results for {len(items)} "
                           "requests, none for this one")
            else:
                problem = result_problem(request, res)
            if problem is None:
                out[i] = res
            else:
                bad.append((i, request))
                error = error or problem
        return bad, error

    # --- streaming engines -----------------------------------------------------------------

    async def generate_async(self, request: GenerationRequest
                             ) -> GenerationResult | RequestFailure:
        """The result of one request, or its failure; never raises an Exception of the
        engine's."""
        if self.broken is not None:
            return self._fail(request, f"not generated: {self.broken}")
        error = None
        for attempt in range(1 + self.retries):
            if attempt:
                self.stats.retries += 1
            try:
                if self.timeout_s is None:
                    result = await self._one(request)
                else:
                    result = await asyncio.wait_for(self._one(request), self.timeout_s)
            except TimeoutError:  # wait_for's: the engine's own is _EngineTimeout
                self.stats.timeouts += 1
                return self._fail(request, f"no result within {self.timeout_s:g} s (the request "
                                           "time limit); cancelled")
            except _EngineTimeout as err:
                error = describe(err.__cause__ or err)
            except Exception as err:  # noqa: BLE001 - an engine fault, recorded
                error = describe(err)
            else:
                error = result_problem(request, result)
                if error is None:
                    return result
        return self._fail(request, f"failed {1 + self.retries} times; last: {error}")

    async def _one(self, request: GenerationRequest):
        try:
            return await self.engine.generate_async(request)
        except TimeoutError as err:
            raise _EngineTimeout() from err
