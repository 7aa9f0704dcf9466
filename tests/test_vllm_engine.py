"""VLLMEngine without vLLM: import stays lazy, mappings are right, and a fake vLLM records calls."""

from __future__ import annotations

import asyncio
import enum
import subprocess
import sys
import types

import pytest

from retro_search.engines.base import GenerationRequest, GenerationResult
from retro_search.engines.base import request_seed
from retro_search.engines.vllm_engine import (
    BAN_BIAS, VLLMEngine, engine_args_kwargs, to_result, to_sampling_kwargs)


def test_importing_the_module_does_not_import_vllm():
    code = ("import sys, retro_search.engines.vllm_engine, retro_search.engines; "
            "assert 'vllm' not in sys.modules, 'vllm was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_building_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError) as error:
        VLLMEngine("some/model")
    assert "pip install 'retro-search[vllm]'" in str(error.value) and "GPU" in str(error.value)


# --- pure mappings ---------------------------------------------------------------------------

def test_sampling_kwargs_carry_the_request():
    request = GenerationRequest("r1", "p", max_tokens=50, temperature=0.7, top_p=0.9, seed=11,
                                stop=("\n\n", "</think>"))
    assert to_sampling_kwargs(request) == {
        "n": 1, "temperature": 0.7, "top_p": 0.9, "seed": 11, "max_tokens": 50,
        "stop": ["\n\n", "</think>"], "include_stop_str_in_output": False,
        "skip_special_tokens": True}


def test_temperature_zero_is_greedy_with_full_top_p():
    kwargs = to_sampling_kwargs(GenerationRequest("g", "p", max_tokens=5, temperature=0,
                                                  top_p=0.5))
    assert kwargs["temperature"] == 0.0 and kwargs["top_p"] == 1.0


def test_missing_seed_is_derived_from_the_request_id_like_the_transformers_engine():
    request = GenerationRequest("abc", "p", max_tokens=5)
    assert to_sampling_kwargs(request)["seed"] == request_seed(request) == 4213142463398924266


def test_banned_words_become_bad_words_and_single_token_biases():
    request = GenerationRequest("b", "p", max_tokens=5, banned_words=("Wait", "But wait"))
    kwargs = to_sampling_kwargs(request, banned=[[7], [3], [5, 9], [7]])
    assert kwargs["bad_words"] == ["Wait", "wait", "WAIT", "But wait", "but wait", "BUT WAIT",
                                   "But Wait"]
    assert kwargs["logit_bias"] == {3: BAN_BIAS, 7: BAN_BIAS}
    assert "bad_words" not in to_sampling_kwargs(GenerationRequest("n", "p", max_tokens=5))


def test_finish_reasons_map_to_results():
    assert to_result("a", "x", [1, 2], "length", None) == GenerationResult("a", "x", 2, "length")
    assert to_result("b", "x", [1, 2, 3], "stop", None) == GenerationResult("b", "x", 3, "stop")
    assert to_result("c", "x", [1], "stop", 128001) == GenerationResult("c", "x", 1, "stop")
    assert to_result("d", "x", [1], "stop", "\n\n") == GenerationResult("d", "x", 1, "stop", "\n\n")
    with pytest.raises(RuntimeError, match="'e'.*abort"):
        to_result("e", "", [], "abort", None)


def test_engine_args_enable_prefix_caching_and_pass_extras_through():
    kwargs = engine_args_kwargs("m", tensor_parallel_size=4, gpu_memory_utilization=0.8,
                                max_model_len=32768, enforce_eager=True)
    assert kwargs["enable_prefix_caching"] is True and kwargs["tokenizer"] == "m"
    assert (kwargs["tensor_parallel_size"], kwargs["gpu_memory_utilization"]) == (4, 0.8)
    assert kwargs["max_model_len"] == 32768 and kwargs["enforce_eager"] is True
    assert "max_model_len" not in engine_args_kwargs("m")


# --- a fake vLLM ---------------------------------------------------------------------------

class _FakeVLLM:
    """Just enough of vllm's API; records what the adapter sends and how many run at once."""

    def __init__(self):
        self.engine_args = None
        self.calls = []
        self.in_flight = self.max_in_flight = 0
        fake = self

        class AsyncEngineArgs:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class AsyncLLMEngine:
            @classmethod
            def from_engine_args(cls, args):
                fake.engine_args = args.kwargs
                asyncio.get_running_loop()  # built on the adapter's own loop
                return cls()

            async def generate(self, prompt, sampling_params, request_id):
                fake.calls.append((request_id, prompt, sampling_params.kwargs))
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                # Later requests finish first, so the order of results is really rebuilt.
                await asyncio.sleep(0.05 / (1 + len(fake.calls)))
                ids = prompt["prompt_token_ids"]
                done = types.SimpleNamespace(text=f"echo {request_id}", token_ids=ids[:3],
                                             finish_reason="stop", stop_reason="\n\n")
                fake.in_flight -= 1
                yield types.SimpleNamespace(outputs=[done], finished=True)

            def shutdown(self):
                fake.shut_down = True

        self.module = types.ModuleType("vllm")
        self.module.AsyncEngineArgs = AsyncEngineArgs
        self.module.AsyncLLMEngine = AsyncLLMEngine
        self.module.SamplingParams = SamplingParams
        self.module.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
        self.sampling_module = types.ModuleType("vllm.sampling_params")
        self.sampling_module.RequestOutputKind = enum.Enum("RequestOutputKind",
                                                           "CUMULATIVE DELTA FINAL_ONLY")
        self.module.sampling_params = self.sampling_module


@pytest.fixture
def fake_vllm(monkeypatch):
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", fake.sampling_module)
    return fake


@pytest.fixture
def fake_engine(fake_vllm, tiny_model_dir):
    engine = VLLMEngine(tiny_model_dir, tensor_parallel_size=2, gpu_memory_utilization=0.55,
                        seed=3)
    yield engine
    engine.shutdown()


def test_engine_is_built_from_constructor_arguments(fake_vllm, fake_engine, tiny_model_dir):
    args = fake_vllm.engine_args
    assert args["model"] == args["tokenizer"] == tiny_model_dir
    assert args["enable_prefix_caching"] is True
    assert (args["tensor_parallel_size"], args["gpu_memory_utilization"], args["seed"]) == (2, 0.55, 3)


def test_generate_sends_token_ids_concurrently_and_keeps_request_order(fake_vllm, fake_engine):
    prompts = ["<|begin_of_text|><|User|>What is 2 + 2?<|Assistant|><think>\n",
               "Okay, so the answer is 4.\n\nWait", "Hmm"]
    requests = [GenerationRequest(f"r{i}", prompts[i % 3], max_tokens=10 + i, seed=i,
                                  stop=("\n\n",), banned_words=("Wait",) if i == 1 else ())
                for i in range(6)]
    results = fake_engine.generate(requests)
    assert [r.request_id for r in results] == [f"r{i}" for i in range(6)]
    assert results[0] == GenerationResult("r0", "echo r0", 3, "stop", "\n\n")
    assert fake_vllm.max_in_flight == 6  # all were running before any finished
    tok = fake_engine.tokenizer
    by_id = {rid: (prompt, kwargs) for rid, prompt, kwargs in fake_vllm.calls}
    for request in requests:
        prompt, kwargs = by_id[request.request_id]
        assert prompt == {"prompt_token_ids": tok.encode(request.prompt, add_special_tokens=False)}
        assert kwargs["seed"] == request.seed and kwargs["max_tokens"] == request.max_tokens
        assert kwargs["output_kind"].name == "FINAL_ONLY"
    wait_id = tok.convert_tokens_to_ids("Wait")
    assert by_id["r1"][1]["logit_bias"][wait_id] == BAN_BIAS
    assert "logit_bias" not in by_id["r0"][1]


def test_generate_async_works_from_the_callers_event_loop(fake_vllm, fake_engine):
    requests = [GenerationRequest(f"a{i}", "Hmm, so", max_tokens=4) for i in range(4)]

    async def scheduler():
        return await asyncio.gather(*(fake_engine.generate_async(r) for r in requests))

    results = asyncio.run(scheduler())
    assert [r.request_id for r in results] == ["a0", "a1", "a2", "a3"]
    assert fake_vllm.max_in_flight == 4
