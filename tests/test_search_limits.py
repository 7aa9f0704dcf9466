"""Where the search meets its limits: the ban on the first step, token budgets, the engine's
context, and values of very long traces (ALGORITHM.md, "The search")."""

import pytest

from retro_search.records import TraceRecord
from retro_search.scheduler import run_shard
from retro_search.search import TraceSearch
from retro_search.search_types import SearchConfig
from scripted_engine import ScriptedEngine, boxed_grade, count_words

HEAD = "<user>Q</user><think>\n"
# 3 thoughts, 7 steps: boundary 1 after step 2, boundary 2 after step 4.
REASONING = ("Let x be 2.\n\nSo 2x is 4.\n\nWait, maybe 5.\n\nNo, 4.\n\n"
             "Alternatively, 2+2.\n\nThat is 4.\n\nSo 4.")
TRACE = TraceRecord(id="t1", question="Q", reference_answer="4", reasoning=REASONING,
                    solution="The answer is \\boxed{4}.")
RIGHT = "</think>\n\n\\boxed{4}"


def run(trace, engine, context_length=None, **config):
    search = TraceSearch(trace, HEAD, SearchConfig(**config), boxed_grade, count_words,
                         context_length=context_length)
    while not search.done:
        search.feed(engine.generate(search.pending))
    return search.outcome


def first_visit_requests(engine):
    return [r for r in engine.requests if "/v0/" in r.request_id]


# --- the ban holds for the whole first step ---------------------------------------------------

def test_a_blank_first_step_does_not_lift_the_ban():
    # The model answers the banned request with an empty step (a blank line right away): the ban
    # must hold until a step with text has been written.
    def policy(req):
        if "/step" in req.request_id:
            blank = req.request_id.endswith("/step")
            return ("" if blank else "Hence 4."), "stop", "\n\n"
        return RIGHT, "stop", None
    engine = ScriptedEngine(policy)
    out = run(TRACE, engine)
    first, second, rest = first_visit_requests(engine)
    assert first.banned_words and second.banned_words, "the step after a blank one is banned too"
    assert second.prompt == first.prompt + "\n\n"  # the model's own blank line, kept
    assert second.max_tokens == first.max_tokens - count_words("")
    assert rest.banned_words == () and rest.prompt == second.prompt + "Hence 4.\n\n"
    assert out.log[0].step_text == "\n\nHence 4." and out.log[0].accepted
    assert out.reasoning == "Let x be 2.\n\nSo 2x is 4.\n\nHence 4."  # no empty step in the trace


def test_a_step_that_stays_blank_until_its_budget_truncates_the_rollout():
    def policy(req):
        if "/step" in req.request_id:
            return "  ", "stop", "\n\n"  # whitespace only, every time
        raise AssertionError("no continuation may follow a step that never started")
    engine = ScriptedEngine(policy)
    out = run(TRACE, engine, max_step_tokens=3)
    # Each attempt costs at least one token (its blank line), so 3 attempts spend the budget.
    assert len(first_visit_requests(engine)) == 3
    assert all(r.truncated_length and not r.accepted for r in out.log)


def test_a_first_step_that_reaches_its_budget_ends_the_rollout_instead_of_going_on_unbanned():
    def policy(req):
        if "/step" in req.request_id:
            return "Hence", "length", None  # ran out of step tokens mid-sentence
        raise AssertionError(f"unbanned continuation requested: {req.request_id}")
    engine = ScriptedEngine(policy)
    out = run(TRACE, engine, max_step_tokens=1, max_tokens=100)
    assert all(r.banned_words for r in engine.requests)
    assert all(r.truncated_length and not r.unclosed and not r.accepted for r in out.log)
    assert out.rollouts_truncated_length == out.rollouts_tried == 2


# --- budgets ----------------------------------------------------------------------------------

def test_no_request_asks_for_fewer_than_one_token_when_the_first_step_spends_the_budget():
    # max_step_tokens >= max_tokens: a step that ends exactly at max_tokens leaves nothing for the
    # continuation. The rollout is truncated; no request with max_tokens=0 reaches the engine.
    def policy(req):
        assert req.max_tokens >= 1, f"{req.request_id} asks for {req.max_tokens} tokens"
        if "/step" in req.request_id:
            return "one two three", "stop", "\n\n"
        return RIGHT, "stop", None
    engine = ScriptedEngine(policy)
    out = run(TRACE, engine, max_tokens=3, max_step_tokens=8)
    assert not any(r.request_id.endswith("/rest") for r in engine.requests)
    assert all(r.truncated_length and not r.accepted for r in out.log)


