"""A scripted engine for tests: answers each request with what a policy function says.

It implements the real engine interface (`generate`, optionally `generate_async`) and records every
request, so tests can drive the search and the scheduler without a model.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Callable

from retro_search.engines.base import GenerationRequest, GenerationResult

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
