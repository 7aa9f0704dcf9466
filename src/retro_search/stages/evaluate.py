"""The eval stage: one model -> generations and metrics per benchmark, with one engine loaded once
for all of them (`retro-search eval`); and the merge of one benchmark's shards
(`retro-search eval-merge`).

`run` covers shard `eval.shard` of every benchmark that has that many shards. Each
benchmark is saved as soon as it is graded, beside the output folder (`evaluation.outputs`), so
a killed call run again with the same settings skips the benchmarks it finished; the files move
into the output folder only when all are done. `merge` joins a benchmark's shards and
recomputes its metrics over all of them, as one unsharded call would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retro_search.stages import StageResult

if TYPE_CHECKING:
    from retro_search.evaluation.config import EvalSettings
    from retro_search.evaluation.generate import BenchmarkShard

Log = Callable[[str], None]


def _benchmark_metrics(shard: BenchmarkShard, rows: list[dict[str, Any]], settings: EvalSettings,
                       model: str, engine: str) -> dict[str, Any]:
    """metrics.json of one benchmark (see `retro-search eval --help`)."""
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
                   + f"[{bench.split}]@{settings.hub_revisions.get(bench.name, 'latest')}"),
        "limit": settings.limit_for(bench.name), "num_shards": settings.shards_for(bench.name),
        "shard": settings.shard, "engine": engine, "decoding": settings.decoding(),
        "user_template": bench.prompt_template or settings.user_template,
    }


def _brief(metrics: dict[str, Any], **extra: Any) -> str:
    keys = ("benchmark", "shard", "n_problems", "n", "accuracy", "accuracy_stderr", "mean_tokens",
            "truncation_rate")
    return json.dumps({**{k: metrics[k] for k in keys}, **extra})


def model_revision(config: dict[str, Any], model: str) -> str | None:
    """The hub revision an eval stage with config `config` loads `model` at: the student's
    `revision` when `model` is the student's own path (the "base" arm evaluates the student as
    published, e.g. a hub id pinned to a commit), else None: a model SFT wrote is a local folder
    whose files are the model, and the student's revision names a commit of another repository."""
    student = config.get("student") or {}
    return student.get("revision") if model == student.get("path") else None


def _shards(settings: EvalSettings, model: str, names: list[str], log: Log,
            revision: str | None = None) -> list[BenchmarkShard]:
    """This call's shard of every benchmark in `names` that has it, each with its problems and
    prompt renderer (the chat template of `model` at `revision`, or of eval.tokenizer)."""
    from retro_search.evaluation.benchmarks import get_benchmark, load_problems
    from retro_search.evaluation.generate import (
        BenchmarkShard,
        prompt_renderer,
        shard_problems,
    )
    from retro_search.prompts import load_prompt_format, tokenizer_source

    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # two entries would share one progress entry and one output folder
        raise ValueError(f"--benchmarks: {twice} named more than once")
    benches = [get_benchmark(name) for name in names]  # an unknown name fails here
    covered = [bench for bench in benches if settings.covers(bench.name)]
    if not covered:
        raise ValueError(f"eval.shard={settings.shard}: none of {names} has that shard (shard "
                         f"counts: {({name: settings.shards_for(name) for name in names})})")
    for bench in benches:
        if bench not in covered:
            log(f"{bench.name}: {settings.shards_for(bench.name)} shard(s), none is shard "
                f"{settings.shard}: skipped")

    # The user template is applied by prompt_renderer (plain "{question}" replacement), so the
    # format gets "{question}". One format for every benchmark: it is the model's, not theirs.
    tokenizer, tokenizer_revision = tokenizer_source(model, settings.tokenizer, revision)
    prompt = load_prompt_format(tokenizer, revision=tokenizer_revision,
                                system_prompt=settings.system_prompt, user_template="{question}",
                                think_open=settings.think_open, think_close=settings.think_close)
    shards = []
    for bench in covered:  # every benchmark is read before the engine loads: bad data fails fast
        problems = shard_problems(load_problems(bench, settings.data_dir_for(bench.name),
                                                settings.limit_for(bench.name),
                                                revision=settings.hub_revisions.get(bench.name)),
                                  settings.shards_for(bench.name), settings.shard)
        if not problems:
            raise ValueError(f"{bench.name}: no problems to evaluate "
                             f"(limit={settings.limit_for(bench.name)}, "
                             f"shard {settings.shard} of {settings.shards_for(bench.name)})")
        shards.append(BenchmarkShard(bench.name, problems, prompt_renderer(
            prompt.head, bench.prompt_template or settings.user_template)))
    return shards


