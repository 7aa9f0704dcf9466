"""`retro-search eval`: sample one model on several benchmarks with one engine, grade, and write
generations + metrics per benchmark; `retro-search eval-merge`: merge one benchmark's shards.

The work is done by `retro_search.stages.evaluate`; this module maps flags to its calls and
prints what they return. Heavy imports happen inside the commands, so `retro-search --help`
stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from retro_search.stages import StageResult

DESCRIPTION = """\
Sample a model on math benchmarks (one engine, loaded once, for all of them), grade every sample
with math-verify, and write for each benchmark B
  OUTPUT_DIR/B/generations.parquet  one row per generation: benchmark, problem_id, sample, seed,
                                    question, gold, response (the generated text, without the
                                    prompt), reasoning_closed, extracted, correct, grade_error,
                                    num_tokens, finish_reason, model, error (why the engine
                                    failed the generation, else null)
  OUTPUT_DIR/B/metrics.json         accuracy (pass@1 over n samples) with its standard error,
                                    pass@k, maj@k, mean/median tokens (also of correct and of
                                    incorrect responses), truncation and no-answer rates, plus
                                    benchmark, model, tokenizer, n, n_problems, shard and the
                                    settings.
The benchmarks are --benchmarks, else eval.benchmarks. With eval.shard=i the call covers shard i
of every benchmark that has more than i shards (eval.num_shards_per_benchmark.B, else
eval.num_shards); `eval-merge` joins a benchmark's shards. Each generation is logged as soon as
it is in, and each benchmark saved as soon as it is graded, in the hidden folder
.OUTPUT_DIR.progress beside OUTPUT_DIR; a call killed midway and run again with the same settings
skips the benchmarks saved there and requests only the generations missing from the logs. When
all are done, the files move into OUTPUT_DIR (each atomically).
A request the engine fails (an error, a missing or invalid result) is tried 1 + eval.retries
times (default 3); one that takes longer than eval.request_timeout_s (default null: 600 s + 0.5 s
per token of eval.max_tokens; 0: no limit) fails, and an engine that hangs, or fails requests of
many prompts in a row, is given up on. A failed generation is a row with finish_reason "error"
and its reason in `error`, graded incorrect and counted in metrics.json as n_errors; failed,
empty and all-truncated generations are warned about. When more than eval.max_failed_share
(default 0.5) of a benchmark's generations fail, the command says so, promotes nothing, keeps
the progress folder and exits with status 1: run it again once the engine works. The prompt is
the model's chat template applied to eval.user_template, then its reasoning opener; the answer
is graded in the text after the
reasoning closer (</think>), or in the whole response when there is none. Token counts are
generated tokens in the engine's tokenizer (the evaluated model's, or eval.tokenizer)."""

EPILOG = """\
Settings: the `eval` section (each with its default at the end of this help; presets in
config/eval/*.yaml) and the `engine` section (name: transformers | vllm | package.module:Class,
other keys go to the engine, e.g. batch_size, device, dtype for transformers;
tensor_parallel_size, gpu_memory_utilization, max_model_len for vllm). Values: defaults <
--config file < KEY=VALUE overrides. --config is a stage's resolved config with
`eval:`/`engine:` sections, or a group file starting with `# @package eval`. Overrides use
Hydra's dotted syntax, e.g.
  eval.limit=5 eval.max_tokens=256 eval.data_dir=../shared/data/benchmarks
  eval.n_samples_per_benchmark.aime24=4 eval.num_shards=4 eval.shard=0
  engine.name=vllm engine.tensor_parallel_size=1
Example (writes results/eval/r1-7b/aime24/ and results/eval/r1-7b/math500/):
  retro-search eval --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --benchmarks aime24 math500 \\
      --output-dir results/eval/r1-7b --config config/eval/default.yaml engine.name=vllm"""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _report(args: argparse.Namespace, result: StageResult) -> int:
    args.engine_info = result.engine  # the manifest says which engine ran
    return result.report(args.command)


def _tracking(args: argparse.Namespace):
    """The `tracking` section (runtime.yaml beside --config) and tracking.* overrides, which
    are taken off args.overrides; a chosen tracker that is not installed is refused now."""
    from retro_search import tracking

    mine = [o for o in args.overrides if o.startswith("tracking.")]
    args.overrides = [o for o in args.overrides if not o.startswith("tracking.")]
    settings = tracking.load(args.config, mine)
    if settings.enabled:
        tracking._require(settings.report_to)
    return settings


def _track(settings, model: str, stage_dir: Path, metrics_files, merged: bool = False) -> None:
    """Log complete benchmarks' metrics into the tracked run of `model`: not one shard of several
    (eval-merge logs those, `merged`). A tracker that fails is warned about: the eval is done."""
    from retro_search import tracking
    from retro_search.artifacts import read_json

    if not settings.enabled:
        return
    metrics = [m for m in map(read_json, metrics_files)
               if merged or m.get("num_shards", 1) == 1]
    try:
        folder = tracking.log_eval(settings, model, stage_dir, metrics)
    except Exception as err:  # noqa: BLE001 - the tracker's own errors, of any kind
        _stderr(f"warning: tracking.report_to={settings.report_to}: logging the metrics "
                f"failed: {type(err).__name__}: {err}")
        return
    if folder is not None:
        _stderr(f"tracking: {len(metrics)} benchmark(s) logged to {settings.report_to} "
                f"({folder})")


def _stage_dir(config: str | None, fallback: str | Path) -> Path:
    """The eval stage's folder: that of its config.yaml, else `fallback`."""
    return Path(config).parent if config and Path(config).name == "config.yaml" \
        else Path(fallback)


def cmd_eval(args: argparse.Namespace) -> int:
    from retro_search.evaluation.config import load_eval_config
    from retro_search.stages import evaluate

    from retro_search.config import load_config_dict

    tracked = _tracking(args)
    settings, engine_section = load_eval_config(args.config, args.overrides)
    stage_config = load_config_dict(args.config)
    model_key = "--model"  # named in a load error
    if args.model is None:  # the workflow's stage config names the model it evaluates
        args.model, model_key = stage_config.get("model_dir"), "model_dir"
        if not args.model:
            raise ValueError("give --model M, or --config with a model_dir (a stage config)")
    misplaced = [name for name in args.benchmarks or () if "=" in name]
    if misplaced:  # --benchmarks takes every word after it
        raise ValueError(f"--benchmarks: {misplaced} look like overrides; put KEY=VALUE "
                         "overrides before --benchmarks or after another option")
    result = evaluate.run(settings, engine_section, args.model, args.output_dir,
                          benchmarks=args.benchmarks, progress=not args.no_progress, log=_stderr,
                          revision=evaluate.model_revision(stage_config, args.model),
                          model_key=model_key)
    _track(tracked, args.model, _stage_dir(args.config, args.output_dir),
           [path for key, path in result.outputs.items() if key.endswith("/metrics.json")])
    return _report(args, result)


def cmd_eval_merge(args: argparse.Namespace) -> int:
    from retro_search.evaluation.config import load_eval_config
    from retro_search.stages import evaluate

    from retro_search.config import load_config_dict

    tracked = _tracking(args)
    settings, _ = load_eval_config(args.config, args.overrides)
    result = evaluate.merge(settings, args.inputs, args.metrics, args.generations, args.output)
    model = load_config_dict(args.config).get("model_dir") or ""
    _track(tracked, model, _stage_dir(args.config, Path(args.output).parent), [args.output],
           merged=True)
    return _report(args, result)


def register(sub) -> None:
    p = sub.add_parser("eval", help="sample a model on math benchmarks; grade; write metrics",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="evaluated model: local folder or hub id (also its tokenizer and chat "
                        "template unless eval.tokenizer is set); default: the model_dir of "
                        "--config, a stage config")
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
