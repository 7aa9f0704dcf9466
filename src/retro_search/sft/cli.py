"""`retro-search sft-data` and `retro-search sft`: the SFT stage's subcommands.

Both read the `student` and `sft` sections of a stage config (`--config STAGE.yaml`), then
`student.KEY=VALUE` / `sft.KEY=VALUE` overrides, and hand them to their stage
(`retro_search.stages.sft_data`, `retro_search.stages.sft`), which does the work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

OVERRIDES_HELP = (
    "Settings: the `student` and `sft` sections of --config (a stage's resolved config) over "
    "their defaults (listed below), then overrides as KEY=VALUE in Hydra's dotted syntax, e.g. "
    "student.path=deepseek-ai/DeepSeek-R1-Distill-Qwen-7B sft.max_length=16384 "
    "sft.global_batch_size=128 sft.max_steps=10.")


def dropped_path(output: str | Path) -> Path:
    """Where sft-data lists the rows it left out: TRAIN.jsonl -> TRAIN.dropped.jsonl."""
    return Path(output).with_suffix(".dropped.jsonl")


def cmd_sft_data(args: argparse.Namespace) -> int:
    from retro_search.sft.config import load_settings
    from retro_search.stages import sft_data

    student, settings = load_settings(args.config, args.overrides)
    args.dropped = args.dropped or str(dropped_path(args.output))  # the manifest hashes it
    result = sft_data.run(student, settings, args.input, args.output, args.dropped)
    return result.report(args.command)


def cmd_sft(args: argparse.Namespace) -> int:
    from retro_search import tracking
    from retro_search.sft.config import load_settings
    from retro_search.stages import sft

    student, settings = load_settings(args.config, args.overrides, also=("tracking.",))
    tracked = tracking.load(args.config, args.overrides)
    if args.processes > 1:
        return sft.launch(settings, args.train, args.output_dir, processes=args.processes,
                          config=args.config, overrides=args.overrides)
    result = sft.run(student, settings, args.train, args.output_dir, tracking=tracked)
    return result.report(args.command)


def register(sub) -> None:
    p = sub.add_parser(
        "sft-data", help="chat-format traces into prompt-completion rows for SFT",
        description="Read normalised traces (original, or revised by `search`: same schema, the "
        "extra `search` key is ignored) and write one TRL prompt-completion row per trace: "
        "{id, prompt, completion}. prompt = the student's chat template applied to the question "
        "(user turn, generation prompt) ending with the reasoning opener once; completion = "
        "reasoning + '\\n</think>\\n\\n' + solution + the eos token. With sft.drop_overlong (the "
        "default) rows over sft.max_length tokens are left out and listed with the reason in "
        "--dropped (always written).",
        epilog=OVERRIDES_HELP)
    p.add_argument("--input", required=True, help="normalised or revised traces (.jsonl)")
    p.add_argument("--output", required=True, help="training rows (.jsonl)")
    p.add_argument("--dropped", default=None, metavar="PATH",
                   help="rows left out, with the reason (.jsonl; default: OUTPUT with the "
                   "suffix .dropped.jsonl)")
    p.add_argument("--config", default=None, help="stage config YAML with `student` and `sft` sections")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="student.* / sft.* overrides")
    p.set_defaults(func=cmd_sft_data, input_args=("input",), output_args=("output", "dropped"))

    p = sub.add_parser(
        "sft", help="fine-tune the student on sft-data rows (TRL SFTTrainer)",
        description="Fine-tune student.path on the rows of --train with the loss on the "
        "completion only. Writes OUTPUT_DIR/checkpoints/ (resumed from the newest complete "
        "checkpoint when the command is run again, e.g. after a killed or requeued job), "
        "OUTPUT_DIR/model/ (final model + tokenizer, renamed into place when complete) and "
        "OUTPUT_DIR/train_metrics.json (loss per logging step, steps, tokens; the session's "
        "runtime is in the log). "
        "Multi-GPU: --processes N (one per GPU; the workflow passes sft.gpus) "
        "relaunches this command under `accelerate launch` with sft.accelerate_config "
        "(accelerate/deepspeed_zero3.yaml, or accelerate/fsdp.yaml).",
        epilog=OVERRIDES_HELP)
    p.add_argument("--train", required=True, help="training rows written by sft-data (.jsonl)")
    p.add_argument("--output-dir", required=True, help="run folder (checkpoints/, model/, train_metrics.json)")
    p.add_argument("--config", default=None, help="stage config YAML with `student` and `sft` sections")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="student.* / sft.* overrides; tracking.report_to=tensorboard|wandb|"
                   "mlflow (and tracking.project, tracking.run_name) logs the losses to a "
                   "tracker (OUTPUT_DIR/tracking/)")
    p.add_argument("--processes", type=int, default=1,
                   help="training processes, one per GPU; > 1 launches them with accelerate "
                   "(default: %(default)s; 0 or 1: this process alone)")
    p.set_defaults(func=cmd_sft, input_args=("train",), output_args=("output_dir",))
