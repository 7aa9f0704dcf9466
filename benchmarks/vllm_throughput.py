"""Retro-Search throughput on GPU: the project's scheduler over vLLM vs a flat batch of the same size.

One command on a CUDA machine (after `pip install -e '.[vllm]'`; the model must be a hub id the
machine can download or a local folder):

    python benchmarks/vllm_throughput.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B

The same script without vLLM, through the transformers engine on the GPU (or, as a smoke test,
on CPU with the tiny model from `retro-search tiny-model /tmp/tiny`):

    python benchmarks/vllm_throughput.py --engine transformers --device cuda --max-tokens 1024
    .venv/bin/python benchmarks/vllm_throughput.py --engine transformers --device cpu \\
        --model /tmp/tiny --traces data/demo/traces.jsonl --format r1_response --limit 4 \\
        --max-tokens 64 --max-step-tokens 16 --max-boundaries 2 --threads 1

Arms, run one after the other on ONE engine, with the same SearchConfig and seeds:

- scheduler: `retro_search.scheduler.run_shard` over the traces. With vLLM it streams (a trace's
  next request goes in as soon as its previous one is back) and vLLM's prefix cache serves the
  prefixes that rollouts of a trace share; with transformers it runs in waves.
- flat: the same number of requests in ONE `generate` call, each prompt random vocabulary tokens
  (unrelated to every other prompt, so nothing is shared) as long as the matching scheduler
  request's prompt, and `max_tokens` equal to what that request generated. No stop strings, no
  banned words. Same totals of prompt and generated tokens (up to early EOS and re-tokenising the
  random text; both totals are reported), but no dependency between requests and no shared prefix.

Figures (units in the names or after the value): for each arm seconds, generated tokens/s
(`*_tokens_per_s`), prompt + generated tokens/s (`*_total_tokens_per_s`), prompt and generated
token totals; for the scheduler also traces/s and rollouts/s; `ratio_scheduler_over_flat`
(generated tokens/s of scheduler / flat: above 1 means prefix sharing outweighs waiting on
sequential rollouts); with vLLM `*_prefix_cache_hit_rate` = cached / queried prompt tokens over
the arm, from the deltas of vLLM's Prometheus counters `vllm:prefix_cache_hits` and
`vllm:prefix_cache_queries` (the script turns on vLLM's stats, which the adapter turns off). A
figure that cannot be read is left out and `notes` says why. The scheduler's wall time includes
grading and the search's own Python work, as in a real run. Last line: `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEMO_TRACES, FALLBACK_TRACES, Figures, add_search_args,  # noqa: E402
                     load_bench_traces, search_kwargs)
from search_throughput import scheduler_search  # noqa: E402

DEFAULT_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
PREFIX_HITS, PREFIX_QUERIES = "vllm:prefix_cache_hits", "vllm:prefix_cache_queries"


class RecordingEngine:
    """Passes requests through and records each request's prompt and generated token count.

    It has `generate_async` only when the wrapped engine has it, so `run_shard` streams or runs
    in waves exactly as it would on the bare engine."""

    def __init__(self, engine):
        self.engine = engine
        self.prompts: list[str] = []
        self.generated: list[int] = []
        if callable(getattr(engine, "generate_async", None)):
            self.generate_async = self._generate_async

    def _record(self, requests, results) -> None:
        self.prompts.extend(r.prompt for r in requests)
        self.generated.extend(r.num_tokens for r in results)

    def generate(self, requests):
        results = self.engine.generate(requests)
        self._record(requests, results)
        return results

    async def _generate_async(self, request):
        result = await self.engine.generate_async(request)
        self._record([request], [result])
        return result


def vllm_counters() -> dict[str, float] | None:
    """vLLM's cumulative Prometheus counters, summed over engines (label sets), or None.

    The AsyncLLM inside the adapter runs in this process and its stat logger writes to the
    default prometheus registry, which `vllm.v1.metrics.reader` reads (what `LLM.get_metrics`
    returns); the counters only move when the engine was built with disable_log_stats=False.
    The pause (outside the timings) lets vLLM's output handler, which records a step's stats
    just after handing out that step's results, catch up."""
    time.sleep(0.5)
    try:
        from vllm.v1.metrics.reader import Counter, get_metrics_snapshot
        totals: dict[str, float] = {}
        for metric in get_metrics_snapshot():
            if isinstance(metric, Counter):
                totals[metric.name] = totals.get(metric.name, 0) + metric.value
        return totals
    except Exception:  # noqa: BLE001 - a moved or renamed API: report "unavailable", not crash
        return None


