"""Send eval's requests to an engine that may fail: every request ends settled, either with its
result or with the reason it has none, and the run goes on.

- A request whose engine call raises, or that the engine returns no valid result for (too few
  results, another request's id, a finish reason other than "stop"/"length"), is tried again, with
  the same request and so the same seed, up to `CallLimits.retries` more times; then it is
  settled as failed with the last error. A batch call that raises is split in halves and each
  half tried again (a raising call is not charged to its requests until it holds one request),
  so one request the engine cannot take does not fail the others of its chunk.
- Each request has a time limit (`CallLimits.seconds`). A streaming engine's request that runs
  past it is settled as failed (not retried: it would most likely hang again). A batch engine's
  `generate` runs in a worker thread, given the limit once per `engine.batch_size` rows of the
  call (all rows at once when the engine does not say); a call that runs past that is abandoned,
  and the engine is taken as broken.
- A broken engine gets no more requests: every request not settled yet is settled as failed
  ("not generated: ..."). An engine is broken when it hangs, when a streaming engine's event
  loop makes no progress for longer than a request's limit (a `generate_async` that blocks the
  loop), or when `CallLimits.failed_in_a_row` requests in a row failed with no success between
  them (an engine that raises for everything).

A `BaseException` that is not an `Exception` (KeyboardInterrupt, SystemExit) ends the run.

A batch engine (`generate` only) gets the requests in calls of at most `chunk_size`; a streaming
engine (`generate_async`) gets them one by one, at most `chunk_size` in flight, from an event
loop in a worker thread, and each result is handed back as soon as it is in.
"""

from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from retro_search.engines.base import Engine, GenerationRequest, GenerationResult

__all__ = ["CallLimits", "CallStats", "Settled", "settle_requests"]

log = logging.getLogger(__name__)

MIN_REQUEST_SECONDS = 600.0     # the automatic per-request limit: this much ...
SECONDS_PER_TOKEN = 0.5         # ... plus this much per token of max_tokens (2 tokens/s)
FAULTS_LOGGED = 5               # engine faults logged one by one; later ones only counted
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class CallLimits:
    """How much an eval run puts up with from its engine.

    retries: further attempts of a request after a failed one (same request, same seed).
    request_timeout: seconds a request may take; None: `MIN_REQUEST_SECONDS` +
        `SECONDS_PER_TOKEN` x the request's max_tokens (32768 tokens: about 4.7 hours);
        0 or less: no limit.
    failed_in_a_row: this many requests failing in a row, with no success between them, mark
        the engine as broken.
    """

    retries: int = 2
    request_timeout: float | None = None
    failed_in_a_row: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        if self.request_timeout is not None and (
                isinstance(self.request_timeout, bool)
                or not isinstance(self.request_timeout, (int, float))
                or math.isnan(self.request_timeout)):
            raise ValueError(f"request_timeout must be seconds or None (automatic), "
                             f"got {self.request_timeout!r}")
        if not isinstance(self.failed_in_a_row, int) or self.failed_in_a_row < 1:
            raise ValueError(f"failed_in_a_row must be at least 1, got {self.failed_in_a_row!r}")

    def seconds(self, max_tokens: int) -> float | None:
        """The time limit of one request of `max_tokens` tokens (None: none)."""
        if self.request_timeout is None:
            return MIN_REQUEST_SECONDS + SECONDS_PER_TOKEN * max_tokens
        if self.request_timeout <= 0 or math.isinf(self.request_timeout):
            return None
        return float(self.request_timeout)


@dataclass
class Settled:
    """How one request ended: its `result`, or None and the `error` that explains why."""

    request: GenerationRequest
    result: GenerationResult | None
    error: str | None = None
    attempts: int = 1


