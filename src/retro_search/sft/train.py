"""Fine-tune the student on prompt-completion rows with TRL's SFTTrainer; loss on the completion.

`train(train_path, output_dir, student, settings)` writes:

    DIR/checkpoints/checkpoint-N/   Trainer checkpoints (weights, optimizer, scheduler, RNG states)
    DIR/model/                      the final model + tokenizer (renamed into place when complete)
    DIR/train_metrics.json          loss per logging step, steps, examples, tokens seen
    DIR/tracking/                   with tracking on: TensorBoard events, run.json (the run's id)

DIR/model/ and DIR/train_metrics.json are the stage's hashed outputs and hold only what the run
produced, never how it went: two runs with the same seeds (on the same machine) write them byte
for byte alike. What differs from run to run (this session's runtime, where it resumed) is
returned by `train` for the job's log (SESSION_FIELDS), not written; files the Trainer writes
beside the weights that carry such things are removed from DIR/model (RUN_FILES).

A run that finds a complete checkpoint in DIR/checkpoints resumes from the newest one: weights,
optimizer, scheduler, RNG states and the position in the data all come back, so a killed or
requeued job continues where it stopped and ends with the weights an uninterrupted run would have
(bit for bit on CPU, as the tests check; on GPUs up to their non-deterministic kernels).
A checkpoint is complete when it holds a whole trainer_state.json, which the Trainer writes last
(and not atomically: a job killed while writing it leaves the file empty or cut).

Rows are tokenized here (`data.tokenize_rows`: prompt and completion separately, no special tokens
added), then handed to SFTTrainer as `input_ids` + `completion_mask` with
`completion_only_loss=True`: TRL turns the mask into labels (-100 over the prompt), truncates to
`max_length` and collates. Letting TRL tokenize the raw strings instead would call
`tokenizer(prompt)` with special tokens on, and tokenizers that add BOS themselves (R1-distill)
would then start every row with two BOS tokens.

Multi-GPU: the same command under accelerate, e.g.

    accelerate launch --config_file accelerate/deepspeed_zero3.yaml --num_processes 8 \\
        -m retro_search.cli sft --train TRAIN.jsonl --output-dir DIR --config STAGE.yaml

(or accelerate/fsdp.yaml). `sft.global_batch_size` then sets the gradient accumulation from the
number of processes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from retro_search.artifacts import write_json
from retro_search.sft.config import (SFTSettings, ModelSettings, gradient_accumulation_steps,
                                     resolve_bf16)
from retro_search.sft.data import eos_text, tokenize_rows
from retro_search.tracking import TrackingSettings, TrainingRun

log = logging.getLogger("retro_search.sft")

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
_COMPLETE_MARKER = "trainer_state.json"  # the Trainer writes it after weights, optimizer and RNG

# What this session did rather than what the run produced: the runtime differs on every run, and
# a killed and resumed run, whose weights and losses are a straight run's, resumed from a
# checkpoint and ran fewer steps. `train` returns them with the metrics (the stage prints them in
# the job's log); DIR/train_metrics.json leaves them out.
SESSION_FIELDS = ("resumed_from", "session_steps", "session_runtime_s")

# Files that `Trainer.save_model` writes (training_args.bin) or that other transformers/TRL
# versions may write beside the weights; removed from DIR/model, which must not vary by run:
# - training_args.bin: the pickled TrainingArguments, which hold the run folder's path (so two
#   runs into two folders differ); nothing loads it with the model, and the settings are in the
#   stage's config and manifest.
# - README.md: TRL's model card ("fine-tuned version of None", framework versions, tags in set
#   order); it tells a user nothing the manifest does not. TRL 1.16 writes it into checkpoints/.
# - trainer_state.json: the step log with run times; train_metrics.json has the losses.
RUN_FILES = ("training_args.bin", "README.md", "trainer_state.json")


def last_checkpoint(checkpoints: Path, *, remove_incomplete: bool = False) -> Path | None:
    """The newest complete checkpoint in `checkpoints`, or None.

    Incomplete ones (a job killed while saving) are skipped with a warning; with
    `remove_incomplete` (main process only) they are deleted, so the Trainer's rotation of old
    checkpoints never keeps a broken one in place of a good one.
    """
    if not checkpoints.is_dir():
        return None
    found = sorted((int(m.group(1)), path) for path in checkpoints.iterdir()
                   if (m := _CHECKPOINT.fullmatch(path.name)) and path.is_dir())
    complete = None
    for _, path in reversed(found):
        if _is_complete(path):
            complete = complete or path
        elif complete is None:
            log.warning("%s is incomplete (no whole %s: the job stopped while saving it)%s", path,
                        _COMPLETE_MARKER, "; deleting it" if remove_incomplete else "")
            if remove_incomplete:
                shutil.rmtree(path)
    return complete


def _is_complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / _COMPLETE_MARKER).read_text())
    except (OSError, ValueError):  # missing, or cut by a kill while the Trainer wrote it
        return False
    return True


def sft_config(settings: SFTSettings, output_dir: Path, *, world_size: int,
               report_to: str = "none", run_name: str | None = None):
    """TRL's SFTConfig from our settings. Build it before loading the model: under DeepSpeed
    ZeRO-3 it is what makes `from_pretrained` load the weights already partitioned.
    `report_to`, `run_name`: the tracker TRL logs to (`retro_search.tracking`)."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the steps
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(settings, world_size),
        gradient_checkpointing=settings.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=resolve_bf16(settings.bf16),
        max_length=settings.max_length,
        packing=settings.packing,
        completion_only_loss=True,
        eos_token=settings.eos_token,
        dataset_num_proc=settings.dataset_num_proc,
        seed=settings.seed,
        data_seed=settings.seed,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_steps=settings.logging_steps,
        include_num_input_tokens_seen="non_padding",
        report_to=report_to,
        run_name=run_name,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def tokenized_dataset(train_path: str | Path, tokenizer, settings: SFTSettings):
    """The training file as a `datasets.Dataset` of `input_ids` + `completion_mask`.

    Rows need string `prompt` and `completion` fields; a completion without the eos text gets it
    appended (as TRL does). Errors name the row's id.
    """
    import datasets
    from accelerate import PartialState

    eos = eos_text(tokenizer, settings.eos_token)

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        for i, (prompt, completion) in enumerate(zip(batch["prompt"], batch["completion"])):
            for name, value in (("prompt", prompt), ("completion", completion)):
                if not isinstance(value, str) or not value.strip():
                    row_id = batch["id"][i] if "id" in batch else "?"
                    raise ValueError(f"{train_path}: row id={row_id!r}, field {name!r}: expected "
                                     f"a non-empty string, got {value!r:.40}")
        completions = [c if c.endswith(eos) else c + eos for c in batch["completion"]]
        input_ids, masks = tokenize_rows(tokenizer, batch["prompt"], completions)
        return {"input_ids": input_ids, "completion_mask": masks,
                "num_tokens": [len(ids) for ids in input_ids]}

    with open(train_path, encoding="utf-8") as lines:
        if not any(line.strip() for line in lines):  # stops at the first row
            raise ValueError(f"{train_path}: no training rows")
    with PartialState().main_process_first():  # rank 0 fills the datasets cache, the others read it
        rows = datasets.load_dataset("json", data_files=str(train_path), split="train")
        missing = {"prompt", "completion"} - set(rows.column_names)
        if missing:
            raise ValueError(f"{train_path}: rows lack {sorted(missing)}; write the file with "
                             "`retro-search sft-data`")
        dataset = rows.map(tokenize, batched=True, remove_columns=rows.column_names,
                           num_proc=settings.dataset_num_proc, desc="Tokenizing")
    longer = sum(n > settings.max_length for n in dataset["num_tokens"])
    dataset = dataset.remove_columns("num_tokens")
    if longer:
        log.warning("%d of %d rows exceed sft.max_length=%d tokens and will be truncated (their "
                    "end, with </think> and the solution, is not trained on); `retro-search "
                    "sft-data` drops such rows instead", longer, len(dataset), settings.max_length)
    return dataset


