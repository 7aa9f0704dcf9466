"""`engines.calls` itself, for what the stages' fault tests (tests/test_engine_faults.py: search
and sample; tests/test_eval_faults.py: eval) do not pin down: when a failing engine is given up,
and the time limit of a streaming request queued behind a longer one."""

from __future__ import annotations

import asyncio

from scripted_engine import FaultyEngine, StreamingScriptedEngine

import retro_search.engines.calls as calls
from retro_search.engines.base import GenerationRequest
from retro_search.engines.calls import EngineCaller, RequestFailure, settle
from retro_search.runtime import EngineCallSettings


def answer(req):
    return "fine", "stop", None


def requests(prompts, samples):
    return [GenerationRequest(f"{p}/{k}", p, 8, seed=k) for p in prompts for k in range(samples)]


def test_one_prompt_the_engine_refuses_does_not_give_the_engine_up():
    # 20 samples of one prompt fail (more than FAILED_PROMPTS_IN_A_ROW requests in a row):
    # the engine still answers the other prompts
    engine = FaultyEngine(answer, lambda req, n: "raise" if req.prompt == "bad" else None)
    with EngineCaller(engine) as caller:
        outcomes = [o for pairs in settle(caller, requests(["bad", "good"], 20), chunk_size=4)
                    for _, o in pairs]
    assert caller.broken is None
    assert [isinstance(o, RequestFailure) for o in outcomes] == [True] * 20 + [False] * 20


def test_failures_of_many_prompts_in_a_row_give_the_engine_up():
    engine = FaultyEngine(answer, lambda req, n: "raise")
    prompts = [f"p{i}" for i in range(12)]
    with EngineCaller(engine, EngineCallSettings(retries=0)) as caller:
        outcomes = [o for pairs in settle(caller, requests(prompts, 1), chunk_size=1)
                    for _, o in pairs]
    assert caller.broken.startswith(f"requests of {calls.FAILED_PROMPTS_IN_A_ROW} different "
                                    "prompts failed in a row")
    assert len(engine.seen) == calls.FAILED_PROMPTS_IN_A_ROW  # the rest is not sent
    assert all(o.error == f"not generated: {caller.broken}"
               for o in outcomes[calls.FAILED_PROMPTS_IN_A_ROW:])


def test_a_streaming_request_has_the_limit_of_the_longest_one_sent(monkeypatch):
    # null request_timeout_s: 0.01 s per token here. A 10-token request alone gets 0.1 s; sent
    # after a 100-token one, it may wait behind it inside the engine: 1 s.
    monkeypatch.setattr(calls, "MIN_REQUEST_S", 0.0)
    monkeypatch.setattr(calls, "SECONDS_PER_TOKEN", 0.01)

    class Slow(StreamingScriptedEngine):
        async def generate_async(self, request):
            await asyncio.sleep(0.3)
            return self._reply(request)

    short = GenerationRequest("short", "p", 10, seed=0)
    caller = EngineCaller(Slow(answer))
    failed = asyncio.run(caller.generate_async(short))
    assert isinstance(failed, RequestFailure) and "no result within 0.1 s" in failed.error
    long = GenerationRequest("long", "p", 100, seed=0)
    assert asyncio.run(caller.generate_async(long)).text == "fine"
    assert asyncio.run(caller.generate_async(short)).text == "fine"
