"""Partial revision: which boundaries the search visits when `search.max_boundaries` or
`search.boundary_fraction` limit it (ALGORITHM.md, "Partial revision")."""

import statistics

from retro_search.records import TraceRecord
from retro_search.search import TraceSearch
from retro_search.search_types import SearchConfig
from scripted_engine import ScriptedEngine, boxed_grade, count_words

HEAD = "<user>Q</user><think>\n"
WRONG = "</think>\n\n\\boxed{9}"


def long_trace(trace_id: str, thoughts: int = 41, steps_per_thought: int = 20) -> TraceRecord:
    """`thoughts - 1` boundaries; every thought is `steps_per_thought` steps long, so any
    rollout of fewer steps that reaches the answer replaces the rest of the trace."""
    parts = []
    for t in range(thoughts):
        opener = "Start." if t == 0 else f"Wait, idea {t}."
        parts += [opener] + [f"step {t}.{k}." for k in range(steps_per_thought - 1)]
    return TraceRecord(id=trace_id, question="Q", reference_answer="4",
                       reasoning="\n\n".join(parts), solution="\\boxed{4}")


def run(trace, policy, **config):
    engine = ScriptedEngine(policy)
    search = TraceSearch(trace, HEAD, SearchConfig(**config), boxed_grade, count_words)
    while not search.done:
        search.feed(engine.generate(search.pending))
    return search.outcome


def wrong(req):
    return ("Hence.", "stop", "\n\n") if "/step" in req.request_id else (WRONG, "stop", None)


def shortcut_with_new_thoughts(req):
    """The first visit is accepted: a correct 11-step rest that switches thought 10 times (10 new
    boundaries); every later rollout is wrong."""
    if "/step" in req.request_id:
        return "Hence.", "stop", "\n\n"
    if "/v0/" in req.request_id:
        rest = "\n\n".join(f"Wait, check {i}." for i in range(10))
        return rest + "\n" + "</think>\n\n\\boxed{4}", "stop", None
    return WRONG, "stop", None


def test_the_cap_holds_after_a_replacement_shortens_the_trace():
    # 40 boundaries, cap 6: the first visit replaces the rest of the trace with one that has only
    # 10 boundaries left. The search still visits 6 boundaries, wherever the first one was.
    for i in range(20):
        out = run(long_trace(f"t{i}"), shortcut_with_new_thoughts, max_boundaries=6)
        assert out.log[0].accepted, "the first visit's shortcut should be accepted"
        assert out.boundaries_visited == 6, (f"t{i}", [r.boundary for r in out.log])


def test_the_share_holds_in_expectation_after_a_replacement():
    shares = []
    for i in range(40):
        out = run(long_trace(f"t{i}"), shortcut_with_new_thoughts, boundary_fraction=0.5)
        # Boundaries the search reached: those before the first visit, plus the current trace's.
        first = out.log[0].boundary
        after_first = len(out.log) - 1
        reachable_after = 9  # the new trace has first + 9 boundaries; the search goes on at first + 1
        shares.append((1 + after_first) / (first + reachable_after))
    assert 0.4 < statistics.fmean(shares) < 0.6, statistics.fmean(shares)


def test_a_cap_alone_spreads_visits_over_the_whole_trace():
    # Without acceptances, the cap picks a uniform random set of boundaries, not the first ones.
    last_visits = [run(long_trace(f"t{i}"), wrong, max_boundaries=4).log[-1].boundary
                   for i in range(20)]
    assert all(run(long_trace(f"t{i}"), wrong, max_boundaries=4).boundaries_visited == 4
               for i in range(3))
    assert statistics.fmean(last_visits) > 20, last_visits


def test_a_cap_at_least_the_number_of_boundaries_visits_them_all():
    out = run(long_trace("t", thoughts=6), wrong, max_boundaries=16)
    assert [r.boundary for r in out.log] == [1, 2, 3, 4, 5]


def test_the_same_seed_visits_the_same_boundaries_and_another_seed_others():
    def visited(seed, trace_id="t"):
        out = run(long_trace(trace_id), shortcut_with_new_thoughts, max_boundaries=6,
                  boundary_fraction=0.5, seed=seed)
        return [r.boundary for r in out.log]
    assert visited(0) == visited(0)
    assert visited(0) != visited(1) or visited(0, "u") != visited(1, "u")


def test_a_cap_of_zero_visits_nothing():
    out = run(long_trace("t"), wrong, max_boundaries=0)
    assert out.boundaries_visited == 0 and out.status == "unchanged"
