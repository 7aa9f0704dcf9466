"""Retro-Search throughput on CPU: the project's scheduler vs a naive one-trace-at-a-time loop.

    .venv/bin/python benchmarks/search_throughput.py              # defaults: 40 demo traces
    .venv/bin/python benchmarks/search_throughput.py --limit 8 --profile

The arms search the same traces with the same tiny model (built once into a temp dir, trained
`--train-steps` so rollouts close </think> and end early like real ones), the same SearchConfig
(the demo experiment's search settings by default) and the same seeds, on ONE TransformersEngine:

- scheduler: `retro_search.scheduler.run_shard` as the pipeline runs it: in waves, the pending
  requests of every unfinished trace go to the engine together, which decodes them with
  continuous batching (at most `--batch-size` rows at once, a finished row's slot refilled at the
  next token);
- naive: for each trace, `TraceSearch`; while it has pending requests, each request alone
  through `engine.generate([request])`.

Figures per arm: traces/s, rollouts/s, generated tokens/s, the model's forward passes and the
mean rows per pass; the scheduler/naive ratio of wall time, measured in the same run; and
"identical": whether both arms produced the same SearchOutcomes (texts,
statistics and rollout logs). The engine samples each request from its own seeded generator, so
a request's text does not depend on its batch; a false here is a bug (or a float tie between two
tokens, see `engines/decoding.py`).

Target: ratio >= 5 on 2 CPU cores. The tiny model (hidden 64, 2 layers) costs little per token;
much of the time goes to Python per forward pass (transformers' modules, the per-row sampler and
stopper), which batching amortises. `--profile` adds one profiled pass of each arm (after the
timed ones, so the timings are unaffected) and writes the top entries to
benchmarks/profiles/search_throughput-{arm}.txt plus a one-line split of where the time went
(model forward, sampler, tokenizer, grading, the rest).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (REPO, Figures, add_search_args, default_traces,  # noqa: E402
                     load_bench_traces, search_kwargs)

PROFILES = REPO / "benchmarks" / "profiles"
TARGET_RATIO = 5.0


class CountingEngine:
    """Wraps an engine's `generate` and counts requests, generated tokens and the model's
    forward passes (and the rows they carried)."""

    def __init__(self, engine):
        self.engine = engine
        engine.model.register_forward_pre_hook(self._count_forward, with_kwargs=True)
        self.reset()

    def reset(self) -> None:
        self.requests = self.tokens = self.forwards = self.forward_rows = 0

    def _count_forward(self, _module, _args, kwargs) -> None:
        self.forwards += 1
        self.forward_rows += kwargs["input_ids"].shape[0]

    def generate(self, requests):
        results = self.engine.generate(requests)
        self.requests += len(requests)
        self.tokens += sum(r.num_tokens for r in results)
        return results


def naive_search(traces, engine, *, prompt_head, config, grade, count_tokens, think_close):
    """One trace at a time, one request at a time; budgets fit the engine's `max_model_len`
    when it has one, as in `run_shard`."""
    from retro_search.search import TraceSearch

    context_length = getattr(engine, "max_model_len", None)
    outcomes = []
    for trace in traces:
        search = TraceSearch(trace, prompt_head(trace.question), config, grade, count_tokens,
                             think_close, context_length)
        while search.pending:
            search.feed([engine.generate([request])[0] for request in search.pending])
        outcomes.append(search.outcome)
    return outcomes


def scheduler_search(traces, engine, *, prompt_head, config, grade, count_tokens, think_close):
    from retro_search.scheduler import run_shard

    outcomes, _ = run_shard(traces, engine, prompt_head=prompt_head, config=config, grade=grade,
                            count_tokens=count_tokens, think_close=think_close,
                            progress_path=None, show_progress=False)
    return outcomes


ARMS = {"scheduler": scheduler_search, "naive": naive_search}

# Where the time goes: (label, substring of "file:function" of pstats entries). Cumulative time of
# the first matching entry that is not nested in another match of the same label.
PROFILE_PARTS = [
    ("model_forward", "modeling_llama.py:forward"),
    ("sampler", "decoding.py:_sample"),
    ("stopper", "decoding.py:_ending"),
    ("engine_step", "decoding.py:step"),
    ("tokenizer_decode", ":decode"),
    ("grading", "verify.py:grade"),
    ("count_tokens", "prompts.py:count_tokens"),
]


def profile_arm(name, fn, traces, engine, kwargs, top: int) -> dict:
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    fn(traces, engine, **kwargs)
    profiler.disable()
    wall = time.perf_counter() - start
    PROFILES.mkdir(parents=True, exist_ok=True)
    out = PROFILES / f"search_throughput-{name}.txt"
    buf = io.StringIO()
    stats = pstats.Stats(profiler, stream=buf)
    buf.write(f"# {name}: {len(traces)} traces, {wall:.2f} s under cProfile\n\n")
    buf.write("## by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    buf.write("## by own time\n")
    stats.sort_stats("tottime").print_stats(top)
    out.write_text(buf.getvalue())
    # Shares of the profiled wall time. Nested entries of one kind (the model's forward calls its
    # layers' forward through nn.Module, so callers cannot tell them apart) count once: the
    # outermost, i.e. the largest cumulative time.
    shares = {}
    for label, needle in PROFILE_PARTS:
        times = [ct for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items()
                 if needle in f"{Path(file).name}:{func}"
                 or (needle.startswith(":") and func == needle[1:])]
        total = max(times, default=0.0)
        shares[label] = round(100 * total / wall, 1)
    return {"file": str(out.relative_to(REPO)), "wall_s": round(wall, 2), "share_pct": shares}


def main(argv=None) -> int:
    traces_default, format_default = default_traces()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Prints one line per figure and a final RESULT {json} line.")
    # The traces_demo experiment's search settings (the demo before the miniature).
    add_search_args(p, traces=traces_default, fmt=format_default, max_tokens=160,
                    max_step_tokens=48)
    p.add_argument("--model-dir", default=None,
                   help="a tiny model built before (default: build one into a temp dir)")
    p.add_argument("--train-steps", type=int, default=200,
                   help="tiny model training steps when building it (default: %(default)s)")
    p.add_argument("--model-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="rows the engine decodes together (default: %(default)s)")
    p.add_argument("--max-batch-tokens", type=int, default=4096,
                   help="padded prompt tokens per prefill (default: %(default)s)")
    p.add_argument("--arms", default="naive,scheduler",
                   help="arms to time, in this order (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed runs per arm; figures are the median (default: %(default)s)")
    p.add_argument("--profile", action="store_true",
                   help="add a cProfile pass of each arm; writes benchmarks/profiles/")
    p.add_argument("--profile-top", type=int, default=40)
    args = p.parse_args(argv)

    import torch

    from retro_search.engines.base import GenerationRequest
    from retro_search.engines.transformers_engine import TransformersEngine
    from retro_search.prompts import load_prompt_format
    from retro_search.artifacts import outcome_to_dict
    from retro_search.tiny_model import build_tiny_model

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = set(arms) - set(ARMS)
    if unknown:
        p.error(f"unknown arm(s) {sorted(unknown)}; known: {sorted(ARMS)}")
    settings = {k: v for k, v in vars(args).items()}
    fig = Figures("search_throughput", settings)

    tmp = None
    if args.model_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="rs-bench-tiny-")
        start = time.perf_counter()
        model_dir = build_tiny_model(Path(tmp.name) / "model", seed=args.model_seed,
                                     train_steps=args.train_steps)
        fig.add("model_build_s", round(time.perf_counter() - start, 2), "s")
    else:
        model_dir = Path(args.model_dir)

    correct_only = Path(args.traces).resolve() != Path(default_traces()[0]).resolve() \
        or args.format == "thought_anchors"
    traces = load_bench_traces(args.traces, args.format, args.limit, correct_only=correct_only)
    fig.add("traces", len(traces))
    engine = CountingEngine(TransformersEngine(str(model_dir), device="cpu",
                                               batch_size=args.batch_size,
                                               max_batch_tokens=args.max_batch_tokens,
                                               num_threads=args.threads))
    fig.note("torch_threads", torch.get_num_threads())
    prompt = load_prompt_format(str(model_dir))
    kwargs = search_kwargs(args, prompt)
    config = kwargs["config"]

    # Warm-up outside the timings: the banned-word tables, first-call allocations, math-verify.
    engine.generate([GenerationRequest("warmup", prompt.head(traces[0].question), 8, seed=0,
                                       stop=("\n\n",), banned_words=config.keywords)])
    kwargs["grade"]("1", "\\boxed{1}")

    outcomes, seconds = {}, {}
    for arm in arms:
        times = []
        for _ in range(args.repeat):  # the median of repeats: this machine's speed drifts
            engine.reset()
            start = time.perf_counter()
            outcomes[arm] = ARMS[arm](traces, engine, **kwargs)
            times.append(time.perf_counter() - start)
        seconds[arm] = statistics.median(times)
        rollouts = sum(o.rollouts_tried for o in outcomes[arm])
        fig.add(f"{arm}_seconds", round(seconds[arm], 3), "s")
        if args.repeat > 1:
            fig.note(f"{arm}_seconds_all", [round(t, 3) for t in times])
        fig.add(f"{arm}_traces_per_s", round(len(traces) / seconds[arm], 3), "traces/s")
        fig.add(f"{arm}_rollouts_per_s", round(rollouts / seconds[arm], 2), "rollouts/s")
        fig.add(f"{arm}_tokens_per_s", round(engine.tokens / seconds[arm], 1), "tokens/s")
        fig.add(f"{arm}_rollouts", rollouts)
        fig.add(f"{arm}_generated_tokens", engine.tokens, "tokens")
        fig.add(f"{arm}_requests", engine.requests)
        fig.add(f"{arm}_forward_passes", engine.forwards)
        fig.add(f"{arm}_mean_rows_per_forward",
                round(engine.forward_rows / max(engine.forwards, 1), 2))

    if "naive" in seconds and "scheduler" in seconds:
        ratio = seconds["naive"] / seconds["scheduler"]
        fig.add("ratio_scheduler_over_naive", round(ratio, 2), "x")
        fig.add("target_ratio_met", ratio >= TARGET_RATIO)
        a = [outcome_to_dict(o) for o in outcomes["naive"]]
        b = [outcome_to_dict(o) for o in outcomes["scheduler"]]
        same = a == b
        fig.add("identical", same)
        if not same:
            diff = [x["trace_id"] for x, y in zip(a, b) if x != y]
            fig.note("differing_traces", diff)
            print(f"differing traces: {diff}", flush=True)
    statuses = {}
    for o in next(iter(outcomes.values()), []):
        statuses[o.status] = statuses.get(o.status, 0) + 1
    fig.note("statuses", statuses)

    if args.profile:
        for arm in arms:
            info = profile_arm(arm, ARMS[arm], traces, engine, kwargs, args.profile_top)
            fig.note(f"profile_{arm}", info)
            split = ", ".join(f"{k} {v}%" for k, v in info["share_pct"].items())
            print(f"profile_{arm}: {info['wall_s']} s under cProfile; {split} -> {info['file']}",
                  flush=True)

    fig.result()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
