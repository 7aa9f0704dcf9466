"""The continuous batch's parts: the rearrangeable KV cache, grouped-query attention without
copies, the sort-free top-p rule, and rows joining a batch that is already decoding."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM

from retro_search.engines import attention
from retro_search.engines.base import GenerationRequest
from retro_search.engines.decoding import ContinuousBatch, Row, _sample
from retro_search.engines.kv_cache import HEADROOM, GrowingLayer, new_cache
from retro_search.engines.transformers_engine import TransformersEngine


def _filled(batch: int, lengths: list[int], seed: int) -> tuple[GrowingLayer, torch.Tensor]:
    """A layer fed chunks of `lengths` columns, and the plain concatenation of those chunks."""
    g = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(batch, 2, n, 4, generator=g) for n in lengths]
    layer = GrowingLayer()
    for chunk in chunks:
        keys, values = layer.update(chunk, -chunk)
    reference = torch.cat(chunks, dim=-2)
    assert torch.equal(keys, reference) and torch.equal(values, -reference)
    return layer, reference


def test_growing_layer_holds_what_was_written_past_its_headroom():
    layer, reference = _filled(3, [5, *[1] * (HEADROOM + 10), 40], seed=0)
    assert layer.get_seq_length() == reference.shape[-2] == 5 + HEADROOM + 10 + 40


def test_rows_leave_lose_leading_columns_and_join_padded_on_the_left():
    layer, reference = _filled(3, [6, 1, 1], seed=1)            # width 8
    layer.batch_select_indices(torch.tensor([2, 0]))
    layer.cut_left(3)
    assert torch.equal(layer.keys, reference[[2, 0]][:, :, 3:])
    other, wide = _filled(1, [9], seed=2)                       # wider than the running rows
    layer.join(other)
    assert layer.keys.shape == (3, 2, 9, 4)
    assert torch.equal(layer.keys[:2, :, :4], torch.zeros(2, 2, 4, 4))  # padding in front
    assert torch.equal(layer.keys[:2, :, 4:], reference[[2, 0]][:, :, 3:])
    assert torch.equal(layer.keys[2:], wide) and torch.equal(layer.values[2:], -wide)
    narrow, short = _filled(1, [2], seed=3)                     # narrower: it is padded
    layer.join(narrow)
    assert layer.keys.shape == (4, 2, 9, 4) and torch.equal(layer.keys[3, :, 7:], short[0])
    assert torch.equal(layer.keys[3, :, :7], torch.zeros(2, 7, 4))
    keys, _ = layer.update(torch.ones(4, 2, 1, 4), torch.ones(4, 2, 1, 4))  # still grows
    assert keys.shape[-2] == 10 and torch.equal(keys[:, :, -1], torch.ones(4, 2, 4))


def test_grouped_attention_gives_transformers_sdpa_logits_on_a_padded_batch(tiny_model_dir):
    models = {name: AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                         attn_implementation=name).eval()
              for name in ("sdpa", attention.NAME)}
    assert models["sdpa"].config.num_key_value_heads < models["sdpa"].config.num_attention_heads
    ids = torch.randint(5, 500, (3, 30), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :12] = mask[2, :25] = 0  # left padding of different widths
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = {name: model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
                  for name, model in models.items()}
    valid = mask.bool()
    torch.testing.assert_close(logits[attention.NAME][valid], logits["sdpa"][valid],
                               rtol=1e-5, atol=1e-5)


def _reference_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Every token at least as likely as the last one a descending sort needs to reach top_p."""
    ranked = probs.sort(descending=True).values
    needed = int(((ranked.cumsum(-1) - ranked) <= top_p).sum())
    return probs >= ranked[needed - 1]


def test_sample_is_the_gumbel_argmax_over_the_top_p_nucleus():
    g = torch.Generator().manual_seed(3)
    for trial in range(200):
        scale = [0.3, 1.0, 4.0][trial % 3]  # flat to peaked distributions
        scores = torch.randn(50, generator=g) * scale
        scores[:6] = scores[0]  # ties, kept or dropped together
        temperature, top_p = [0.6, 1.0][trial % 2], [0.5, 0.9, 0.95][trial % 3]
        request = GenerationRequest("s", "p", 1, temperature=temperature, top_p=top_p, seed=trial)
        token = int(_sample(scores[None].clone(), [Row(0, request, [1], None)])[0])
        # The same draw from a twin generator, and the same argmax over the reference nucleus.
        noise = torch.rand(50, generator=torch.Generator().manual_seed(trial))
        logp = torch.log_softmax(scores / temperature, dim=-1)
        keys = (logp - torch.log(-torch.log(noise))).masked_fill(
            ~_reference_nucleus(logp.exp(), top_p), float("-inf"))
        assert token == int(keys.argmax()), trial


def test_a_waiting_request_takes_a_free_slot_while_the_batch_decodes(tiny_model_dir):
    engine = TransformersEngine(tiny_model_dir, device="cpu", batch_size=2)
    prompt = engine.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}],
                                                  tokenize=False, add_generation_prompt=True)
    requests = [GenerationRequest("short", prompt, max_tokens=2, seed=1),
                GenerationRequest("long", prompt + " Okay", max_tokens=6, seed=2),
                GenerationRequest("later", prompt + " Okay, so" * 3, max_tokens=10, seed=3)]
    engine.eos_ids = set()  # every row runs to max_tokens, so the schedule is known
    rows = []  # rows of each forward pass

    def count(_module, _args, kwargs):
        rows.append(kwargs["input_ids"].shape[0])

    hook = engine.model.register_forward_pre_hook(count, with_kwargs=True)
    together = engine.generate(requests)
    hook.remove()
    # "later" joins at step 3, when "short" left after 2 tokens, and ends at step 12: 2 prefills
    # and a decode pass after every step but the last. Batches of two in turn would take
    # 2 prefills + 5 + 9 decode passes.
    assert len(rows) == 2 + (2 + 10 - 1)
    assert max(rows) == 2
    assert together == [engine.generate([r])[0] for r in requests]
    assert [r.num_tokens for r in together] == [2, 6, 10]


def test_new_cache_uses_growing_layers_for_plain_attention(tiny_model_dir):
    config = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config
    cache, joinable = new_cache(config)
    assert joinable and all(isinstance(layer, GrowingLayer) for layer in cache.layers)


def test_a_sliding_window_model_decodes_without_rearranging_its_cache(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           sliding_window=8, max_position_embeddings=512)
    MistralForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (source := Path(tiny_model_dir) / name).exists():
            shutil.copy(source, tmp_path / name)
    engine = TransformersEngine(str(tmp_path), device="cpu", batch_size=2)
    batch = ContinuousBatch(engine.model, engine.tokenizer, engine.eos_ids, engine.pad_id, 2, 4096)
    assert not batch.joinable  # sliding-window layers: newcomers wait for an empty batch
    requests = [GenerationRequest(f"w{i}", "Okay, so" * (3 + 4 * i), max_tokens=6 + 5 * i, seed=i)
                for i in range(3)]
    assert engine.generate(requests) == [engine.generate([r])[0] for r in requests]
