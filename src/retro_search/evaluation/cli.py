"""`retro-search eval`: sample one model on several benchmarks with one engine, grade, and write
generations + metrics per benchmark; `retro-search eval-merge`: merge one benchmark's shards.

Heavy imports (torch, transformers, math-verify, pandas) happen inside the commands, so
`retro-search --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from retro_search.evaluation.config import EvalSettings
    from retro_search.evaluation.generate import BenchmarkShard

DESCRIPTION = """\
Sample a model on math benchmarks (one engine, loaded once, for all of them), grade every sample
with math-verify, and write for each benchmark B
  OUTPUT_DIR/B/generations.parquet  one row per generation: benchmark, problem_id, sample, seed,
                                    question, gold, response (the generated text, without the
                                    prompt), reasoning_closed, extracted, correct, grade_error,
                                    num_tokens, finish_reason, model
  OUTPUT_DIR/B/metrics.json         accuracy (pass@1 over n samples) with its standard error,
                                    pass@k, maj@k, mean/median tokens (also of correct and of
                                    incorrect responses), truncation and no-answer rates, plus
                                    benchmark, model, tokenizer, n, n_problems, shard and the
                                    settings.
The benchmarks are --benchmarks, else eval.benchmarks. With eval.shard=i the call covers shard i
of every benchmark that has more than i shards (eval.num_shards_per_benchmark.B, else
eval.num_shards); `eval-merge` joins a benchmark's shards. Each benchmark is saved as soon as it
is graded, in the hidden folder .OUTPUT_DIR.progress beside OUTPUT_DIR; a call killed midway and
run again with the same settings skips the benchmarks saved there. When all are done, the files
move into OUTPUT_DIR (each atomically). The prompt is the model's chat template applied to
eval.user_template, then its reasoning opener; the answer is graded in the text after the
reasoning closer (</think>), or in the whole response when there is none. Token counts are
generated tokens in the engine's tokenizer (the evaluated model's, or eval.tokenizer)."""

EPILOG = """\
Settings: the `eval` section (see retro_search/evaluation/config.py, config/eval/*.yaml) and the
`engine` section (name: transformers | vllm | package.module:Class, other keys go to the engine,
e.g. batch_size, device, dtype for transformers; tensor_parallel_size, gpu_memory_utilization,
max_model_len for vllm). Values: defaults < --config file < KEY=VALUE overrides. --config is a
stage's resolved config with `eval:`/`engine:` sections, or a group file starting with
`# @package eval`. Overrides use Hydra's dotted syntax, e.g.
  eval.limit=5 eval.max_tokens=256 eval.data_dir=../shared/data/benchmarks
  eval.n_samples_per_benchmark.aime24=4 eval.num_shards=4 eval.shard=0
  engine.name=vllm engine.tensor_parallel_size=1
Example (writes results/eval/r1-7b/aime24/ and results/eval/r1-7b/math500/):
  retro-search eval --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --benchmarks aime24 math500 \\
      --output-dir results/eval/r1-7b --config config/eval/default.yaml engine.name=vllm"""


def _benchmark_metrics(shard: BenchmarkShard, rows: list[dict[str, Any]], settings: EvalSettings,
                       model: str, engine: str) -> dict[str, Any]:
    """metrics.json of one benchmark (see DESCRIPTION)."""
    from retro_search.evaluation.benchmarks import get_benchmark
    from retro_search.evaluation.metrics import summarize_benchmark

    bench = get_benchmark(shard.benchmark)
    n = settings.samples_for(bench.name)
    tokenizer = settings.tokenizer or model
    return {
        "benchmark": bench.name, "model": model, "tokenizer": tokenizer,
        "token_counts": f"generated tokens, in tokenizer {tokenizer!r}",
        "n": n, **summarize_benchmark(rows, settings.ks_for(n)),
        "source": (str(Path(settings.data_dir_for(bench.name)) / bench.local_file)
                   if settings.data_dir_for(bench.name)
                   else f"hub:{bench.hub_id}" + (f"/{bench.hub_config}" if bench.hub_config else "")
                   + f"[{bench.split}]"),
        "limit": settings.limit_for(bench.name), "num_shards": settings.shards_for(bench.name),
        "shard": settings.shard, "engine": engine, "decoding": settings.decoding(),
        "user_template": bench.prompt_template or settings.user_template,
    }


def _brief(metrics: dict[str, Any], **extra: Any) -> str:
    keys = ("benchmark", "shard", "n_problems", "n", "accuracy", "accuracy_stderr", "mean_tokens",
            "truncation_rate")
    return json.dumps({**{k: metrics[k] for k in keys}, **extra})


def cmd_eval(args: argparse.Namespace) -> int:
    from retro_search.config import engine_kwargs
    from retro_search.engines import engine_info, load_engine
    from retro_search.evaluation.benchmarks import get_benchmark, load_problems
    from retro_search.evaluation.config import load_eval_config
    from retro_search.evaluation.generate import (BenchmarkShard, evaluate_benchmarks,
                                                  prompt_renderer, shard_problems)
    from retro_search.evaluation.outputs import METRICS, EvalProgress, eval_context
    from retro_search.grading import Grader
    from retro_search.prompts import load_prompt_format

    settings, engine_section = load_eval_config(args.config, args.overrides)
    names = list(args.benchmarks or settings.benchmarks)
    misplaced = [name for name in names if "=" in name]
    if misplaced:  # --benchmarks takes every word after it
        raise ValueError(f"--benchmarks: {misplaced} look like overrides; put KEY=VALUE "
                         "overrides before --benchmarks or after another option")
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"--benchmarks: {twice} named more than once")
    benches = [get_benchmark(name) for name in names]  # an unknown name fails here
    covered = [bench for bench in benches if settings.covers(bench.name)]
    if not covered:
        raise ValueError(f"eval.shard={settings.shard}: none of {names} has that shard (shard "
                         f"counts: {({name: settings.shards_for(name) for name in names})})")
    for bench in benches:
        if bench not in covered:
            print(f"{bench.name}: {settings.shards_for(bench.name)} shard(s), none is shard "
                  f"{settings.shard}: skipped", file=sys.stderr)

    # The user template is applied by prompt_renderer (plain "{question}" replacement), so the
    # format gets "{question}". One format for every benchmark: it is the model's, not theirs.
    prompt = load_prompt_format(settings.tokenizer or args.model,
                                system_prompt=settings.system_prompt,
                                user_template="{question}", think_open=settings.think_open,
                                think_close=settings.think_close)
    shards = []
    for bench in covered:  # every benchmark is read before the engine loads: bad data fails fast
        problems = shard_problems(load_problems(bench, settings.data_dir_for(bench.name),
                                                settings.limit_for(bench.name)),
                                  settings.shards_for(bench.name), settings.shard)
        if not problems:
            raise ValueError(f"{bench.name}: no problems to evaluate "
                             f"(limit={settings.limit_for(bench.name)}, "
                             f"shard {settings.shard} of {settings.shards_for(bench.name)})")
        shards.append(BenchmarkShard(bench.name, problems, prompt_renderer(
            prompt.head, bench.prompt_template or settings.user_template)))

    progress = EvalProgress(args.output_dir, eval_context(args.model, settings, engine_section))
    todo = []
    for shard in shards:
        if progress.finished(shard):  # saved by an earlier, killed call with the same settings
            saved = json.loads((progress.entry(shard) / METRICS).read_text())
            print(_brief(saved, resumed=True), file=sys.stderr)
        else:
            todo.append(shard)
    if todo:
        name, kwargs = engine_kwargs({"engine": engine_section,
                                      "model": {"path": args.model, "tokenizer": settings.tokenizer}})
        engine = load_engine(name, **kwargs)
        args.engine_info = engine_info(engine)  # the manifest says which engine ran
        engine_name = args.engine_info["name"]  # e.g. what engine.name=auto chose
        try:
            with Grader(processes=settings.grading_processes,
                        timeout=settings.grading_timeout) as grader:
                for shard, rows in evaluate_benchmarks(todo, engine, settings, grader,
                                                       model=args.model,
                                                       progress=not args.no_progress):
                    metrics = _benchmark_metrics(shard, rows, settings, args.model, engine_name)
                    progress.save(shard, rows, metrics)
                    print(_brief(metrics), file=sys.stderr)
        finally:
            shutdown = getattr(engine, "shutdown", None)
            if callable(shutdown):
                shutdown()
    progress.promote(shards)
    print(json.dumps({"benchmarks": [s.benchmark for s in shards], "shard": settings.shard,
                      "resumed": len(shards) - len(todo), "output_dir": args.output_dir}),
          file=sys.stderr)
    return 0


def cmd_eval_merge(args: argparse.Namespace) -> int:
    from retro_search.evaluation.config import load_eval_config
    from retro_search.evaluation.metrics import summarize_benchmark
    from retro_search.artifacts import write_json
    from retro_search.evaluation.outputs import read_generations, write_generations

    settings, _ = load_eval_config(args.config, args.overrides)
    shards = [json.loads(Path(m).read_text()) for m in args.metrics]
    benchmarks = {s["benchmark"] for s in shards}
    if len(benchmarks) != 1:
        raise ValueError(f"--metrics: shards of several benchmarks {sorted(benchmarks)}")
    if sorted(s["shard"] for s in shards) != list(range(len(shards))) or \
            any(s["num_shards"] != len(shards) for s in shards):
        raise ValueError(f"--metrics: expected shards 0..{len(shards) - 1} of {len(shards)}, got "
                         f"{[(s['shard'], s['num_shards']) for s in shards]}")
    rows = [row for path in args.inputs for row in read_generations(path)]
    n = shards[0]["n"]
    summary = {**shards[0], **summarize_benchmark(rows, settings.ks_for(n)),
               "num_shards": len(shards)}
    summary.pop("shard")
    write_generations(Path(args.generations), rows)
    write_json(Path(args.output), summary)
    print(json.dumps({k: summary[k] for k in ("benchmark", "n_problems", "n", "accuracy")}),
          file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="sample a model on math benchmarks; grade; write metrics",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="evaluated model: local folder or hub id (also its tokenizer and chat "
                        "template unless eval.tokenizer is set)")
    p.add_argument("--benchmarks", nargs="+", action="extend", default=None, metavar="NAME",
                   help="benchmarks to evaluate (default: eval.benchmarks): math500, aime24, "
                        "aime25, amc23, olympiadbench, gsm8k, minerva_math, gaokao2023en; "
                        "KEY=VALUE overrides go before it or after another option")
    p.add_argument("--benchmark", action="append", dest="benchmarks", metavar="NAME",
                   help="one benchmark (repeatable); the same as --benchmarks NAME")
    p.add_argument("--output-dir", required=True,
                   help="folder for one subfolder per benchmark (generations.parquet, "
                        "metrics.json)")
    p.add_argument("--config", default=None,
                   help="YAML with eval/engine sections (a stage's resolved config) or an "
                        "`# @package eval` file such as config/eval/demo.yaml")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides: eval.KEY=VALUE or engine.KEY=VALUE")
    # --model is a folder (hashed) or a hub id (recorded by id and revision): see write_manifest
    p.set_defaults(func=cmd_eval, input_args=(), model_args=("model",), output_args=("output_dir",))

    p = sub.add_parser("eval-merge", help="merge the shards of one benchmark's evaluation",
                       description="Concatenate the generations of every shard of one benchmark "
                       "(written by `eval` with eval.num_shards and eval.shard) and compute the "
                       "benchmark's metrics over all of them, as one unsharded `eval` would.")
    p.add_argument("--inputs", nargs="+", required=True, help="each shard's generations.parquet")
    p.add_argument("--metrics", nargs="+", required=True, help="each shard's metrics.json")
    p.add_argument("--generations", required=True, help="merged generations.parquet")
    p.add_argument("--output", required=True, help="merged metrics.json")
    p.add_argument("--config", default=None, help="the eval stage's resolved config (for eval.ks)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="eval.KEY=VALUE overrides")
    p.set_defaults(func=cmd_eval_merge, input_args=("inputs", "metrics"),
                   output_args=("generations", "output"))