def test_budgets_shrink_to_fit_the_engines_context():
    engine = ScriptedEngine(lambda req: ("Hence 4.", "stop", "\n\n") if "/step" in req.request_id
                            else ("</think>\n\n\\boxed{5}", "stop", None))
    prompt_words = count_words(HEAD + "Let x be 2.\n\nSo 2x is 4.\n\n")
    run(TRACE, engine, context_length=prompt_words + 10, max_tokens=1000, max_step_tokens=50)
    step, rest = first_visit_requests(engine)
    assert step.max_tokens == 10
    assert rest.max_tokens == prompt_words + 10 - count_words(rest.prompt) == 8


def test_a_trace_whose_prompt_does_not_fit_the_context_is_skipped_with_its_reason():
    engine = ScriptedEngine(lambda req: pytest.fail("nothing should be generated"))
    out = run(TRACE, engine, context_length=5)
    assert out.status == "skipped" and out.rollouts_tried == 0
    assert "boundary 1" in out.skip_reason and "context holds 5" in out.skip_reason
    assert out.reasoning == REASONING and out.solution == TRACE.solution


def test_boundaries_past_the_context_end_the_search_of_that_trace_only():
    # Boundary 1's prompt fits, boundary 2's (two steps longer) does not; another trace in the
    # same shard is searched as usual.
    short = TraceRecord(id="t2", question="Q", reference_answer="4",
                        reasoning="A.\n\nWait, B.\n\nC.", solution="\\boxed{4}")
    engine = ScriptedEngine(lambda req: ("Hence 4.", "stop", "\n\n") if "/step" in req.request_id
                            else ("</think>\n\n\\boxed{5}", "stop", None))
    context = count_words(HEAD + "Let x be 2.\n\nSo 2x is 4.\n\n") + 4
    outcomes, _ = run_shard([TRACE, short], engine, prompt_head=lambda q: HEAD,
                            config=SearchConfig(), grade=boxed_grade, count_tokens=count_words,
                            context_length=context, show_progress=False)
    first, second = outcomes
    assert first.status == "unchanged" and first.boundaries_visited == 1
    assert "boundary 2" in first.skip_reason
    assert second.status == "unchanged" and second.boundaries_visited == 1
    assert second.skip_reason is None


def test_the_scheduler_takes_the_context_from_the_engine():
    engine = ScriptedEngine(lambda req: pytest.fail("nothing should be generated"))
    engine.max_model_len = 4
    outcomes, _ = run_shard([TRACE], engine, prompt_head=lambda q: HEAD, config=SearchConfig(),
                            grade=boxed_grade, count_tokens=count_words, show_progress=False)
    assert outcomes[0].status == "skipped"


# --- values ------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [0, 1, 1.5, -0.1])
def test_gamma_outside_the_open_unit_interval_is_refused_naming_the_setting(gamma):
    with pytest.raises(ValueError, match=r"search\.gamma must be strictly between 0 and 1"):
        SearchConfig(gamma=gamma)


def test_a_shorter_rollout_of_a_very_long_trace_wins_although_its_value_underflows():
    # 0.5 ** 1500 and 0.5 ** 1200 are both 0.0 in floating point; in log space 1,200 steps still
    # beat 1,500.
    reasoning = "\n\n".join(["Start."] + ["Wait, again."] + [f"s{i}." for i in range(1500)])
    trace = TraceRecord(id="long", question="Q", reference_answer="4", reasoning=reasoning,
                        solution="\\boxed{4}")
    shorter = "\n\n".join(f"r{i}." for i in range(1199)) + "\n" + RIGHT
    out = run(trace, ScriptedEngine(lambda req: ("Hence.", "stop", "\n\n")
                                    if "/step" in req.request_id else (shorter, "stop", None)),
              gamma=0.5)
    rollout = out.log[0]
    assert rollout.value == 0.0 and rollout.steps == 1200 < rollout.rest_steps == 1501
    assert rollout.log_value == pytest.approx(1200 * -0.6931471805599453)
    assert rollout.accepted and out.status == "revised"


# --- lengths ------------------------------------------------------------------------------------

def test_reasoning_tokens_leave_out_the_solution_that_an_accepted_rollout_replaces():
    # The rollout's reasoning is shorter but its solution is much longer: the reasoning length
    # (the paper's) falls while the whole response grows.
    long_solution = "</think>\n\n" + " ".join(["because"] * 40) + " \\boxed{4}"
    out = run(TRACE, ScriptedEngine(lambda req: ("Hence 4.", "stop", "\n\n")
                                    if "/step" in req.request_id else (long_solution, "stop", None)))
    assert out.status == "revised"
    assert out.reasoning_tokens_before == count_words(REASONING)
    assert out.reasoning_tokens_after == count_words(out.reasoning) < out.reasoning_tokens_before
    assert out.response_tokens_after > out.response_tokens_before