def build_trainer(train_path: str | Path, output_dir: str | Path, student: ModelSettings,
                  settings: SFTSettings, *, callbacks: Sequence[Any] = (),
                  tracking_run: TrainingRun | None = None):
    """The SFTTrainer for one run, before training (its dataset is already tokenized and masked);
    it logs to `tracking_run`'s tracker (none without one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from retro_search.model_errors import loading, sources_of

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = sft_config(settings, Path(output_dir) / "checkpoints", world_size=world_size,
                        report_to=tracking_run.report_to if tracking_run else "none",
                        run_name=tracking_run.run_name if tracking_run else None)
    tokenizer_path = student.tokenizer or student.path
    with loading(*sources_of(vars(student), "student", tokenizer_only=True)):
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_path, revision=student.revision if student.tokenizer is None else None)
    dataset = tokenized_dataset(train_path, tokenizer, settings)
    with loading(sources_of(vars(student), "student")[0]):
        model = AutoModelForCausalLM.from_pretrained(
            student.path, revision=student.revision, dtype=getattr(torch, settings.model_dtype),
            attn_implementation=settings.attn_implementation)
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=list(callbacks))


def train(train_path: str | Path, output_dir: str | Path, student: ModelSettings,
          settings: SFTSettings, *, callbacks: Sequence[Any] = (),
          tracking: TrackingSettings | None = None) -> dict[str, Any]:
    """Train (resuming from DIR/checkpoints when possible), save DIR/model and the metrics.
    With `tracking` on, the losses also go to its tracker (DIR/tracking/, `retro_search.tracking`).

    Returns the metrics written to DIR/train_metrics.json and this session's SESSION_FIELDS.
    """
    output_dir = Path(output_dir)
    # Read from the launcher's environment: initialising torch.distributed here, before the
    # SFTConfig does it with its own settings, would override them.
    first_rank = os.environ.get("RANK", "0") == "0"
    resume = last_checkpoint(output_dir / "checkpoints", remove_incomplete=first_rank)
    with TrainingRun(tracking, output_dir, resuming=resume is not None,
                     main_process=first_rank) as tracked:
        trainer = build_trainer(train_path, output_dir, student, settings, callbacks=callbacks,
                                tracking_run=tracked)
        if resume is not None:
            log.info("resuming from %s", resume)
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        tracked.finished(trainer.state.global_step)
    _save_final_model(trainer, output_dir / "model")

    state = trainer.state
    # Every logged step, earlier sessions included (the log comes back with the checkpoint).
    # Tokens: the Trainer's num_input_tokens_seen (non-padding, restored on resume), not TRL's
    # num_tokens, which counts from 0 again in a resumed session.
    steps = [{key: entry[key] for key in ("step", "epoch", "loss", "learning_rate", "grad_norm",
                                          "num_input_tokens_seen") if key in entry}
             for entry in state.log_history if "loss" in entry]
    session = {
        "resumed_from": resume.name if resume else None,
        "session_steps": state.global_step - (_step_of(resume) if resume else 0),
        "session_runtime_s": result.metrics.get("train_runtime"),
    }
    metrics = {
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "train_examples": len(trainer.train_dataset),
        "samples_seen": round((state.epoch or 0) * len(trainer.train_dataset)),
        "num_input_tokens_seen": state.num_input_tokens_seen,  # prompt + completion, no padding
        "global_batch_size": (trainer.args.per_device_train_batch_size
                              * trainer.args.gradient_accumulation_steps
                              * trainer.args.world_size),
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "world_size": trainer.args.world_size,
        "bf16": trainer.args.bf16,
        "mean_logged_loss": sum(e["loss"] for e in steps) / len(steps) if steps else None,
        "log": steps,
        "student": student.path,
        "revision": student.revision,
    }
    if trainer.is_world_process_zero():
        write_json(output_dir / "train_metrics.json", metrics)
    return {**session, **metrics}


def _step_of(checkpoint: Path) -> int:
    return int(_CHECKPOINT.fullmatch(checkpoint.name).group(1))


def _save_final_model(trainer, final: Path) -> None:
    """Save into DIR/.model.partial (every rank: ZeRO-3 and FSDP gather the weights), then rename
    it to DIR/model, so DIR/model is never a half-written model."""
    if trainer.is_fsdp_enabled:
        # Checkpoints stay sharded (fast); the final model must load with from_pretrained.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    partial = final.with_name(f".{final.name}.partial")
    if trainer.is_world_process_zero():
        shutil.rmtree(partial, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(partial))  # weights, config, generation config, tokenizer, RUN_FILES
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        for name in RUN_FILES:
            (partial / name).unlink(missing_ok=True)
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
