"""Batched generation with Hugging Face transformers, on CPU or one GPU (tests, demo, small runs).

Contract (see `GenerationRequest`): results come back in request order; a request's text depends
only on the request (prompt, seed, sampling settings), never on what else shares its batch, so a
killed and resumed search reproduces an uninterrupted one.

Decoding is a loop of our own over the model's forward pass and KV cache rather than
`model.generate`: a row that finishes leaves the batch at once (its cache rows are dropped), so a
micro-batch does not keep computing rows that stopped while its longest rollout goes on.

How sampling stays independent of the batch: the loop takes the argmax of scores that a per-row
sampler has turned into a sample. Per row it applies the row's temperature and
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
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

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


class _RowSampler:
    """Per-row bans, temperature, top-p and seeded Gumbel noise; the decode loop takes argmax."""

    def __init__(self, requests: Sequence[GenerationRequest], bans: list[_Bans | None]):
        self.bans = bans
        self.sampled = [r.temperature > 0 for r in requests]  # temperature 0 stays greedy
        self.temperature = torch.tensor([[r.temperature] for r in requests], dtype=torch.float32)
        # top_p 1 keeps everything (inf, so float error in the cumulative sum cannot drop a token).
        self.top_p = torch.tensor([[r.top_p if r.top_p < 1 else float("inf")] for r in requests],
                                  dtype=torch.float32)
        # CPU generators: the noise is the same on every device and for every batch.
        self.generators = [torch.Generator().manual_seed(request_seed(r)) if r.temperature > 0
                           else None for r in requests]

    def __call__(self, rows: list[int], generated: list[list[int]],
                 scores: torch.FloatTensor) -> torch.FloatTensor:
        """Scores of the active `rows` (row i of `scores` is request rows[i]) with bans applied
        and, for sampled rows, log-probs plus Gumbel noise."""
        scores = scores.float()
        for i, row in enumerate(rows):
            bans = self.bans[row]
            if bans is None:
                continue
            if bans.singles.numel():
                scores[i, bans.singles] = float("-inf")
            for length, table in bans.after.items():
                if len(generated[row]) >= length:
                    tail = tuple(generated[row][-length:])
                    if tail in table:
                        scores[i, table[tail]] = float("-inf")
        positions = [i for i, row in enumerate(rows) if self.sampled[row]]
        if not positions:
            return scores  # all greedy: argmax of the (masked) logits
        # Row-wise ops on the sampled rows at once; each row's values do not depend on the others.
        sampled = [rows[i] for i in positions]
        device = scores.device
        logp = torch.log_softmax(scores[positions] / self.temperature[sampled].to(device), dim=-1)
        logp = logp.masked_fill(~_nucleus(logp.exp(), self.top_p[sampled].to(device)),
                                float("-inf"))
        # One vocabulary-sized draw per row and step, from the row's own generator.
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=self.generators[row])
                               for row in sampled])
        scores[positions] = logp + (-torch.log(-torch.log(uniform))).to(device)
        return scores


def _nucleus(probs: torch.Tensor, top_p: torch.Tensor, candidates: int = 64) -> torch.Tensor:
    """Top-p mask per row: the most likely tokens until their mass reaches `top_p` (a column;
    inf keeps every token).

    The rule works on probability values only (keep every token at least as likely as the last
    one needed), so ties are kept or dropped together and the mask never depends on the order a
    sort puts equal values in. Sorting the whole vocabulary is the costly part: the top
    `candidates` decide the mask of a row whenever they hold more than top_p of its mass (the
    usual case for a trained model); only the other rows are sorted in full.
    """
    keep_all = torch.isinf(top_p)
    ranked = probs.topk(min(candidates, probs.shape[-1]), dim=-1).values
    threshold = _threshold(ranked, top_p)
    short = ~((ranked.sum(dim=-1, keepdim=True) > top_p) | keep_all).squeeze(-1)
    if bool(short.any()):
        full = probs[short].sort(dim=-1, descending=True).values
        threshold[short] = _threshold(full, top_p[short])
    return (probs >= threshold) | keep_all


def _threshold(ranked: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """The probability of the last token needed to reach top_p, per row of descending `ranked`."""
    mass_before = ranked.cumsum(dim=-1) - ranked
    n_needed = (mass_before <= top_p).sum(dim=-1, keepdim=True)  # >= 1: the first is always in
    return ranked.gather(-1, n_needed - 1)


class _RowStopper:
    """Ends each row at EOS, its first stop string (decoded text) or its own `max_tokens`.

    Records per row `(tokens generated, reason, stop string)`, reason in {"eos", "stop", "length"}.
    """

    def __init__(self, tokenizer, requests: Sequence[GenerationRequest], eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.stops = [r.stop for r in requests]
        self.max_tokens = [r.max_tokens for r in requests]
        # Enough trailing tokens to hold any stop string (a character is at most 4 byte tokens).
        self.window = [4 * max(map(len, r.stop)) + 2 if r.stop else 0 for r in requests]
        self.finished: list[tuple[int, str, str | None] | None] = [None] * len(requests)

    def __call__(self, rows: list[int], generated: list[list[int]]) -> list[bool]:
        """Whether each active row is finished after its newest token."""
        for row in rows:
            tokens = generated[row]
            n = len(tokens)
            if tokens[-1] in self.eos_ids:
                self.finished[row] = (n, "eos", None)
            elif self.stops[row] and (hit := self._stop_in_tail(tokens, row)):
                self.finished[row] = (n, "stop", hit)
            elif n >= self.max_tokens[row]:
                self.finished[row] = (n, "length", None)
        return [self.finished[row] is not None for row in rows]

    def _stop_in_tail(self, tokens: list[int], row: int) -> str | None:
        text = self.tokenizer.decode(tokens[-self.window[row]:], skip_special_tokens=True,
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
        """Prefill the left-padded prompts, then decode one token per active row and step.

        A row leaves the batch (and its KV cache rows are dropped) as soon as it finishes, so
        the rest of a micro-batch does not pay for rows that already stopped: rollouts of one
        wave end at very different lengths.
        """
        prompt_len = max(map(len, prompts))
        input_ids = torch.full((len(prompts), prompt_len), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompts):  # left padding: every row ends at the same column
            input_ids[row, prompt_len - len(ids):] = torch.tensor(ids)
            mask[row, prompt_len - len(ids):] = 1
        sampler = _RowSampler(requests, [self._bans_for(r.banned_words) for r in requests])
        stopper = _RowStopper(self.tokenizer, requests, self.eos_ids)
        generated: list[list[int]] = [[] for _ in requests]
        rows = list(range(len(requests)))  # the active rows, in the cache's batch order
        mask = mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # a padded row sees unpadded positions
        cache = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask,
                                position_ids=positions, past_key_values=cache,
                                use_cache=True, logits_to_keep=1).logits[:, -1, :]
            next_position = positions[:, -1:] + 1
            while True:
                tokens = sampler(rows, generated, logits).argmax(dim=-1)
                for row, token in zip(rows, tokens.tolist()):
                    generated[row].append(token)
                keep = [i for i, done in enumerate(stopper(rows, generated)) if not done]
                if not keep:
                    break
                if len(keep) < len(rows):
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask, next_position, tokens = mask[index], next_position[index], tokens[index]
                    rows = [rows[i] for i in keep]
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
                logits = self.model(input_ids=tokens[:, None], attention_mask=mask,
                                    position_ids=next_position, past_key_values=cache,
                                    use_cache=True, logits_to_keep=1).logits[:, -1, :]
                next_position = next_position + 1
        return [self._result(r, generated[row], stopper.finished[row])
                for row, r in enumerate(requests)]  # type: ignore[arg-type]

    def _result(self, request: GenerationRequest, tokens: list[int],
                finished: tuple[int, str, str | None]) -> GenerationResult:
        n, reason, stop = finished
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