def prefix_cache_figures(fig: Figures, arm: str, before, after) -> None:
    if before is None or after is None:
        fig.note(f"{arm}_prefix_cache", "unavailable: vllm.v1.metrics.reader could not be read")
        return
    queries = after.get(PREFIX_QUERIES, 0) - before.get(PREFIX_QUERIES, 0)
    hits = after.get(PREFIX_HITS, 0) - before.get(PREFIX_HITS, 0)
    if queries <= 0:
        fig.note(f"{arm}_prefix_cache", f"unavailable: no {PREFIX_QUERIES} counted")
        return
    fig.add(f"{arm}_prefix_cache_hit_rate", round(hits / queries, 4))
    fig.add(f"{arm}_prefix_cache_hits", int(hits), "tokens")
    fig.add(f"{arm}_prefix_cache_queries", int(queries), "tokens")


def flat_requests(tokenizer, prompt_lengths, max_tokens, config, seed):
    """Independent requests: random non-special tokens, decoded to text (the engines take text)."""
    import numpy as np

    from retro_search.engines.base import GenerationRequest
    from retro_search.search import derive_seed

    excluded = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    pool = np.array([i for i in range(len(tokenizer)) if i not in excluded])
    rng = np.random.default_rng(seed)
    requests = []
    for i, (length, budget) in enumerate(zip(prompt_lengths, max_tokens)):
        ids = pool[rng.integers(0, len(pool), size=max(length, 1) + 16)].tolist()
        text = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        # Random ids re-tokenise into more tokens than drawn; cut the canonical tokenisation
        # to the target length so that the prompt the engine sees has about `length` tokens.
        canonical = tokenizer(text, add_special_tokens=False).input_ids[:max(length, 1)]
        text = tokenizer.decode(canonical, clean_up_tokenization_spaces=False)
        requests.append(GenerationRequest(f"flat/{i}", text, max(budget, 1), config.temperature,
                                          config.top_p, derive_seed(seed, "flat", i)))
    return requests


def build_engine(args):
    from retro_search.engines import load_engine

    if args.engine == "vllm":
        kwargs = dict(tensor_parallel_size=args.tensor_parallel_size,
                      gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
                      seed=args.seed, disable_log_stats=False)  # stats feed the prefix counters
        if args.max_model_len:
            kwargs["max_model_len"] = args.max_model_len
    else:
        # The 4096 cap protects CPU attention (see TransformersEngine); a GPU takes far more.
        cap = args.max_batch_tokens or (4096 if args.device == "cpu" else 262144)
        kwargs = dict(device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                      max_batch_tokens=cap, num_threads=args.threads)
    return load_engine(args.engine, model=args.model, tokenizer=args.tokenizer, **kwargs)


def device_info(engine_name: str) -> dict:
    """GPU name and library versions; called after the engine is shut down, so that touching
    CUDA here cannot change how vLLM starts its worker processes."""
    info = {}
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except Exception as err:  # noqa: BLE001
        info["torch"] = f"unavailable ({err})"
    if engine_name == "vllm":
        import vllm
        info["vllm"] = vllm.__version__
    return info


