"""The sample stage: questions with reference answers -> a model's own responses, one shard
(`retro-search sample`, rule `sample`).

Every response is appended to a hidden progress file beside the output whose name carries a
fingerprint of the settings, the sampler, the engine and the questions, so a killed run resumes
where it stopped and a run with other settings starts afresh; it outlives the run until prepare
reads the shard (see `artifacts.drop_progress`). Each response's seed derives from
the settings' seed, the question id and the sample index, so a sample does not depend on the
shard it falls in or on a resume.

Engine faults (`engines.calls`, with the settings' `retries`, `request_timeout_s`): a request is
retried (same seed) and bounded in time; a sample the engine could not generate is a row with an
"error" (and finish_reason "error"), counted in the summary (`failed`) and named in the
warnings; `prepare` drops it as "engine_error". When more than `max_failed_share` of the shard's
samples fail, the stage raises `JobFailed` without writing its samples, so the workflow runs it
again; the progress file keeps every finished sample and the rerun generates only the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from retro_search.runtime import ENGINE_CALL_KEYS, EngineCallSettings
from retro_search.stages import JobFailed, StageResult

HIGH_SHARE = 0.5       # warn when at least this share of the samples is truncated (empty)
SHOWN_ERRORS = 10      # failed samples named one per warning line; the rest counted

# The package logger, not this module's: the engine line keeps the name it has always had.
log = logging.getLogger("retro_search")


def _fingerprint(settings, model: dict, engine: dict, shard: int, questions) -> str:
    """What the samples depend on: the settings (but how the engine's faults are put up
    with), the sampler, the engine and the questions."""
    section = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ENGINE_CALL_KEYS}
    digest = hashlib.sha256(json.dumps(
        {"sample": section, "model": model, "engine": engine,
         "shard": shard}, sort_keys=True, default=str).encode())
    for q in questions:
        digest.update(json.dumps([q.id, q.question, q.reference_answer]).encode())
    return digest.hexdigest()[:12]


def run(settings, model: dict[str, Any], engine_section: dict[str, Any], *, shard: int,
        output: str | Path, quarantine: str | Path, chunk_size: int = 256,
        show_progress: bool = True) -> StageResult:
    """Sample the sampler `model` (a model section) with the engine `engine_section` on shard
    `shard` of the questions of `settings` (a `sampling.SampleSettings`); write the responses to
    `output` and bad question records to `quarantine`, both atomically. Raises `JobFailed` when
    the shard mostly failed (see the module docstring)."""
    from retro_search.artifacts import progress_path, write_jsonl
    from retro_search.config import engine_kwargs
    from retro_search.engines import engine_info
    from retro_search.model_errors import loading, opened_engine, sources_of
    from retro_search.engines.calls import CallStats
    from retro_search.grading import normalize_reference
    from retro_search.prompts import load_prompt_format, tokenizer_source
    from retro_search.questions import load_questions
    from retro_search.sampling import is_unclosed, plan_requests, run_samples

    if not 0 <= shard < settings.num_shards:
        raise ValueError(f"--shard must be in 0..{settings.num_shards - 1} "
                         f"(sample.num_shards={settings.num_shards}), got {shard}")
    if chunk_size < 1:
        raise ValueError(f"--chunk-size must be at least 1, got {chunk_size}")
    output, quarantine = Path(output), Path(quarantine)
    calls = EngineCallSettings.of(settings, "sample")

    report = load_questions(
        settings.questions, format=settings.format, split=settings.split, name=settings.name,
        revision=settings.revision, limit=settings.limit, on_bad_record=settings.on_bad_record,
        quarantine_path=quarantine if settings.on_bad_record == "quarantine" else None,
        check_answer=normalize_reference, num_shards=settings.num_shards, shard=shard)
    if settings.on_bad_record == "error":
        write_jsonl(quarantine, [])  # declared output: empty, a bad record stops the load
    questions = report.records
    # Printed now, not returned: loading the model and sampling can take hours, and the user
    # should see at once what was read and what was quarantined.
    print(report.summary(), file=sys.stderr)
    fingerprint = _fingerprint(settings, model, engine_section, shard, questions)
    progress = progress_path(output, fingerprint)
    tokenizer, revision = tokenizer_source(model["path"], model.get("tokenizer"),
                                           model.get("revision"))
    key = "sample.model" if settings.model is not None else "model"  # which section named it
    with loading(*sources_of(model, key, tokenizer_only=True)):
        prompt = load_prompt_format(tokenizer, revision=revision,
                                    system_prompt=model.get("system_prompt"),
                                    user_template=model.get("user_template") or "{question}",
                                    think_open=model["think_open"],
                                    think_close=model["think_close"])
    rows, skipped, stats, info = [], [], None, None
    if questions:
        name, kwargs = engine_kwargs({"engine": engine_section, "model": model})
        with opened_engine(sources_of(model, key), name, **kwargs) as engine:
            info = engine_info(engine)
            log.info("engine: %s on %s (%s)", info["name"], info["device"], info["settings"])
            planned, skipped = plan_requests(
                questions, settings, prompt.head, count_tokens=prompt.count_tokens,
                context_length=getattr(engine, "max_model_len", None))
            rows, stats = run_samples(planned, engine, sampler=model["path"],
                                      think_open=model["think_open"], progress_path=progress,
                                      chunk_size=chunk_size, show_progress=show_progress,
                                      calls=calls)
    failed = [r for r in rows if r.get("error")]
    broken = stats.faults.broken if stats else None
    if calls.too_many_failed(len(failed), len(rows)):
        for row in failed[:SHOWN_ERRORS]:
            log.error("sample %r: %s", row["id"], row["error"])
        raise JobFailed(
            f"{len(failed)} of {len(rows)} samples ended in engine errors (more than "
            f"{calls.max_failed_share:.0%}); " + (f"engine given up: {broken}; " if broken else "")
            + f"first: sample {failed[0]['id']!r}: {failed[0]['error']}. Nothing written to "
            f"{output}; the {len(rows) - len(failed)} finished samples are kept in {progress}, "
            "so running the same command again generates only the rest")
    write_jsonl(output, rows)
    # The progress stays until prepare reads this shard (`artifacts.drop_progress`).

    generated = [r for r in rows if not r.get("error")]
    summary = {
        "questions": len(questions), "quarantined": report.quarantined, "skipped": len(skipped),
        "samples": len(rows), "resumed": stats.resumed if stats else 0,
        "failed": len(failed),
        "truncated_length": sum(r["finish_reason"] == "length" for r in rows),
        "unclosed": sum(is_unclosed(r["response"]) for r in generated),
        "empty": sum(r["response"] == model["think_open"] for r in generated),
        **(stats.faults if stats else CallStats()).summary(),
        "generated_tokens": sum(r["num_tokens"] for r in rows),
        "generated_tokens_per_s": round(stats.tokens_per_second, 1) if stats else 0.0,
        "output": str(output), "quarantine": str(quarantine)}
    warnings = [f"question {question.id!r} skipped: {reason}" for question, reason in skipped]
    warnings += [f"sample {r['id']!r} failed (kept as a row with its error; prepare drops it): "
                 f"{r['error']}" for r in failed[:SHOWN_ERRORS]]
    if len(failed) > SHOWN_ERRORS:
        warnings.append(f"... and {len(failed) - SHOWN_ERRORS} more failed samples (rows with "
                        "an 'error')")
    if broken:
        warnings.append(f"engine given up: {broken}; the samples still waiting were recorded "
                        "as failed")
    truncated, empty, n = summary["truncated_length"], summary["empty"], len(generated)
    if n and truncated >= HIGH_SHARE * n:
        warnings.append(f"{truncated} of {n} samples ({truncated / n:.0%}) reached their token "
                        f"budget (prepare drops those that never closed their reasoning): "
                        f"sample.max_tokens={settings.max_tokens} is likely too small for this "
                        "model, or the engine's context (max_model_len) too short for the prompts")
    if n and empty >= HIGH_SHARE * n:
        warnings.append(f"{empty} of {n} samples ({empty / n:.0%}) are empty: the model ends at "
                        "once (check the chat template, model.think_open and the tokenizer's "
                        "end-of-sequence token)")
    return StageResult(outputs={"samples": output, "quarantine": quarantine}, summary=summary,
                       engine=info, warnings=warnings)
