"""The search stage: one shard of traces -> its revised traces and its rollout log, with one
engine and one grader pool (`retro-search search`, rule `retro_search`).

Progress is kept in a hidden file beside the output whose name carries a fingerprint of the
config and the input, so a killed run resumes where it stopped and a run with other settings
starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from retro_search.stages import StageResult

log = logging.getLogger(__name__)

STATUSES = ("revised", "unchanged", "incorrect_original", "skipped")


def _fingerprint(cfg: dict, input_path: str | Path) -> str:
    """What the results depend on: the resolved config and the input's bytes."""
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    digest.update(Path(input_path).read_bytes())
    return digest.hexdigest()[:12]


def run(cfg: dict[str, Any], input_path: str | Path, output: str | Path,
        rollout_log: str | Path, *, input_format: str = "records", limit: int | None = None,
        show_progress: bool = True) -> StageResult:
    """Retro-Search every trace of `input_path` with the resolved config `cfg` (sections
    search, model, engine, grading); write the revised traces to `output` and every rollout to
    `rollout_log`, both atomically. The warnings name each trace the search skipped."""
    from retro_search.artifacts import rollout_to_dict, write_jsonl
    from retro_search.config import engine_kwargs, search_config
    from retro_search.engines import engine_info, open_engine
    from retro_search.grading import Grader, normalize_reference
    from retro_search.prompts import load_prompt_format, tokenizer_source
    from retro_search.readers import read_traces
    from retro_search.scheduler import run_shard

    config = search_config(cfg)
    traces = read_traces(input_path, input_format, limit)
    output = Path(output)
    progress = output.with_name(f".{output.name}.progress-{_fingerprint(cfg, input_path)}.jsonl")
    model = cfg["model"]
    tokenizer, revision = tokenizer_source(model["path"], model.get("tokenizer"),
                                           model.get("revision"))
    prompt = load_prompt_format(tokenizer, revision=revision,
                                system_prompt=model["system_prompt"],
                                user_template=model["user_template"],
                                think_open=model["think_open"], think_close=model["think_close"])
    for trace in traces:  # fail on a bad reference before the model is loaded
        try:
            normalize_reference(trace.reference_answer)
        except ValueError as err:
            raise ValueError(f"{input_path}: trace {trace.id!r}, field 'reference_answer': "
                             f"{err}") from None
    name, kwargs = engine_kwargs(cfg)
    with open_engine(name, **kwargs) as engine, \
            Grader(processes=cfg["grading"]["processes"],
                   timeout=cfg["grading"]["timeout"]) as grader:
        info = engine_info(engine)
        log.info("engine: %s on %s (%s)", info["name"], info["device"], info["settings"])
        outcomes, stats = run_shard(
            traces, engine, prompt_head=prompt.head, config=config,
            grade=lambda gold, solution: grader.grade(normalize_reference(gold), solution),
            count_tokens=prompt.count_tokens, think_close=model["think_close"],
            progress_path=progress, show_progress=show_progress)

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
    progress.unlink(missing_ok=True)  # the outputs now hold everything it had

    searched = [o for o in outcomes if o.original_correct]
    summary = {"traces": len(outcomes),
               **{s: sum(o.status == s for o in outcomes) for s in STATUSES},
               "resumed": stats.traces_resumed,
               "rollouts": sum(o.rollouts_tried for o in outcomes),
               "accepted": sum(o.rollouts_accepted for o in outcomes),
               "truncated_length": sum(o.rollouts_truncated_length for o in outcomes),
               "unclosed": sum(o.rollouts_unclosed for o in outcomes),
               "reasoning_tokens_before": sum(o.reasoning_tokens_before for o in searched),
               "reasoning_tokens_after": sum(o.reasoning_tokens_after for o in searched),
               "generated_tokens_per_s": round(stats.tokens_per_second, 1),
               "output": str(output), "rollout_log": str(rollout_log)}
    return StageResult(
        outputs={"revised": output, "rollouts": Path(rollout_log)}, summary=summary, engine=info,
        warnings=[f"trace {o.trace_id!r}: {o.skip_reason}" for o in outcomes if o.skip_reason])
