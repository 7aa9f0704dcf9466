"""Retro-Search over one trace, as a pure state machine (ALGORITHM.md, "The search").

`retro_search(...)` is a generator: it yields lists of `GenerationRequest`s and is sent back the
matching `GenerationResult`s; when it returns, `StopIteration.value` is the `SearchOutcome`. It has
no engine, file or GPU inside, so the scheduler can interleave many traces over one engine and tests
can drive it with a scripted engine. `TraceSearch` wraps the generator in a small object API.

The loop, read top to bottom in `retro_search`:

    for each boundary i of the current trace (after thought i):
        prefix  = steps of thoughts 1..i
        x_r     = one new step from the prefix, transition keywords banned       (R requests)
        y_r     = free continuation from prefix + x_r to the end of the solution  (R requests)
        value   = gamma ** (steps after the prefix) if the answer is correct else 0
        if the best rollout's value beats the value of the trace's own rest: replace the rest
        continue at boundary i + 1 of the (possibly new) trace

Units: `*_tokens` are tokens of the revision model's tokenizer (engine counts for rollouts,
`count_tokens` for whole traces); `steps` and `thoughts` are counted as in `segmentation`.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Generator, Literal, Protocol, Sequence

from retro_search.engines.base import GenerationRequest, GenerationResult
from retro_search.records import TraceRecord
from retro_search.segmentation import (
    DEFAULT_KEYWORDS,
    STEP_SEPARATOR,
    join_steps,
    segment_steps,
    split_steps,
)


class Grade(Protocol):
    correct: bool
    extracted: str | None


GradeFn = Callable[[str, str], Grade]
"""grade(reference_answer, solution_text) -> Grade: is the solution's final answer correct?"""


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the search. Defaults are ALGORITHM.md's [choice]s."""

    rollouts: int = 1                 # R: rollouts per boundary
    gamma: float = 0.9                # discount per step in V = gamma^N * R
    max_tokens: int = 32768           # budget of one rollout (first step + continuation + solution)
    max_step_tokens: int = 1024       # budget of the constrained first step x_r
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    max_boundaries: int | None = None      # partial revision: visit at most this many boundaries
    boundary_fraction: float | None = None  # partial revision: visit this fraction of them
    drop_incorrect: bool = False      # leave traces with a wrong original answer out of the output

    def __post_init__(self):
        if self.rollouts < 1:
            raise ValueError(f"search.rollouts must be >= 1, got {self.rollouts}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"search.gamma must be in (0, 1], got {self.gamma}")
        if self.max_step_tokens < 1 or self.max_tokens < 1:
            raise ValueError("search.max_tokens and search.max_step_tokens must be >= 1")
        if self.boundary_fraction is not None and not 0 < self.boundary_fraction <= 1:
            raise ValueError(f"search.boundary_fraction must be in (0, 1], got {self.boundary_fraction}")
        if self.max_boundaries is not None and self.max_boundaries < 0:
            raise ValueError(f"search.max_boundaries must be >= 0, got {self.max_boundaries}")
        object.__setattr__(self, "keywords", tuple(self.keywords))


@dataclass
class Rollout:
    """One rollout from one boundary: the audit log entry."""

    trace_id: str
    boundary: int            # boundary number in the trace as it was when visited (1-based)
    visit: int               # how many boundaries this trace had visited before (0-based)
    rollout: int             # r in 0..R-1
    prefix_steps: int        # steps kept before the boundary
    rest_steps: int          # steps the current trace had after the prefix (what it competes with)
    step_text: str           # x_r, the constrained first step
    continuation: str        # y_r, reasoning rest + closer + solution as generated
    step_tokens: int
    continuation_tokens: int
    steps: int               # N: steps after the prefix until the end of the reasoning
    answer: str | None
    correct: bool
    truncated: bool          # hit its token budget or never closed its reasoning: never accepted
    value: float
    accepted: bool = False
    seeds: tuple[int, int | None] = (0, None)

    @property
    def tokens(self) -> int:
        return self.step_tokens + self.continuation_tokens


Status = Literal["revised", "unchanged", "incorrect_original"]


@dataclass
class SearchOutcome:
    """The result of searching one trace. `reasoning`/`solution` are the revised ones (equal to the
    original when nothing was accepted or the original answer was wrong)."""

    trace_id: str
    status: Status
    original_correct: bool
    original_answer: str | None
    reasoning: str
    solution: str
    tokens_before: int
    tokens_after: int
    steps_before: int
    steps_after: int
    thoughts_before: int
    thoughts_after: int
    boundaries_visited: int
    rollouts_tried: int
    rollouts_accepted: int
    rollouts_truncated: int
    log: list[Rollout] = field(default_factory=list)

    def stats(self) -> dict:
        """Everything but the texts and the log: one row of search statistics."""
        row = asdict(self)
        for name in ("reasoning", "solution", "log"):
            row.pop(name)
        return row


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any parts, stable across processes and Python versions (not hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def boundaries_to_visit(trace_id: str, num_boundaries: int, config: SearchConfig) -> set[int] | None:
    """Partial revision: the boundary numbers to visit, or None for all of them.

    [choice] The subset is drawn once from the original trace's boundary numbers, with a seed
    derived from the search seed and the trace id, so a rerun visits the same ones. Numbers refer
    to the trace as it is when the search reaches them; after a replacement they may land on new
    thoughts, and numbers past the end of a shortened trace are simply not reached.
    """
    count = num_boundaries
    if config.boundary_fraction is not None:
        count = min(count, math.ceil(config.boundary_fraction * num_boundaries))
    if config.max_boundaries is not None:
        count = min(count, config.max_boundaries)
    if count >= num_boundaries:
        return None
    rng = random.Random(derive_seed(config.seed, trace_id, "boundaries"))
    return set(rng.sample(range(1, num_boundaries + 1), count))


def retro_search(
    trace: TraceRecord,
    prompt_head: str,
    config: SearchConfig,
    grade: GradeFn,
    count_tokens: Callable[[str], int],
    think_close: str = "</think>",
) -> Generator[list[GenerationRequest], list[GenerationResult], SearchOutcome]:
    """Search one trace. `prompt_head` is the revision model's prompt up to the start of the
    reasoning (see `prompts.PromptFormat.head`). Results must be sent back in request order."""
    original = grade(trace.reference_answer, trace.solution)
    steps = split_steps(trace.reasoning)
    solution = trace.solution
    before = segment_steps(steps, config.keywords)
    log: list[Rollout] = []

    def outcome(status: Status, reasoning: str, visited: int) -> SearchOutcome:
        after = segment_steps(steps, config.keywords)
        return SearchOutcome(
            trace_id=trace.id, status=status, original_correct=original.correct,
            original_answer=original.extracted, reasoning=reasoning, solution=solution,
            tokens_before=count_tokens(_response(trace.reasoning, trace.solution, think_close)),
            tokens_after=count_tokens(_response(reasoning, solution, think_close)),
            steps_before=before.num_steps, steps_after=after.num_steps,
            thoughts_before=before.num_thoughts, thoughts_after=after.num_thoughts,
            boundaries_visited=visited, rollouts_tried=len(log),
            rollouts_accepted=sum(r.accepted for r in log),
            rollouts_truncated=sum(r.truncated for r in log), log=log)

    if not original.correct:
        # Only correct traces are revised; a wrong one passes through, flagged by its status.
        return outcome("incorrect_original", trace.reasoning, 0)

    plan = boundaries_to_visit(trace.id, before.num_boundaries, config)
    boundary, visit, replaced = 1, 0, False
    while boundary <= (current := segment_steps(steps, config.keywords)).num_boundaries:
        if plan is not None and boundary not in plan:
            boundary += 1
            continue
        prefix = list(steps[: current.prefix_length(boundary)])
        rest_steps = len(steps) - len(prefix)
        prompt = prompt_head + join_steps(prefix) + STEP_SEPARATOR
        seeds = [(derive_seed(config.seed, trace.id, visit, r, "step"),
                  derive_seed(config.seed, trace.id, visit, r, "rest")) for r in range(config.rollouts)]
        base_id = f"{trace.id}/v{visit}"

        # x_r: continue the current thought for one step, transition keywords banned.
        step_budget = min(config.max_step_tokens, config.max_tokens)
        x_results = yield [
            GenerationRequest(f"{base_id}/r{r}/step", prompt, step_budget, config.temperature,
                              config.top_p, seeds[r][0], stop=(STEP_SEPARATOR,),
                              banned_words=config.keywords)
            for r in range(config.rollouts)
        ]
        # y_r: free continuation to the end of the trace and its solution.
        y_requests, y_index = [], {}
        for r, x in enumerate(x_results):
            joiner = _after_step(x, step_budget, config.max_tokens)
            if joiner is not None:
                y_index[r] = len(y_requests)
                y_requests.append(GenerationRequest(
                    f"{base_id}/r{r}/rest", prompt + x.text + joiner,
                    config.max_tokens - x.num_tokens, config.temperature, config.top_p, seeds[r][1]))
        y_results = (yield y_requests) if y_requests else []

        rollouts = []
        for r, x in enumerate(x_results):
            y = y_results[y_index[r]] if r in y_index else None
            rollouts.append(_score(trace, boundary, visit, r, len(prefix), rest_steps, x, y,
                                   _after_step(x, step_budget, config.max_tokens),
                                   seeds[r][0], seeds[r][1] if y else None, grade, config, think_close))
        log.extend(rollouts)

        best = max(rollouts, key=lambda ro: (ro.value, -ro.tokens))
        # The trace's own rest is correct (only correct traces are searched): V = gamma^N * 1.
        if not best.truncated and best.value > config.gamma ** rest_steps:
            best.accepted, replaced = True, True
            new_reasoning, solution = _split_continuation(best, think_close)
            steps = prefix + split_steps(new_reasoning)
        boundary += 1
        visit += 1

    reasoning = join_steps(steps) if replaced else trace.reasoning
    return outcome("revised" if replaced else "unchanged", reasoning, visit)


def _response(reasoning: str, solution: str, think_close: str) -> str:
    return f"{reasoning}\n{think_close}\n\n{solution}"


def _after_step(x: GenerationResult, step_budget: int, max_tokens: int) -> str | None:
    """What joins x_r to its continuation, or None when x_r already ended the rollout."""
    if x.finish_reason == "stop" and x.stop_string is not None:
        return STEP_SEPARATOR  # the step ended at its blank line; the next step starts fresh
    if x.finish_reason == "length" and x.num_tokens < max_tokens and step_budget < max_tokens:
        return ""  # the step hit its own budget mid-sentence: let the continuation finish it
    return None  # end of sequence, or the whole rollout budget is spent


def _continuation_text(ro: Rollout) -> str:
    return ro.step_text + (ro.continuation if ro.continuation is not None else "")


def _split_continuation(ro: Rollout, think_close: str) -> tuple[str, str]:
    reasoning, _, solution = _continuation_text(ro).partition(think_close)
    return reasoning.strip("\n"), solution.strip()


def _score(trace, boundary, visit, r, prefix_steps, rest_steps, x, y, joiner, x_seed, y_seed,
           grade: GradeFn, config: SearchConfig, think_close: str) -> Rollout:
    last = y if y is not None else x
    continuation = (joiner or "") + y.text if y is not None else ""
    ro = Rollout(
        trace_id=trace.id, boundary=boundary, visit=visit, rollout=r, prefix_steps=prefix_steps,
        rest_steps=rest_steps, step_text=x.text, continuation=continuation,
        step_tokens=x.num_tokens, continuation_tokens=y.num_tokens if y is not None else 0,
        steps=0, answer=None, correct=False, truncated=False, value=0.0, seeds=(x_seed, y_seed))
    full = _continuation_text(ro)
    # A rollout that ran out of tokens, or ended without closing its reasoning, is truncated:
    # it scores 0 and is never accepted, whatever answer it may contain.
    ro.truncated = last.finish_reason == "length" or think_close not in full
    reasoning, solution = _split_continuation(ro, think_close)
    ro.steps = len(split_steps(reasoning))
    if not ro.truncated:
        result = grade(trace.reference_answer, solution)
        ro.answer, ro.correct = result.extracted, bool(result.correct)
        ro.value = config.gamma ** ro.steps if ro.correct else 0.0
    return ro


class TraceSearch:
    """Object API over `retro_search`: `pending` requests, `feed(results)`, then `outcome`."""

    def __init__(self, trace: TraceRecord, prompt_head: str, config: SearchConfig, grade: GradeFn,
                 count_tokens: Callable[[str], int], think_close: str = "</think>"):
        self.trace = trace
        self._steps = retro_search(trace, prompt_head, config, grade, count_tokens, think_close)
        self.pending: list[GenerationRequest] = []
        self.outcome: SearchOutcome | None = None
        self._advance(None)

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def feed(self, results: Sequence[GenerationResult]) -> list[GenerationRequest]:
        """Send back the results of `pending` (any order); returns the next pending requests."""
        if self.done:
            raise RuntimeError(f"trace {self.trace.id!r}: search already finished")
        by_id = {res.request_id: res for res in results}
        missing = [req.request_id for req in self.pending if req.request_id not in by_id]
        if missing or len(by_id) != len(self.pending):
            raise ValueError(f"trace {self.trace.id!r}: results do not match the pending requests "
                             f"(missing {missing[:3]}, got {len(by_id)} for {len(self.pending)})")
        return self._advance([by_id[req.request_id] for req in self.pending])

    def _advance(self, results) -> list[GenerationRequest]:
        try:
            self.pending = self._steps.send(results)
        except StopIteration as stop:
            self.pending, self.outcome = [], stop.value
        return self.pending
