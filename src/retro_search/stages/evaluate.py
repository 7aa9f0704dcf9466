"""The eval stage: one model -> generations and metrics per benchmark, with one engine loaded once
for all of them (`retro-search eval`); and the merge of one benchmark's shards
(`retro-search eval-merge`).

`run` covers shard `eval.shard` of every benchmark that has that many shards. Beside the output
folder (`evaluation.outputs`), each generation is logged as soon as the engine returns it and each
benchmark is saved as soon as it is graded, so a killed call run again with the same settings
skips the benchmarks it finished and requests only the generations it lacks; the files move into
the output folder only when all are done.

Engine faults (`engines.calls`, with `eval.retries` and `eval.request_timeout_s`): a request is
retried, has a time limit, and is recorded as a failed generation when it cannot be had (a row
with finish_reason "error" and its reason in `error`, graded incorrect, counted as `n_errors` in
metrics.json and in the summary, and named in the warnings). A benchmark with more than
`eval.max_failed_share` of its generations failed is not saved: `run` raises `JobFailed` once
the other benchmarks are done, and keeps the progress files, so a rerun with a healthy engine
requests only what failed. Empty responses, and benchmarks whose every response hit
max_tokens, are warned about.

`merge` joins a benchmark's shards and recomputes its metrics over all of them, as one unsharded
call would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retro_search.stages import JobFailed, StageResult

if TYPE_CHECKING:
    from retro_search.evaluation.config import EvalSettings
    from retro_search.evaluation.generate import BenchmarkShard
    from retro_search.model_errors import ModelSource

Log = Callable[[str], None]

ENGINE_SHUTDOWN_SECONDS = 30.0  # for an engine given up on: its shutdown may hang as it did


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
            "truncation_rate", "n_errors")
    return json.dumps({**{k: metrics.get(k) for k in keys}, **extra})


def _warnings(metrics: dict[str, Any]) -> list[str]:
    """What a benchmark's metrics say went wrong: failed, empty or all-truncated generations."""
    name, total = metrics.get("benchmark"), metrics.get("n_generations") or 0
    errors, empty = metrics.get("n_errors") or 0, metrics.get("n_empty") or 0
    truncated = metrics.get("n_truncated") or 0
    max_tokens = (metrics.get("decoding") or {}).get("max_tokens")
    lines = []
    if errors:
        reasons = "; ".join(f"{count} x {message}"
                            for message, count in (metrics.get("errors") or {}).items())
        lines.append(f"{name}: {errors} of {total} generations failed (recorded with "
                     f"finish_reason 'error' and graded incorrect): {reasons}")
    if empty:
        lines.append(f"{name}: {empty} of {total} responses are empty (max_tokens={max_tokens} "
                     "too small, or a model that stops at once?)")
    if truncated and truncated == total - errors:
        lines.append(f"{name}: every response hit max_tokens={max_tokens} (finish_reason "
                     "'length'): max_tokens is likely too small")
    return lines


def _close(engine: Any, broken: bool, log: Log) -> None:
    """Shut the engine down; one given up on (it may hang again) from a thread that is left
    behind after ENGINE_SHUTDOWN_SECONDS."""
    import threading

    shutdown = getattr(engine, "shutdown", None)
    if not callable(shutdown):
        return
    if not broken:
        shutdown()
        return

    def quietly() -> None:
        try:
            shutdown()
        except Exception as err:  # the engine is broken already; say so, do not mask the report
            log(f"engine shutdown failed: {type(err).__name__}: {err}")

    worker = threading.Thread(target=quietly, name="eval-engine-shutdown", daemon=True)
    worker.start()
    worker.join(ENGINE_SHUTDOWN_SECONDS)
    if worker.is_alive():
        log(f"engine did not shut down within {ENGINE_SHUTDOWN_SECONDS:g} s; left behind")


def model_revision(config: dict[str, Any], model: str) -> str | None:
    """The hub revision an eval stage with config `config` loads `model` at: the student's
    `revision` when `model` is the student's own path (the "base" arm evaluates the student as
    published, e.g. a hub id pinned to a commit), else None: a model SFT wrote is a local folder
    whose files are the model, and the student's revision names a commit of another repository."""
    student = config.get("student") or {}
    return student.get("revision") if model == student.get("path") else None


def model_sources(settings: EvalSettings, model: str, revision: str | None, model_key: str
                  ) -> list[ModelSource]:
    """What the evaluated model is loaded from, named by the key that set it (`--model`, or a
    stage config's `model_dir`), and eval.tokenizer when set."""
    from retro_search.model_errors import ModelSource

    sources = [ModelSource(model_key, model, revision, "student.revision")]
    if settings.tokenizer:
        sources.append(ModelSource("eval.tokenizer", settings.tokenizer))
    return sources


