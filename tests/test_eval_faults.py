"""The eval stage against killed runs and faulty engines.

A run killed at any point (SIGKILL, or a BaseException from the engine after N generations) and
run again requests exactly the generations its progress files lack, and writes the same bytes as
an uninterrupted run. Engines that raise, return too few results, empty or truncated texts, or
hang (batch and streaming) end in recorded, counted outcomes: no traceback, no hang, exit status
1 when most generations of a benchmark failed, with the progress kept for a rerun.

Scripted engines over the benchmark slices in data/benchmarks (amc23 and math500, 5 problems
each, 4 samples: 40 generations), through `stages.evaluate.run` and `retro-search eval`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import retro_search.engines as engines
from retro_search.cli import main
from retro_search.engines.base import GenerationResult
from retro_search.evaluation.config import EvalSettings
from retro_search.stages import JobFailed, evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "benchmarks"
BENCHMARKS = ["amc23", "math500"]
N_SAMPLES, CHUNK = 4, 4
TOTAL = 2 * 5 * N_SAMPLES
FILES = ("generations.parquet", "metrics.json")


class Killed(BaseException):
    """A kill: not an engine fault, so nothing catches it."""


def reply(request) -> GenerationResult:
    """A fixed answer per request (by its seed): some right (amc23's first gold is 27), some cut."""
    s = request.seed
    text = f"step {s % 97} then\n</think>\n\nSo \\boxed{{{27 if s % 4 == 0 else s % 5}}}"
    return GenerationResult(request.request_id, text, len(text.split()),
                            "length" if s % 3 == 0 else "stop")


class BatchEngine:
    """A batch engine answering with `reply`; `fault(engine, request)` runs before each request
    and may raise, hang, or return a result to use instead; `drop_last` returns one result too
    few from each call."""

    def __init__(self, fault=None, drop_last=False):
        self.fault, self.drop_last = fault, drop_last
        self.requests: list = []   # every request received, retries included
        self.answered = 0
        self.calls = 0

    def answer(self, request):
        self.requests.append(request)
        result = self.fault(self, request) if self.fault else None
        self.answered += 1
        return result or reply(request)

    def generate(self, requests):
        self.calls += 1
        out = [self.answer(r) for r in requests]
        return out[:-1] if self.drop_last else out


class StreamingEngine(BatchEngine):
    async def generate_async(self, request):
        await asyncio.sleep(0)
        return self.answer(request)


def kill_after(n, how="raise"):
    def fault(engine, request):
        if engine.answered == n:
            if how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise Killed(f"killed after {n} generations")
    return fault


@pytest.fixture
def release():
    """Set at teardown: frees the threads of engines that hang."""
    event = threading.Event()
    yield event
    event.set()


def settings(**overrides) -> EvalSettings:
    values = dict(data_dir=str(DATA), n_samples=N_SAMPLES, grading_processes=0, chunk_size=CHUNK,
                  max_tokens=64, benchmarks=list(BENCHMARKS))
    return EvalSettings(**{**values, **overrides})


def run(monkeypatch, model, out, engine, **overrides):
    """`evaluate.run` with `engine`; `overrides`: of `settings`, e.g. request_timeout_s."""
    monkeypatch.setattr(engines, "load_engine", lambda name, **kw: engine)
    return evaluate.run(settings(**overrides), {"name": "transformers"}, model, out,
                        progress=False)


def progress_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.progress"


def logged(out: Path) -> list[dict]:
    """Every complete line of the run's generation logs."""
    lines = []
    for path in sorted(progress_dir(out).glob("*.generations.jsonl")):
        for raw in path.read_bytes().split(b"\n")[:-1]:
            lines.append(json.loads(raw))
    return lines


def all_ids() -> set[str]:
    from retro_search.evaluation.benchmarks import load_problems

    return {f"{name}/{p.id}/{s}" for name in BENCHMARKS for p in load_problems(name, DATA)
            for s in range(N_SAMPLES)}


def same_bytes(a: Path, b: Path) -> None:
    for name in BENCHMARKS:
        for file in FILES:
            assert (a / name / file).read_bytes() == (b / name / file).read_bytes(), (name, file)


@pytest.fixture
def baseline(tiny_model_dir, tmp_path, monkeypatch):
    """Uninterrupted runs with a healthy engine of each kind: their output folders."""
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = tmp_path / f"whole-{kind.__name__}"
            run(monkeypatch, tiny_model_dir, made[kind], kind())
        return made[kind]

    return get


# ----------------------------------------------------------------------------- killed runs

@pytest.mark.parametrize("kind", [BatchEngine, StreamingEngine])
@pytest.mark.parametrize("after", [5, 13, 20, 29, 39])  # amc23 is the first 20
def test_a_killed_run_resumes_where_it_stopped(kind, after, tiny_model_dir, tmp_path,
                                               monkeypatch, baseline):
    out = tmp_path / "out"
    with pytest.raises(Killed):
        run(monkeypatch, tiny_model_dir, out, kind(fault=kill_after(after)))
    assert not out.exists()
    done = logged(out)
    ids = [line["id"] for line in done]
    assert len(set(ids)) == len(ids)
    # all that came back is logged: a batch engine's results when its call returns (whole
    # chunks); a streaming engine's one by one (those in flight when it died are lost)
    assert after - CHUNK < len(ids) <= after
    if kind is BatchEngine:
        assert len(ids) == after // CHUNK * CHUNK

    healthy = kind()
    result = run(monkeypatch, tiny_model_dir, out, healthy)
    assert sorted(r.request_id for r in healthy.requests) == sorted(all_ids() - set(ids))
    assert result.summary["requests_sent"] == TOTAL - len(ids)
    assert result.summary["n_errors"] == 0 and not result.warnings
    same_bytes(out, baseline(kind))


def test_killed_twice_then_resumed(tiny_model_dir, tmp_path, monkeypatch, baseline):
    out = tmp_path / "out"
    for after in (6, 9):  # the second kill comes 9 generations into the rerun
        with pytest.raises(Killed):
            run(monkeypatch, tiny_model_dir, out, StreamingEngine(fault=kill_after(after)))
    ids = {line["id"] for line in logged(out)}
    assert 6 < len(ids) <= 15
    healthy = StreamingEngine()
    run(monkeypatch, tiny_model_dir, out, healthy)
    assert sorted(r.request_id for r in healthy.requests) == sorted(all_ids() - ids)
    same_bytes(out, baseline(StreamingEngine))


def _cli_config(tmp_path: Path) -> Path:
    config = tmp_path / "stage.yaml"
    config.write_text(f"eval:\n  data_dir: {DATA}\n  n_samples: {N_SAMPLES}\n  max_tokens: 64\n"
                      f"  grading_processes: 0\n  chunk_size: {CHUNK}\n"
                      f"  benchmarks: [{', '.join(BENCHMARKS)}]\n"
                      "engine:\n  name: transformers\n")
    return config


def _cli(model, config, out):
    return ["eval", "--model", model, "--config", str(config), "--no-progress",
            "--output-dir", str(out)]


@pytest.mark.parametrize("after", [5, 22])
def test_a_sigkilled_command_resumes_where_it_stopped(after, tiny_model_dir, tmp_path,
                                                      monkeypatch):
    config = _cli_config(tmp_path)
    out = tmp_path / "out"
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "import retro_search.engines as engines, test_eval_faults as t\n"
              f"engines.load_engine = lambda name, **kw: t.BatchEngine("
              f"fault=t.kill_after({after}, 'sigkill'))\n"
              "from retro_search.cli import main\n"
              f"sys.exit(main({_cli(tiny_model_dir, config, out)!r}))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ids = {line["id"] for line in logged(out)}
    assert len(ids) == after // CHUNK * CHUNK

    healthy = BatchEngine()
    monkeypatch.setattr(engines, "load_engine", lambda name, **kw: healthy)
    assert main(_cli(tiny_model_dir, config, out)) == 0
    assert sorted(r.request_id for r in healthy.requests) == sorted(all_ids() - ids)
    monkeypatch.setattr(engines, "load_engine", lambda name, **kw: BatchEngine())
    assert main(_cli(tiny_model_dir, config, tmp_path / "whole")) == 0
    same_bytes(out, tmp_path / "whole")


def test_a_torn_last_line_is_ignored_and_not_continued(tiny_model_dir, tmp_path, monkeypatch,
                                                       baseline):
    out = tmp_path / "out"
    with pytest.raises(Killed):
        run(monkeypatch, tiny_model_dir, out, BatchEngine(fault=kill_after(10)))
    [log] = progress_dir(out).glob("amc23-*.generations.jsonl")
    lines = log.read_bytes().split(b"\n")[:-1]
    assert len(lines) == 8
    # the process died while writing line 9: half of it is there
    with open(log, "ab") as fh:
        fh.write(lines[-1][: len(lines[-1]) // 2])
    with pytest.raises(Killed):  # a rerun appends after it, then dies again
        run(monkeypatch, tiny_model_dir, out, BatchEngine(fault=kill_after(4)))
    text = log.read_bytes()
    assert text.endswith(b"\n")
    again = [json.loads(line) for line in text.split(b"\n")[:-1]]  # every line whole
    assert len(again) == 12 and len({r["id"] for r in again}) == 12

    healthy = BatchEngine()
    run(monkeypatch, tiny_model_dir, out, healthy)
    assert len(healthy.requests) == TOTAL - 12
    same_bytes(out, baseline(BatchEngine))


def test_a_generation_log_skips_lines_of_other_seeds_prompts_and_garbage(tmp_path):
    from retro_search.engines.base import GenerationRequest
    from retro_search.evaluation.outputs import GenerationLog

    request = GenerationRequest("b/1/0", "prompt", 8, seed=5)
    result = GenerationResult("b/1/0", "text", 1, "stop")
    log = GenerationLog(tmp_path / "log.jsonl")
    log.append([(request, result)])
    log.close()
    good = log.path.read_text()
    for bad in (good.replace('"seed": 5', '"seed": 6'), good.replace("stop", "eos"),
                "not json\n", "[1, 2]\n", '{"id": "b/1/0"}\n'):
        log.path.write_text(bad)
        assert log.read([request]) == {}
    log.path.write_text(good)
    assert log.read([request]) == {"b/1/0": result}
    assert log.read([GenerationRequest("b/1/0", "other prompt", 8, seed=5)]) == {}


# ----------------------------------------------------------------------------- engine faults

def raises_for(predicate, first_attempt_only=False):
    seen = set()

    def fault(engine, request):
        if predicate(request) and (not first_attempt_only or request.request_id not in seen):
            seen.add(request.request_id)
            raise RuntimeError(f"engine exploded on {request.request_id}")
    return fault


@pytest.mark.parametrize("kind", [BatchEngine, StreamingEngine])
def test_an_engine_that_fails_each_request_once_gives_the_same_outputs(kind, tiny_model_dir,
                                                                       tmp_path, monkeypatch,
                                                                       baseline):
    engine = kind(fault=raises_for(lambda r: True, first_attempt_only=True))
    result = run(monkeypatch, tiny_model_dir, tmp_path / "out", engine)
    assert result.summary["n_errors"] == 0 and result.summary["retried_requests"] > 0
    assert not result.warnings
    same_bytes(tmp_path / "out", baseline(kind))


@pytest.mark.parametrize("kind", [BatchEngine, StreamingEngine])
def test_a_request_that_always_fails_is_recorded_and_the_benchmark_finishes(kind, tiny_model_dir,
                                                                             tmp_path,
                                                                             monkeypatch):
    import pandas as pd

    poison = {"amc23/2/1", "math500/test/precalculus/807.json/3"}
    engine = kind(fault=raises_for(lambda r: r.request_id in poison))
    result = run(monkeypatch, tiny_model_dir, tmp_path / "out", engine)
    assert result.summary["n_errors"] == 2
    for name in BENCHMARKS:
        frame = pd.read_parquet(tmp_path / "out" / name / "generations.parquet")
        failed = frame[frame["finish_reason"] == "error"]
        assert len(frame) == 20 and len(failed) == 1
        assert not failed["correct"].any() and (failed["response"] == "").all()
        assert failed["error"].str.startswith("failed 3 times; last: RuntimeError").all()
        assert failed["grade_error"].isna().all() and frame["error"].isna().sum() == 19
        metrics = json.loads((tmp_path / "out" / name / "metrics.json").read_text())
        assert metrics["n_errors"] == 1 and metrics["n_generations"] == 20
    # 3 attempts of each poisoned request alone (a batch engine: after its chunk of 4 and the
    # half of 2 that held it raised); the other requests of its chunk went through
    assert sum(r.request_id in poison for r in engine.requests) == \
        (6 if kind is StreamingEngine else 2 * (1 + 1 + 3))
    assert any("1 of 20 generations failed" in w for w in result.warnings)


@pytest.mark.parametrize("kind", [BatchEngine, StreamingEngine])
def test_most_generations_failing_exits_1_keeps_progress_and_a_rerun_does_the_rest(
        kind, tiny_model_dir, tmp_path, monkeypatch, capsys, baseline):
    config, out = _cli_config(tmp_path), tmp_path / "out"
    engine = kind(fault=raises_for(lambda r: r.request_id.startswith("math500/")))
    monkeypatch.setattr(engines, "load_engine", lambda name, **kw: engine)
    assert main(_cli(tiny_model_dir, config, out)) == 1
    err = capsys.readouterr().err
    assert "FAILED: most generations failed" in err and "math500: 20 of 20" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert {line["id"].split("/")[0] for line in logged(out)} == {"amc23"}
    # retried, not forever: a request is in at most 2 calls that split its chunk of 4, then
    # alone in 3
    assert len(engine.requests) <= 20 * 5

    healthy = kind()
    monkeypatch.setattr(engines, "load_engine", lambda name, **kw: healthy)
    assert main(_cli(tiny_model_dir, config, out)) == 0
    assert sorted(r.request_id for r in healthy.requests) == \
        sorted(i for i in all_ids() if i.startswith("math500/"))
    monkeypatch.setattr(engines, "load_engine", lambda name, **kw: kind())
    assert main(_cli(tiny_model_dir, config, tmp_path / "whole")) == 0
    same_bytes(out, tmp_path / "whole")


@pytest.mark.parametrize("kind", [BatchEngine, StreamingEngine])
def test_an_engine_that_always_raises_is_given_up_on(kind, tiny_model_dir, tmp_path,
                                                     monkeypatch):
    engine = kind(fault=raises_for(lambda r: True))
    with pytest.raises(JobFailed, match="engine given up: requests of 8 different prompts "
                                        "failed in a row"):
        run(monkeypatch, tiny_model_dir, tmp_path / "out", engine)
    # given up at the first failed sample of the 8th problem (4 samples, one prompt, each): the
    # rest is not sent
    assert 7 * 4 < len({r.request_id for r in engine.requests}) < TOTAL


def test_an_engine_that_returns_one_result_too_few(tiny_model_dir, tmp_path, monkeypatch,
                                                   capsys):
    engine = BatchEngine(drop_last=True)
    monkeypatch.setattr(engines, "load_engine", lambda name, **kw: engine)
    out = tmp_path / "out"
    assert main(_cli(tiny_model_dir, _cli_config(tmp_path), out)) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in BENCHMARKS:  # each chunk of 4 loses its last request, 3 attempts of it
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["n_errors"] == 5
        assert list(metrics["errors"]) == [("failed 3 times; last: engine returned no result "
                                            "for this request (0 results for 1 requests)")]
        assert f"{name}: 5 of 20 generations failed" in err
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["n_errors"] == 10 and summary["failed_requests"] == 10


@pytest.mark.parametrize("kind", [BatchEngine, StreamingEngine])
def test_empty_and_truncated_responses_are_counted_and_warned(kind, tiny_model_dir, tmp_path,
                                                              monkeypatch):
    def empty_or_cut(engine, request):
        if request.request_id.startswith("amc23/"):
            return GenerationResult(request.request_id, "" if request.seed % 2 else "  ", 0,
                                    "stop")
        return GenerationResult(request.request_id, "so long", 64, "length")

    result = run(monkeypatch, tiny_model_dir, tmp_path / "out", kind(fault=empty_or_cut))
    amc = json.loads((tmp_path / "out/amc23/metrics.json").read_text())
    math = json.loads((tmp_path / "out/math500/metrics.json").read_text())
    assert (amc["n_empty"], amc["n_truncated"], amc["n_errors"]) == (20, 0, 0)
    assert (math["n_empty"], math["n_truncated"], math["truncation_rate"]) == (0, 20, 1.0)
    assert any(w.startswith("amc23: 20 of 20 responses are empty") for w in result.warnings)
    assert any(w.startswith("math500: every response hit max_tokens=64") and "too small" in w
               for w in result.warnings)


@pytest.mark.parametrize("kind", [BatchEngine, StreamingEngine])
def test_invalid_results_are_retried_then_recorded(kind, tiny_model_dir, tmp_path, monkeypatch):
    def wrong(engine, request):
        if request.request_id == "amc23/0/0":
            return GenerationResult(request.request_id, "x", 1, "abort")
        if request.request_id == "amc23/0/1":
            return GenerationResult("someone/else/0", "x", 1, "stop")
        return None

    result = run(monkeypatch, tiny_model_dir, tmp_path / "out", kind(fault=wrong))
    metrics = json.loads((tmp_path / "out/amc23/metrics.json").read_text())
    assert metrics["n_errors"] == 2 and result.summary["n_errors"] == 2
    assert any("finish_reason='abort'" in message for message in metrics["errors"])


# ----------------------------------------------------------------------------- hangs

def hang_from(n, release):
    def fault(engine, request):
        if engine.answered >= n:
            release.wait()
    return fault


def test_a_hanging_engine_ends_the_command_with_status_1(tiny_model_dir, tmp_path, monkeypatch,
                                                        capsys, release):
    import retro_search.engines.calls as calls

    # the default limit (600 s + 0.5 s per token), shortened
    monkeypatch.setattr(calls, "MIN_REQUEST_S", 0.5)
    monkeypatch.setattr(calls, "SECONDS_PER_TOKEN", 0.0)
    engine = BatchEngine(fault=hang_from(8, release))
    monkeypatch.setattr(engines, "load_engine", lambda name, **kw: engine)
    started = time.monotonic()
    assert main(_cli(tiny_model_dir, _cli_config(tmp_path), tmp_path / "out")) == 1
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err
    assert "retro-search eval: FAILED: engine given up: the engine's generate() did not return " \
           "within 0.5 s for 4 request(s)" in err
    assert "Traceback" not in err


def test_a_batch_engine_that_hangs_becomes_failed_generations_and_exit_1(
        tiny_model_dir, tmp_path, monkeypatch, release):
    out = tmp_path / "out"
    engine = BatchEngine(fault=hang_from(8, release))
    started = time.monotonic()
    with pytest.raises(JobFailed, match="did not return within 0.5 s"):
        run(monkeypatch, tiny_model_dir, out, engine, request_timeout_s=0.5)
    assert time.monotonic() - started < 30
    assert engine.calls == 3  # two chunks, then the one that hung: no call after it
    assert len(logged(out)) == 8

    release.set()
    healthy = BatchEngine()
    run(monkeypatch, tiny_model_dir, out, healthy)
    assert len(healthy.requests) == TOTAL - 8


@pytest.mark.parametrize("blocking", [False, True])
def test_a_streaming_engine_that_hangs_for_good_is_given_up_on(blocking, tiny_model_dir, tmp_path,
                                                               monkeypatch, release):
    class Hanging(StreamingEngine):
        async def generate_async(self, request):
            self.requests.append(request)
            if self.answered >= 6:
                if blocking:  # blocks the event loop itself
                    release.wait()
                else:
                    while not release.is_set():
                        await asyncio.sleep(0.05)
            self.answered += 1
            return reply(request)

    engine = Hanging()
    started = time.monotonic()
    with pytest.raises(JobFailed, match="engine given up"):
        run(monkeypatch, tiny_model_dir, tmp_path / "out", engine, request_timeout_s=0.5)
    assert time.monotonic() - started < 30
    # what came back before the hang is kept (a blocked loop may not have handed all of it over)
    ids = {line["id"] for line in logged(tmp_path / "out")}
    assert 0 < len(ids) <= 6

    release.set()
    healthy = StreamingEngine()
    run(monkeypatch, tiny_model_dir, tmp_path / "out", healthy)
    assert sorted(r.request_id for r in healthy.requests) == sorted(all_ids() - ids)


def test_a_streaming_request_that_hangs_is_a_failed_generation(tiny_model_dir, tmp_path,
                                                               monkeypatch, release):
    class OneHangs(StreamingEngine):
        async def generate_async(self, request):
            self.requests.append(request)
            while request.request_id == "math500/test/precalculus/807.json/2" \
                    and not release.is_set():
                await asyncio.sleep(0.05)
            return reply(request)

    engine = OneHangs()
    result = run(monkeypatch, tiny_model_dir, tmp_path / "out", engine, request_timeout_s=0.5)
    metrics = json.loads((tmp_path / "out/math500/metrics.json").read_text())
    assert metrics["n_errors"] == 1 and result.summary["request_timeouts"] == 1
    assert list(metrics["errors"]) == ["no result within 0.5 s (the request time limit); "
                                       "cancelled"]
    assert len(engine.requests) == TOTAL  # a request that timed out is not sent again


def test_the_default_time_limit_grows_with_the_budget_and_0_is_none():
    from retro_search.engines.calls import request_limit

    assert request_limit(None, 32768) == 600 + 16384
    assert request_limit(None, 1024) == 600 + 512
    assert request_limit(0, 10) is None and request_limit(5, 10) == 5.0


def test_a_streaming_run_hands_each_result_back_as_it_comes():
    from retro_search.engines.base import GenerationRequest
    from retro_search.engines.calls import EngineCaller, settle

    requests = [GenerationRequest(f"b/{i}/0", "p", 8, seed=i) for i in range(6)]
    caller = EngineCaller(StreamingEngine())
    batches = list(settle(caller, requests, chunk_size=2, max_in_flight=2))
    assert sorted(request.request_id for b in batches for request, _ in b) == \
        sorted(r.request_id for r in requests)
    assert caller.stats.generated == 6 and caller.stats.calls == 6
