"""`retro-search eval`: sample one model on one benchmark, grade, and write generations + metrics.

Heavy imports (torch, transformers, math-verify, pandas) happen inside the command, so
`retro-search --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Sample a model on one math benchmark, grade every sample with math-verify, and write
  OUTPUT_DIR/generations.parquet  one row per generation: benchmark, problem_id, sample, seed,
                                  question, gold, response (the generated text, without the
                                  prompt), reasoning_closed, extracted, correct, grade_error,
                                  num_tokens, finish_reason, model
  OUTPUT_DIR/metrics.json         accuracy (pass@1 over n samples) with its standard error,
                                  pass@k, maj@k, mean/median tokens (also of correct and of
                                  incorrect responses), truncation and no-answer rates, plus
                                  benchmark, model, tokenizer, n, n_problems and the settings.
Both are written atomically. The prompt is the model's chat template applied to eval.user_template,
then its reasoning opener; the answer is graded in the text after the reasoning closer (</think>),
or in the whole response when there is none. Token counts are generated tokens in the engine's
tokenizer (the evaluated model's, or eval.tokenizer)."""

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
Example:
  retro-search eval --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --benchmark aime24 \\
      --output-dir results/eval/r1-7b/aime24 --config config/eval/default.yaml engine.name=vllm"""


def _write_atomic(path: Path, write) -> None:
    """Call write(tmp_path) for a temp file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get ordinary permissions
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_generations(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retro_search.evaluation.generate import COLUMNS

    schema = pa.schema([("benchmark", pa.string()), ("problem_id", pa.string()),
                        ("sample", pa.int64()), ("seed", pa.int64()), ("question", pa.string()),
                        ("gold", pa.string()), ("response", pa.string()),
                        ("reasoning_closed", pa.bool_()), ("extracted", pa.string()),
                        ("correct", pa.bool_()), ("grade_error", pa.string()),
                        ("num_tokens", pa.int64()), ("finish_reason", pa.string()),
                        ("model", pa.string())])
    assert tuple(schema.names) == COLUMNS
    table = pa.Table.from_pylist([{c: row[c] for c in COLUMNS} for row in rows], schema=schema)
    _write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_json(path: Path, data: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())

    _write_atomic(path, write)


def cmd_eval(args: argparse.Namespace) -> int:
    from retro_search.config import engine_kwargs
    from retro_search.engines import load_engine
    from retro_search.evaluation.benchmarks import get_benchmark, load_problems
    from retro_search.evaluation.config import load_eval_config
    from retro_search.evaluation.generate import evaluate_benchmark, prompt_renderer, shard_problems
    from retro_search.evaluation.metrics import summarize_benchmark
    from retro_search.grading import Grader
    from retro_search.prompts import load_prompt_format

    settings, engine_section = load_eval_config(args.config, args.overrides)
    bench = get_benchmark(args.benchmark)
    n = settings.samples_for(bench.name)
    problems = load_problems(bench, settings.data_dir, settings.limit)
    problems = shard_problems(problems, settings.num_shards, settings.shard)
    if not problems:
        raise ValueError(f"{bench.name}: no problems to evaluate (limit={settings.limit}, "
                         f"shard {settings.shard} of {settings.num_shards})")

    tokenizer = settings.tokenizer or args.model
    # The user template is applied here (plain "{question}" replacement), so the format gets "{question}".
    prompt = load_prompt_format(tokenizer, system_prompt=settings.system_prompt,
                                user_template="{question}", think_open=settings.think_open,
                                think_close=settings.think_close)
    render = prompt_renderer(prompt.head, bench.prompt_template or settings.user_template)

    name, kwargs = engine_kwargs({"engine": engine_section,
                                  "model": {"path": args.model, "tokenizer": settings.tokenizer}})
    engine = load_engine(name, **kwargs)
    try:
        with Grader(processes=settings.grading_processes, timeout=settings.grading_timeout) as grader:
            rows = evaluate_benchmark(bench.name, problems, engine, settings, render, grader,
                                      model=args.model, progress=not args.no_progress)
    finally:
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()

    metrics = summarize_benchmark(rows, settings.ks_for(n))
    summary = {
        "benchmark": bench.name, "model": args.model, "tokenizer": tokenizer,
        "token_counts": f"generated tokens, in tokenizer {tokenizer!r}",
        "n": n, **metrics,
        "source": (str(Path(settings.data_dir) / bench.local_file) if settings.data_dir
                   else f"hub:{bench.hub_id}" + (f"/{bench.hub_config}" if bench.hub_config else "")
                   + f"[{bench.split}]"),
        "limit": settings.limit, "num_shards": settings.num_shards, "shard": settings.shard,
        "engine": name, "decoding": settings.decoding(),
        "user_template": bench.prompt_template or settings.user_template,
    }
    out = Path(args.output_dir)
    write_generations(out / "generations.parquet", rows)
    write_json(out / "metrics.json", summary)
    brief = {k: summary[k] for k in ("benchmark", "n_problems", "n", "accuracy", "accuracy_stderr",
                                     "mean_tokens", "truncation_rate")}
    print(json.dumps({**brief, "output_dir": str(out)}), file=sys.stderr)
    return 0


def read_generations(path: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def cmd_eval_merge(args: argparse.Namespace) -> int:
    from retro_search.evaluation.config import load_eval_config
    from retro_search.evaluation.metrics import summarize_benchmark

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
    p = sub.add_parser("eval", help="sample a model on one math benchmark; grade; write metrics",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="evaluated model: local folder or hub id (also its tokenizer and chat "
                        "template unless eval.tokenizer is set)")
    p.add_argument("--benchmark", required=True,
                   help="math500, aime24, aime25, amc23, olympiadbench, gsm8k, minerva_math, "
                        "gaokao2023en")
    p.add_argument("--output-dir", required=True,
                   help="folder for generations.parquet and metrics.json")
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
