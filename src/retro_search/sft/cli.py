"""`retro-search sft-data` and `retro-search sft`: the SFT stage's subcommands.

Both read the `student` and `sft` sections of a stage config (`--config STAGE.yaml`), then
`student.KEY=VALUE` / `sft.KEY=VALUE` overrides. Heavy imports stay inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OVERRIDES_HELP = (
    "Settings: the `student` and `sft` sections of --config (a stage's resolved config) over "
    "their schemas (retro_search.sft.config: ModelSettings, SFTSettings), then overrides as KEY=VALUE in Hydra's dotted syntax, e.g. "
    "student.path=deepseek-ai/DeepSeek-R1-Distill-Qwen-7B sft.max_length=16384 "
    "sft.global_batch_size=128 sft.max_steps=10.")


def dropped_path(output: str | Path) -> Path:
    """Where sft-data lists the rows it left out: TRAIN.jsonl -> TRAIN.dropped.jsonl."""
    return Path(output).with_suffix(".dropped.jsonl")


def cmd_sft_data(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from retro_search.artifacts import write_jsonl
    from retro_search.prompts import load_prompt_format
    from retro_search.artifacts import read_records
    from retro_search.sft.config import load_settings
    from retro_search.sft.data import build_sft_data, eos_text

    student, settings = load_settings(args.config, args.overrides)
    records = read_records(args.input)
    tokenizer_path = student.tokenizer or student.path
    revision = student.revision if student.tokenizer is None else None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, revision=revision)
    prompt_format = load_prompt_format(
        tokenizer_path, system_prompt=student.system_prompt, user_template=student.user_template,
        think_open=student.think_open, think_close=student.think_close, revision=revision)
    data = build_sft_data(records, prompt_format, tokenizer,
                          eos_token=eos_text(tokenizer, settings.eos_token),
                          max_length=settings.max_length if settings.drop_overlong else None)
    side = dropped_path(args.output)
    write_jsonl(side, data.dropped)  # always written, empty when nothing was dropped
    write_jsonl(args.output, data.rows)
    print(json.dumps({"records": len(records), "rows": len(data.rows),
                      "dropped": len(data.dropped), "max_length": settings.max_length,
                      "max_tokens": max(data.tokens, default=0),
                      "mean_tokens": round(sum(data.tokens) / max(len(data.tokens), 1), 1),
                      "output": str(args.output), "dropped_file": str(side)}), file=sys.stderr)
    return 0


def accelerate_command(args: argparse.Namespace, accelerate_config: str) -> list[str]:
    """The `accelerate launch` command that runs this same `sft` once per GPU (without
    --processes, so the launched processes train instead of launching again)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               accelerate_config, "--num_processes", str(args.processes),
               "-m", "retro_search.cli", "sft", "--train", str(args.train),
               "--output-dir", str(args.output_dir)]
    if args.config:
        command += ["--config", str(args.config)]
    return command + list(args.overrides)


def cmd_sft(args: argparse.Namespace) -> int:
    import subprocess

    from retro_search.sft.config import load_settings
    from retro_search.sft.train import train

    student, settings = load_settings(args.config, args.overrides)
    if not Path(args.train).is_file():
        raise FileNotFoundError(f"--train {args.train}: no such file")
    if args.processes > 1:
        if not Path(settings.accelerate_config).is_file():
            raise FileNotFoundError(f"sft.accelerate_config={settings.accelerate_config}: no such "
                                    "file (paths are relative to where the command runs)")
        command = accelerate_command(args, settings.accelerate_config)
        print("launching: " + " ".join(command), file=sys.stderr, flush=True)
        return subprocess.run(command).returncode
    metrics = train(args.train, args.output_dir, student, settings)
    summary = {k: metrics[k] for k in ("resumed_from", "session_steps", "session_runtime_s",
                                       "global_step", "epoch", "mean_logged_loss",
                                       "num_input_tokens_seen")}
    print(json.dumps({**summary, "model": str(Path(args.output_dir) / "model")}), file=sys.stderr)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "sft-data", help="chat-format traces into prompt-completion rows for SFT",
        description="Read normalised traces (original, or revised by `search`: same schema, the "
        "extra `search` key is ignored) and write one TRL prompt-completion row per trace: "
        "{id, prompt, completion}. prompt = the student's chat template applied to the question "
        "(user turn, generation prompt) ending with the reasoning opener once; completion = "
        "reasoning + '\\n</think>\\n\\n' + solution + the eos token. With sft.drop_overlong (the "
        "default) rows over sft.max_length tokens are left out and listed with the reason in "
        "OUTPUT with the suffix .dropped.jsonl (always written).",
        epilog=OVERRIDES_HELP)
    p.add_argument("--input", required=True, help="normalised or revised traces (.jsonl)")
    p.add_argument("--output", required=True, help="training rows (.jsonl)")
    p.add_argument("--config", default=None, help="stage config YAML with `student` and `sft` sections")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="student.* / sft.* overrides")
    p.set_defaults(func=cmd_sft_data, input_args=("input",), output_args=("output",))

    p = sub.add_parser(
        "sft", help="fine-tune the student on sft-data rows (TRL SFTTrainer)",
        description="Fine-tune student.path on the rows of --train with the loss on the "
        "completion only. Writes OUTPUT_DIR/checkpoints/ (resumed from the newest complete "
        "checkpoint when the command is run again, e.g. after a killed or requeued job), "
        "OUTPUT_DIR/model/ (final model + tokenizer, renamed into place when complete) and "
        "OUTPUT_DIR/train_metrics.json (loss per logging step, runtime, steps, tokens). "
        "Multi-GPU: --processes N (one per GPU; the SLURM profile passes the job's GPUs) "
        "relaunches this command under `accelerate launch` with sft.accelerate_config "
        "(accelerate/deepspeed_zero3.yaml, or accelerate/fsdp.yaml).",
        epilog=OVERRIDES_HELP)
    p.add_argument("--train", required=True, help="training rows written by sft-data (.jsonl)")
    p.add_argument("--output-dir", required=True, help="run folder (checkpoints/, model/, train_metrics.json)")
    p.add_argument("--config", default=None, help="stage config YAML with `student` and `sft` sections")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="student.* / sft.* overrides")
    p.add_argument("--processes", type=int, default=1,
                   help="training processes, one per GPU; > 1 launches them with accelerate "
                   "(default: %(default)s; 0 or 1: this process alone)")
    p.set_defaults(func=cmd_sft, input_args=("train",), output_args=("output_dir",))
