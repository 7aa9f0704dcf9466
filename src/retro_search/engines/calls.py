"""Engine calls that survive a faulty engine, for search, sample and eval.

Every request goes through an `EngineCaller`; what it gives back for a request is the engine's
`GenerationResult` or a `RequestFailure` (the request's id and why), never an exception of the
engine's. Its settings are a section's engine-call keys (`runtime.EngineCallSettings`:
`retries`, `request_timeout_s`, `max_failed_share`):

- retries: a request whose call raises, or that comes back missing or malformed (a result for
  another id, text that is not a string, a token count that is not one, a finish_reason other
  than "stop" or "length"), is sent again unchanged: same prompt, same seed, so a retry that
  works gives what a fault-free run gives. A batch (`generate`) that fails is split in halves
  until the failing requests are alone, so one bad request does not fail its neighbours; alone,
  a request is tried `1 + retries` times, and so is a streaming request (`generate_async`).
- time limit (`request_limit`): a streaming request still running after it is cancelled and
  fails at once, without a retry (a hung request would most likely hang again, costing the
  limit each time). Its clock starts when it is sent, so time queued inside the engine counts:
  its limit is that of the longest request (max_tokens) the caller has sent, which it may wait
  behind. A batch call runs in a worker thread and may take the limit of its longest request
  once per round of the engine's batch (`engine.batch_size` requests at a time; an engine
  without one is taken to run its batch at once). A batch call that takes longer leaves its
  thread hung, and a thread cannot be killed: the engine is then given up.
- giving up (`broken` says why): when a batch call hangs; when requests of
  FAILED_PROMPTS_IN_A_ROW different prompts fail in a row, none succeeding between them (an
  engine that fails everything; different prompts, so that one prompt the engine cannot take,
  sampled n times, does not count n times); and, in `settle`, when a streaming engine's event
  loop makes no progress for longer than a request's limit (a `generate_async` that blocks the
  loop). A broken engine gets no more requests: each request still waiting fails at once
  ("not generated: <why>"), and the job finishes with what it has.

`settle` sends a fixed list of requests (sample, eval) and hands back each outcome as soon as
it is in; the search scheduler, whose next requests depend on the last results, calls
`generate` and `generate_async` itself (a streaming engine that blocks its event loop cannot be
timed out there). Only `Exception`s are caught: a `BaseException` (KeyboardInterrupt,
SystemExit, a test's simulated kill) goes through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Union

from retro_search.engines.base import Engine, GenerationRequest, GenerationResult
from retro_search.runtime import EngineCallSettings

__all__ = ["CallStats", "EngineCaller", "Outcome", "RequestFailure", "request_limit", "settle"]

log = logging.getLogger(__name__)

# The time limit of a request when `request_timeout_s` is null (the default of search, sample and
# eval): MIN_REQUEST_S + SECONDS_PER_TOKEN x its max_tokens. The floor covers loading, prefill and
# a wait in the engine's queue, which a short budget alone would not; 0.5 s a token (2 tokens/s)
# is an order of magnitude slower than a GPU decodes one sequence even in a full batch, so a
# healthy engine does not reach it, even with a request waiting a few rounds behind others. A
# flat limit must fit the longest rollout (hours) and so waits hours for a hung 1024-token search
# step or a short eval; this gives ~19 min to a 1024-token request and ~4.7 h to a 32768-token one.
MIN_REQUEST_S = 600.0
SECONDS_PER_TOKEN = 0.5
FAILED_PROMPTS_IN_A_ROW = 8   # requests of this many prompts failing in a row: the engine is broken
FAULTS_LOGGED = 5             # engine faults logged one by one; later ones only counted
WATCH_SLACK_S = (5.0, 30.0)   # settle: a streaming loop silent for its limit + this is blocked
MAX_ERROR_CHARS = 300
FINISH_REASONS = ("stop", "length")


def request_limit(timeout_s: float | None, max_tokens: int) -> float | None:
    """Seconds a request of `max_tokens` tokens may take: `timeout_s` (a section's
    request_timeout_s) when set, the formula above when None; None (no limit) for 0."""
    if timeout_s is None:
        return MIN_REQUEST_S + SECONDS_PER_TOKEN * max_tokens
    if timeout_s <= 0 or math.isinf(timeout_s):
        return None
    return float(timeout_s)


@dataclass(frozen=True)
class RequestFailure:
    """A request the engine did not answer: its id and why (the last error)."""

    request_id: str
    error: str

    def __str__(self) -> str:
        return f"request {self.request_id!r}: {self.error}"


Outcome = Union[GenerationResult, RequestFailure]


@dataclass
class CallStats:
    """What a job asked of its engine and what went wrong, for its summary."""

    calls: int = 0            # engine calls: generate() of a batch, generate_async() of one
    sent: int = 0             # requests the engine received, tries after a fault included
    generated: int = 0        # requests answered
    retries: int = 0          # tries after a fault
    failed: int = 0           # requests given up (RequestFailure), the broken engine's included
    timeouts: int = 0         # requests (streaming) or calls (batch) past their time limit
    broken: str | None = None  # why the engine was given up, when it was

    def summary(self) -> dict[str, Any]:
        """The keys a stage's summary gets (the same for search, sample and eval)."""
        return {"engine_calls": self.calls, "requests_sent": self.sent,
                "retried_requests": self.retries, "failed_requests": self.failed,
                "request_timeouts": self.timeouts, "engine_broken": self.broken}


