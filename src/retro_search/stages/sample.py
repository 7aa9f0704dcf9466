"""The sample stage: questions with reference answers -> a model's own responses, one shard
(`retro-search sample`, rule `sample`).

Every response is appended to a hidden progress file beside the output whose name carries a
fingerprint of the settings, the sampler, the engine and the questions, so a killed run resumes
where it stopped and a run with other settings starts afresh. Each response's seed derives from
the settings' seed, the question id and the sample index, so a sample does not depend on the
shard it falls in or on a resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from retro_search.stages import StageResult

# The package logger, not this module's: the engine line keeps the name it has always had.
log = logging.getLogger("retro_search")


def _fingerprint(settings, model: dict, engine: dict, shard: int, questions) -> str:
    """What the samples depend on: the settings, the sampler, the engine and the questions."""
    digest = hashlib.sha256(json.dumps(
        {"sample": dataclasses.asdict(settings), "model": model, "engine": engine,
         "shard": shard}, sort_keys=True, default=str).encode())
    for q in questions:
        digest.update(json.dumps([q.id, q.question, q.reference_answer]).encode())
    return digest.hexdigest()[:12]


def run(settings, model: dict[str, Any], engine_section: dict[str, Any], *, shard: int,
        output: str | Path, quarantine: str | Path, chunk_size: int = 256,
        show_progress: bool = True) -> StageResult:
    """Sample the sampler `model` (a model section) with the engine `engine_section` on shard
    `shard` of the questions of `settings` (a `sampling.SampleSettings`); write the responses to
    `output` and bad question records to `quarantine`, both atomically."""
    from retro_search.artifacts import write_jsonl
    from retro_search.config import engine_kwargs
    from retro_search.engines import engine_info, open_engine
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
    progress = output.with_name(f".{output.name}.progress-{fingerprint}.jsonl")
    tokenizer, revision = tokenizer_source(model["path"], model.get("tokenizer"),
                                           model.get("revision"))
    prompt = load_prompt_format(tokenizer, revision=revision,
                                system_prompt=model.get("system_prompt"),
                                user_template=model.get("user_template") or "{question}",
                                think_open=model["think_open"], think_close=model["think_close"])
    rows, skipped, stats, info = [], [], None, None
    if questions:
        name, kwargs = engine_kwargs({"engine": engine_section, "model": model})
        with open_engine(name, **kwargs) as engine:
            info = engine_info(engine)
            log.info("engine: %s on %s (%s)", info["name"], info["device"], info["settings"])
            planned, skipped = plan_requests(
                questions, settings, prompt.head, count_tokens=prompt.count_tokens,
                context_length=getattr(engine, "max_model_len", None))
            rows, stats = run_samples(planned, engine, sampler=model["path"],
                                      think_open=model["think_open"], progress_path=progress,
                                      chunk_size=chunk_size, show_progress=show_progress)
    write_jsonl(output, rows)
    progress.unlink(missing_ok=True)  # the output now holds everything it had

    summary = {
        "questions": len(questions), "quarantined": report.quarantined, "skipped": len(skipped),
        "samples": len(rows), "resumed": stats.resumed if stats else 0,
        "truncated_length": sum(r["finish_reason"] == "length" for r in rows),
        "unclosed": sum(is_unclosed(r["response"]) for r in rows),
        "generated_tokens": sum(r["num_tokens"] for r in rows),
        "generated_tokens_per_s": round(stats.tokens_per_second, 1) if stats else 0.0,
        "output": str(output), "quarantine": str(quarantine)}
    return StageResult(outputs={"samples": output, "quarantine": quarantine}, summary=summary,
                       engine=info,
                       warnings=[f"question {question.id!r} skipped: {reason}"
                                 for question, reason in skipped])