@dataclass
class CallStats:
    """What a run asked of its engine and what went wrong (summed over the runs given it)."""

    calls: int = 0          # engine calls: generate() of a batch, or generate_async() of one
    requested: int = 0      # requests the engine received, attempts after a failure included
    generated: int = 0      # requests settled with a result
    retried: int = 0        # attempts after a failed one
    failed: int = 0         # requests settled as failed
    timed_out: int = 0      # attempts that ran past their time limit
    faults: int = 0         # failed attempts (exceptions, missing or invalid results, timeouts)
    resumed: int = 0        # requests not sent: their results were found in a progress file
    broken: str | None = None   # why the engine was given up on
    first_errors: list[str] = field(default_factory=list)

    def fault(self, what: str) -> None:
        self.faults += 1
        if len(self.first_errors) < FAULTS_LOGGED:
            self.first_errors.append(what)
            log.warning("engine fault: %s", what)
        elif len(self.first_errors) == FAULTS_LOGGED:
            self.first_errors.append("...")
            log.warning("engine fault: further faults are counted, not logged")

    def give_up(self, why: str) -> None:
        if self.broken is None:
            self.broken = why
            log.error("engine given up: %s; the requests left are recorded as failed", why)

    def as_dict(self) -> dict[str, Any]:
        return {"generations_resumed": self.resumed, "engine_calls": self.calls, "requests_sent": self.requested,
                "generated": self.generated, "retries": self.retried,
                "failed": self.failed, "timed_out": self.timed_out, "engine_faults": self.faults,
                "engine_broken": self.broken}


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS - 3] + "..."


def _describe(err: BaseException) -> str:
    return _short(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)


def invalid_result(request: GenerationRequest, result: Any) -> str | None:
    """Why `result` is not a usable result of `request` (None: it is)."""
    if getattr(result, "request_id", None) != request.request_id:
        return (f"engine returned a result for {getattr(result, 'request_id', None)!r} "
                f"where {request.request_id!r} was expected")
    if not isinstance(getattr(result, "text", None), str):
        return f"engine returned a result without text ({type(getattr(result, 'text', None)).__name__})"
    tokens = getattr(result, "num_tokens", None)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        return f"engine returned num_tokens={tokens!r}"
    finish = getattr(result, "finish_reason", None)
    if finish not in ("stop", "length"):
        return f"engine returned finish_reason={finish!r} (expected 'stop' or 'length')"
    return None


def settle_requests(engine: Engine, requests: Sequence[GenerationRequest], *,
                    chunk_size: int = 1024, limits: CallLimits | None = None,
                    stats: CallStats | None = None) -> Iterator[list[Settled]]:
    """Settle every request (ids must be unique); yields lists of settled requests as they come
    (a batch engine: after each call; a streaming engine: as soon as each is in), each request
    exactly once, in no fixed order. `stats` (optional) collects the counts."""
    limits = limits or CallLimits()
    stats = stats if stats is not None else CallStats()
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if not requests:
        return iter(())
    if stats.broken:
        return iter([[Settled(r, None, f"not generated: {stats.broken}", 0) for r in requests]])
    if callable(getattr(engine, "generate_async", None)):
        return _streaming(engine, requests, chunk_size, limits, stats)
    return _batches(engine, requests, chunk_size, limits, stats)


# ----------------------------------------------------------------------------- batch engines

_HUNG = object()


