"""The vLLM adapter's pure parts: import stays lazy and requests, results and engine arguments map
right. The engine itself runs for real in tests/test_vllm_cpu.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from retro_search.engines.base import GenerationRequest, GenerationResult
from retro_search.engines.base import request_seed
from retro_search.engines.vllm_engine import (
    BAN_BIAS, CPU_ARGS, VLLMEngine, banned_sequences, engine_args_kwargs, to_result,
    to_sampling_kwargs)


def test_importing_the_module_does_not_import_vllm():
    code = ("import sys, retro_search.engines.vllm_engine, retro_search.engines; "
            "assert 'vllm' not in sys.modules, 'vllm was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_building_without_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError) as error:
        VLLMEngine("some/model")
    assert "make install" in str(error.value) and "pip install 'retro-search[vllm]'" in str(error.value)


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


def test_banned_single_tokens_become_biases_and_longer_sequences_go_to_the_bad_words_pass():
    request = GenerationRequest("b", "p", max_tokens=5, banned_words=("Wait", "But wait"))
    banned = [[7], [3], [5, 9], [7], [4, 5, 6]]
    kwargs = to_sampling_kwargs(request, banned)
    assert kwargs["logit_bias"] == {3: BAN_BIAS, 7: BAN_BIAS}
    assert "bad_words" not in kwargs  # vLLM would recompute the sequences from words
    assert banned_sequences(banned) == [[5, 9], [4, 5, 6]]
    assert "logit_bias" not in to_sampling_kwargs(GenerationRequest("n", "p", max_tokens=5))


def test_finish_reasons_map_to_results():
    assert to_result("a", "x", [1, 2], "length", None) == GenerationResult("a", "x", 2, "length")
    assert to_result("b", "x", [1, 2, 3], "stop", None) == GenerationResult("b", "x", 3, "stop")
    assert to_result("c", "x", [1], "stop", 128001) == GenerationResult("c", "x", 1, "stop")
    assert to_result("d", "x", [1], "stop", "\n\n") == GenerationResult("d", "x", 1, "stop", "\n\n")
    with pytest.raises(RuntimeError, match="'e'.*abort"):
        to_result("e", "", [], "abort", None)


def test_engine_args_add_prefix_caching_everywhere_and_cpu_settings_on_cpu_only():
    gpu = engine_args_kwargs("m", tensor_parallel_size=4, max_model_len=32768)
    assert gpu["enable_prefix_caching"] is True and gpu["tokenizer"] == "m"
    assert (gpu["tensor_parallel_size"], gpu["max_model_len"]) == (4, 32768)
    assert not set(CPU_ARGS) & set(gpu)  # vLLM's own defaults on GPU
    cpu = engine_args_kwargs("m", "tok", on_cpu=True)
    assert cpu["tokenizer"] == "tok" and all(cpu[k] == v for k, v in CPU_ARGS.items())


def test_engine_settings_from_the_config_win_over_the_adapters():
    cpu = engine_args_kwargs("m", on_cpu=True, enforce_eager=False, enable_prefix_caching=False,
                             kv_cache_memory_bytes=1 << 30)
    assert (cpu["enforce_eager"], cpu["enable_prefix_caching"]) == (False, False)
    assert cpu["kv_cache_memory_bytes"] == 1 << 30 and cpu["enable_chunked_prefill"] is False
