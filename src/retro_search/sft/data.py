"""Training rows for the student: TRL's prompt-completion format, built from trace records.

One row per trace:

    {"id": ..., "prompt": <student chat template, user turn, generation prompt, reasoning opener>,
     "completion": <reasoning> + "\\n</think>\\n\\n" + <solution> + <eos token text>}

The prompt comes from `PromptFormat.head`, the same function that builds rollout prompts, so it
ends with the reasoning opener exactly once (R1-distill templates already end with "<think>\\n").
The assistant turn is never rendered through the chat template: R1-distill templates strip
everything before "</think>" from assistant turns, which would delete the reasoning we train on.

Tokens are counted as the trainer sees them (`tokenize_rows`): prompt and completion tokenized
separately, without special tokens added by the tokenizer (the template text already holds BOS),
then concatenated. That is also how the engines tokenize a prompt before generating from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from retro_search.prompts import PromptFormat
from retro_search.records import TraceRecord


def completion_text(record: TraceRecord, prompt_format: PromptFormat, eos_token: str) -> str:
    """What the student learns to write: reasoning, closer, solution, end-of-sequence token."""
    return prompt_format.response_text(record.reasoning, record.solution) + eos_token


def sft_row(record: TraceRecord, prompt_format: PromptFormat, eos_token: str) -> dict[str, str]:
    return {"id": record.id, "prompt": prompt_format.head(record.question),
            "completion": completion_text(record, prompt_format, eos_token)}


def tokenize_rows(tokenizer, prompts: Sequence[str],
                  completions: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, completion_mask) per row: prompt ids + completion ids, mask 0 over the prompt.

    Tokenized separately so the boundary is exact (no token merges across it) and with
    `add_special_tokens=False` so a tokenizer that adds BOS itself (R1-distill's does) does not
    put a second one before the template's.
    """
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    input_ids = [p + c for p, c in zip(prompt_ids, completion_ids)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompt_ids, completion_ids)]
    return input_ids, masks


def eos_text(tokenizer, eos_token: str | None = None) -> str:
    """The end-of-sequence text appended to completions: `eos_token` or the tokenizer's own.

    It must be a single token of the vocabulary, or the student never learns to stop on it.
    """
    eos = eos_token or tokenizer.eos_token
    if not eos:
        raise ValueError("the student tokenizer has no eos token; set sft.eos_token to the text "
                         "that ends an assistant turn (e.g. <|im_end|>)")
    ids = tokenizer(eos, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"sft.eos_token={eos!r} is {len(ids)} tokens in the student tokenizer; "
                         "it must be one token of its vocabulary")
    return eos


@dataclass
class SFTData:
    """`rows` to train on and the ids left out, each with the reason (`dropped`)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # prompt + completion tokens of each kept row


def build_sft_data(records: Iterable[TraceRecord], prompt_format: PromptFormat, tokenizer, *,
                   eos_token: str, max_length: int | None = None,
                   batch_size: int = 256) -> SFTData:
    """Rows for every record; with `max_length`, rows longer than that (prompt + completion
    tokens) are dropped with their reason instead of being truncated by the trainer (a truncated
    row would teach the student reasoning that never reaches "</think>" and a solution)."""
    data = SFTData()
    records = list(records)
    for start in range(0, len(records), batch_size):
        rows = [sft_row(r, prompt_format, eos_token) for r in records[start:start + batch_size]]
        input_ids, masks = tokenize_rows(tokenizer, [r["prompt"] for r in rows],
                                         [r["completion"] for r in rows])
        for row, ids, mask in zip(rows, input_ids, masks):
            if max_length is not None and len(ids) > max_length:
                prompt_tokens = len(mask) - sum(mask)
                data.dropped.append({
                    "id": row["id"], "tokens": len(ids), "prompt_tokens": prompt_tokens,
                    "completion_tokens": sum(mask), "max_length": max_length,
                    "reason": f"prompt + completion is {len(ids)} tokens > sft.max_length="
                              f"{max_length}"})
                continue
            data.rows.append(row)
            data.tokens.append(len(ids))
    return data
