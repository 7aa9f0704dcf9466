"""Settings of the SFT stage: the `student` section (which model, how it sees a question) and the
`sft` section (how it is trained). Defaults are ALGORITHM.md's "Training" choices, and these
dataclasses are the only place they are set: the pipeline's presets (config/sft/*.yaml) list only
what they change (see `retro_search.schemas`).

Both sections are read with `retro_search.config.load_section`: dataclass defaults < the stage's
resolved config file < KEY=VALUE overrides (`sft.learning_rate=2e-5`, `student.path=/models/x`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import MISSING


@dataclass
class ModelSettings:
    """A model and the text format it reads: the schema of the `model` section (the reviser, and
    the sampler unless told otherwise) and of the `student` section (fine-tuned and evaluated).
    The prompt-format defaults are R1's."""

    path: str = MISSING                  # local folder or hub id of the starting weights
    label: Optional[str] = None          # short name used in stage directory names
    tokenizer: Optional[str] = None      # tokenizer (and chat template); None = `path`
    revision: Optional[str] = None       # hub revision (commit) of `path`: every stage loads it there
    user_template: str = "{question}"    # how the question is put in the user turn
    system_prompt: Optional[str] = None  # optional system turn
    think_open: str = "<think>\n"        # reasoning opener the student expects (not added twice)
    think_close: str = "</think>"        # reasoning closer; the solution follows it


@dataclass
class SFTSettings:
    """How the student is trained (TRL SFTTrainer). Lengths: tokens of the student tokenizer."""

    learning_rate: float = 1e-5
    num_train_epochs: float = 3.0
    max_steps: int = -1                  # > 0 overrides num_train_epochs (demo, smoke tests)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1            # fraction of the optimizer steps spent warming up
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 16384              # prompt + completion tokens; see drop_overlong
    drop_overlong: bool = True           # sft-data: drop longer rows, list them in *.dropped.jsonl
    eos_token: Optional[str] = None      # text ending each completion; None = the tokenizer's eos
    packing: bool = False
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: Optional[int] = None  # None: derived from global_batch_size, or 1
    global_batch_size: Optional[int] = None            # sequences per optimizer step, all GPUs
    gradient_checkpointing: bool = True
    bf16: str = "auto"                   # auto: on for CUDA with bf16 support, off elsewhere
    model_dtype: str = "float32"         # dtype the weights are loaded in (float32 | bfloat16)
    attn_implementation: Optional[str] = None  # e.g. flash_attention_2; None: transformers picks
    seed: int = 0
    save_steps: int = 100                # optimizer steps between checkpoints
    save_total_limit: int = 2            # checkpoints kept (older ones deleted)
    logging_steps: int = 1
    dataset_num_proc: Optional[int] = None  # processes for tokenising the training file
    gpus: int = 0                        # the job's GPUs, one training process each; 0: the CPU
    # How `retro-search sft --processes N` (N > 1: one process per GPU) launches itself.
    accelerate_config: str = "accelerate/deepspeed_zero3.yaml"  # or accelerate/fsdp.yaml


def load_settings(config_file: str | Path | None = None, overrides: Sequence[str] = (),
                  also: Sequence[str] = ()) -> tuple[ModelSettings, SFTSettings]:
    """The `student` and `sft` sections of a stage config, with `student.*` / `sft.*` overrides
    (overrides with a prefix in `also`, e.g. "tracking.", are the caller's to read).

    Raises ValueError naming the key for unknown keys, wrong types, a missing `student.path`, or an
    override that belongs to neither section.
    """
    from omegaconf import DictConfig

    from retro_search.config import load_config_file, load_section

    if config_file is not None:
        loaded = load_config_file(config_file)
        if not isinstance(loaded, DictConfig) or not {"student", "sft"} & set(loaded.keys()):
            # e.g. a Hydra group file (config/sft/demo.yaml) holds the values without `sft:`
            raise ValueError(f"{config_file} has no `student` or `sft` section; pass a composed "
                             "stage config (sft: {...}, student: {...})")
    bad = [o for o in overrides if not o.startswith(("student.", "sft.", *also))]
    if bad:
        raise ValueError(f"override(s) {bad} are neither student.KEY=VALUE nor sft.KEY=VALUE")
    student = load_section(ModelSettings, "student", config_file,
                           [o for o in overrides if o.startswith("student.")])
    sft = load_section(SFTSettings, "sft", config_file,
                       [o for o in overrides if o.startswith("sft.")])
    check(sft)
    return student, sft


def check(settings: SFTSettings) -> None:
    """Reject values that would only fail (or silently misbehave) after the model has loaded."""
    if not 0 <= settings.warmup_ratio < 1:
        raise ValueError(f"sft.warmup_ratio={settings.warmup_ratio}: must be in [0, 1)")
    if settings.max_length < 1:
        raise ValueError(f"sft.max_length={settings.max_length}: must be a positive token count")
    if settings.model_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"sft.model_dtype={settings.model_dtype!r}: use float32, bfloat16 or "
                         "float16")
    resolve_bf16(settings.bf16)
    if settings.gpus < 0:
        raise ValueError(f"sft.gpus={settings.gpus}: must be 0 (train on the CPU) or more")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "global_batch_size",
                "save_steps", "save_total_limit", "logging_steps"):
        value = getattr(settings, key)
        if value is not None and value < 1:
            raise ValueError(f"sft.{key}={value}: must be at least 1")


def resolve_bf16(value: str) -> bool:
    """`sft.bf16`: "auto" is True on a CUDA device that supports bf16 and False elsewhere (CPU)."""
    text = str(value).strip().lower()
    if text == "auto":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"sft.bf16={value!r}: use auto, true or false")


def gradient_accumulation_steps(settings: SFTSettings, world_size: int) -> int:
    """Micro-batches per optimizer step so that one step sees `global_batch_size` sequences.

    global = per_device_train_batch_size x world_size x accumulation. Without a global batch size
    the configured accumulation (default 1) is used as is.
    """
    per_step = settings.per_device_train_batch_size * world_size
    if settings.global_batch_size is None:
        return settings.gradient_accumulation_steps or 1
    if settings.global_batch_size % per_step:
        raise ValueError(
            f"sft.global_batch_size={settings.global_batch_size} is not a multiple of "
            f"sft.per_device_train_batch_size ({settings.per_device_train_batch_size}) x "
            f"{world_size} process(es) = {per_step}; change one of them")
    steps = settings.global_batch_size // per_step
    if settings.gradient_accumulation_steps not in (None, steps):
        raise ValueError(
            f"sft.gradient_accumulation_steps={settings.gradient_accumulation_steps} contradicts "
            f"sft.global_batch_size={settings.global_batch_size} (which needs {steps} with "
            f"{per_step} sequences per micro-step); set only one of them")
    return steps