def describe(err: BaseException) -> str:
    """An exception as one short line (an engine's error may span many)."""
    return _short(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def result_problem(request: GenerationRequest, result: Any) -> str | None:
    """Why `result` is not a usable result of `request`, or None when it is."""
    rid = getattr(result, "request_id", None)
    if rid != request.request_id:
        return f"engine returned a result for {rid!r} where {request.request_id!r} was expected"
    text = getattr(result, "text", None)
    if not isinstance(text, str):
        return f"engine returned a result without text ({type(text).__name__})"
    tokens = getattr(result, "num_tokens", None)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        return f"engine returned num_tokens={tokens!r}"
    finish = getattr(result, "finish_reason", None)
    if finish not in FINISH_REASONS:
        return f"engine returned finish_reason={finish!r} (expected 'stop' or 'length')"
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
        threading.Thread(target=self._loop, daemon=True, name="engine-call").start()

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
    """Sends requests to `engine` with retries and a time limit (see the module docstring).
    Request ids must be unique within a `generate` call."""

    def __init__(self, engine: Engine, settings: EngineCallSettings | None = None,
                 stats: CallStats | None = None):
        self.engine = engine
        self.settings = (settings or EngineCallSettings()).check()
        self.stats = stats if stats is not None else CallStats()
        self.last_activity = time.monotonic()  # when a call last ended (the watchdog's clock)
        self._worker: _Worker | None = None
        self._longest = 0                      # the largest max_tokens sent (streaming)
        self._failing: set[int] = set()        # hashes of the prompts failed in a row
        self._faults = 0

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

    def __enter__(self) -> "EngineCaller":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- outcomes ----------------------------------------------------------------------------

    def _fault(self, what: str) -> None:
        self.last_activity = time.monotonic()
        self._faults += 1
        if self._faults <= FAULTS_LOGGED:
            log.warning("engine fault: %s%s", what, " (further faults are counted, not logged)"
                        if self._faults == FAULTS_LOGGED else "")

    def give_up(self, why: str) -> None:
        if self.stats.broken is None:
            self.stats.broken = why
            log.error("engine given up: %s; the requests left are recorded as failed", why)

    def _answered(self, result: GenerationResult) -> GenerationResult:
        self.stats.generated += 1
        self._failing.clear()
        return result

    def _failed(self, request: GenerationRequest, error: str) -> RequestFailure:
        self.stats.failed += 1
        if self.broken is None:
            self._failing.add(hash(request.prompt))
            if len(self._failing) >= FAILED_PROMPTS_IN_A_ROW:
                self.give_up(f"requests of {len(self._failing)} different prompts failed in a "
                             f"row, none succeeding between them (last: {error})")
        return RequestFailure(request.request_id, error)

    def not_generated(self, request: GenerationRequest) -> RequestFailure:
        """The failure of a request not sent because the engine was given up."""
        self.stats.failed += 1
        return RequestFailure(request.request_id, f"not generated: {self.broken}")

    # --- batch engines -----------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Outcome]:
        """One result or failure per request, in request order."""
        items = list(enumerate(requests))
        out: dict[int, Outcome] = {}
        self._resolve(items, out, retry=False)
        return [out[i] if i in out else self.not_generated(request) for i, request in items]

    def _resolve(self, items: list[tuple[int, GenerationRequest]], out: dict, *,
                 retry: bool) -> None:
        """Generate `items`, storing each outcome in `out`; what fails is split and sent again
        (see the module docstring). Leaves out what a broken engine did not generate."""
        if self.broken is not None:
            return
        if retry:
            self.stats.retries += len(items)
        bad, error = self._attempt(items, out)
        if not bad or self.broken is not None:
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
        for _ in range(self.settings.retries):
            self.stats.retries += 1
            bad, error = self._attempt(bad, out)
            if not bad or self.broken is not None:
                return
        out[i] = self._failed(request, f"failed {1 + self.settings.retries} times; last: {error}")

    def _call(self, requests: list[GenerationRequest]):
        limit = request_limit(self.settings.request_timeout_s, max(r.max_tokens for r in requests))
        if limit is None:
            return self.engine.generate(requests)
        per_round = getattr(self.engine, "batch_size", None)
        if isinstance(per_round, int) and not isinstance(per_round, bool) and per_round > 0:
            limit *= math.ceil(len(requests) / per_round)
        if self._worker is None:
            self._worker = _Worker()
        try:
            return self._worker.call(self.engine.generate, requests, limit)
        except _Hung:
            self.stats.timeouts += 1
            self._worker = None  # never reused: it is stuck in that call
            self.give_up(f"the engine's generate() did not return within {limit:g} s for "
                         f"{len(requests)} request(s); its thread cannot be stopped")
            raise

    def _attempt(self, items, out) -> tuple[list, str | None]:
        """One engine call: (the items still without a result, the first error)."""
        self.stats.calls += 1
        self.stats.sent += len(items)
        try:
            results = self._call([request for _, request in items])
        except _Hung:
            return list(items), self.broken
        except Exception as err:  # noqa: BLE001 - an engine fault, recorded
            error = describe(err)
            self._fault(f"generate() of {len(items)} request(s) raised {error}")
            return list(items), error
        finally:
            self.last_activity = time.monotonic()
        try:
            results = list(results)
        except TypeError:
            error = f"engine.generate returned {type(results).__name__}, not a list"
            self._fault(error)
            return list(items), error
        by_id: dict[str, Any] = {}
        for result in results:
            rid = getattr(result, "request_id", None)
            if isinstance(rid, str):
                by_id.setdefault(rid, result)
        bad, error = [], None
        for i, request in items:
            result = by_id.get(request.request_id)
            problem = (f"engine returned no result for this request ({len(results)} results "
                       f"for {len(items)} requests)" if result is None
                       else result_problem(request, result))
            if problem is None:
                out[i] = self._answered(result)
            else:
                bad.append((i, request))
                error = error or problem
        if error:
            self._fault(f"{len(bad)} of {len(items)} request(s): {error}")
        return bad, error

    # --- streaming engines -------------------------------------------------------------------

    async def generate_async(self, request: GenerationRequest) -> Outcome:
        """The result of one request, or its failure."""
        self._longest = max(self._longest, request.max_tokens)
        limit = request_limit(self.settings.request_timeout_s, self._longest)
        error = None
        for attempt in range(1 + self.settings.retries):
            if self.broken is not None:
                return self.not_generated(request)
            if attempt:
                self.stats.retries += 1
            self.stats.calls += 1
            self.stats.sent += 1
            try:
                result = await asyncio.wait_for(self._one(request), limit)
            except TimeoutError:  # wait_for's: the engine's own is _EngineTimeout
                self.stats.timeouts += 1
                error = f"no result within {limit:g} s (the request time limit); cancelled"
                self._fault(f"{request.request_id}: {error}")
                return self._failed(request, error)
            except _EngineTimeout as err:
                error = describe(err.__cause__ or err)
            except Exception as err:  # noqa: BLE001 - an engine fault, recorded
                error = describe(err)
            else:
                error = result_problem(request, result)
                if error is None:
                    self.last_activity = time.monotonic()
                    return self._answered(result)
            self._fault(f"{request.request_id}: {error}")
        return self._failed(request, f"failed {1 + self.settings.retries} times; last: {error}")

    async def _one(self, request: GenerationRequest):
        try:
            return await self.engine.generate_async(request)
        except TimeoutError as err:
            raise _EngineTimeout() from err


# --------------------------------------------------------------------------- a list of requests

_DONE = object()


def settle(caller: EngineCaller, requests: Sequence[GenerationRequest], *, chunk_size: int,
           max_in_flight: int | None = None
           ) -> Iterator[list[tuple[GenerationRequest, Outcome]]]:
    """The outcome of every request (ids unique), each exactly once, in lists as they come: a
    batch engine's after each `generate` call of at most `chunk_size` requests (in request
    order); a streaming engine's as soon as each is in (at most `max_in_flight` in flight, None:
    all), from an event loop in a worker thread that is given up when it makes no progress
    for longer than a request's limit (see the module docstring)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if not requests:
        return
    if not caller.streaming:
        for start in range(0, len(requests), chunk_size):
            chunk = list(requests[start:start + chunk_size])
            yield list(zip(chunk, caller.generate(chunk)))
        return
    yield from _stream(caller, requests, max_in_flight)


def _stream(caller: EngineCaller, requests: Sequence[GenerationRequest],
            max_in_flight: int | None) -> Iterator[list[tuple[GenerationRequest, Outcome]]]:
    events: queue.SimpleQueue = queue.SimpleQueue()  # (request, outcome), _DONE or an exception
    stopped = threading.Event()                      # the consumer is gone: report nothing more
    box: dict[str, Any] = {}

    def cancel_others() -> None:
        current = asyncio.current_task()
        for task in box["tasks"]:
            if task is not current:
                task.cancel()

    async def one(request: GenerationRequest, gate: asyncio.Semaphore) -> None:
        try:
            async with gate:
                outcome = await caller.generate_async(request)
        except asyncio.CancelledError:  # the engine was given up, or the run ends
            if "fatal" not in box and not stopped.is_set():
                events.put((request, caller.not_generated(request)))
            return
        except BaseException as err:  # not an Exception (a KeyboardInterrupt, a kill): the end
            box.setdefault("fatal", err)
            cancel_others()
            raise
        events.put((request, outcome))
        if caller.broken is not None:  # no more waiting for what a broken engine has in flight
            cancel_others()

    async def main() -> None:
        gate = asyncio.Semaphore(max_in_flight or len(requests))
        box["loop"] = asyncio.get_running_loop()
        box["tasks"] = [asyncio.ensure_future(one(r, gate)) for r in requests]
        await asyncio.gather(*box["tasks"], return_exceptions=True)
        if "fatal" in box:
            raise box["fatal"]

    def thread_main() -> None:
        try:
            asyncio.run(main())
            events.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer's thread
            events.put(err)

    # A loop that runs settles or retries some request at least once per request limit while
    # any is in flight: silence for longer means that it is blocked. The slack (5 to 30 s) is
    # for the loop's own work between two attempts (an engine tokenizes a prompt on it).
    limit = request_limit(caller.settings.request_timeout_s,
                          max(caller._longest, *(r.max_tokens for r in requests)))
    watch = None if limit is None else limit + min(max(limit, WATCH_SLACK_S[0]), WATCH_SLACK_S[1])
    caller.last_activity = time.monotonic()
    worker = threading.Thread(target=thread_main, name="engine-calls-loop", daemon=True)
    worker.start()
    pending = {r.request_id: r for r in requests}
    try:
        while pending:
            try:
                first = events.get(timeout=None if watch is None else
                                   max(0.0, watch - (time.monotonic() - caller.last_activity)))
            except queue.Empty:
                if time.monotonic() - caller.last_activity < watch:
                    continue
                caller.stats.timeouts += 1
                caller.give_up(f"the engine's event loop made no progress for {watch:g} s (a "
                               "generate_async that blocks it?)")
                yield [(r, caller.not_generated(r)) for r in pending.values()]
                return
            batch = [first]
            while True:
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            settled = [event for event in batch if isinstance(event, tuple)
                       and pending.pop(event[0].request_id, None) is not None]
            if settled:
                yield settled
            ended = [event for event in batch if not isinstance(event, tuple)]
            if ended and isinstance(ended[0], BaseException):
                raise ended[0]
            if ended and pending:  # cannot happen: every request reports before the loop ends
                yield [(r, caller.not_generated(r)) for r in pending.values()]
                return
    finally:
        stopped.set()
        loop = box.get("loop")
        if worker.is_alive() and loop is not None and caller.broken is None:
            for task in box.get("tasks", ()):
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # the loop closed meanwhile
                    break
            worker.join(timeout=5)
