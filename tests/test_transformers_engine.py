"""TransformersEngine on the tiny model: reproducible per request, stops and bans per row."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter, deque

import pytest
import torch

from retro_search.engines.banned_words import banned_token_sequences, word_variants
from retro_search.engines.base import GenerationRequest
from retro_search.engines.base import request_seed
from retro_search.engines.decoding import Row, _next_tokens, take_group
from retro_search.engines.transformers_engine import TransformersEngine
from retro_search.segmentation import KEYWORD_FLAGS, keyword_regex

QUESTIONS = [
    "What is 2 + 2?",
    "Find $x$ if $3x + 5 = 20$. Put the final answer in \\boxed{}.",
    "A rectangle has sides 12 and 7. What is its area? " * 6,
    "How many marbles remain if there are 40 marbles and 13 are taken away?",
]


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """One torch thread: the tiny model gains nothing from more, and on a shared machine with a
    busy core multi-threaded matmuls stall (these tests took 90 s instead of 10 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return TransformersEngine(tiny_model_dir, device="cpu", batch_size=16)


@pytest.fixture(scope="module")
def prompts(engine):
    return [engine.tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                 add_generation_prompt=True) for q in QUESTIONS]


def _mixed_requests(prompts, n=8, max_tokens=24):
    """Sampled (two settings) and greedy rows over prompts of different lengths."""
    settings = [(0.6, 0.95), (1.0, 1.0), (0.0, 1.0)]
    return [GenerationRequest(f"q{i}", prompts[i % len(prompts)], max_tokens=max_tokens,
                              temperature=settings[i % 3][0], top_p=settings[i % 3][1],
                              seed=100 + i) for i in range(n)]


def _starts_word(words):
    """Any of `words` as the ban defines it: at a word start, in any case, as a whole word."""
    return re.compile(r"(?<![^\W_])" + keyword_regex(words), KEYWORD_FLAGS)


# --- reproducibility -------------------------------------------------------------------------

def test_same_request_same_result_in_any_batch_composition(engine, tiny_model_dir, prompts):
    requests = _mixed_requests(prompts)
    others = [GenerationRequest(f"other{i}", prompts[(i + 1) % 4] + "Okay, so" * i, max_tokens=30,
                                seed=7 * i) for i in range(6)]
    together = engine.generate(requests)
    alone = [engine.generate([r])[0] for r in requests]
    small_batches = TransformersEngine(tiny_model_dir, device="cpu", batch_size=3)
    reversed_order = small_batches.generate(requests[::-1])[::-1]
    mixed = engine.generate(others[:3] + requests + others[3:])[3:3 + len(requests)]
    assert together == alone == reversed_order == mixed


def test_left_padded_row_equals_the_unpadded_request(engine, prompts):
    short = [GenerationRequest("short-greedy", prompts[0], max_tokens=20, temperature=0),
             GenerationRequest("short-sampled", prompts[0], max_tokens=20, seed=3)]
    long = GenerationRequest("long", prompts[2] * 3, max_tokens=5, seed=1)
    padded = engine.generate([long, *short])[1:]
    assert padded == [engine.generate([r])[0] for r in short]


def test_different_seeds_give_different_texts(engine, prompts):
    results = engine.generate([GenerationRequest(f"s{seed}", prompts[1], max_tokens=24, seed=seed,
                                                 temperature=1.0) for seed in range(4)])
    assert len({r.text for r in results}) == 4


def test_missing_seed_is_derived_stably_from_the_request_id(engine, prompts):
    assert request_seed(GenerationRequest("abc", "p", 1)) == 4213142463398924266  # sha256, not hash()
    a, b, c = (GenerationRequest(rid, prompts[1], max_tokens=24, temperature=1.0)
               for rid in ("id-a", "id-a", "id-b"))
    ra, rb, rc = engine.generate([a, b, c])
    assert ra.text == rb.text != rc.text


def test_temperature_zero_is_plain_greedy_whatever_the_seed(engine, prompts):
    requests = [GenerationRequest(f"g{seed}", prompts[3], max_tokens=16, temperature=0, seed=seed)
                for seed in (0, 1)]
    results = engine.generate(requests)
    ids = engine.tokenizer(prompts[3], add_special_tokens=False, return_tensors="pt").input_ids
    greedy = engine.model.generate(ids, do_sample=False, max_new_tokens=16, min_new_tokens=16,
                                   pad_token_id=engine.pad_id)
    expected = engine.tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)
    assert results[0].text == results[1].text == expected


