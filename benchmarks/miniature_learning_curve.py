"""Learning curve of the miniature's reasoning model: train it from scratch on the teacher traces
with the project's SFT code, then sample every saved checkpoint on the held-out questions.

    nice .venv/bin/python benchmarks/miniature_learning_curve.py --size xs --steps 400

What it does (data/miniature/README.md reports the figures):
1. `miniature.write_dataset` into a temporary folder; the teacher traces are read with the
   `r1_response` preset and turned into prompt-completion rows by `sft.data.build_sft_data`
   (the same functions as `retro-search prepare` / `sft-data`);
2. `miniature.build_miniature_model` (random weights), then `sft.train.train` (TRL SFTTrainer,
   loss on the completion only) with a checkpoint every `--eval-every` steps; a callback records
   the wall time of every optimizer step (checkpoint saving included, evaluation excluded);
3. every checkpoint, on `--heldout` held-out questions, one sample each per temperature
   (`TransformersEngine`, seeded per question): accuracy (`grading.grade` on the solution) with
   its standard error, mean completion tokens, the share that never closed `</think>`, and the
   flaws in the model's own reasoning (`miniature.count_flaws`: detours and verifications per
   sample, to compare with the teacher's rates).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Figures  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="xs", help="miniature.MODEL_SIZES key (default: %(default)s)")
    p.add_argument("--tokenizer", default="digits", choices=["digits", "char"])
    p.add_argument("--operands", type=int, default=3)
    p.add_argument("--traces-per-question", type=int, default=4)
    p.add_argument("--steps", type=int, default=400, help="optimizer steps (sft.max_steps)")
    p.add_argument("--batch", type=int, default=32,
                   help="rows per optimizer step: sequences, or packs of --max-length tokens")
    p.add_argument("--packing", action="store_true", help="sft.packing (TRL's bfd packing)")
    p.add_argument("--max-length", type=int, default=512, help="sft.max_length (the pack size)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=float, default=0.05, help="sft.warmup_ratio")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--scheduler", default="cosine", help="sft.lr_scheduler_type")
    p.add_argument("--eval-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--heldout", type=int, default=400, help="held-out questions sampled")
    p.add_argument("--temperatures", default="0,0.6", help="comma-separated; 0 = greedy")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")
    return p.parse_args(argv)


def task_config(args):
    from retro_search import miniature

    return miniature.TaskConfig(operands=args.operands,
                                traces_per_question=args.traces_per_question)


def train_run(args, work: Path, figures: Figures) -> tuple[Path, list[tuple[float, float]]]:
    """Data, model, training; returns the run folder and (wall, CPU) seconds after each step."""
    from transformers import AutoTokenizer, TrainerCallback

    from retro_search import miniature
    from retro_search.prompts import load_prompt_format
    from retro_search.readers import load_traces
    from retro_search.sft.config import SFTSettings, ModelSettings
    from retro_search.sft.data import build_sft_data
    from retro_search.sft.train import train

    task = task_config(args)
    paths = miniature.write_dataset(work / "data", task)
    model0 = miniature.build_miniature_model(work / "model0", seed=args.seed, size=args.size,
                                            tokenizer=args.tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(model0)
    records = load_traces(str(paths["teacher_traces"]), format="r1_response").records
    data = build_sft_data(records, load_prompt_format(str(model0)), tokenizer,
                          eos_token=tokenizer.eos_token)
    train_file = work / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in data.rows))

    import torch
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model0).parameters())
    figures.add("parameters", params)
    figures.add("train_rows", len(data.rows))
    figures.add("train_tokens_mean", sum(data.tokens) / len(data.tokens), "tokens")
    figures.add("train_tokens_max", max(data.tokens), "tokens")
    figures.add("torch_threads", torch.get_num_threads())

    class Clock(TrainerCallback):
        """Wall and CPU seconds since training began, after every optimizer step. CPU time
        (all threads of this process) is the figure that other jobs on the machine disturb least."""

        def __init__(self):
            self.start, self.times = None, []

        def on_train_begin(self, *a, **k):
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, *a, **k):
            self.times.append((time.perf_counter() - self.start[0],
                               time.process_time() - self.start[1]))

    clock = Clock()
    settings = SFTSettings(
        learning_rate=args.lr, max_steps=args.steps, lr_scheduler_type=args.scheduler,
        warmup_ratio=args.warmup, weight_decay=args.weight_decay,
        per_device_train_batch_size=args.batch, gradient_checkpointing=False,
        max_length=args.max_length, packing=args.packing, save_steps=args.eval_every,
        save_total_limit=1000, logging_steps=10, seed=args.seed)
    run = work / "run"
    metrics = train(train_file, run, ModelSettings(path=str(model0)), settings,
                    callbacks=[clock])
    wall, cpu = clock.times[-1]
    figures.add("train_wall_s", round(wall, 1), "s")
    figures.add("train_cpu_s", round(cpu, 1), "s")
    figures.add("train_wall_s_per_step", round(wall / len(clock.times), 3), "s")
    figures.add("sequences_seen", metrics["samples_seen"] if not args.packing else round(
        metrics["num_input_tokens_seen"] / (sum(data.tokens) / len(data.tokens))))
    figures.add("tokens_seen", metrics["num_input_tokens_seen"], "tokens")
    figures.note("loss_log", [(e["step"], round(e["loss"], 4)) for e in metrics["log"]])
    return run, clock.times


def evaluate(model_dir: Path, problems, temperature: float, seed: int) -> dict:
    """One sample per problem at `temperature` (0: greedy): accuracy, lengths, flaws."""
    from retro_search import miniature
    from retro_search.engines.base import GenerationRequest
    from retro_search.engines.transformers_engine import TransformersEngine
    from retro_search.grading import grade
    from retro_search.prompts import load_prompt_format

    n = len(problems)
    head = load_prompt_format(str(model_dir)).head
    engine = TransformersEngine(str(model_dir), device="cpu", batch_size=64)
    requests = [GenerationRequest(p.id, head(p.question), max_tokens=400, temperature=temperature,
                                  top_p=0.95 if temperature else 1.0, seed=seed + i)
                for i, p in enumerate(problems)]
    results = engine.generate(requests)
    correct = closed = detours = verifications = with_detour = with_verification = tokens = 0
    for p, r in zip(problems, results):
        tokens += r.num_tokens
        reasoning, sep, solution = r.text.partition("</think>")
        closed += bool(sep)
        correct += bool(sep) and grade(p.answer, solution).correct
        flaws = miniature.count_flaws(reasoning)
        detours += flaws.detours
        verifications += flaws.verifications
        with_detour += flaws.detours > 0
        with_verification += flaws.verifications > 0
    acc = correct / n
    return {"accuracy": round(acc, 4), "stderr": round(math.sqrt(acc * (1 - acc) / n), 4),
            "mean_tokens": round(tokens / n, 1), "unclosed": round(1 - closed / n, 4),
            "detours_per_sample": round(detours / n, 3),
            "verifications_per_sample": round(verifications / n, 3),
            "share_with_detour": round(with_detour / n, 3),
            "share_with_verification": round(with_verification / n, 3),
            "example": results[0].text}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    figures = Figures("miniature_learning_curve", vars(args))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.out or tmp)
        run, times = train_run(args, work, figures)
        from retro_search import miniature

        heldout = miniature.splits(task_config(args))["heldout"][:args.heldout]
        checkpoints = sorted((int(p.name.split("-")[1]), p)
                             for p in (run / "checkpoints").glob("checkpoint-*"))
        curve = []
        for step, path in checkpoints:
            for temperature in (float(t) for t in args.temperatures.split(",")):
                row = {"step": step, "wall_s": round(times[step - 1][0], 1),
                       "cpu_s": round(times[step - 1][1], 1),
                       "temperature": temperature,
                       **evaluate(path, heldout, temperature, args.seed)}
                curve.append(row)
                print("curve: " + json.dumps({k: v for k, v in row.items() if k != "example"}),
                      flush=True)
        figures.add("final_accuracy_greedy", next(
            (r["accuracy"] for r in reversed(curve) if r["temperature"] == 0), None))
        figures.note("curve", curve)
        figures.note("load_avg_end", os.getloadavg())
    figures.result()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
