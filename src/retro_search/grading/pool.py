"""Batch grading in worker processes, with a hard per-item timeout.

Why not concurrent.futures/multiprocessing.Pool: neither can kill the one task that is stuck (sympy
can spin for minutes inside one comparison, sometimes in C code that no signal interrupts). Here
each worker holds at most one item; when an item passes its deadline its worker is terminated and
replaced, that item alone gets Grade(False, extracted, "timeout"), and the batch goes on. All of an
item's grading runs in its worker under that deadline, answer extraction included; the parent only
settles, in linear time and without parsing, the items no worker needs (`verify.precheck`).

Workers come from a "forkserver" whose preload imports `retro_search.grading.verify` (math_verify,
sympy) once: forking from that clean server is safe even when the parent has threads or torch
loaded, and a replacement worker starts in milliseconds.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable
from multiprocessing.connection import Connection, wait

from retro_search.grading.verify import Grade, grade, grade_response, precheck

__all__ = ["Grader"]

_PRELOAD = ["retro_search.grading.verify"]
_READY = "ready"
# Worker -> parent, besides _READY: (_EXTRACTED, index, answer) once an item's answer is known and
# math-verify's work starts (so a timeout or a death still reports the answer), then
# (_DONE, index, Grade).
_EXTRACTED = "extracted"
_DONE = "done"
# A worker's first item gets its `timeout` only once the worker is up: the first start waits for
# the forkserver to import sympy (seconds on a loaded machine), which is no item's fault.
_STARTUP_TIMEOUT_S = 120.0
# How long a terminated worker gets to exit before SIGKILL.
_TERMINATE_GRACE_S = 0.5


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")  # Windows
    ctx = multiprocessing.get_context("forkserver")
    # Global to the forkserver, and ignored once it runs: a server started earlier without this
    # preload still works, its workers just import the module themselves.
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def _worker_main(conn: Connection) -> None:
    """Grade (index, gold, response) messages until None or EOF, with `verify.grade_response`:
    extraction, then our comparison or math-verify's extraction and comparison. Runs in the
    worker's main thread, so math-verify's own SIGALRM timeouts work too."""
    # Ctrl-C reaches the whole process group; the parent decides what to do and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Lets the parent tell "failed to start" (a broken __main__ re-import, a missing module) from
    # "died on an item".
    conn.send(_READY)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, gold, response = msg
        try:
            result = grade_response(
                gold, response,
                on_math_verify=lambda answer, i=index: conn.send((_EXTRACTED, i, answer)))
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            result = Grade(False, None, f"{type(exc).__name__}: {exc}"[:200])
        conn.send((_DONE, index, result))


class _Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext):
        parent_end, child_end = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child_end,), daemon=True,
                                   name="retro-search-grader")
        self.process.start()
        child_end.close()  # so the parent sees EOF when the worker dies
        self.conn = parent_end
        self.index: int | None = None  # item in flight
        self.ready = False
        self.deadline = 0.0

    def stop(self, graceful: bool) -> None:
        if graceful and self.process.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.process.join(_TERMINATE_GRACE_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(_TERMINATE_GRACE_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process.close()


class Grader:
    """Grade (gold, response) pairs in worker processes; a context manager.

    processes: worker count; None -> os.cpu_count(); 0 -> grade serially in this process with
        `grade()` (no hard timeout there, only math-verify's own in the main thread; see below).
    timeout: seconds one item may take in a worker before the worker is killed (SIGTERM, then
        SIGKILL) and replaced; the item then gets Grade(False, extracted, "timeout").

    Every step of an item's grading runs in its worker, under its deadline: answer extraction,
    the comparison, and math-verify's own extraction on the response's end when ours finds
    nothing. A worker reports the answer it extracted before math-verify's work starts, so an item
    that times out (or whose worker dies) in that work still reports it; one that times out earlier,
    or in math-verify's extraction, reports extracted=None. The parent only runs `precheck`
    (linear, no parsing): a malformed gold ("unparseable gold: ..."), a response that is not a
    str ("invalid response: ...") or one with nothing to extract ("no_answer") is settled there
    and never reaches a worker. The whole response is sent to the worker.

    processes=0 grades with `grade()` in this process: no hard timeout there, only math-verify's
    own (in the main thread); extraction is linear in the response's length (0.08 s for a 420 KB
    line of unclosed boxes, `benchmarks/grading_extraction.py`), so it cannot hang, but
    `timeout` does not bound it.

    Workers start lazily, at most one per pending item, and are reused across calls until
    `close()`; a closed Grader restarts them on the next call. Safe to use from any thread;
    concurrent calls on one Grader are serialised.
    """

    def __init__(self, processes: int | None = None, timeout: float = 10.0):
        if processes is None:
            processes = os.cpu_count() or 1
        if processes < 0:
            raise ValueError(f"processes must be >= 0 or None, got {processes}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.processes = processes
        self.timeout = float(timeout)
        self._workers: list[_Worker] = []
        self._ctx: multiprocessing.context.BaseContext | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "Grader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def grade(self, gold: str, response: str) -> Grade:
        """Grade one item (through the pool unless processes=0)."""
        return self.grade_many([(gold, response)])[0]

    def grade_many(self, pairs: Iterable[tuple[str, str]], progress: bool = False) -> list[Grade]:
        """Grade all pairs; results in input order. progress=True shows a tqdm bar."""
        items = list(pairs)
        for gold, _ in items:
            if not isinstance(gold, str) or not gold.strip():
                raise ValueError(f"gold must be a non-empty normalised string, got {gold!r}")
        from tqdm.auto import tqdm

        with self._lock, tqdm(total=len(items), disable=not progress, desc="grading",
                              unit="item") as bar:
            if self.processes == 0:
                results = []
                for gold, response in items:
                    results.append(grade(gold, response))
                    bar.update()
                return results
            try:
                return self._run(items, bar)
            finally:
                # After an exception (Ctrl-C) items may still be in flight; their workers would
                # answer a later call with stale results, so they go.
                for worker in [w for w in self._workers if w.index is not None]:
                    self._replace(worker)

    def close(self) -> None:
        """Stop all workers (politely, then by force). The Grader can be used again afterwards."""
        with self._lock:
            workers, self._workers = self._workers, []
            for worker in workers:
                worker.stop(graceful=True)

    # -----------------------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        if self._ctx is None:
            self._ctx = _context()
        return _Worker(self._ctx)

    def _replace(self, worker: _Worker) -> None:
        self._workers.remove(worker)
        worker.stop(graceful=False)

    @staticmethod
    def _start_failure(worker: _Worker) -> RuntimeError:
        worker.process.join(_TERMINATE_GRACE_S)
        return RuntimeError(
            f"a grading worker failed to start (exit code {worker.process.exitcode}); see its "
            "traceback on stderr. Workers re-import the parent's __main__ module, so it must be "
            "an importable file (not stdin) whose top-level code is guarded by "
            "`if __name__ == '__main__':`.")

    def _run(self, items: list[tuple[str, str]], bar) -> list[Grade]:
        results: list[Grade | None] = [None] * len(items)
        extracted: list[str | None] = [None] * len(items)  # as reported by the workers
        pending: deque[int] = deque()
        for i, (gold, response) in enumerate(items):
            settled = precheck(gold, response)  # linear string checks, no extraction
            if settled is None:
                pending.append(i)
            else:
                results[i] = settled
                bar.update()
        in_flight = 0

        def receive(worker: _Worker) -> bool:
            """Handle one message from a busy worker; True once its item is finished."""
            i = worker.index
            try:
                msg = worker.conn.recv()
            except (EOFError, OSError):
                if not worker.ready:
                    raise self._start_failure(worker) from None
                worker.process.join(_TERMINATE_GRACE_S)
                code = worker.process.exitcode
                results[i] = Grade(False, extracted[i], f"worker died (exit code {code})")
                self._replace(worker)
                return True
            if msg == _READY:
                worker.ready = True
                worker.deadline = time.monotonic() + self.timeout
                return False
            kind, index, value = msg
            assert index == i, (index, i)
            if kind == _EXTRACTED:
                extracted[i] = value
                return False
            results[i] = value
            worker.index = None
            return True

        while pending or in_flight:
            want = min(self.processes, len(pending) + in_flight)
            while len(self._workers) < want:
                self._workers.append(self._spawn())
            for worker in list(self._workers):
                if worker.index is None and pending:
                    i = pending.popleft()
                    try:
                        worker.conn.send((i, items[i][0], items[i][1]))
                    except OSError:
                        if not worker.ready:
                            raise self._start_failure(worker) from None
                        # Died while idle (killed from outside): replace it, retry the item.
                        pending.appendleft(i)
                        self._replace(worker)
                        continue
                    worker.index = i
                    worker.deadline = time.monotonic() + (
                        self.timeout if worker.ready else _STARTUP_TIMEOUT_S)
                    in_flight += 1
            busy = {w.conn: w for w in self._workers if w.index is not None}
            if not busy:
                continue
            next_deadline = min(w.deadline for w in busy.values())
            ready = wait(list(busy), timeout=max(0.0, next_deadline - time.monotonic()))
            for conn in ready:
                if receive(busy[conn]):
                    in_flight -= 1
                    bar.update()
            now = time.monotonic()
            for worker in list(busy.values()):
                if worker.index is not None and worker in self._workers and worker.deadline <= now:
                    if not worker.ready:
                        raise RuntimeError(f"a grading worker did not start within "
                                           f"{_STARTUP_TIMEOUT_S:.0f} s")
                    # What it sent before the deadline still counts (its answer, or its result
                    # if it finished just in time); then it goes.
                    finished = False
                    while not finished and worker in self._workers and worker.conn.poll():
                        finished = receive(worker)
                    if finished:
                        in_flight -= 1
                        bar.update()
                        continue
                    results[worker.index] = Grade(False, extracted[worker.index], "timeout")
                    in_flight -= 1
                    bar.update()
                    self._replace(worker)
        return results  # type: ignore[return-value]