def _shards(settings: EvalSettings, model: str, names: list[str], log: Log,
            revision: str | None = None, model_key: str = "--model") -> list[BenchmarkShard]:
    """This call's shard of every benchmark in `names` that has it, each with its problems and
    prompt renderer (the chat template of `model` at `revision`, or of eval.tokenizer)."""
    from retro_search.evaluation.benchmarks import get_benchmark, load_problems
    from retro_search.evaluation.generate import (
        BenchmarkShard,
        prompt_renderer,
        shard_problems,
    )
    from retro_search.model_errors import loading
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
    with loading(model_sources(settings, model, revision, model_key)[-1]):  # the tokenizer's
        prompt = load_prompt_format(tokenizer, revision=tokenizer_revision,
                                    system_prompt=settings.system_prompt,
                                    user_template="{question}", think_open=settings.think_open,
                                    think_close=settings.think_close)
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
        output_dir: str | Path, *, revision: str | None = None, model_key: str = "--model",
        benchmarks: Sequence[str] | None = None, progress: bool = True,
        log: Log | None = None) -> StageResult:
    """Sample `model` (a local folder, or a hub id at commit, branch or tag `revision`, None: the
    latest; see `model_revision`) on `benchmarks` (default: settings.benchmarks),
    this call's shard of each, with the engine of `engine_section`; grade, and write
    `output_dir/<benchmark>/generations.parquet` and `metrics.json`. `progress` shows progress
    bars; `log` gets one line per benchmark skipped, resumed, finished or failed, when it happens.
    `outputs` are keyed `<benchmark>/<file name>`; `engine` is None when every benchmark was
    resumed and no engine loaded; `warnings` name failed, empty and all-truncated generations.

    A benchmark with more than `settings.max_failed_share` of its generations failed raises
    JobFailed (after the other benchmarks are done), with nothing promoted and the progress
    kept."""
    import retro_search.engines as engines
    from retro_search.artifacts import read_json
    from retro_search.config import engine_kwargs
    from retro_search.engines.calls import CallStats
    from retro_search.evaluation.generate import evaluate_benchmarks
    from retro_search.evaluation.outputs import METRICS, EvalProgress, eval_context
    from retro_search.grading import Grader
    from retro_search.model_errors import loading
    from retro_search.runtime import EngineCallSettings

    calls = EngineCallSettings.of(settings, "eval")
    log = log or (lambda line: None)
    shards = _shards(settings, model, list(benchmarks or settings.benchmarks), log, revision,
                     model_key)
    context = eval_context(model, settings, engine_section)
    if revision:  # another commit of the model: benchmarks saved for one are not the other's
        context["revision"] = revision
    saved = EvalProgress(output_dir, context)
    todo, warnings, n_errors = [], [], 0
    for shard in shards:
        if saved.finished(shard):  # by an earlier, killed call with the same settings
            metrics = read_json(saved.entry(shard) / METRICS)
            log(_brief(metrics, resumed=True))
            warnings += _warnings(metrics)
            n_errors += metrics.get("n_errors") or 0
        else:
            todo.append(shard)
    info = None
    stats = CallStats()
    failed: list[str] = []
    if todo:
        name, kwargs = engine_kwargs({"engine": engine_section,
                                      "model": {"path": model, "tokenizer": settings.tokenizer,
                                                "revision": revision}})
        with loading(*model_sources(settings, model, revision, model_key)):
            engine = engines.load_engine(name, **kwargs)
        try:
            with Grader(processes=settings.grading_processes,
                        timeout=settings.grading_timeout) as grader:
                info = engines.engine_info(engine)
                for shard, rows in evaluate_benchmarks(todo, engine, settings, grader,
                                                       model=model, progress=progress,
                                                       logs=saved.generation_log,
                                                       stats=stats):
                    # info["name"] is what ran, e.g. what engine.name=auto chose
                    metrics = _benchmark_metrics(shard, rows, settings, model, info["name"])
                    n_errors += metrics["n_errors"]
                    if calls.too_many_failed(metrics["n_errors"], len(rows)):
                        reasons = "; ".join(f"{count} x {message}"
                                            for message, count in metrics["errors"].items())
                        failed.append(f"{shard.benchmark}: {metrics['n_errors']} of {len(rows)} "
                                      f"generations failed: {reasons}")
                        log(_brief(metrics, failed=True))
                        continue  # not saved: its generation log keeps what succeeded
                    saved.save(shard, rows, metrics)
                    warnings += _warnings(metrics)
                    log(_brief(metrics))
        finally:
            saved.close()
            _close(engine, stats.broken is not None, log)
    counts = {"n_errors": n_errors, "generations_resumed": saved.resumed, **stats.summary()}
    if failed:
        lines = [f"most generations failed (more than {calls.max_failed_share:.0%} of a "
                 "benchmark's), nothing promoted:", *failed]
        if stats.broken:
            lines.append(f"engine given up: {stats.broken}")
        lines.append(f"the {stats.generated + saved.resumed} generations that succeeded are "
                     f"kept in {saved.dir}; run the same command again (with a working engine) "
                     "to request only the others")
        raise JobFailed("\n".join(lines))
    written = saved.promote(shards)
    if stats.broken:
        warnings.append(f"engine given up: {stats.broken}")
    summary = {"benchmarks": [s.benchmark for s in shards], "shard": settings.shard,
               "resumed": len(shards) - len(todo), "output_dir": str(output_dir), **counts}
    return StageResult(outputs={f"{p.parent.name}/{p.name}": p for p in written},
                       summary=summary, engine=info, warnings=warnings)


def merge(settings: EvalSettings, generations: Sequence[str | Path],
          metrics: Sequence[str | Path], out_generations: str | Path,
          out_metrics: str | Path) -> StageResult:
    """Join every shard of one benchmark: `generations` (each shard's generations.parquet, in
    order) into `out_generations`, and its metrics recomputed over all of them (with
    settings.ks_for) into `out_metrics`; the other fields come from the first shard's
    `metrics`. Raises ValueError unless `metrics` are shards 0..n-1 of n of one benchmark."""
    from retro_search.artifacts import read_json, write_json
    from retro_search.evaluation.metrics import summarize_benchmark
    from retro_search.artifacts import drop_progress, read_generations, write_generations

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
    for path in generations:  # SHARD/<benchmark>/generations.parquet: the eval jobs are finished
        drop_progress(Path(path).parent.parent)
    return StageResult(outputs={"generations": Path(out_generations),
                                "metrics": Path(out_metrics)},
                       summary={k: merged[k] for k in ("benchmark", "n_problems", "n", "accuracy")})
