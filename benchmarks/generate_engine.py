"""MEASUREMENT BASELINE, not a pipeline engine: the simplest engine that keeps the engine contract
on Hugging Face's `model.generate`, to measure what `TransformersEngine`'s own decode loop,
KV cache and attention (`engines/decoding.py`, `kv_cache.py`, `attention.py`) buy.

    .venv/bin/python benchmarks/vllm_throughput.py --engine generate --device cpu --model-size tiny ...

(the commands of each figure are in `vllm_throughput.py` and benchmarks/README.md).

Contract kept (`retro_search/engines/base.py`): results in request order; a request's text depends
only on the request (one request at a time, global RNG seeded with `request_seed` before each
call, so nothing else in a batch can change it); generation ends at EOS, at the first stop string
(`stop_strings=` with the tokenizer; the returned text is cut before it) or after `max_tokens`;
banned words are the same token sequences `TransformersEngine` enforces (`banned_token_sequences`),
masked by a logits processor before temperature and top-p (transformers 5.x runs custom processors
before its warpers). `num_tokens` counts generated tokens up to and including the one that ended
generation. Not promised: the same text as `TransformersEngine` for a seed (another sampler).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor

from retro_search.engines.banned_words import banned_token_sequences, vocab_texts
from retro_search.engines.base import GenerationRequest, GenerationResult, request_seed


class BanProcessor(LogitsProcessor):
    """Masks banned single tokens at every step, and the last token of a longer banned sequence
    when the generated tokens (not the prompt) end with the others."""

    def __init__(self, sequences: list[list[int]], prompt_length: int):
        self.singles = torch.tensor([s[0] for s in sequences if len(s) == 1], dtype=torch.long)
        self.after: dict[tuple[int, ...], list[int]] = {}
        for seq in sequences:
            if len(seq) > 1:
                self.after.setdefault(tuple(seq[:-1]), []).append(seq[-1])
        self.lengths = sorted({len(prefix) for prefix in self.after})
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.singles.to(scores.device)] = -float("inf")
        generated = input_ids[0, self.prompt_length:].tolist()  # one row: one request per call
        for n in self.lengths:
            if n <= len(generated):
                scores[0, self.after.get(tuple(generated[-n:]), [])] = -float("inf")
        return scores


class GenerateEngine:
    """One request at a time through `model.generate`; see the module docstring.

    `device`: "auto", "cpu", "cuda" ...; `dtype`: "auto" (float32 on CPU, the checkpoint's on GPU)
    or a torch dtype name; `num_threads`: torch CPU threads (None leaves them)."""

    def __init__(self, model: str, tokenizer: str | None = None, device: str = "auto",
                 dtype: str = "auto", num_threads: int | None = None):
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            torch_dtype = "auto" if self.device.type == "cuda" else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
        self.model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self.max_model_len: int | None = getattr(self.model.config, "max_position_embeddings",
                                                 None)
        self._vocab_texts: list[str] | None = None
        self._banned: dict[tuple[str, ...], list[list[int]]] = {}

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Number of tokens of each text, without special tokens."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False).input_ids]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return [self._generate_one(request) for request in requests]

    def _banned_sequences(self, words: tuple[str, ...]) -> list[list[int]]:
        if words not in self._banned:
            if self._vocab_texts is None:
                self._vocab_texts = vocab_texts(self.tokenizer)
            self._banned[words] = banned_token_sequences(self.tokenizer, words,
                                                         texts=self._vocab_texts)
        return self._banned[words]

    @torch.no_grad()
    def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        ids = self.tokenizer(request.prompt, add_special_tokens=False,
                             return_tensors="pt").input_ids.to(self.device)
        if ids.shape[1] == 0:
            raise ValueError(f"request {request.request_id!r}: the prompt is empty")
        sampling = request.temperature > 0
        kwargs = dict(max_new_tokens=request.max_tokens, do_sample=sampling, num_beams=1,
                      eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id,
                      attention_mask=torch.ones_like(ids))
        if sampling:  # top_k=0: top-p alone, like the project's engines
            kwargs.update(temperature=request.temperature, top_p=request.top_p, top_k=0)
        if request.stop:
            kwargs.update(stop_strings=list(request.stop), tokenizer=self.tokenizer)
        if request.banned_words:
            kwargs["logits_processor"] = [
                BanProcessor(self._banned_sequences(request.banned_words), ids.shape[1])]
        torch.manual_seed(request_seed(request))  # the request's own random stream
        generated = self.model.generate(ids, **kwargs)[0, ids.shape[1]:].tolist()
        n = len(generated)
        ended_by_eos = bool(generated) and generated[-1] in self.eos_ids
        text = self.tokenizer.decode(generated[:-1] if ended_by_eos else generated,
                                     skip_special_tokens=True, clean_up_tokenization_spaces=False)
        hits = [(text.find(s), i, s) for i, s in enumerate(request.stop) if s in text]
        if hits:
            position, _, stop = min(hits)
            return GenerationResult(request.request_id, text[:position], n, "stop", stop)
        return GenerationResult(request.request_id, text, n, "stop" if ended_by_eos else "length")