def main(argv=None) -> int:
    traces_default = FALLBACK_TRACES if FALLBACK_TRACES.exists() else DEMO_TRACES
    format_default = "thought_anchors" if traces_default == FALLBACK_TRACES else "r1_response"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Prints one line per figure and a final RESULT {json} line.")
    p.add_argument("--engine", choices=("vllm", "transformers"), default="vllm")
    p.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local folder (default: %(default)s)")
    p.add_argument("--tokenizer", default=None, help="default: the model's")
    p.add_argument("--user-template", default="{question}", help="user turn around the question")
    add_search_args(p, traces=traces_default, fmt=format_default, max_tokens=4096,
                    max_step_tokens=256, seed_help="search and flat-prompt seed")
    p.add_argument("--dtype", default="auto", help="model dtype (default: %(default)s)")
    g = p.add_argument_group("vllm")
    g.add_argument("--tensor-parallel-size", type=int, default=1)
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--max-model-len", type=int, default=None, help="default: the model's")
    g = p.add_argument_group("transformers")
    g.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--max-batch-tokens", type=int, default=None,
                   help="padded prompt tokens per prefill (default: 4096 on cpu, 262144 on gpu)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)

    if args.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        print("error: --engine vllm needs vLLM, which is not installed and runs on CUDA GPUs "
              "only: pip install 'retro-search[vllm]' on a CUDA machine (vllm 0.32.0, torch "
              "2.13.0), or run --engine transformers --device cuda", file=sys.stderr)
        return 2

    from retro_search.engines.base import GenerationRequest
    from retro_search.prompts import load_prompt_format

    fig = Figures("vllm_throughput", dict(vars(args)))
    correct_only = Path(args.traces).resolve() != DEMO_TRACES.resolve()
    traces = load_bench_traces(args.traces, args.format, args.limit, correct_only=correct_only)
    fig.add("traces", len(traces))
    prompt = load_prompt_format(args.tokenizer or args.model, user_template=args.user_template)
    kwargs = search_kwargs(args, prompt)
    config = kwargs["config"]

    start = time.perf_counter()
    engine = build_engine(args)
    fig.add("engine_load_s", round(time.perf_counter() - start, 2), "s")
    on_vllm = args.engine == "vllm"
    try:
        # Warm-up outside the timings: banned-word tables (a pass over the vocabulary), CUDA
        # kernels, math-verify's first parse.
        engine.generate([GenerationRequest("warmup", prompt.head(traces[0].question), 8, seed=0,
                                           stop=("\n\n",), banned_words=config.keywords)])
        kwargs["grade"]("1", "\\boxed{1}")

        recorder = RecordingEngine(engine)
        before = vllm_counters() if on_vllm else None
        start = time.perf_counter()
        outcomes = scheduler_search(traces, recorder, **kwargs)
        seconds = time.perf_counter() - start
        after = vllm_counters() if on_vllm else None
        # Counted after the clock stops: the engine tokenises prompts itself, this is bookkeeping.
        prompt_lengths = engine.count_tokens(recorder.prompts)
        sched_prompt, sched_gen = sum(prompt_lengths), sum(recorder.generated)
        rollouts = sum(o.rollouts_tried for o in outcomes)
        fig.add("scheduler_seconds", round(seconds, 3), "s")
        fig.add("scheduler_traces_per_s", round(len(traces) / seconds, 3), "traces/s")
        fig.add("scheduler_rollouts_per_s", round(rollouts / seconds, 2), "rollouts/s")
        fig.add("scheduler_tokens_per_s", round(sched_gen / seconds, 1), "tokens/s")
        fig.add("scheduler_total_tokens_per_s", round((sched_prompt + sched_gen) / seconds, 1),
                "tokens/s")
        fig.add("scheduler_requests", len(recorder.prompts))
        fig.add("scheduler_rollouts", rollouts)
        fig.add("scheduler_prompt_tokens", sched_prompt, "tokens")
        fig.add("scheduler_generated_tokens", sched_gen, "tokens")
        if on_vllm:
            prefix_cache_figures(fig, "scheduler", before, after)
        statuses: dict[str, int] = {}
        for o in outcomes:
            statuses[o.status] = statuses.get(o.status, 0) + 1
        fig.note("statuses", statuses)

        flat = flat_requests(engine.tokenizer, prompt_lengths, recorder.generated, config,
                             args.seed)
        flat_prompt = sum(engine.count_tokens([r.prompt for r in flat]))
        before = vllm_counters() if on_vllm else None
        start = time.perf_counter()
        results = engine.generate(flat)
        seconds_flat = time.perf_counter() - start
        after = vllm_counters() if on_vllm else None
        flat_gen = sum(r.num_tokens for r in results)
        fig.add("flat_seconds", round(seconds_flat, 3), "s")
        fig.add("flat_tokens_per_s", round(flat_gen / seconds_flat, 1), "tokens/s")
        fig.add("flat_total_tokens_per_s", round((flat_prompt + flat_gen) / seconds_flat, 1),
                "tokens/s")
        fig.add("flat_requests", len(flat))
        fig.add("flat_prompt_tokens", flat_prompt, "tokens")
        fig.add("flat_generated_tokens", flat_gen, "tokens")
        # How well the flat batch matched the scheduler's totals (1.0 = exactly).
        fig.add("flat_over_scheduler_prompt_tokens", round(flat_prompt / max(sched_prompt, 1), 3))
        fig.add("flat_over_scheduler_generated_tokens", round(flat_gen / max(sched_gen, 1), 3))
        if on_vllm:
            prefix_cache_figures(fig, "flat", before, after)
        if seconds_flat > 0 and flat_gen:
            ratio = (sched_gen / seconds) / (flat_gen / seconds_flat)
            fig.add("ratio_scheduler_over_flat", round(ratio, 3), "x")
    finally:
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
    fig.note("device", device_info(args.engine))
    fig.result()
    return 0


if __name__ == "__main__":  # the guard matters: vLLM may spawn processes that import this file
    sys.exit(main())
