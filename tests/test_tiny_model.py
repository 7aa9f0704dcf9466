"""The tiny offline model: loads with the Auto classes, behaves like an R1-distill checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from retro_search.tiny_model import build_tiny_model, corpus_lines, main


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_loads_offline_with_auto_classes_as_llama(tiny_model_dir, tokenizer):
    config = AutoConfig.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert config.model_type == "llama"
    assert config.max_position_embeddings >= 32768  # real R1 traces exceed 8k tokens
    assert model.config.vocab_size == len(tokenizer) == 2048


def test_special_tokens_are_set(tokenizer):
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|end_of_text|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3


def test_think_markers_are_single_tokens_that_survive_skip_special(tokenizer):
    text = "<think>\nSo the answer is 4.\n</think>\n\nThe answer is $\\boxed{4}$."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.convert_tokens_to_ids("<think>") in ids
    assert tokenizer.convert_tokens_to_ids("</think>") in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_generation_prompt_opens_reasoning_like_r1_distill(tokenizer):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.startswith(tokenizer.bos_token)
    assert "What is 2 + 2?" in prompt
    assert prompt.endswith("<|Assistant|><think>\n")


def test_assistant_turn_ends_with_eos(tokenizer):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\na"}],
        tokenize=False)
    assert text.endswith("<|Assistant|><think>\nx\n</think>\n\na<|end_of_text|>")


def test_transition_words_and_paragraph_breaks_are_real_tokens(tokenizer):
    for word in ("Wait", "Alternatively", "Hmm"):
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1
    # Llama-3-style pre-tokenisation: punctuation takes the blank line after it, so a stop string
    # "\n\n" can sit inside a token, as with the real models.
    ids = tokenizer.encode("x.\n\nWait", add_special_tokens=False)
    assert [tokenizer.decode([i]) for i in ids] == ["x", ".\n\n", "Wait"]


def test_corpus_is_deterministic_and_r1_styled():
    lines = corpus_lines()
    assert lines == corpus_lines()
    assert len(lines) >= 300
    text = "\n".join(lines)
    for marker in ("Wait,", "Alternatively,", "Hmm,", "\\boxed{", "\\frac{", "\n\n"):
        assert marker in text


def test_same_seed_gives_same_weights_other_seed_differs(tiny_model_dir, tmp_path):
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    original = Path(tiny_model_dir)
    assert _sha256(again / "model.safetensors") == _sha256(original / "model.safetensors")
    assert _sha256(again / "tokenizer.json") == _sha256(original / "tokenizer.json")
    assert _sha256(other / "model.safetensors") != _sha256(original / "model.safetensors")


def test_cli_main_builds_into_the_given_directory(tmp_path, capsys):
    out = main([str(tmp_path / "cli-model"), "--seed", "3", "--num-layers", "1"])
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 1
    assert capsys.readouterr().out.strip() == str(out)


def test_training_steps_are_deterministic_and_change_the_weights(tiny_model_dir, tmp_path):
    first = build_tiny_model(tmp_path / "a", train_steps=2)
    second = build_tiny_model(tmp_path / "b", train_steps=2)
    assert _sha256(first / "model.safetensors") == _sha256(second / "model.safetensors")
    assert _sha256(first / "model.safetensors") != _sha256(
        Path(tiny_model_dir) / "model.safetensors")
