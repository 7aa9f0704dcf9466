"""A faulty engine does not crash a shard (search and sample, through `engines.calls`): requests
that fail are retried with the same seed, a trace or sample whose request cannot be generated is
recorded with its error and counted, a hung request becomes a failure within the time limit, a
mostly failed shard exits with status 1 with its finished work kept for the rerun; plus the
search stage's input checks and its warnings about empty or truncated results.

Fault-injecting engines: `scripted_engine.FaultyEngine` (batch) and `StreamingFaultyEngine`
for the scheduler and `run_samples`; `StageEngine`/`SampleEngine` below for the stages and the
command line (engine.name=test_engine_faults:StageEngine), configured through class settings so
that a failing run and its healthy rerun have the same config (the same progress file)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from scripted_engine import (
    FaultyEngine,
    ScriptedEngine,
    StreamingFaultyEngine,
    StreamingScriptedEngine,
    boxed_grade,
    count_words,
    make_traces,
    policy,
)

from retro_search.artifacts import outcome_to_dict
from retro_search.cli import main
from retro_search.config import compose
from retro_search.engines.base import GenerationResult
from retro_search.records import TraceRecord
from retro_search.sampling import (
    SampleSettings,
    plan_requests,
    read_samples,
    run_samples,
)
from retro_search.scheduler import read_progress, run_shard
from retro_search.search_types import SearchConfig

ENGINES = {"batch": (ScriptedEngine, FaultyEngine),
           "streaming": (StreamingScriptedEngine, StreamingFaultyEngine)}


# --------------------------------------------------------------------------- the scheduler

def shard(traces, engine, progress_path=None, **config):
    return run_shard(traces, engine, prompt_head=lambda q: f"Q{q[1:]}|",
                     config=SearchConfig(rollouts=2, **config), grade=boxed_grade,
                     count_tokens=count_words, progress_path=progress_path, show_progress=False)


def as_dicts(outcomes):
    return [outcome_to_dict(o) for o in outcomes]


@pytest.fixture(scope="module")
def healthy():
    """The outcomes of a fault-free run (the batch and the streaming engine agree)."""
    outcomes, _ = shard(make_traces(6), ScriptedEngine(policy))
    return as_dicts(outcomes)


def of_trace(*ids):
    return lambda req: req.request_id.split("/", 1)[0] in ids


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_a_request_that_always_fails_records_its_trace_and_the_shard_completes(
        kind, healthy, tmp_path):
    engine = ENGINES[kind][1](policy, lambda req, n: "raise" if of_trace("t2")(req) else None)
    progress = tmp_path / "p.jsonl"
    outcomes, stats = shard(make_traces(6), engine, progress)
    failed = outcomes[2]
    assert failed.status == "engine_error" and failed.trace_id == "t2"
    assert "engine error: request 't2/v0/r" in failed.skip_reason
    assert "failed 3 times" in failed.skip_reason and "RuntimeError: injected fault" in \
        failed.skip_reason
    trace = make_traces(6)[2]
    assert (failed.reasoning, failed.solution, failed.log) == (trace.reasoning, trace.solution, [])
    others = [d for d in as_dicts(outcomes) if d["trace_id"] != "t2"]
    assert others == [d for d in healthy if d["trace_id"] != "t2"]
    assert stats.traces_failed == 1 and stats.faults.failed >= 1 and stats.faults.retries >= 2
    # Not progress: a rerun searches it again.
    assert set(read_progress(progress)) == {"t0", "t1", "t3", "t4", "t5", "wrong"}


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_faults_on_the_first_try_only_are_retried_to_the_fault_free_result(kind, healthy):
    # Every request raises the first time it is sent: retries with the same seed fix all.
    engine = ENGINES[kind][1](policy, lambda req, attempt: "raise" if attempt == 0 else None)
    outcomes, stats = shard(make_traces(6), engine)
    assert as_dicts(outcomes) == healthy
    assert stats.traces_failed == 0 and stats.faults.failed == 0
    assert stats.faults.retries >= len(engine.requests)


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_one_result_too_few_once_is_retried_to_the_fault_free_result(kind, healthy):
    dropped = set()

    def fault(req, attempt):
        if attempt == 0 and not dropped and req.request_id.startswith("t1/"):
            dropped.add(req.request_id)
            return "drop"
        return None

    engine = ENGINES[kind][1](policy, fault)
    outcomes, stats = shard(make_traces(6), engine)
    assert dropped and as_dicts(outcomes) == healthy
    assert stats.faults.retries >= 1 and stats.faults.failed == 0


def test_an_engine_that_always_returns_one_result_too_few_fails_traces_not_the_shard(healthy):
    engine = FaultyEngine(policy, lambda req, attempt: None)
    generate = engine.generate
    engine.generate = lambda requests: generate(requests)[:-1]
    outcomes, stats = shard(make_traces(6), engine)
    failed = [o for o in outcomes if o.status == "engine_error"]
    assert failed and stats.traces_failed == len(failed)
    assert all("(0 results for 1 requests)" in o.skip_reason for o in failed)
    by_id = {d["trace_id"]: d for d in healthy}
    for d in as_dicts(outcomes):
        if d["status"] != "engine_error":
            assert d == by_id[d["trace_id"]]


def test_a_hung_batch_call_gives_the_engine_up_within_the_limit(healthy):
    # t2's second boundary hangs; t1 is in that wave too, t0 and `wrong` finished before it.
    engine = FaultyEngine(policy, lambda req, n: "hang" if req.request_id.startswith("t2/v1/")
                          else None)
    start = time.monotonic()
    try:
        outcomes, stats = shard(make_traces(3), engine, request_timeout_s=1.0)
    finally:
        engine.release.set()
    assert time.monotonic() - start < 15
    status = {o.trace_id: o.status for o in outcomes}
    assert status == {"t0": "revised", "t1": "engine_error", "t2": "engine_error",
                      "wrong": "incorrect_original"}
    assert "did not return within 1 s" in outcomes[2].skip_reason
    assert "thread cannot be stopped" in stats.engine_broken and stats.faults.timeouts == 1
    assert as_dicts(outcomes)[0] == healthy[0]


def test_a_hung_streaming_request_fails_its_trace_within_the_limit(healthy):
    engine = StreamingFaultyEngine(policy, lambda req, n: "hang"
                                   if req.request_id == "t2/v1/r0/step" else None)
    start = time.monotonic()
    outcomes, stats = shard(make_traces(6), engine, request_timeout_s=0.5)
    assert time.monotonic() - start < 15
    assert outcomes[2].status == "engine_error"
    assert "no result within 0.5 s" in outcomes[2].skip_reason
    assert stats.faults.timeouts == 1 and stats.engine_broken is None
    assert [d for d in as_dicts(outcomes) if d["trace_id"] != "t2"] == \
        [d for d in healthy if d["trace_id"] != "t2"]


def test_a_trace_with_an_empty_reasoning_is_skipped_with_its_reason():
    traces = [TraceRecord(id="blank", question="Q0", reference_answer="0", reasoning=" \n",
                          solution="\\boxed{0}")]
    engine = ScriptedEngine(policy)
    (outcome,), _ = shard(traces, engine)
    assert outcome.status == "skipped" and "reasoning is empty" in outcome.skip_reason
    assert engine.requests == []


def test_repeated_trace_ids_are_named():
    traces = make_traces(3) + make_traces(2)[:1]
    with pytest.raises(ValueError, match=r"found 1 more than once: 't0'"):
        shard(traces, ScriptedEngine(policy))


# --------------------------------------------------------------------------- the search stage

class StageEngine:
    """The search stage's engine: steps "Step.", continuations close and box 4. Class settings
    (set by the tests, reset by the `stage_engine` fixture): `fail` (trace ids whose requests
    raise), `hang` (trace ids whose requests block the call until `release` is set), `mode`
    ("ok"; "empty": empty texts; "length": every result hits its budget); `received` counts the
    requests per trace id."""

    fail: ClassVar[set] = set()
    hang: ClassVar[set] = set()
    release = threading.Event()
    mode = "ok"
    received: ClassVar[dict] = {}

    def __init__(self, **kwargs):
        pass

    def generate(self, requests):
        if any(r.request_id.split("/", 1)[0] in StageEngine.hang for r in requests):
            StageEngine.release.wait(60)
            raise RuntimeError("released after a hang")
        results = []
        for req in requests:
            trace_id = req.request_id.split("/", 1)[0]
            StageEngine.received[trace_id] = StageEngine.received.get(trace_id, 0) + 1
            if trace_id in StageEngine.fail:
                raise RuntimeError(f"CUDA error: an illegal memory access ({req.request_id})")
            if StageEngine.mode == "empty":
                text, finish, stop = "", "stop", None
            elif StageEngine.mode == "length":
                text, finish, stop = "and so on", "length", None
            elif "/step" in req.request_id:
                text, finish, stop = "Step.", "stop", "\n\n"
            else:
                text, finish, stop = "</think>\n\n\\boxed{4}", "stop", None
            results.append(GenerationResult(req.request_id, text, len(text.split()), finish, stop))
        return results


@pytest.fixture
def stage_engine(monkeypatch):
    monkeypatch.setattr(StageEngine, "fail", set())
    monkeypatch.setattr(StageEngine, "hang", set())
    monkeypatch.setattr(StageEngine, "release", threading.Event())
    monkeypatch.setattr(StageEngine, "mode", "ok")
    monkeypatch.setattr(StageEngine, "received", {})
    yield StageEngine
    StageEngine.release.set()  # ends a hung call's thread


def trace_row(trace_id, **changes):
    row = {"id": trace_id, "question": "What is 2 + 2?", "reference_answer": "4",
           "reasoning": "Two and two.\n\nThat is four.\n\nWait, check.\n\nYes.\n\n"
                        "Alternatively, count.\n\nFour.",
           "solution": "\\boxed{4}", "source_model": "m", "source_dataset": "d", "metadata": {}}
    return {**row, **changes}


def write_rows(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def search_args(src, out, model, *extra):
    return ["search", "--input", src, "--output", str(out), "--no-progress",
            f"model.path={model}", "engine.name=test_engine_faults:StageEngine",
            "grading.processes=0", "search.rollouts=2", *extra]


def last_json(err):
    return json.loads(err.strip().splitlines()[-1])


def test_a_mostly_failed_shard_exits_non_zero_and_a_rerun_does_only_the_rest(
        stage_engine, tiny_model_dir, tmp_path, capsys):
    src = write_rows(tmp_path / "shard.jsonl", [trace_row(f"t{i}") for i in range(4)])
    reference = tmp_path / "reference" / "revised.jsonl"
    assert main(search_args(src, reference, tiny_model_dir)) == 0
    healthy_requests = dict(stage_engine.received)
    assert set(healthy_requests) == {"t0", "t1", "t2", "t3"}
    capsys.readouterr()

    out = tmp_path / "run" / "revised.jsonl"
    stage_engine.fail, stage_engine.received = {"t1", "t2", "t3"}, {}
    assert main(search_args(src, out, tiny_model_dir)) == 1
    err = capsys.readouterr().err
    line, = [x for x in err.splitlines() if x.startswith("retro-search search: FAILED:")]
    assert "3 of 4 traces ended in engine errors" in line and "'t1'" in line
    assert "CUDA error" in line and "Traceback" not in err
    assert not out.exists() and not out.with_suffix(".rollouts.jsonl").exists()
    progress, = out.parent.glob(".revised.jsonl.progress-*.jsonl")
    assert set(read_progress(progress)) == {"t0"}

    stage_engine.fail, stage_engine.received = set(), {}
    assert main(search_args(src, out, tiny_model_dir)) == 0
    summary = last_json(capsys.readouterr().err)
    assert summary["resumed"] == 1 and summary["engine_error"] == 0
    assert stage_engine.received == {k: v for k, v in healthy_requests.items() if k != "t0"}
    assert out.read_bytes() == reference.read_bytes()
    assert set(read_progress(progress)) == {"t0", "t1", "t2", "t3"}  # kept until the merge


def test_a_few_failed_traces_are_kept_unchanged_counted_and_merged(
        stage_engine, tiny_model_dir, tmp_path, capsys):
    from retro_search.stages import merge

    rows = [trace_row(f"t{i}") for i in range(4)]
    src = write_rows(tmp_path / "shard.jsonl", rows)
    out = tmp_path / "revised.jsonl"
    stage_engine.fail = {"t2"}
    assert main(search_args(src, out, tiny_model_dir)) == 0
    err = capsys.readouterr().err
    summary = last_json(err)
    assert summary["engine_error"] == 1 and summary["traces"] == 4
    assert summary["failed_requests"] >= 1 and summary["retried_requests"] >= 2
    assert "trace 't2' kept unchanged (status engine_error): engine error: request 't2/" in err
    revised = {r["id"]: r for r in read_rows(out)}
    assert revised["t2"]["search"]["status"] == "engine_error"
    assert "CUDA error" in revised["t2"]["search"]["skip_reason"]
    assert revised["t2"]["reasoning"] == rows[2]["reasoning"]
    assert not [r for r in read_rows(out.with_suffix(".rollouts.jsonl")) if r["trace_id"] == "t2"]

    assert list(tmp_path.glob(".revised.jsonl.progress-*.jsonl"))  # kept until merged
    result = merge.run([out], [out.with_suffix(".rollouts.jsonl")], tmp_path / "m.jsonl", None,
                       tmp_path / "stats.json")
    assert not list(tmp_path.glob(".revised.jsonl.progress-*")), "the merge drops the progress"
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["by_status"]["engine_error"] == 1 and stats["engine_errors"]["traces"] == 1
    assert stats["engine_errors"]["examples"][0]["id"] == "t2"
    assert stats["reasoning_tokens"]["traces"] == 3  # the failed trace is not in the lengths
    assert result.summary["engine_error"] == 1
    assert any("1 of 4 traces ended in engine errors" in w for w in result.warnings)


@pytest.mark.parametrize("mode, warning", [
    ("empty", "engine results (100%) were empty text"),
    ("length", ("rollouts (100%) reached their token budget and can never be accepted: "
                "search.max_tokens=32768 or search.max_step_tokens=1024 is likely too small")),
])
def test_empty_and_truncated_results_are_counted_and_warned_about(
        stage_engine, tiny_model_dir, tmp_path, capsys, mode, warning):
    src = write_rows(tmp_path / "shard.jsonl", [trace_row("t0"), trace_row("t1")])
    stage_engine.mode = mode
    assert main(search_args(src, tmp_path / "o.jsonl", tiny_model_dir)) == 0
    err = capsys.readouterr().err
    summary = last_json(err)
    assert summary["requests"] > 0
    if mode == "empty":
        assert summary["empty_results"] == summary["requests"]
    else:
        assert summary["length_results"] == summary["requests"]
        assert summary["truncated_length"] == summary["rollouts"] > 0
    assert warning in err


def test_the_stage_turns_a_hung_batch_call_into_a_recorded_failure(
        stage_engine, tiny_model_dir, tmp_path):
    from retro_search.stages import search

    # Three traces with a wrong answer pass through before any request; t0's first call hangs.
    rows = [trace_row("t0")] + [trace_row(f"w{i}", solution="\\boxed{5}") for i in range(3)]
    src = write_rows(tmp_path / "shard.jsonl", rows)
    stage_engine.hang = {"t0"}
    cfg = compose(None, [f"model.path={tiny_model_dir}", "search.request_timeout_s=1",
                         "engine.name=test_engine_faults:StageEngine", "grading.processes=0"])
    start = time.monotonic()
    result = search.run(cfg, src, tmp_path / "o.jsonl", tmp_path / "o.log.jsonl",
                        show_progress=False)
    assert time.monotonic() - start < 30
    assert result.summary["engine_error"] == 1 and result.summary["engine_broken"]
    assert result.summary["incorrect_original"] == 3 and result.summary["request_timeouts"] == 1
    assert any(w.startswith("engine given up: the engine's generate() did not return within 1 s")
               for w in result.warnings)
    row, = [r for r in read_rows(tmp_path / "o.jsonl") if r["id"] == "t0"]
    assert row["search"]["status"] == "engine_error"
    assert "did not return within 1 s" in row["search"]["skip_reason"]


def test_the_search_stage_names_every_bad_reference_and_repeated_id(tmp_path):
    from retro_search.stages.search import check_traces

    traces = [TraceRecord(**{k: v for k, v in trace_row(i, reference_answer=ref).items()})
              for i, ref in (("a", "4"), ("b", ""), ("c", None), ("d", "  "))]
    with pytest.raises(ValueError) as err:
        check_traces(traces, "shard.jsonl")
    message = str(err.value)
    assert "3 trace(s) with a bad field 'reference_answer'" in message
    assert all(f"trace {i!r}" in message for i in "bcd") and "trace 'a'" not in message
    traces = [TraceRecord(**trace_row(i)) for i in ("a", "b", "a", "c", "c")]
    with pytest.raises(ValueError, match=r"2 trace id\(s\) found more than once: 'a'; 'c'"):
        check_traces(traces, "shard.jsonl")


# --------------------------------------------------------------------------- sampling

QUESTIONS = [{"id": f"q{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)}
             for i in range(1, 5)]


def sample_policy(req):
    return f"So it is.\n</think>\n\n\\boxed{{{req.seed % 10}}}", "stop", None


@pytest.fixture
def planned(tmp_path):
    from retro_search.questions import load_questions

    path = write_rows(tmp_path / "questions.jsonl", QUESTIONS)
    questions = load_questions(path, format={"preset": "problem_answer", "id": "id"}).records
    items, _ = plan_requests(questions, SampleSettings(questions=path, n=2, max_tokens=20),
                             lambda q: f"<Q>{q}<think>\n")
    return items


def samples(planned, engine, **kwargs):
    return run_samples(planned, engine, sampler="m", think_open="<think>\n", show_progress=False,
                       chunk_size=3, **kwargs)


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_sampling_retries_transient_faults_to_the_fault_free_rows(kind, planned):
    reference, _ = samples(planned, ENGINES[kind][0](sample_policy))
    flaky = ENGINES[kind][1](sample_policy, lambda req, attempt: ("raise", "drop")[attempt % 2]
                             if attempt < 2 else None)
    rows, stats = samples(planned, flaky)
    assert rows == reference and stats.failed == 0 and stats.faults.retries >= len(planned)


@pytest.mark.parametrize("kind", sorted(ENGINES))
def test_a_sample_that_always_fails_is_a_row_with_its_error(kind, planned, tmp_path):
    engine = ENGINES[kind][1](sample_policy, lambda req, n: "raise" if req.request_id == "q2/1"
                              else None)
    progress = tmp_path / "p.jsonl"
    rows, stats = samples(planned, engine, progress_path=progress)
    failed, = [r for r in rows if r.get("error")]
    assert failed["id"] == "q2/1" and failed["finish_reason"] == "error"
    assert "failed 3 times" in failed["error"] and "injected fault" in failed["error"]
    assert stats.failed == 1 and stats.generated == 7
    assert "q2/1" not in {json.loads(x)["id"] for x in progress.read_text().splitlines()}
    out = write_rows(tmp_path / "samples.jsonl", rows)
    records, dropped, reasons, read = read_samples([out], "s")
    assert read == 8 and reasons["engine_error"] == 1 and len(records) == 7
    assert dropped[0]["id"] == "q2/1" and dropped[0]["reason"].startswith("engine_error: ")


class SampleEngine:
    """The sample stage's engine: `fail` (question ids whose requests raise) is a class setting;
    `received` lists the request ids."""

    fail: ClassVar[set] = set()
    received: ClassVar[list] = []

    def __init__(self, **kwargs):
        pass

    async def generate_async(self, req):
        await asyncio.sleep(0)
        SampleEngine.received.append(req.request_id)
        if req.request_id.split("/")[0] in SampleEngine.fail:
            raise RuntimeError(f"engine died on {req.request_id}")
        text, finish, stop = sample_policy(req)
        return GenerationResult(req.request_id, text, len(text.split()), finish, stop)

    def generate(self, requests):
        raise AssertionError("a streaming engine gets each request on its own")


def test_a_mostly_failed_sample_shard_exits_non_zero_and_a_rerun_does_only_the_rest(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    questions = write_rows(tmp_path / "questions.jsonl", QUESTIONS)

    def args(out):
        return ["sample", "--questions", questions, "--output", str(out), "--no-progress",
                f"model.path={tiny_model_dir}", "sample.format={preset: problem_answer, id: id}",
                "sample.n=2", "sample.max_tokens=12", "engine.name=test_engine_faults:SampleEngine"]

    monkeypatch.setattr(SampleEngine, "fail", set())
    monkeypatch.setattr(SampleEngine, "received", [])
    reference = tmp_path / "reference.jsonl"
    assert main(args(reference)) == 0

    out = tmp_path / "out.jsonl"
    SampleEngine.fail = {"q2", "q3", "q4"}
    capsys.readouterr()
    assert main(args(out)) == 1
    err = capsys.readouterr().err
    line, = [x for x in err.splitlines() if x.startswith("retro-search sample: FAILED:")]
    assert "6 of 8 samples ended in engine errors" in line and "engine died on q2/0" in line
    assert "Traceback" not in err and not out.exists()
    progress, = tmp_path.glob(".out.jsonl.progress-*.jsonl")
    assert len(progress.read_text().splitlines()) == 2

    SampleEngine.fail, SampleEngine.received = set(), []
    assert main(args(out)) == 0
    assert last_json(capsys.readouterr().err)["resumed"] == 2
    assert sorted(SampleEngine.received) == [f"q{i}/{k}" for i in (2, 3, 4) for k in (0, 1)]
    assert out.read_bytes() == reference.read_bytes()