def test_sampling_follows_temperature_and_top_p():
    logits = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -1.0, -3.0, -4.0])
    request = GenerationRequest("d", "p", max_tokens=1, temperature=0.7, top_p=0.9, seed=0)
    row = Row(0, request, [1], None)
    draws = Counter(_next_tokens([row], logits.clone()[None])[0] for _ in range(4000))
    probs = torch.softmax(logits / 0.7, dim=-1)
    nucleus = 3  # 0.54 + 0.26 < 0.9 <= 0.54 + 0.26 + 0.13: the first three tokens
    assert probs[:nucleus - 1].sum() < 0.9 <= probs[:nucleus].sum()
    expected = probs[:nucleus] / probs[:nucleus].sum()
    assert set(draws) == set(range(nucleus))
    for token in range(nucleus):
        assert abs(draws[token] / 4000 - float(expected[token])) < 0.03


# --- stopping --------------------------------------------------------------------------------

def test_max_tokens_per_row_ends_with_length(engine, prompts):
    results = engine.generate([GenerationRequest(f"m{n}", prompts[1], max_tokens=n, seed=5)
                               for n in (3, 7, 16)])
    assert [(r.finish_reason, r.num_tokens, r.stop_string) for r in results] == [
        ("length", 3, None), ("length", 7, None), ("length", 16, None)]
    assert results[2].text.startswith(results[1].text) and results[1].text.startswith(results[0].text)


def test_stop_strings_are_per_row_and_cut_before_the_earliest(engine, prompts):
    free = engine.generate([GenerationRequest(f"f{i}", prompts[i], max_tokens=32, temperature=0)
                            for i in range(3)])
    stop0 = free[0].text[12:15]
    later = free[0].text[20:24]
    assert stop0 and later and later not in free[0].text[:free[0].text.find(stop0) + len(stop0)]
    requests = [GenerationRequest("f0", prompts[0], max_tokens=32, temperature=0,
                                  stop=(later, stop0)),
                GenerationRequest("f1", prompts[1], max_tokens=32, temperature=0,
                                  stop=("\\boxed{never}",)),
                GenerationRequest("f2", prompts[2], max_tokens=32, temperature=0)]
    cut, unstopped, plain = engine.generate(requests)
    assert (cut.text, cut.finish_reason, cut.stop_string) == (
        free[0].text[:free[0].text.find(stop0)], "stop", stop0)
    assert unstopped == free[1] and plain == free[2]
    # num_tokens counts up to the token that completed the stop string.
    upto = engine.generate([GenerationRequest("f0", prompts[0], max_tokens=n, temperature=0)
                            for n in (cut.num_tokens - 1, cut.num_tokens)])
    assert stop0 not in upto[0].text and stop0 in upto[1].text


def test_stop_string_inside_a_single_token_cuts_mid_token(engine, prompts):
    prefixes = engine.generate([GenerationRequest("p", prompts[3], max_tokens=n, temperature=0)
                                for n in range(1, 25)])
    ends = [0] + [len(p.text) for p in prefixes]
    j = next(j for j in range(1, len(ends)) if ends[j] - ends[j - 1] >= 3)
    inside = prefixes[-1].text[ends[j - 1] + 1:ends[j]]  # token j without its first character
    result = engine.generate([GenerationRequest("p", prompts[3], max_tokens=24, temperature=0,
                                                stop=(inside,))])[0]
    assert result.stop_string == inside and result.finish_reason == "stop"
    assert result.text == prefixes[-1].text[:prefixes[-1].text.find(inside)]
    assert result.num_tokens <= j


def test_end_of_sequence_stops_without_stop_string(tiny_model_dir, prompts):
    engine = TransformersEngine(tiny_model_dir, device="cpu")
    ids = engine.tokenizer(prompts[0], add_special_tokens=False, return_tensors="pt").input_ids
    greedy = engine.model.generate(ids, do_sample=False, max_new_tokens=20, min_new_tokens=20,
                                   pad_token_id=engine.pad_id)[0, ids.shape[1]:].tolist()
    p = next(p for p in range(3, 20) if greedy[p] not in greedy[:p])
    engine.eos_ids = {greedy[p]}  # pretend this token is the model's end-of-sequence token
    result = engine.generate([GenerationRequest("e", prompts[0], max_tokens=20, temperature=0)])[0]
    assert (result.finish_reason, result.stop_string, result.num_tokens) == ("stop", None, p + 1)
    assert result.text == engine.tokenizer.decode(greedy[:p], skip_special_tokens=True)


# --- banned words ----------------------------------------------------------------------------

def test_banned_words_from_the_free_output_never_appear(engine, prompts):
    free_requests = [GenerationRequest(f"b{i}", prompts[i % 4], max_tokens=40, seed=i,
                                       temperature=[0.0, 0.6][i % 2]) for i in range(4)]
    free = engine.generate(free_requests)
    # Whole words only: a banned word is banned as a word, not as the start of a longer one.
    counts = Counter(w for r in free for w in re.findall(r"(?<![^\W_])[A-Za-z]{3,}(?!\w)", r.text))
    words = tuple(w for w, _ in counts.most_common(3))
    assert words and any(_starts_word(words).search(r.text) for r in free)
    banned = [dataclasses.replace(r, banned_words=words) for r in free_requests]
    out = engine.generate(banned + free_requests)
    assert not any(_starts_word(words).search(r.text) for r in out[:4])
    assert out[4:] == free  # rows without bans in the same batch are untouched


