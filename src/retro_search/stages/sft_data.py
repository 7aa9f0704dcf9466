"""The sft_data stage: normalised (or revised) traces -> the student's prompt-completion rows
(`retro-search sft-data`, rule `sft_data`).

Each trace becomes one TRL row {id, prompt, completion} in the student's chat format. With
`sft.drop_overlong` rows over `sft.max_length` tokens are left out rather than truncated, and
listed with the reason in the dropped file, which is always written so the rule can declare it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from retro_search.stages import StageResult

if TYPE_CHECKING:
    from retro_search.sft.config import ModelSettings, SFTSettings


def run(student: ModelSettings, settings: SFTSettings, input_path: str | Path,
        output: str | Path, dropped: str | Path) -> StageResult:
    """Write the training rows of the traces in `input_path` to `output` and the rows left out,
    with their reasons, to `dropped` (empty when none was)."""
    from transformers import AutoTokenizer

    from retro_search.artifacts import read_records, write_jsonl
    from retro_search.model_errors import loading, sources_of
    from retro_search.prompts import load_prompt_format
    from retro_search.sft.data import build_sft_data, eos_text

    records = read_records(input_path)
    tokenizer_path = student.tokenizer or student.path
    # A separate tokenizer is named by its own path; the model's revision does not apply to it.
    revision = student.revision if student.tokenizer is None else None
    with loading(*sources_of(vars(student), "student", tokenizer_only=True)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, revision=revision)
        prompt_format = load_prompt_format(
            tokenizer_path, system_prompt=student.system_prompt,
            user_template=student.user_template, think_open=student.think_open,
            think_close=student.think_close, revision=revision)
    data = build_sft_data(records, prompt_format, tokenizer,
                          eos_token=eos_text(tokenizer, settings.eos_token),
                          max_length=settings.max_length if settings.drop_overlong else None)
    write_jsonl(dropped, data.dropped)
    write_jsonl(output, data.rows)
    summary = {"records": len(records), "rows": len(data.rows), "dropped": len(data.dropped),
               "max_length": settings.max_length, "max_tokens": max(data.tokens, default=0),
               "mean_tokens": round(sum(data.tokens) / max(len(data.tokens), 1), 1),
               "output": str(output), "dropped_file": str(dropped)}
    return StageResult(outputs={"train": Path(output), "dropped": Path(dropped)}, summary=summary)