def _call(fn: Callable[[], Any], seconds: float | None) -> tuple[Any, BaseException | None]:
    """fn() in a daemon worker thread: (its value, None), (None, its exception), or (_HUNG, None)
    when it runs past `seconds` (the thread is left behind). A BaseException that is not an
    Exception is raised here."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = err

    worker = threading.Thread(target=target, name="eval-engine-call", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        return _HUNG, None
    if "error" in box:
        if not isinstance(box["error"], Exception):
            raise box["error"]
        return None, box["error"]
    return box.get("value"), None


def _call_seconds(engine: Engine, group: Sequence[GenerationRequest],
                  limits: CallLimits) -> float | None:
    per_request = limits.seconds(max(r.max_tokens for r in group))
    if per_request is None:
        return None
    rows = getattr(engine, "batch_size", None)
    waves = 1
    if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 1:
        waves = math.ceil(len(group) / rows)
    return per_request * waves


def _batches(engine: Engine, requests: Sequence[GenerationRequest], chunk_size: int,
             limits: CallLimits, stats: CallStats) -> Iterator[list[Settled]]:
    attempts: dict[str, int] = defaultdict(int)
    in_a_row = 0  # requests given up in a row
    for start in range(0, len(requests), chunk_size):
        stack = [list(requests[start:start + chunk_size])]
        while stack:
            group = stack.pop()
            if stats.broken:
                stats.failed += len(group)
                yield [Settled(r, None, f"not generated: {stats.broken}", attempts[r.request_id])
                       for r in group]
                continue
            seconds = _call_seconds(engine, group, limits)
            stats.calls += 1
            stats.requested += len(group)
            stats.retried += sum(attempts[r.request_id] > 0 for r in group)
            out, error = _call(lambda batch=list(group): engine.generate(batch), seconds)
            if out is _HUNG:
                stats.timed_out += len(group)
                why = (f"engine.generate of {len(group)} request(s) gave no answer within "
                       f"{seconds:g} s (request_timeout)")
                stats.fault(why)
                stats.give_up(why)
                stats.failed += len(group)
                yield [Settled(r, None, why, attempts[r.request_id] + 1) for r in group]
                continue
            missing: list[tuple[GenerationRequest, str]] = []
            settled: list[Settled] = []
            if error is not None:
                what = _describe(error)
                stats.fault(f"engine.generate of {len(group)} request(s) raised {what}")
                if len(group) > 1:  # halves, the first one next
                    middle = len(group) // 2
                    stack += [group[middle:], group[:middle]]
                    continue
                missing.append((group[0], what))
            else:
                by_id: dict[str, Any] = {}
                try:
                    results = list(out)
                except TypeError:
                    results = []
                    stats.fault(f"engine.generate returned {type(out).__name__}, not a list")
                for result in results:
                    rid = getattr(result, "request_id", None)
                    if isinstance(rid, str):
                        by_id.setdefault(rid, result)
                if len(results) != len(group):
                    stats.fault(f"engine returned {len(results)} results for {len(group)} "
                                "requests")
                for request in group:
                    result = by_id.get(request.request_id)
                    problem = (f"engine returned no result for this request ({len(results)} "
                               f"results for {len(group)} requests)" if result is None
                               else invalid_result(request, result))
                    if problem is None:
                        settled.append(Settled(request, result, None,
                                               attempts[request.request_id] + 1))
                    else:
                        if result is not None:
                            stats.fault(problem)
                        missing.append((request, problem))
            if settled:
                in_a_row = 0
                stats.generated += len(settled)
            retry = []
            for request, problem in missing:
                attempts[request.request_id] += 1
                if attempts[request.request_id] > limits.retries:
                    settled.append(Settled(request, None, problem, attempts[request.request_id]))
                    stats.failed += 1
                    in_a_row += 1
                else:
                    retry.append(request)
            if in_a_row >= limits.failed_in_a_row:
                stats.give_up(f"{in_a_row} requests failed in a row (last: {missing[-1][1]})")
            if retry:
                stack.append(retry)
            if settled:
                yield settled


# ----------------------------------------------------------------------------- streaming engines

_DONE = object()


def _streaming(engine: Engine, requests: Sequence[GenerationRequest], chunk_size: int,
               limits: CallLimits, stats: CallStats) -> Iterator[list[Settled]]:
    events: queue.Queue = queue.Queue()   # Settled, None (a heartbeat), _DONE or an exception
    stopped = threading.Event()           # set when the consumer is gone: send nothing more
    loop_box: dict[str, Any] = {}
    in_a_row = [0]

    def failed(request: GenerationRequest, attempts: int, why: str) -> None:
        stats.failed += 1
        events.put(Settled(request, None, why, attempts))

    def stop_all() -> None:
        current = asyncio.current_task()
        for task in loop_box["tasks"]:
            if task is not current:
                task.cancel()

    async def one(request: GenerationRequest, gate: asyncio.Semaphore) -> None:
        attempts = 0
        try:
            async with gate:
                seconds = limits.seconds(request.max_tokens)
                while True:
                    if stats.broken or stopped.is_set():
                        failed(request, attempts, f"not generated: {stats.broken or 'stopped'}")
                        return
                    attempts += 1
                    stats.calls += 1
                    stats.requested += 1
                    stats.retried += attempts > 1
                    retry = True
                    try:
                        result = await asyncio.wait_for(engine.generate_async(request), seconds)
                        problem = invalid_result(request, result)
                    except TimeoutError:
                        stats.timed_out += 1
                        problem, retry = f"no result within {seconds:g} s (request_timeout)", False
                    except Exception as err:  # noqa: BLE001 - an engine fault
                        problem = _describe(err)
                    if problem is None:
                        in_a_row[0] = 0
                        stats.generated += 1
                        events.put(Settled(request, result, None, attempts))
                        return
                    stats.fault(f"{request.request_id}: {problem}")
                    if retry and attempts <= limits.retries:
                        events.put(None)  # alive
                        continue
                    failed(request, attempts, problem)
                    in_a_row[0] += 1
                    if in_a_row[0] >= limits.failed_in_a_row and not stats.broken:
                        stats.give_up(f"{in_a_row[0]} requests failed in a row (last: {problem})")
                        stop_all()
                    return
        except asyncio.CancelledError:
            if "fatal" in loop_box:  # the run ends: nothing more to report
                return
            if stats.broken or stopped.is_set():
                failed(request, attempts, f"not generated: {stats.broken or 'stopped'}")
                return
            raise
        except BaseException as err:  # not an Exception (a KeyboardInterrupt, a kill): end the run
            loop_box.setdefault("fatal", err)
            stop_all()
            raise

    async def main() -> None:
        loop_box["loop"] = asyncio.get_running_loop()
        gate = asyncio.Semaphore(chunk_size)
        tasks = [asyncio.ensure_future(one(r, gate)) for r in requests]
        loop_box["tasks"] = tasks
        await asyncio.gather(*tasks, return_exceptions=True)
        if "fatal" in loop_box:
            raise loop_box["fatal"]

    def thread_main() -> None:
        try:
            asyncio.run(main())
            events.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer's thread
            events.put(err)

    worker = threading.Thread(target=thread_main, name="eval-engine-loop", daemon=True)
    worker.start()

    per_request = [s for s in (limits.seconds(r.max_tokens) for r in requests) if s is not None]
    # The loop settles or retries some request at least once per request limit while any is in
    # flight; silence for longer (plus slack) means it is stuck.
    watch = max(per_request) + min(max(per_request), 30.0) if len(per_request) == len(requests) \
        else None
    unsettled = {r.request_id: r for r in requests}
    try:
        while unsettled:
            try:
                first = events.get(timeout=watch)
            except queue.Empty:
                why = (f"the engine's event loop made no progress for {watch:g} s "
                       "(a generate_async that blocks it?)")
                stats.fault(why)
                stats.give_up(why)
                stats.failed += len(unsettled)
                stats.timed_out += 1
                yield [Settled(r, None, f"not generated: {why}", 0) for r in unsettled.values()]
                return
            batch = [first]
            while True:
                try:
                    batch.append(events.get_nowait())
                except queue.Empty:
                    break
            settled = []
            for event in batch:
                if isinstance(event, Settled):
                    if unsettled.pop(event.request.request_id, None) is not None:
                        settled.append(event)
                elif event is _DONE or isinstance(event, BaseException):
                    if settled:
                        yield settled
                        settled = []
                    if isinstance(event, BaseException):
                        raise event
            if settled:
                yield settled
    finally:
        stopped.set()
        loop = loop_box.get("loop")
        if worker.is_alive() and loop is not None and not stats.broken:
            for task in loop_box.get("tasks", ()):
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # the loop closed meanwhile
                    break
            worker.join(timeout=5)