def test_ban_holds_when_the_model_is_pushed_to_say_wait(tiny_model_dir, prompts):
    engine = TransformersEngine(tiny_model_dir, device="cpu")
    texts = [engine.tokenizer.decode([i]) for i in range(len(engine.tokenizer))]
    # Boost every token containing "wait", less the canonical pieces of "wait" ("w", "ait"), and
    # a little the spaces between words, so the model writes "wait" as a word again and again.
    bias = torch.zeros(len(texts))
    for i, text in enumerate(texts):
        if "wait" in text.lower():
            bias[i] = 30.0
        elif text.strip() in ("w", "ait"):
            bias[i] = 20.0
        elif text in (" ", ", "):
            bias[i] = 12.0
    engine.model.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    requests = [GenerationRequest(f"w{i}", prompts[i % 4], max_tokens=32, seed=i,
                                  temperature=[0.0, 0.6, 1.0][i % 3]) for i in range(6)]
    free = engine.generate(requests)
    said_wait = re.compile(r"(?i)(?<![^\W_])wait")  # at a word start, even run into "waitWait"
    assert all(said_wait.search(r.text) for r in free)
    assert any(_starts_word(["Wait"]).search(r.text) for r in free)
    out = engine.generate([dataclasses.replace(r, banned_words=("Wait",)) for r in requests])
    assert not any(said_wait.search(r.text) for r in out), [r.text for r in out]


def test_every_canonical_spelling_of_a_banned_word_is_blocked(engine):
    tok = engine.tokenizer
    words = ["Wait", "But wait", "Alternatively", "Let me check", "Hmm"]
    sequences = banned_token_sequences(tok, words)
    singles = {s[0] for s in sequences if len(s) == 1}
    longer = [s for s in sequences if len(s) > 1]

    def blocked(ids):  # would generation be stopped somewhere along `ids`?
        return any(t in singles or any(ids[:k + 1][-len(s):] == s for s in longer)
                   for k, t in enumerate(ids))

    for variant in word_variants(words):
        for context in ("", " ", "\n", "\n\n", "x.\n\n", "(", "**"):
            full = tok.encode(context + variant, add_special_tokens=False)
            n_context = len(tok.encode(context, add_special_tokens=False)) if context else 0
            assert blocked(full[max(n_context - 1, 0):]), (context, variant)


# --- interface -------------------------------------------------------------------------------

def test_results_come_back_in_request_order(engine, prompts):
    requests = [GenerationRequest(f"o{i}", prompts[i], max_tokens=4, seed=i) for i in (2, 0, 3, 1)]
    assert [r.request_id for r in engine.generate(requests)] == ["o2", "o0", "o3", "o1"]


def test_count_tokens_matches_the_tokenizer_without_special_tokens(engine):
    texts = ["Wait, so the answer is 42.", "<think>\nHmm\n</think>", ""]
    expected = [len(engine.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    assert engine.count_tokens(texts) == expected and expected[-1] == 0


def test_generation_prints_nothing_on_stdout(engine, prompts, capfd):
    engine.generate(_mixed_requests(prompts, n=3, max_tokens=4))
    assert capfd.readouterr().out == ""


def test_invalid_requests_are_rejected_with_their_id(engine, prompts):
    with pytest.raises(ValueError, match="'empty'.*prompt is empty"):
        engine.generate([GenerationRequest("empty", "", max_tokens=4)])
    with pytest.raises(ValueError, match="'zero'.*max_tokens"):
        engine.generate([GenerationRequest("zero", prompts[0], max_tokens=0)])


def test_prefill_groups_respect_the_free_slots_and_padded_token_limit():
    lengths = [5, 10, 20, 30, 30, 40, 90, 200]
    waiting = deque(Row(i, GenerationRequest(f"r{n}", "p", 1), [1] * n, None)
                    for i, n in enumerate(lengths))
    groups = []
    while waiting:
        groups.append([len(row.prompt) for row in take_group(waiting, free=3, max_tokens=100)])
    assert [n for g in groups for n in g] == lengths  # order kept, none lost
    for group in groups:
        assert len(group) <= 3
        assert len(group) == 1 or len(group) * max(group) <= 100
    assert groups[-1] == [200]  # a prompt longer than the budget still runs, alone


def test_token_limit_does_not_change_results(tiny_model_dir, prompts):
    requests = [GenerationRequest(f"r{i}", p, 12, seed=i) for i, p in enumerate(prompts)]
    wide = TransformersEngine(tiny_model_dir, device="cpu", batch_size=16, max_batch_tokens=10**6)
    narrow = TransformersEngine(tiny_model_dir, device="cpu", batch_size=16, max_batch_tokens=1)
    assert wide.generate(requests) == narrow.generate(requests)