def run(settings: EvalSettings, engine_section: dict[str, Any], model: str,
        output_dir: str | Path, *, revision: str | None = None,
        benchmarks: Sequence[str] | None = None, progress: bool = True,
        log: Log | None = None) -> StageResult:
    """Sample `model` (a local folder, or a hub id at commit, branch or tag `revision`, None: the
    latest; see `model_revision`) on `benchmarks` (default: settings.benchmarks),
    this call's shard of each, with the engine of `engine_section`; grade, and write
    `output_dir/<benchmark>/generations.parquet` and `metrics.json`. `progress` shows progress
    bars; `log` gets one line per benchmark skipped, resumed or finished, when it happens.
    `outputs` are keyed `<benchmark>/<file name>`; `engine` is None when every benchmark was
    resumed and no engine loaded."""
    from retro_search.artifacts import read_json
    from retro_search.config import engine_kwargs
    from retro_search.engines import engine_info, open_engine
    from retro_search.evaluation.generate import evaluate_benchmarks
    from retro_search.evaluation.outputs import METRICS, EvalProgress, eval_context
    from retro_search.grading import Grader

    log = log or (lambda line: None)
    shards = _shards(settings, model, list(benchmarks or settings.benchmarks), log, revision)
    context = eval_context(model, settings, engine_section)
    if revision:  # another commit of the model: benchmarks saved for one are not the other's
        context["revision"] = revision
    saved = EvalProgress(output_dir, context)
    todo = []
    for shard in shards:
        if saved.finished(shard):  # by an earlier, killed call with the same settings
            log(_brief(read_json(saved.entry(shard) / METRICS), resumed=True))
        else:
            todo.append(shard)
    info = None
    if todo:
        name, kwargs = engine_kwargs({"engine": engine_section,
                                      "model": {"path": model, "tokenizer": settings.tokenizer,
                                                "revision": revision}})
        with open_engine(name, **kwargs) as engine, \
                Grader(processes=settings.grading_processes,
                       timeout=settings.grading_timeout) as grader:
            info = engine_info(engine)
            for shard, rows in evaluate_benchmarks(todo, engine, settings, grader, model=model,
                                                   progress=progress):
                # info["name"] is what ran, e.g. what engine.name=auto chose
                metrics = _benchmark_metrics(shard, rows, settings, model, info["name"])
                saved.save(shard, rows, metrics)
                log(_brief(metrics))
    written = saved.promote(shards)
    summary = {"benchmarks": [s.benchmark for s in shards], "shard": settings.shard,
               "resumed": len(shards) - len(todo), "output_dir": str(output_dir)}
    return StageResult(outputs={f"{p.parent.name}/{p.name}": p for p in written},
                       summary=summary, engine=info)


def merge(settings: EvalSettings, generations: Sequence[str | Path],
          metrics: Sequence[str | Path], out_generations: str | Path,
          out_metrics: str | Path) -> StageResult:
    """Join every shard of one benchmark: `generations` (each shard's generations.parquet, in
    order) into `out_generations`, and its metrics recomputed over all of them (with
    settings.ks_for) into `out_metrics`; the other fields come from the first shard's
    `metrics`. Raises ValueError unless `metrics` are shards 0..n-1 of n of one benchmark."""
    from retro_search.artifacts import read_json, write_json
    from retro_search.evaluation.metrics import summarize_benchmark
    from retro_search.artifacts import read_generations, write_generations

    shards = [read_json(path) for path in metrics]
    benchmarks = {s["benchmark"] for s in shards}
    if len(benchmarks) != 1:
        raise ValueError(f"--metrics: shards of several benchmarks {sorted(benchmarks)}")
    if sorted(s["shard"] for s in shards) != list(range(len(shards))) or \
            any(s["num_shards"] != len(shards) for s in shards):
        raise ValueError(f"--metrics: expected shards 0..{len(shards) - 1} of {len(shards)}, got "
                         f"{[(s['shard'], s['num_shards']) for s in shards]}")
    rows = [row for path in generations for row in read_generations(path)]
    n = shards[0]["n"]
    merged = {**shards[0], **summarize_benchmark(rows, settings.ks_for(n)),
              "num_shards": len(shards)}
    merged.pop("shard")
    write_generations(Path(out_generations), rows)
    write_json(Path(out_metrics), merged)
    return StageResult(outputs={"generations": Path(out_generations),
                                "metrics": Path(out_metrics)},
                       summary={k: merged[k] for k in ("benchmark", "n_problems", "n", "accuracy")})
