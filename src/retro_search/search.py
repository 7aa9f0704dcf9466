"""Retro-Search over one trace, as a pure state machine (ALGORITHM.md, "The search").

`retro_search(...)` is a generator: it yields lists of `GenerationRequest`s and is sent back the
matching `GenerationResult`s; when it returns, `StopIteration.value` is the `SearchOutcome`. It has
no engine, file or GPU inside, so the scheduler can interleave many traces over one engine and tests
can drive it with a scripted engine. `TraceSearch` wraps the generator in a small object API.
The types it takes and returns (`SearchConfig`, `Rollout`, `SearchOutcome`) are in `search_types`.

The loop, read top to bottom in `retro_search`:

    for each boundary i of the current trace (after thought i), if partial revision visits it:
        prefix  = steps of thoughts 1..i
        x_r     = one new step from the prefix, transition keywords banned       (R requests)
        y_r     = free continuation from prefix + x_r to the end of the solution  (R requests)
        value   = gamma ** (steps after the prefix) if the answer is correct else 0
        if the best rollout's value beats the value of the trace's own rest: replace the rest
        continue at boundary i + 1 of the (possibly new) trace

Units: `*_tokens` are tokens of the revision model's tokenizer (engine counts for rollouts,
`count_tokens` for whole texts); `steps` and `thoughts` are counted as in `segmentation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Generator, Sequence

from retro_search.engines.base import (
    GenerationRequest,
    GenerationResult,
    derive_seed,
    rollout_budget,
)
from retro_search.records import TraceRecord
from retro_search.search_types import (
    GradeFn,
    Rollout,
    SearchConfig,
    SearchOutcome,
    Status,
)
from retro_search.segmentation import (
    STEP_SEPARATOR,
    join_steps,
    segment_steps,
    split_steps,
)


class EngineFailure(Exception):
    """A request of the trace could not be generated (the engine failed it after its retries);
    thrown into the search by `TraceSearch.fail`. The message says which request and why."""


def visit_probability(config: SearchConfig, visited: int, boundaries_left: int) -> float:
    """Partial revision: the chance of visiting the next boundary of the current trace.

    [choice] `boundary_fraction` (default 1) is the share of boundaries visited; `max_boundaries`
    caps the visits with selection sampling (visits left / boundaries left, counting this one), so
    an unchanged trace gets a uniform random set of `max_boundaries` boundaries rather than its
    first ones. `boundaries_left` counts the boundaries of the trace as it is now, so the share and
    the cap hold whatever was accepted before.
    """
    p = config.boundary_fraction if config.boundary_fraction is not None else 1.0
    if config.max_boundaries is not None:
        p = min(p, (config.max_boundaries - visited) / boundaries_left)
    return max(p, 0.0)


def visits_boundary(config: SearchConfig, trace_id: str, prefix_steps: int, visited: int,
                    boundaries_left: int) -> bool:
    """The seeded visit-or-skip decision for the boundary after `prefix_steps` steps (the same
    inputs give the same decision, so a rerun or a resumed run visits the same boundaries)."""
    p = visit_probability(config, visited, boundaries_left)
    if p >= 1:
        return True
    draw = derive_seed(config.seed, trace_id, prefix_steps, "visit") / 2**31
    return draw < p


def retro_search(
    trace: TraceRecord,
    prompt_head: str,
    config: SearchConfig,
    grade: GradeFn,
    count_tokens: Callable[[str], int],
    think_close: str = "</think>",
    context_length: int | None = None,
) -> Generator[list[GenerationRequest], list[GenerationResult], SearchOutcome]:
    """Search one trace. `prompt_head` is the revision model's prompt up to the start of the
    reasoning (see `prompts.PromptFormat.head`); `context_length` is the engine's context in tokens
    (None: unlimited). Results must be sent back in request order.

    The ban on transition keywords holds for the whole first step x_r (ALGORITHM.md, "The
    search"): a blank x_r is not a step, so its continuation is asked for with the ban still on;
    an x_r that reaches `max_step_tokens` before its blank line makes the rollout truncated
    (`truncated_length`), it is never continued unbanned. No request asks for fewer than one
    token: a rollout with no budget left is `truncated_length` too. A trace whose first visited
    boundary's prompt leaves no room in the context is "skipped" (`skip_reason` says why); a later
    boundary that does not fit ends that trace's search, keeping what was accepted. A trace with a
    correct answer and an empty reasoning has nothing to search: "skipped" too.

    Engine faults: the scheduler throws `EngineFailure` into the generator when a request of the
    trace could not be generated (after its retries); the trace then ends with status
    "engine_error", its original reasoning and solution unchanged, no rollouts (the rollouts of
    its earlier boundaries are dropped with what they decided) and the error in `skip_reason`."""
    original = grade(trace.reference_answer, trace.solution)
    steps = split_steps(trace.reasoning)
    solution = trace.solution
    before = segment_steps(steps, config.keywords)
    log: list[Rollout] = []

    def outcome(status: Status, reasoning: str, visited: int, skip_reason: str | None = None):
        after = segment_steps(steps, config.keywords)
        return SearchOutcome(
            trace_id=trace.id, status=status, original_correct=original.correct,
            original_answer=original.extracted, reasoning=reasoning, solution=solution,
            reasoning_tokens_before=count_tokens(trace.reasoning),
            reasoning_tokens_after=count_tokens(reasoning),
            response_tokens_before=count_tokens(_response(trace.reasoning, trace.solution, think_close)),
            response_tokens_after=count_tokens(_response(reasoning, solution, think_close)),
            steps_before=before.num_steps, steps_after=after.num_steps,
            thoughts_before=before.num_thoughts, thoughts_after=after.num_thoughts,
            boundaries_visited=visited, rollouts_tried=len(log),
            rollouts_accepted=sum(r.accepted for r in log),
            rollouts_truncated_length=sum(r.truncated_length for r in log),
            rollouts_unclosed=sum(r.unclosed for r in log), skip_reason=skip_reason, log=log)

    if not original.correct:
        # Only correct traces are revised; a wrong one passes through, flagged by its status.
        return outcome("incorrect_original", trace.reasoning, 0)
    if not trace.reasoning.strip():
        return outcome("skipped", trace.reasoning, 0, "the reasoning is empty: nothing to search")

    try:
        boundary, visit, replaced, skip_reason = 1, 0, False, None
        log_gamma = math.log(config.gamma)
        while boundary <= (current := segment_steps(steps, config.keywords)).num_boundaries:
            prefix = list(steps[: current.prefix_length(boundary)])
            boundaries_left = current.num_boundaries - boundary + 1
            if config.max_boundaries is not None and visit >= config.max_boundaries:
                break
            if not visits_boundary(config, trace.id, len(prefix), visit, boundaries_left):
                boundary += 1
                continue
            prompt = prompt_head + join_steps(prefix) + STEP_SEPARATOR
            prompt_tokens = count_tokens(prompt) if context_length is not None else 0
            if rollout_budget(config.max_tokens, context_length, prompt_tokens) < 1:
                # Later boundaries keep longer prefixes, so none of them fits either.
                skip_reason = (f"the rollout prompt at boundary {boundary} has {prompt_tokens} "
                               f"tokens, the engine's context holds {context_length}")
                break
            rollouts = yield from _visit(trace, boundary, visit, prompt, prefix,
                                         len(steps) - len(prefix), config, grade, count_tokens,
                                         think_close, context_length)
            log.extend(rollouts)

            best = max(rollouts, key=lambda ro: (ro.log_value if ro.log_value is not None
                                                 else -math.inf, -ro.tokens))
            # The trace's own rest is correct (only correct traces are searched): log V = N log g.
            own = (len(steps) - len(prefix)) * log_gamma
            if best.log_value is not None and best.log_value > own:
                best.accepted, replaced = True, True
                new_reasoning, solution = _split_continuation(best, think_close)
                steps = prefix + split_steps(new_reasoning)
            boundary += 1
            visit += 1
    except EngineFailure as err:
        # The trace is kept as it came, whatever its earlier boundaries had accepted.
        steps, solution = split_steps(trace.reasoning), trace.solution
        log.clear()
        return outcome("engine_error", trace.reasoning, 0, f"engine error: {err}")

    reasoning = join_steps(steps) if replaced else trace.reasoning
    if visit == 0 and skip_reason is not None:
        return outcome("skipped", reasoning, visit, skip_reason)
    return outcome("revised" if replaced else "unchanged", reasoning, visit, skip_reason)


@dataclass
class _Draft:
    """One rollout while it is generated: its first step so far, then its continuation."""

    step_text: str = ""
    step_tokens: int = 0
    attempts: int = 0
    last: GenerationResult | None = None      # the latest result (step or continuation)
    continuation: GenerationResult | None = None
    out_of_budget: bool = False


def _visit(trace, boundary, visit, prompt, prefix, rest_steps, config: SearchConfig,
           grade: GradeFn, count_tokens, think_close: str, context_length: int | None):
    """All rollouts from one boundary: first steps (banned words), then continuations."""
    base_id = f"{trace.id}/v{visit}"
    seeds = [(derive_seed(config.seed, trace.id, visit, r, "step"),
              derive_seed(config.seed, trace.id, visit, r, "rest")) for r in range(config.rollouts)]
    budget = rollout_budget(config.max_tokens, context_length,
                            count_tokens(prompt) if context_length is not None else 0)
    step_budget = min(config.max_step_tokens, budget)
    drafts = [_Draft() for _ in range(config.rollouts)]

    # x_r: continue the current thought for one step, transition keywords banned. The ban holds
    # until a non-blank step ends at its blank line: a blank step is continued, still banned, and
    # a step that reaches its budget ends the rollout (truncated) instead of going on unbanned.
    writing = list(range(config.rollouts))
    while writing:
        requests = []
        for r in writing:
            d = drafts[r]
            suffix = "" if d.attempts == 0 else f".{d.attempts}"
            seed = seeds[r][0] if d.attempts == 0 else derive_seed(seeds[r][0], d.attempts)
            requests.append(GenerationRequest(
                f"{base_id}/r{r}/step{suffix}", prompt + d.step_text, step_budget - d.step_tokens,
                config.temperature, config.top_p, seed, stop=(STEP_SEPARATOR,),
                banned_words=config.keywords))
        results = yield requests
        still = []
        for r, x in zip(writing, results):
            d = drafts[r]
            d.attempts += 1
            d.step_text += x.text
            d.step_tokens += x.num_tokens
            d.last = x
            blank = x.finish_reason == "stop" and x.stop_string is not None and not d.step_text.strip()
            if blank:
                d.step_text += STEP_SEPARATOR
                # An attempt costs at least its blank line, so the attempts are bounded too.
                if max(d.step_tokens, d.attempts) < step_budget:
                    still.append(r)
                else:
                    d.out_of_budget = True
        writing = still

    # y_r: free continuation to the end of the trace and its solution.
    pending = []
    for r, d in enumerate(drafts):
        x = d.last
        if d.out_of_budget or x.finish_reason != "stop" or x.stop_string is None:
            continue  # truncated at its budget, or ended (end of sequence) inside the first step
        rest_prompt = prompt + d.step_text + STEP_SEPARATOR
        rest_budget = budget - d.step_tokens
        if context_length is not None:
            rest_budget = min(rest_budget, context_length - count_tokens(rest_prompt))
        if rest_budget < 1:
            d.out_of_budget = True  # no request asks for fewer than one token
            continue
        pending.append((r, GenerationRequest(f"{base_id}/r{r}/rest", rest_prompt, rest_budget,
                                             config.temperature, config.top_p, seeds[r][1])))
    if pending:
        results = yield [request for _, request in pending]
        for (r, _), y in zip(pending, results):
            drafts[r].continuation = drafts[r].last = y

    return [_score(trace, boundary, visit, r, len(prefix), rest_steps, d,
                   (seeds[r][0], seeds[r][1] if d.continuation else None), grade, config, think_close)
            for r, d in enumerate(drafts)]


def _response(reasoning: str, solution: str, think_close: str) -> str:
    return f"{reasoning}\n{think_close}\n\n{solution}"


def _continuation_text(ro: Rollout) -> str:
    return ro.step_text + ro.continuation


def _split_continuation(ro: Rollout, think_close: str) -> tuple[str, str]:
    reasoning, _, solution = _continuation_text(ro).partition(think_close)
    return reasoning.strip("\n"), solution.strip()


def _score(trace, boundary, visit, r, prefix_steps, rest_steps, draft: _Draft, seeds,
           grade: GradeFn, config: SearchConfig, think_close: str) -> Rollout:
    y = draft.continuation
    ro = Rollout(
        trace_id=trace.id, boundary=boundary, visit=visit, rollout=r, prefix_steps=prefix_steps,
        rest_steps=rest_steps, step_text=draft.step_text,
        continuation=STEP_SEPARATOR + y.text if y is not None else "",
        step_tokens=draft.step_tokens, continuation_tokens=y.num_tokens if y is not None else 0,
        steps=0, answer=None, correct=False, seeds=seeds)
    # Neither a rollout that ran out of tokens nor one that ended without closing its reasoning
    # is graded: it scores 0 and is never accepted, whatever answer it may contain.
    ro.truncated_length = draft.out_of_budget or draft.last.finish_reason == "length"
    ro.unclosed = not ro.truncated_length and think_close not in _continuation_text(ro)
    reasoning, solution = _split_continuation(ro, think_close)
    ro.steps = len(split_steps(reasoning))
    if not ro.truncated:
        result = grade(trace.reference_answer, solution)
        ro.answer, ro.correct = result.extracted, bool(result.correct)
        if ro.correct:
            ro.log_value = ro.steps * math.log(config.gamma)
    return ro


class TraceSearch:
    """Object API over `retro_search`: `pending` requests, `feed(results)`, then `outcome`."""

    def __init__(self, trace: TraceRecord, prompt_head: str, config: SearchConfig, grade: GradeFn,
                 count_tokens: Callable[[str], int], think_close: str = "</think>",
                 context_length: int | None = None):
        self.trace = trace
        self._steps = retro_search(trace, prompt_head, config, grade, count_tokens, think_close,
                                   context_length)
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

    def fail(self, error: str) -> None:
        """A pending request could not be generated: the search ends with status
        "engine_error" and `error` in its outcome (see `retro_search`)."""
        if self.done:
            raise RuntimeError(f"trace {self.trace.id!r}: search already finished")
        try:
            self._steps.throw(EngineFailure(error))
        except StopIteration as stop:
            self.pending, self.outcome = [], stop.value
        else:  # the search catches EngineFailure and returns: never reached
            raise RuntimeError(f"trace {self.trace.id!r}: the search went on after an engine error")

    def _advance(self, results) -> list[GenerationRequest]:
        try:
            self.pending = self._steps.send(results)
        except StopIteration as stop:
            self.pending, self.outcome = [], stop.value
        return self.pending
