"""The shard scheduler: concurrency over one engine, progress file, resume."""

import json

import pytest

from retro_search.scheduler import read_progress, run_shard
from retro_search.search_types import SearchConfig
from scripted_engine import (
    ScriptedEngine,
    StreamingScriptedEngine,
    boxed_grade,
    count_words,
    make_traces,
    policy,
)


def shard(traces, engine, progress_path=None, **config):
    return run_shard(traces, engine, prompt_head=lambda q: f"Q{q[1:]}|", config=SearchConfig(**config),
                     grade=boxed_grade, count_tokens=count_words, progress_path=progress_path,
                     show_progress=False)


class Killed(BaseException):
    """A kill (SIGKILL, preemption) in the middle of a call: not an engine fault to retry, so a
    BaseException, which the scheduler's retries let through."""


class DyingEngine(ScriptedEngine):
    """Dies (like a SIGKILL mid-run) on its N-th generate call."""

    def __init__(self, policy, die_on_call):
        super().__init__(policy)
        self.die_on_call = die_on_call

    def generate(self, requests):
        if self.calls + 1 == self.die_on_call:
            raise Killed()
        return super().generate(requests)


def test_every_trace_is_searched_and_outcomes_keep_input_order():
    traces = make_traces(6)
    outcomes, stats = shard(traces, ScriptedEngine(policy))
    assert [o.trace_id for o in outcomes] == [t.id for t in traces]
    assert outcomes[-1].status == "incorrect_original"
    assert all(o.status == "revised" for o in outcomes[:-1])
    assert stats.traces_done == 7 and stats.rollouts == sum(o.rollouts_tried for o in outcomes)


def test_waves_batch_requests_of_all_traces_together():
    traces = make_traces(6)
    engine = ScriptedEngine(policy)
    shard(traces, engine)
    # a wave holds the step requests (or the continuations) of every active trace: the longest
    # search (3 boundaries, 2 calls each) sets the number of calls, not the number of traces.
    assert engine.calls == 6
    assert len(engine.requests) == 2 * (1 + 2 + 3 + 1 + 2 + 3)


def test_streaming_engine_gives_the_same_outcomes_as_waves():
    traces = make_traces(6)
    waves, _ = shard(traces, ScriptedEngine(policy), rollouts=2)
    streamed, _ = shard(traces, StreamingScriptedEngine(policy), rollouts=2)
    assert streamed == waves


def test_finished_traces_are_appended_to_the_progress_file(tmp_path):
    progress = tmp_path / "p.jsonl"
    outcomes, _ = shard(make_traces(3), ScriptedEngine(policy), progress)
    saved = read_progress(progress)
    assert set(saved) == {o.trace_id for o in outcomes}
    assert saved["t1"] == outcomes[1]


def test_killed_run_resumes_without_redoing_finished_traces_and_matches_an_uninterrupted_run(tmp_path):
    traces = make_traces(6)
    uninterrupted, _ = shard(traces, ScriptedEngine(policy), rollouts=2)

    progress = tmp_path / "p.jsonl"
    with pytest.raises(Killed):
        shard(traces, DyingEngine(policy, die_on_call=4), progress, rollouts=2)
    done_before = set(read_progress(progress))
    assert done_before and len(done_before) < len(traces)

    engine = ScriptedEngine(policy)
    resumed, stats = shard(traces, engine, progress, rollouts=2)
    assert stats.traces_resumed == len(done_before)
    asked_for = {r.request_id.split("/")[0] for r in engine.requests}
    assert not asked_for & done_before
    assert resumed == uninterrupted


def test_a_torn_last_line_in_the_progress_file_is_searched_again(tmp_path):
    traces = make_traces(3)
    progress = tmp_path / "p.jsonl"
    full, _ = shard(traces, ScriptedEngine(policy), progress)
    lines = progress.read_text().splitlines(keepends=True)
    progress.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    torn_id = json.loads(lines[-1])["trace_id"]
    engine = ScriptedEngine(policy)
    again, _ = shard(traces, engine, progress)
    assert {r.request_id.split("/")[0] for r in engine.requests} == (
        set() if torn_id == "wrong" else {torn_id})
    assert again == full


def test_duplicate_trace_ids_in_a_shard_are_rejected():
    t = make_traces(1)[0]
    with pytest.raises(ValueError, match="unique"):
        shard([t, t], ScriptedEngine(policy))
