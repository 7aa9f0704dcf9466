"""Generation with Hugging Face transformers, on CPU or one GPU (tests, demo, small runs).

Contract (see `GenerationRequest`): results come back in request order; a request's text depends
only on the request (prompt, seed, sampling settings), never on what else shares its batch, so a
killed and resumed search reproduces an uninterrupted one.

`generate` decodes with continuous batching (`decoding.ContinuousBatch`): a slot freed by a
finished row is filled by the next waiting request at the next token, so a wave of rollouts of
very different lengths keeps the batch full until its last rows. There is no `generate_async`:
the scheduler's waves (every pending request of every trace in one call) were faster on CPU than
streaming each trace's requests, which come one at a time and are prefilled one at a time.
Prints nothing on stdout; the caller owns progress reporting.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from retro_search.engines import attention
from retro_search.engines.banned_words import banned_token_sequences, vocab_texts
from retro_search.engines.base import GenerationRequest, GenerationResult
from retro_search.engines.decoding import Bans, ContinuousBatch, Row


class TransformersEngine:
    """Generate with a Hugging Face causal LM, at most `batch_size` rows decoding together;
    waiting prompts are prefilled in groups of at most `max_batch_tokens` padded prompt tokens
    (long traces alone: see `decoding.ContinuousBatch` for why).

    `model` / `tokenizer`: local directory or hub name (the tokenizer defaults to the model's).
    `revision`: the hub commit, branch or tag of `model` (None: the latest); it applies to the
    tokenizer too when that is the model's own, never to a separate `tokenizer`, which is another
    repository with commits of its own.
    `device`: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1" ...
    `dtype`: "auto" (the checkpoint's dtype on GPU, float32 on CPU, where bf16 matmuls are slow),
    or a torch dtype name such as "bfloat16". `num_threads` sets torch's CPU threads for the whole
    process (None leaves them; 1 is fastest for tiny models on a machine whose cores are busy).
    `attn_implementation`: transformers' name ("sdpa", "eager", "flash_attention_2" ...) or the
    default "grouped_sdpa" (see `attention`: masked attention without copying grouped KV heads).
    Prompts are tokenised without special tokens: the chat template already put them in the text.
    """

    def __init__(self, model: str, tokenizer: str | None = None, revision: str | None = None,
                 device: str = "auto", dtype: str = "auto", batch_size: int = 16,
                 attn_implementation: str = attention.NAME,
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
        self.tokenizer = AutoTokenizer.from_pretrained(
            tokenizer or model, revision=None if tokenizer else revision,
            trust_remote_code=trust_remote_code)
        with quiet_progress_bars():
            self.model = AutoModelForCausalLM.from_pretrained(
                model, revision=revision, dtype=torch_dtype, trust_remote_code=trust_remote_code,
                attn_implementation=attn_implementation)
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        pad = self.tokenizer.pad_token_id
        # Pad tokens sit behind the attention mask, so any id works when the model has none.
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self._vocab_texts: list[str] | None = None
        self._bans: dict[tuple[str, ...], Bans] = {}
        # Called with each result as its row finishes, from the thread running `generate`: a
        # progress bar moves during a call of 1,024 requests instead of after it.
        self.on_result: Callable[[GenerationResult], None] | None = None
        # Prompt plus generated tokens must fit the positions the model was built for.
        self.max_model_len: int | None = getattr(self.model.config, "max_position_embeddings", None)

    def describe(self) -> str:
        """The settings it took, for logs and manifests."""
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return (f"dtype {dtype}, batch {self.batch_size} rows, prefill groups of at most "
                f"{self.max_batch_tokens:,} tokens, max_model_len {self.max_model_len:,}")

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Number of tokens of each text, without special tokens."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False).input_ids]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate every request; results in request order (see the module docstring)."""
        results: list[GenerationResult | None] = [None] * len(requests)
        batch = ContinuousBatch(self.model, self.tokenizer, self.eos_ids, self.pad_id,
                                self.batch_size, self.max_batch_tokens)
        # Shortest first: prompts of similar lengths are prefilled together, with little padding.
        batch.waiting.extend(sorted(self._rows(requests), key=lambda row: len(row.prompt)))
        while batch.busy:
            for row, result in batch.step():
                results[row.index] = result
                if self.on_result is not None:
                    self.on_result(result)
        return results  # type: ignore[return-value]

    def _rows(self, requests: Sequence[GenerationRequest]) -> list[Row]:
        """Validated rows of `requests`: tokenised prompts and banned-word tables."""
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
        return [Row(i, request, ids, self._bans_for(request.banned_words))
                for i, (request, ids) in enumerate(zip(requests, prompts))]

    def _bans_for(self, words: tuple[str, ...]) -> Bans | None:
        if not words:
            return None
        if words not in self._bans:
            if self._vocab_texts is None:
                self._vocab_texts = vocab_texts(self.tokenizer)
            sequences = banned_token_sequences(self.tokenizer, words, texts=self._vocab_texts)
            self._bans[words] = Bans(sequences, self.device)
        return self._bans[words]


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
