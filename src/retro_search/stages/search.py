"""The search stage: one shard of traces -> its revised traces and its rollout log, with one
engine and one grader pool (`retro-search search`, rule `retro_search`).

Progress is kept in a hidden file beside the output whose name carries a fingerprint of the
config and the input, so a killed run resumes where it stopped and a run with other settings
starts afresh. It outlives the run, until the merge reads the shard: a Snakemake killed while
this job ran does not know that the job finished, deletes its outputs and runs it again, and the
rerun writes them from the progress without generating anything.

Before the model loads, the input is checked: every trace id once, every reference answer one the
grader can read (each bad one named with its trace id). A trace with an empty reasoning is
"skipped" with that reason.

Engine faults (`engines.calls`, with `search.retries` and `search.request_timeout_s`): a request
is retried (same seed) and bounded in time; a trace whose request could not be generated ends
with status "engine_error": it stays in the output as it came (reasoning and solution unchanged,
no rollouts), the error in its `search.skip_reason`, counted in the summary (`engine_error`) and
named in the warnings. When more than `search.max_failed_share` of the shard's traces end so,
the stage raises `JobFailed` (exit status 1 on the command line) without writing its outputs,
so the workflow runs it again; the progress file keeps every finished trace and the rerun
searches only the rest. The summary also counts empty and length-limited results and warns when
most rollouts reach their token budget or most results are empty.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from retro_search.runtime import ENGINE_CALL_KEYS, EngineCallSettings
from retro_search.stages import JobFailed, StageResult

log = logging.getLogger(__name__)

STATUSES = ("revised", "unchanged", "incorrect_original", "skipped", "engine_error")
HIGH_SHARE = 0.5       # warn when at least this share of rollouts (results) is truncated (empty)
SHOWN_ERRORS = 10      # engine-error traces named one per warning line; the rest counted


def _fingerprint(cfg: dict, input_path: str | Path) -> str:
    """What the results depend on: the resolved config (but how the engine's faults are put
    up with) and the input's bytes."""
    search = {k: v for k, v in cfg["search"].items() if k not in ENGINE_CALL_KEYS}
    digest = hashlib.sha256(json.dumps({**cfg, "search": search}, sort_keys=True).encode())
    digest.update(Path(input_path).read_bytes())
    return digest.hexdigest()[:12]


def _reference_problem(reference: Any) -> str | None:
    """Why the grader cannot read a reference answer, or None (`records.reference_problem` where
    the package has it, else what `grading.normalize_reference` refuses: None, blank, ...)."""
    try:
        from retro_search.records import reference_problem
    except ImportError:
        from retro_search.grading import normalize_reference

        try:
            normalize_reference(reference)
        except ValueError as err:
            return f"the reference answer cannot be graded: {err}"
        return None
    return reference_problem(reference)


def check_traces(traces, input_path: str | Path) -> None:
    """Refuse a shard the search cannot take, before any model loads: a trace id found more than
    once, a reference answer the grader cannot read. The error names every such trace id (the
    first 10 and a count)."""
    counts = Counter(t.id for t in traces)
    repeated = [i for i, n in counts.items() if n > 1]
    if repeated:
        raise ValueError(f"{input_path}: {len(repeated)} trace id(s) found more than once: "
                         f"{_some(repr(i) for i in repeated)}; trace ids must be unique in a shard")
    bad = [(t.id, problem) for t in traces
           if (problem := _reference_problem(t.reference_answer)) is not None]
    if bad:
        raise ValueError(f"{input_path}: {len(bad)} trace(s) with a bad field 'reference_answer': "
                         + _some(f"trace {i!r}: {problem}" for i, problem in bad))


def _some(items, shown: int = 10) -> str:
    items = list(items)
    more = f"; and {len(items) - shown} more" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


