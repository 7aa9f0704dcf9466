"""The Retro-Search state machine, driven by a scripted engine."""

import pytest

from retro_search.records import TraceRecord
from retro_search.search import TraceSearch, derive_seed
from retro_search.search_types import SearchConfig
from scripted_engine import ScriptedEngine, boxed_grade, count_words

HEAD = "<user>Q</user><think>\n"

# 3 thoughts, 7 steps: boundary 1 after step 2, boundary 2 after step 4.
REASONING = ("Let x be 2.\n\nSo 2x is 4.\n\nWait, maybe 5.\n\nNo, 4.\n\n"
             "Alternatively, 2+2.\n\nThat is 4.\n\nSo 4.")
TRACE = TraceRecord(id="t1", question="Q", reference_answer="4", reasoning=REASONING,
                    solution="The answer is \\boxed{4}.")


def run(trace, engine, **config):
    search = TraceSearch(trace, HEAD, SearchConfig(**config), boxed_grade, count_words)
    while not search.done:
        search.feed(engine.generate(search.pending))
    return search.outcome


def step_then(rest_text, step_text="Hence 4.", finish="stop"):
    """Policy: constrained step returns `step_text` (stopped at the blank line), the free
    continuation returns `rest_text` with `finish`."""
    def policy(req):
        if req.request_id.endswith("/step"):
            return step_text, "stop", "\n\n"
        return rest_text, finish, None
    return policy


def test_correct_shorter_rollout_replaces_the_rest_of_the_trace():
    engine = ScriptedEngine(step_then("</think>\n\nSo \\boxed{4}."))
    out = run(TRACE, engine)
    first = out.log[0]
    assert first.boundary == 1 and first.prefix_steps == 2 and first.rest_steps == 5
    assert first.correct and first.accepted and first.steps == 1
    assert out.status == "revised"
    assert out.reasoning == "Let x be 2.\n\nSo 2x is 4.\n\nHence 4."
    assert out.solution == "So \\boxed{4}."
    assert (out.steps_before, out.steps_after) == (7, 3)
    assert (out.thoughts_before, out.thoughts_after) == (3, 1)
    assert out.reasoning_tokens_after < out.reasoning_tokens_before
    assert out.response_tokens_after < out.response_tokens_before
    # the new trace has a single thought: no boundary 2 left to visit
    assert out.boundaries_visited == 1 and out.rollouts_tried == 1 and out.rollouts_accepted == 1


def test_wrong_answer_is_rejected_and_the_search_moves_to_the_next_boundary():
    engine = ScriptedEngine(step_then("</think>\n\n\\boxed{5}"))
    out = run(TRACE, engine)
    assert out.status == "unchanged"
    assert out.reasoning == REASONING and out.solution == TRACE.solution
    assert [r.boundary for r in out.log] == [1, 2]
    assert not any(r.accepted for r in out.log)
    assert all(r.value == 0.0 and r.log_value is None and r.answer == "5" for r in out.log)


def test_correct_but_longer_rollout_is_rejected():
    long_rest = "\n\n".join(f"step {i}" for i in range(8)) + "\n</think>\n\n\\boxed{4}"
    out = run(TRACE, ScriptedEngine(step_then(long_rest)))
    assert all(r.correct and not r.accepted for r in out.log)
    assert out.status == "unchanged"


def test_equal_length_rollout_is_rejected_because_value_must_strictly_improve():
    # boundary 2 keeps 4 steps and its rest is 3 steps; "Hence 4." + 2 more steps is 3 steps too.
    def policy(req):
        if req.request_id.endswith("/step"):
            return "Hence 4.", "stop", "\n\n"
        if "/v0/" in req.request_id:
            return "</think>\n\n\\boxed{5}", "stop", None
        return "a\n\nb\n</think>\n\n\\boxed{4}", "stop", None
    out = run(TRACE, ScriptedEngine(policy))
    b2 = out.log[1]
    assert b2.boundary == 2 and b2.correct
    assert b2.steps == b2.rest_steps == 3 and not b2.accepted


def test_rollout_that_reaches_its_budget_is_truncated_and_never_accepted_even_when_right():
    out = run(TRACE, ScriptedEngine(step_then("</think>\n\n\\boxed{4}", finish="length")))
    assert all(r.truncated_length and not r.unclosed for r in out.log)
    assert all(not r.accepted and r.value == 0 and r.answer is None for r in out.log)
    assert out.rollouts_truncated_length == out.rollouts_tried == 2
    assert out.rollouts_unclosed == 0 and out.status == "unchanged"


def test_rollout_that_ends_without_closing_its_reasoning_is_unclosed_not_truncated():
    out = run(TRACE, ScriptedEngine(step_then("so \\boxed{4}")))
    assert all(r.unclosed and not r.truncated_length and not r.accepted for r in out.log)
    assert out.rollouts_unclosed == out.rollouts_tried == 2
    assert out.rollouts_truncated_length == 0


def test_step_that_closes_the_reasoning_by_itself_needs_no_continuation():
    def policy(req):
        assert req.request_id.endswith("/step"), "no continuation should be requested"
        return "Thus 4.\n</think>\n\n\\boxed{4}", "stop", None  # end of sequence inside the step
    out = run(TRACE, ScriptedEngine(policy))
    assert out.log[0].accepted and out.log[0].steps == 1
    assert out.solution == "\\boxed{4}"


