"""A scripted engine for tests: answers each request with what a policy function says.

It implements the real engine interface (`generate`, optionally `generate_async`) and records every
request, so tests can drive the search and the scheduler without a model.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass
from typing import Callable

from retro_search.engines.base import GenerationRequest, GenerationResult
from retro_search.records import TraceRecord

Reply = tuple[str, str, str | None]  # text, finish_reason, stop_string
Policy = Callable[[GenerationRequest], Reply]


def count_words(text: str) -> int:
    return len(text.split())


class ScriptedEngine:
    def __init__(self, policy: Policy):
        self.policy = policy
        self.requests: list[GenerationRequest] = []
        self.calls = 0

    def _reply(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        text, finish, stop = self.policy(request)
        return GenerationResult(request.request_id, text, count_words(text), finish, stop)

    def generate(self, requests):
        self.calls += 1
        return [self._reply(r) for r in requests]


class StreamingScriptedEngine(ScriptedEngine):
    async def generate_async(self, request):
        await asyncio.sleep(0)
        return self._reply(request)


@dataclass(frozen=True)
class SimpleGrade:
    correct: bool
    extracted: str | None


def boxed_grade(gold: str, solution: str):
    """A minimal exact-match grader, so search tests do not depend on math-verify."""
    found = re.findall(r"\\boxed\{([^{}]*)\}", solution)
    extracted = found[-1] if found else None
    return SimpleGrade(correct=extracted == gold, extracted=extracted)


class FaultyEngine(ScriptedEngine):
    """A scripted engine with injected faults, for the scheduler's and the sampler's fault
    handling. `fault(request, attempt)` (attempt: how many times this engine saw that request id
    before, 0 the first time) says what happens to a request:

    None      answered by the policy;
    "raise"   the call raises RuntimeError (a batch call: the whole call);
    "drop"    its result is left out of the batch (one result too few); streaming: a result for
              another request id;
    "hang"    the call never returns: a batch call blocks until `release` is set (a test sets it
              when done, so the thread ends), a streaming request awaits forever (cancellable).

    `requests` records the requests answered; `seen` counts every request received."""

    def __init__(self, policy: Policy, fault: Callable[[GenerationRequest, int], str | None]):
        super().__init__(policy)
        self.fault = fault
        self.seen: dict[str, int] = {}
        self.release = threading.Event()

    def _fault(self, request: GenerationRequest) -> str | None:
        attempt = self.seen.get(request.request_id, 0)
        self.seen[request.request_id] = attempt + 1
        return self.fault(request, attempt)

    def generate(self, requests):
        self.calls += 1
        faults = [self._fault(r) for r in requests]
        if "hang" in faults:
            self.release.wait()
            raise RuntimeError("released after a hang")
        if "raise" in faults:
            raise RuntimeError(f"injected fault on {requests[faults.index('raise')].request_id!r}")
        return [self._reply(r) for r, f in zip(requests, faults) if f != "drop"]


class StreamingFaultyEngine(FaultyEngine):
    async def generate_async(self, request):
        fault = self._fault(request)
        await asyncio.sleep(0)
        if fault == "hang":
            await asyncio.Event().wait()
        if fault == "raise":
            raise RuntimeError(f"injected fault on {request.request_id!r}")
        result = self._reply(request)
        if fault == "drop":
            return GenerationResult("someone-else", result.text, result.num_tokens,
                                    result.finish_reason, result.stop_string)
        return result


# A shard of traces and a policy for them, shared by the scheduler's tests and the engine-fault
# tests (which run the same shard through faulty engines).

def make_traces(n):
    traces = []
    for i in range(n):
        thoughts = [f"Start {i}.\n\nMore {i}."] + [f"Wait, idea {j}.\n\nDetail {j}." for j in range(1 + i % 3)]
        traces.append(TraceRecord(id=f"t{i}", question=f"Q{i}", reference_answer=str(i),
                                  reasoning="\n\n".join(thoughts), solution=f"\\boxed{{{i}}}"))
    # one trace with a wrong original answer: passes through
    traces.append(TraceRecord(id="wrong", question="Q", reference_answer="1",
                              reasoning="a\n\nWait, b", solution="\\boxed{2}"))
    return traces


def policy(req):
    """Trace i (read from the prompt, "Q<i>|") finds a short correct answer only at its last
    boundary, visit i % 3, so traces finish after different numbers of waves."""
    trace_no = req.prompt.split("Q", 1)[1].split("|", 1)[0]
    visit = int(req.request_id.split("/v")[1].split("/")[0])
    if req.request_id.endswith("/step"):
        return f"Step {req.seed % 97}.", "stop", "\n\n"
    answer = trace_no if visit == int(trace_no) % 3 else "x"
    return f"</think>\n\n\\boxed{{{answer}}}", "stop", None
