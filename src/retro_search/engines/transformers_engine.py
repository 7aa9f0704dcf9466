"""Batched generation with Hugging Face transformers, on CPU or one GPU (tests, demo, small runs).

Contract (see `GenerationRequest`): results come back in request order; a request's text depends
only on the request (prompt, seed, sampling settings), never on what else shares its batch, so a
killed and resumed search reproduces an uninterrupted one.

How sampling stays independent of the batch: `model.generate` runs greedy (argmax) and a logits
processor turns each row's argmax into a sample. Per row it applies the row's temperature and
top-p, then adds Gumbel noise drawn from the row's own `torch.Generator`, seeded from the
request's seed; argmax(log-probs + Gumbel) is an exact sample from the top-p distribution (the
Gumbel-max trick). Each row draws exactly one vocabulary-sized noise vector per step, on the CPU,
so its random stream never depends on other rows or on the device. Temperature 0 is plain greedy.
Left padding with an attention mask and positions computed from the mask make a padded row see
the same logits as the unpadded request, up to float rounding of a different batch shape; a
rounding difference changes a token only when two candidates tie to about 1e-6, which the tests
never saw happen.

Stopping, per row: end-of-sequence token, first stop string in the DECODED output (a stop string
can sit inside a merged token such as ".\\n\\n"), or `max_tokens`. `num_tokens` counts the tokens
generated up to and including the one that ended generation (EOS or the token that completed the
stop string), like `len(token_ids)` of a vLLM output; the returned text excludes EOS and is cut
before the stop string. Banned words are enforced per row (see `banned_words`).
Prints nothing on stdout; the caller owns progress reporting.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LogitsProcessor,
                          LogitsProcessorList, StoppingCriteria, StoppingCriteriaList)

from retro_search.engines.banned_words import banned_token_sequences, vocab_texts
from retro_search.engines.base import GenerationRequest, GenerationResult, request_seed




class _Bans:
    """Banned sequences of one word list, arranged for per-step lookup."""

    def __init__(self, sequences: list[list[int]], device: torch.device):
        self.singles = torch.tensor([s[0] for s in sequences if len(s) == 1], dtype=torch.long,
                                    device=device)
        # prefix length -> {prefix tuple -> last tokens to mask after that prefix}
        self.after: dict[int, dict[tuple[int, ...], list[int]]] = {}
        for seq in sequences:
            if len(seq) > 1:
                table = self.after.setdefault(len(seq) - 1, {})
                table.setdefault(tuple(seq[:-1]), []).append(seq[-1])


class _RowSampler(LogitsProcessor):
    """Per-row bans, temperature, top-p and seeded Gumbel noise; `generate` then takes argmax."""

    def __init__(self, requests: Sequence[GenerationRequest], bans: list[_Bans | None],
                 prompt_len: int):
        self.prompt_len = prompt_len
        self.bans = bans
        # Rows with temperature 0 stay greedy; the others are sampled.
        self.sampled_rows = [row for row, r in enumerate(requests) if r.temperature > 0]
        self.temperature_col = torch.tensor(
            [[requests[row].temperature] for row in self.sampled_rows], dtype=torch.float32)
        # top_p 1 keeps everything (inf, so float error in the cumulative sum cannot drop a token).
        self.top_p_col = torch.tensor(
            [[requests[row].top_p if requests[row].top_p < 1 else float("inf")]
             for row in self.sampled_rows], dtype=torch.float32)
        # CPU generators: the noise is the same on every device and for every batch.
        self.generators = {row: torch.Generator().manual_seed(request_seed(requests[row]))
                           for row in self.sampled_rows}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        n_generated = input_ids.shape[1] - self.prompt_len
        for row, bans in enumerate(self.bans):
            if bans is None:
                continue
            if bans.singles.numel():
                scores[row, bans.singles] = float("-inf")
            for length, table in bans.after.items():
                if n_generated >= length:
                    tail = tuple(input_ids[row, -length:].tolist())
                    if tail in table:
                        scores[row, table[tail]] = float("-inf")
        if not self.sampled_rows:
            return scores  # all greedy: argmax of the (masked) logits
        # Row-wise ops on the sampled rows at once; each row's values do not depend on the others.
        rows = self.sampled_rows
        logp = torch.log_softmax(scores[rows] / self.temperature_col.to(scores.device), dim=-1)
        logp = logp.masked_fill(~_nucleus(logp.exp(), self.top_p_col.to(scores.device)),
                                float("-inf"))
        # One vocabulary-sized draw per row and step, from the row's own generator.
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=self.generators[row])
                               for row in rows])
        scores[rows] = logp + (-torch.log(-torch.log(uniform))).to(scores.device)
        return scores


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor, candidates: int = 64) -> torch.Tensor:
    """Top-p mask per row: the most likely tokens until their mass reaches `top_p` (a column;
    inf keeps every token).

    The rule works on probability values only (keep every token at least as likely as the last
    one needed), so ties are kept or dropped together and the mask never depends on the order a
    sort puts equal values in. Sorting the whole vocabulary is the costly part: the top
    `candidates` decide the mask whenever they hold more than top_p of the mass, the usual case.
    """
    keep_all = torch.isinf(top_p)
    ranked = probs.topk(min(candidates, probs.shape[-1]), dim=-1).values
    if not bool(((ranked.sum(dim=-1, keepdim=True) > top_p) | keep_all).all()):
        ranked = probs.sort(dim=-1, descending=True).values
    mass_before = ranked.cumsum(dim=-1) - ranked
    n_needed = (mass_before <= top_p).sum(dim=-1, keepdim=True)  # >= 1: the first is always in
    threshold = ranked.gather(-1, n_needed - 1)
    return (probs >= threshold) | keep_all


class _RowStopper(StoppingCriteria):
    """Ends each row at EOS, its first stop string (decoded text) or its own `max_tokens`.

    Records per row `(tokens generated, reason, stop string)`, reason in {"eos", "stop", "length"}.
    """

    def __init__(self, tokenizer, requests: Sequence[GenerationRequest], prompt_len: int,
                 eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.eos_ids = eos_ids
        self.stops = [r.stop for r in requests]
        self.max_tokens = [r.max_tokens for r in requests]
        # Enough trailing tokens to hold any stop string (a character is at most 4 byte tokens).
        self.window = [4 * max(map(len, r.stop)) + 2 if r.stop else 0 for r in requests]
        self.finished: list[tuple[int, str, str | None] | None] = [None] * len(requests)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        n = input_ids.shape[1] - self.prompt_len
        last = input_ids[:, -1].tolist()
        for row in range(len(self.finished)):
            if self.finished[row] is not None:
                continue
            if last[row] in self.eos_ids:
                self.finished[row] = (n, "eos", None)
            elif self.stops[row] and (hit := self._stop_in_tail(input_ids[row], n, row)):
                self.finished[row] = (n, "stop", hit)
            elif n >= self.max_tokens[row]:
                self.finished[row] = (n, "length", None)
        return torch.tensor([f is not None for f in self.finished], device=input_ids.device)

    def _stop_in_tail(self, ids: torch.LongTensor, n: int, row: int) -> str | None:
        tail = ids[-min(n, self.window[row]):].tolist()
        text = self.tokenizer.decode(tail, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
        return next((s for s in self.stops[row] if s in text), None)


class TransformersEngine:
    """Generate with a Hugging Face causal LM in micro-batches of at most `batch_size` prompts
    and at most `max_batch_tokens` padded prompt tokens.

    The token cap matters for long traces: a padded batch needs an attention mask, and with a mask
    PyTorch's CPU attention falls back to a kernel that materialises every score matrix. Measured
    on 2 cores with the tiny model and 16 prompts of 0.4k-5k tokens: 5.9 s to prefill them as one
    batch, 0.9 s one by one. Short prompts still share a batch.

    `model` / `tokenizer`: local directory or hub name (the tokenizer defaults to the model's).
    `device`: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1" ...
    `dtype`: "auto" (the checkpoint's dtype on GPU, float32 on CPU, where bf16 matmuls are slow),
    or a torch dtype name such as "bfloat16". `num_threads` sets torch's CPU threads for the whole
    process (None leaves them; 1 is fastest for tiny models on a machine whose cores are busy).
    Prompts are tokenised without special tokens: the chat template already put them in the text.
    """

    def __init__(self, model: str, tokenizer: str | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 16, attn_implementation: str | None = None,
                 trust_remote_code: bool = False, num_threads: int | None = None,
                 max_batch_tokens: int = 4096):
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError(f"batch_size and max_batch_tokens must be at least 1, "
                             f"got {batch_size} and {max_batch_tokens}")
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            torch_dtype = "auto" if self.device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model,
                                                       trust_remote_code=trust_remote_code)
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        with quiet_progress_bars():
            self.model = AutoModelForCausalLM.from_pretrained(
                model, dtype=torch_dtype, trust_remote_code=trust_remote_code, **kwargs)
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        pad = self.tokenizer.pad_token_id
        # Pad tokens sit behind the attention mask, so any id works when the model has none.
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self._vocab_texts: list[str] | None = None
        self._bans: dict[tuple[str, ...], _Bans] = {}

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Number of tokens of each text, without special tokens."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False).input_ids]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate every request; results in request order (see the module docstring)."""
        if not requests:
            return []
        prompts = self.tokenizer([r.prompt for r in requests], add_special_tokens=False).input_ids
        for request, ids in zip(requests, prompts):
            if not ids:
                raise ValueError(f"request {request.request_id!r}: the prompt is empty")
            if request.max_tokens < 1:
                raise ValueError(f"request {request.request_id!r}: max_tokens must be at least 1, "
                                 f"got {request.max_tokens}")
            if "" in request.stop:
                raise ValueError(f"request {request.request_id!r}: an empty stop string would "
                                 "stop before the first token")
            if request.temperature < 0 or not 0 < request.top_p <= 1:
                raise ValueError(f"request {request.request_id!r}: need temperature >= 0 and "
                                 f"0 < top_p <= 1, got {request.temperature}, {request.top_p}")
        # Similar prompt lengths share a micro-batch, so little compute goes to padding.
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        results: list[GenerationResult | None] = [None] * len(requests)
        for chunk in self._micro_batches(order, prompts):
            batch = self._generate_batch([requests[i] for i in chunk], [prompts[i] for i in chunk])
            for i, result in zip(chunk, batch):
                results[i] = result
        return results  # type: ignore[return-value]

    def _micro_batches(self, order: list[int], prompts: list[list[int]]) -> list[list[int]]:
        """Consecutive runs of `order` (sorted by length) within both batch limits."""
        batches: list[list[int]] = []
        for i in order:
            current = batches[-1] if batches else None
            # sorted ascending, so the newcomer is the longest: it sets the padded width
            if (current and len(current) < self.batch_size
                    and (len(current) + 1) * len(prompts[i]) <= self.max_batch_tokens):
                current.append(i)
            else:
                batches.append([i])
        return batches

    def _bans_for(self, words: tuple[str, ...]) -> _Bans | None:
        if not words:
            return None
        if words not in self._bans:
            if self._vocab_texts is None:
                self._vocab_texts = vocab_texts(self.tokenizer)
            sequences = banned_token_sequences(self.tokenizer, words, texts=self._vocab_texts)
            self._bans[words] = _Bans(sequences, self.device)
        return self._bans[words]

    def _generate_batch(self, requests: list[GenerationRequest],
                        prompts: list[list[int]]) -> list[GenerationResult]:
        prompt_len = max(map(len, prompts))
        input_ids = torch.full((len(prompts), prompt_len), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):  # left padding: every row ends at the same column
            input_ids[row, prompt_len - len(ids):] = torch.tensor(ids)
            attention_mask[row, prompt_len - len(ids):] = 1
        sampler = _RowSampler(requests, [self._bans_for(r.banned_words) for r in requests],
                              prompt_len)
        stopper = _RowStopper(self.tokenizer, requests, prompt_len, self.eos_ids)
        config = GenerationConfig(
            max_new_tokens=max(r.max_tokens for r in requests), do_sample=False, num_beams=1,
            pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids),
            bos_token_id=self.tokenizer.bos_token_id)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                generation_config=config, logits_processor=LogitsProcessorList([sampler]),
                stopping_criteria=StoppingCriteriaList([stopper]))
        generated = output[:, prompt_len:].tolist()
        return [self._result(r, generated[row], stopper.finished[row])
                for row, r in enumerate(requests)]

    def _result(self, request: GenerationRequest, tokens: list[int],
                finished: tuple[int, str, str | None] | None) -> GenerationResult:
        # `finished` is None only if generate stopped on its own max length, i.e. at max_tokens.
        n, reason, stop = finished if finished is not None else (len(tokens), "length", None)
        kept = tokens[:n - 1] if reason == "eos" else tokens[:n]
        text = self.tokenizer.decode(kept, skip_special_tokens=True,
                                     clean_up_tokenization_spaces=False)
        if reason == "stop":
            # Cut at the earliest stop string in the full text (the tail check only saw a window).
            hits = [(text.find(s), i, s) for i, s in enumerate(request.stop) if s in text]
            if hits:
                position, _, stop = min(hits)
                text = text[:position]
        return GenerationResult(request_id=request.request_id, text=text, num_tokens=n,
                                finish_reason="length" if reason == "length" else "stop",
                                stop_string=stop)


@contextlib.contextmanager
def quiet_progress_bars():
    """Hide transformers' progress bars for a moment (the caller owns the terminal)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