def test_requests_ban_transition_keywords_only_in_the_first_step():
    engine = ScriptedEngine(step_then("</think>\n\n\\boxed{5}"))
    run(TRACE, engine, temperature=0.7, top_p=0.9, max_tokens=500, max_step_tokens=50)
    step, rest = engine.requests[0], engine.requests[1]
    assert step.prompt == HEAD + "Let x be 2.\n\nSo 2x is 4.\n\n"
    assert step.stop == ("\n\n",) and "Wait" in step.banned_words and "Alternatively" in step.banned_words
    assert step.max_tokens == 50 and step.temperature == 0.7 and step.top_p == 0.9
    assert rest.prompt == step.prompt + "Hence 4.\n\n"
    assert rest.stop == () and rest.banned_words == ()
    assert rest.max_tokens == 500 - count_words("Hence 4.")


def test_several_rollouts_per_boundary_the_best_value_wins_and_ties_go_to_fewer_tokens():
    replies = {
        "r0": "x\n\ny\n\nz\n</think>\n\n\\boxed{4}",         # correct, 4 steps
        "r1": "a\n</think>\n\n\\boxed{4} long long long",    # correct, 2 steps, more tokens
        "r2": "a\n</think>\n\n\\boxed{4}",                   # correct, 2 steps, fewest tokens
        "r3": "</think>\n\n\\boxed{7}",                       # wrong
    }

    def policy(req):
        if req.request_id.endswith("/step"):
            return "Hence 4.", "stop", "\n\n"
        return replies[req.request_id.split("/")[-2]], "stop", None
    engine = ScriptedEngine(policy)
    out = run(TRACE, engine, rollouts=4)
    first_visit = [r for r in out.log if r.visit == 0]
    assert [r.rollout for r in first_visit] == [0, 1, 2, 3]
    assert [r.accepted for r in first_visit] == [False, False, True, False]
    assert len({r.seeds for r in first_visit}) == 4
    assert engine.calls == 2  # all four step requests in one call, then all four continuations


def test_gamma_ranks_rollouts_by_step_count():
    out = run(TRACE, ScriptedEngine(step_then("a\n</think>\n\n\\boxed{4}")), gamma=0.5)
    assert out.log[0].value == pytest.approx(0.5 ** 2)


def test_wrong_original_answer_passes_through_flagged_without_any_generation():
    wrong = TraceRecord(id="t2", question="Q", reference_answer="5", reasoning=REASONING,
                        solution="\\boxed{4}")
    engine = ScriptedEngine(step_then("unused"))
    out = run(wrong, engine)
    assert out.status == "incorrect_original" and not out.original_correct
    assert out.original_answer == "4"
    assert out.reasoning == REASONING and engine.requests == []
    assert out.rollouts_tried == 0


def test_search_continues_on_the_revised_trace_and_revisits_its_new_boundaries():
    # The first rollout replaces the rest with text that switches thought twice; the search goes on
    # at boundary 2 of the new trace, which lies inside the replacement.
    def policy(req):
        if req.request_id.endswith("/step"):
            return "Hence 4.", "stop", "\n\n"
        if "/v0/" in req.request_id:
            return "Wait, check 4.\n\nHmm, sure 4.\n\nYes.\n</think>\n\n\\boxed{4}", "stop", None
        return "</think>\n\n\\boxed{4}", "stop", None
    out = run(TRACE, ScriptedEngine(policy))
    assert [(r.visit, r.boundary, r.accepted) for r in out.log] == [(0, 1, True), (1, 2, True)]
    assert out.log[1].prefix_steps == 4 and out.log[1].rest_steps == 2
    assert out.reasoning == "Let x be 2.\n\nSo 2x is 4.\n\nHence 4.\n\nWait, check 4.\n\nHence 4."


def test_same_seed_gives_the_same_requests_and_outcome():
    def requests_of(seed):
        engine = ScriptedEngine(step_then("</think>\n\n\\boxed{5}"))
        out = run(TRACE, engine, seed=seed, rollouts=2)
        return engine.requests, out
    (a, out_a), (b, out_b), (c, _) = requests_of(1), requests_of(1), requests_of(2)
    assert a == b and out_a == out_b
    assert [r.seed for r in a] != [r.seed for r in c]


def test_seeds_are_stable_across_processes():
    assert derive_seed(0, "t1", 0, 0, "step") == derive_seed(0, "t1", 0, 0, "step")
    assert derive_seed(0, "t1", 0, 0, "step") == 2064630128


def test_feeding_results_for_other_requests_is_an_error():
    search = TraceSearch(TRACE, HEAD, SearchConfig(), boxed_grade, count_words)
    with pytest.raises(ValueError, match="do not match"):
        search.feed([])


def test_invalid_settings_are_rejected_with_the_setting_named():
    with pytest.raises(ValueError, match="search.gamma"):
        SearchConfig(gamma=0)
    with pytest.raises(ValueError, match="search.rollouts"):
        SearchConfig(rollouts=0)