def run(cfg: dict[str, Any], input_path: str | Path, output: str | Path,
        rollout_log: str | Path, *, input_format: str = "records", limit: int | None = None,
        show_progress: bool = True) -> StageResult:
    """Retro-Search every trace of `input_path` with the resolved config `cfg` (sections
    search, model, engine, grading); write the revised traces to `output` and every rollout to
    `rollout_log`, both atomically. The warnings name each trace the search skipped or lost to
    an engine error. Raises `JobFailed` when the shard mostly failed (see the module
    docstring)."""
    from retro_search.artifacts import progress_path, rollout_to_dict, write_jsonl
    from retro_search.config import engine_kwargs, search_config
    from retro_search.engines import engine_info
    from retro_search.model_errors import loading, opened_engine, sources_of
    from retro_search.grading import Grader, normalize_reference
    from retro_search.prompts import load_prompt_format, tokenizer_source
    from retro_search.readers import read_traces
    from retro_search.scheduler import run_shard

    config = search_config(cfg)
    traces = read_traces(input_path, input_format, limit)
    check_traces(traces, input_path)  # before the model loads
    output = Path(output)
    progress = progress_path(output, _fingerprint(cfg, input_path))
    model = cfg["model"]
    tokenizer, revision = tokenizer_source(model["path"], model.get("tokenizer"),
                                           model.get("revision"))
    with loading(*sources_of(model, "model", tokenizer_only=True)):
        prompt = load_prompt_format(tokenizer, revision=revision,
                                    system_prompt=model["system_prompt"],
                                    user_template=model["user_template"],
                                    think_open=model["think_open"],
                                    think_close=model["think_close"])
    name, kwargs = engine_kwargs(cfg)
    with opened_engine(sources_of(model, "model"), name, **kwargs) as engine, \
            Grader(processes=cfg["grading"]["processes"],
                   timeout=cfg["grading"]["timeout"]) as grader:
        info = engine_info(engine)
        log.info("engine: %s on %s (%s)", info["name"], info["device"], info["settings"])
        outcomes, stats = run_shard(
            traces, engine, prompt_head=prompt.head, config=config,
            grade=lambda gold, solution: grader.grade(normalize_reference(gold), solution),
            count_tokens=prompt.count_tokens, think_close=model["think_close"],
            progress_path=progress, show_progress=show_progress)

    failed = [o for o in outcomes if o.status == "engine_error"]
    calls = EngineCallSettings.of(config, "search")
    if calls.too_many_failed(len(failed), len(outcomes)):
        for o in failed[:SHOWN_ERRORS]:
            log.error("trace %r: %s", o.trace_id, o.skip_reason)
        kept = len(outcomes) - len(failed)
        raise JobFailed(
            f"{len(failed)} of {len(outcomes)} traces ended in engine errors (more than "
            f"{calls.max_failed_share:.0%}); "
            + (f"engine given up: {stats.engine_broken}; " if stats.engine_broken else "")
            + f"first: trace {failed[0].trace_id!r}: {failed[0].skip_reason}. Nothing written to "
            f"{output}; the {kept} finished traces are kept in {progress}, so running the same "
            "command again searches only the rest")

    revised = []
    for trace, outcome in zip(traces, outcomes):
        if config.drop_incorrect and outcome.status == "incorrect_original":
            continue
        row = trace.to_dict()
        row["reasoning"], row["solution"] = outcome.reasoning, outcome.solution
        row["search"] = outcome.stats()
        revised.append(row)
    write_jsonl(rollout_log, (rollout_to_dict(r) for o in outcomes for r in o.log))
    write_jsonl(output, revised)
    # The progress stays until the merge reads this shard (`artifacts.drop_progress`).

    searched = [o for o in outcomes if o.original_correct and o.status != "engine_error"]
    summary = {"traces": len(outcomes),
               **{s: sum(o.status == s for o in outcomes) for s in STATUSES},
               "resumed": stats.traces_resumed,
               "rollouts": sum(o.rollouts_tried for o in outcomes),
               "accepted": sum(o.rollouts_accepted for o in outcomes),
               "truncated_length": sum(o.rollouts_truncated_length for o in outcomes),
               "unclosed": sum(o.rollouts_unclosed for o in outcomes),
               "reasoning_tokens_before": sum(o.reasoning_tokens_before for o in searched),
               "reasoning_tokens_after": sum(o.reasoning_tokens_after for o in searched),
               "requests": stats.requests, "empty_results": stats.empty_results,
               "length_results": stats.length_results, **stats.faults.summary(),
               "generated_tokens_per_s": round(stats.tokens_per_second, 1),
               "output": str(output), "rollout_log": str(rollout_log)}
    return StageResult(
        outputs={"revised": output, "rollouts": Path(rollout_log)}, summary=summary, engine=info,
        warnings=_warnings(outcomes, summary, stats, config))


def _warnings(outcomes, summary: dict, stats, config) -> list[str]:
    """One line per skipped trace and per engine-error trace (the first SHOWN_ERRORS), then what
    went wrong shard-wide: a broken engine, most rollouts truncated, most results empty."""
    lines = [f"trace {o.trace_id!r}: {o.skip_reason}" for o in outcomes
             if o.skip_reason and o.status != "engine_error"]
    failed = [o for o in outcomes if o.status == "engine_error"]
    lines += [f"trace {o.trace_id!r} kept unchanged (status engine_error): {o.skip_reason}"
              for o in failed[:SHOWN_ERRORS]]
    if len(failed) > SHOWN_ERRORS:
        lines.append(f"... and {len(failed) - SHOWN_ERRORS} more traces with status engine_error "
                     "(see their search.skip_reason in the output)")
    if stats.engine_broken:
        lines.append(f"engine given up: {stats.engine_broken}; the traces still waiting were "
                     "recorded as engine errors")
    rollouts, truncated = summary["rollouts"], summary["truncated_length"]
    if rollouts and truncated >= HIGH_SHARE * rollouts:
        lines.append(f"{truncated} of {rollouts} rollouts ({truncated / rollouts:.0%}) reached "
                     "their token budget and can never be accepted: search.max_tokens="
                     f"{config.max_tokens} or search.max_step_tokens={config.max_step_tokens} "
                     "is likely too small for this model, or the engine's context "
                     "(max_model_len) too short for the prompts")
    requests, empty = summary["requests"], summary["empty_results"]
    if requests and empty >= HIGH_SHARE * requests:
        lines.append(f"{empty} of {requests} engine results ({empty / requests:.0%}) were empty "
                     "text: the model ends at once (check the chat template, model.think_open "
                     "and the tokenizer's end-of-sequence token) or gets no tokens to write "
                     "(max_tokens, the context length)")
    return lines
