"""`retro-search` command line: one subcommand per pipeline step.

Each subcommand reads files, calls the package, and writes its outputs atomically; heavy imports
(torch, transformers, math-verify) happen inside the subcommand so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

log = logging.getLogger("retro_search")

PRESETS_HELP = ("r1 (chat messages), r1_response (one string), openthoughts, openthoughts_metadata, "
                "thought_anchors, skythought")
FORMATS_HELP = ("input format: 'records' (normalised jsonl written by `retro-search normalize`) "
                f"or a raw-format preset: {PRESETS_HELP}")


def _read_traces(path: str, fmt: str, limit: int | None = None):
    from retro_search.readers import load_traces, read_records

    if fmt == "records":
        records = read_records(path)
        return records[:limit] if limit else records
    return load_traces(path, format=fmt, limit=limit).records


# --- normalize -------------------------------------------------------------------------------

def cmd_normalize(args: argparse.Namespace) -> int:
    from retro_search.readers import load_traces, write_records

    quarantine = None
    if args.on_bad_record == "quarantine":
        quarantine = args.quarantine or str(Path(args.output).with_suffix(".quarantine.jsonl"))
    report = load_traces(args.source, format=args.format, split=args.split,
                         on_bad_record=args.on_bad_record, quarantine_path=quarantine,
                         limit=args.limit, name=args.name)
    write_records(report.records, args.output)
    print(report.summary(), file=sys.stderr)
    return 0


# --- segment ---------------------------------------------------------------------------------

def cmd_segment(args: argparse.Namespace) -> int:
    from retro_search.jsonl import write_jsonl_atomic
    from retro_search.segmentation import DEFAULT_KEYWORDS, segment

    keywords = tuple(args.keyword) if args.keyword else DEFAULT_KEYWORDS
    rows = []
    for trace in _read_traces(args.input, args.format):
        seg = segment(trace.reasoning, keywords)
        rows.append({"id": trace.id, "steps": seg.num_steps, "thoughts": seg.num_thoughts,
                     "boundaries": seg.num_boundaries,
                     # boundary i sits right before step boundary_steps[i - 1] (0-based step index)
                     "boundary_steps": list(seg.thought_starts[1:]),
                     "thought_lengths": [len(t) for t in seg.thoughts()]})
    write_jsonl_atomic(args.output, rows)
    print(f"segmented {len(rows)} traces -> {args.output}", file=sys.stderr)
    return 0


# --- grade -----------------------------------------------------------------------------------

def cmd_grade(args: argparse.Namespace) -> int:
    from retro_search.grading import Grader, normalize_reference
    from retro_search.jsonl import read_jsonl, write_jsonl_atomic

    rows = list(read_jsonl(args.input))
    pairs = []
    for number, row in enumerate(rows, 1):
        for name in (args.gold_field, args.response_field):
            if name not in row:
                raise ValueError(f"{args.input}: row {number} (id={row.get('id')!r}) "
                                 f"has no field {name!r}")
        try:
            gold = normalize_reference(row[args.gold_field])
        except ValueError as err:
            raise ValueError(f"{args.input}: row {number} (id={row.get('id')!r}), "
                             f"field {args.gold_field!r}: {err}") from None
        pairs.append((gold, str(row[args.response_field])))
    with Grader(processes=args.processes, timeout=args.timeout) as grader:
        grades = grader.grade_many(pairs, progress=not args.no_progress)
    for row, grade in zip(rows, grades):
        row.update(correct=grade.correct, extracted=grade.extracted, grade_error=grade.error)
    write_jsonl_atomic(args.output, rows)
    correct = sum(g.correct for g in grades)
    print(f"graded {len(rows)} rows: {correct} correct -> {args.output}", file=sys.stderr)
    return 0


# --- search ----------------------------------------------------------------------------------

def _fingerprint(cfg: dict, input_path: str) -> str:
    """What the results depend on: the resolved config and the input's bytes."""
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    digest.update(Path(input_path).read_bytes())
    return digest.hexdigest()[:12]


def cmd_search(args: argparse.Namespace) -> int:
    from retro_search.config import compose, engine_kwargs, search_config
    from retro_search.engines import load_engine
    from retro_search.grading import Grader, normalize_reference
    from retro_search.jsonl import write_jsonl_atomic
    from retro_search.prompts import load_prompt_format
    from retro_search.scheduler import run_shard

    cfg = compose(args.config, args.overrides)
    config = search_config(cfg)
    traces = _read_traces(args.input, args.format, args.limit)
    output = Path(args.output)
    rollout_log = Path(args.log) if args.log else output.with_suffix(".rollouts.jsonl")
    progress = output.with_name(f".{output.name}.progress-{_fingerprint(cfg, args.input)}.jsonl")

    model = cfg["model"]
    prompt = load_prompt_format(model["tokenizer"] or model["path"],
                                system_prompt=model["system_prompt"],
                                user_template=model["user_template"],
                                think_open=model["think_open"], think_close=model["think_close"])
    for trace in traces:  # fail on a bad reference before the model is loaded
        try:
            normalize_reference(trace.reference_answer)
        except ValueError as err:
            raise ValueError(f"{args.input}: trace {trace.id!r}, field 'reference_answer': {err}") from None
    name, kwargs = engine_kwargs(cfg)
    engine = load_engine(name, **kwargs)

    with Grader(processes=cfg["grading"]["processes"], timeout=cfg["grading"]["timeout"]) as grader:
        outcomes, stats = run_shard(
            traces, engine, prompt_head=prompt.head, config=config,
            grade=lambda gold, solution: grader.grade(normalize_reference(gold), solution),
            count_tokens=prompt.count_tokens, think_close=model["think_close"],
            progress_path=progress, show_progress=not args.no_progress)

    revised = []
    for trace, outcome in zip(traces, outcomes):
        if config.drop_incorrect and outcome.status == "incorrect_original":
            continue
        row = trace.to_dict()
        row["reasoning"], row["solution"] = outcome.reasoning, outcome.solution
        row["search"] = outcome.stats()
        revised.append(row)
    log_rows = [dict(vars(r), seeds=list(r.seeds)) for o in outcomes for r in o.log]
    write_jsonl_atomic(rollout_log, log_rows)
    write_jsonl_atomic(output, revised)
    progress.unlink(missing_ok=True)  # the outputs now hold everything it had

    by_status = {s: sum(o.status == s for o in outcomes)
                 for s in ("revised", "unchanged", "incorrect_original")}
    before = sum(o.tokens_before for o in outcomes if o.original_correct)
    after = sum(o.tokens_after for o in outcomes if o.original_correct)
    print(json.dumps({"traces": len(outcomes), **by_status, "resumed": stats.traces_resumed,
                      "rollouts": sum(o.rollouts_tried for o in outcomes),
                      "accepted": sum(o.rollouts_accepted for o in outcomes),
                      "truncated": sum(o.rollouts_truncated for o in outcomes),
                      "tokens_before": before, "tokens_after": after,
                      "generated_tokens_per_s": round(stats.tokens_per_second, 1),
                      "output": str(output), "rollout_log": str(rollout_log)}), file=sys.stderr)
    return 0


# --- tiny-model ------------------------------------------------------------------------------

def cmd_tiny_model(args: argparse.Namespace) -> int:
    from retro_search.tiny_model import build_tiny_model

    path = build_tiny_model(args.output, seed=args.seed)
    print(f"tiny model -> {path}", file=sys.stderr)
    return 0


# --- parser ----------------------------------------------------------------------------------

# Stage subcommands live beside their stage: each module has `register(subparsers)`.
STAGE_COMMAND_MODULES = (
    "retro_search.sft.cli",
    "retro_search.evaluation.cli",
    "retro_search.report.cli",
)


def _register_stage_commands(sub) -> None:
    import importlib

    for name in STAGE_COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is not None and name.startswith(err.name):
                continue  # that stage is not part of this installation
            raise
        module.register(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retro-search",
        description="Retro-Search (arXiv 2504.04383): revise long reasoning traces into shorter, "
                    "correct ones. Each subcommand is one pipeline step; see `retro-search CMD -h`.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("normalize", help="read raw traces (file or hub dataset) into normalised records",
                       description="Normalise raw traces into the record schema (id, question, "
                       "reference_answer, reasoning, solution, source_model, source_dataset, metadata).")
    p.add_argument("source", help="a .jsonl/.json/.parquet file, a folder or glob of them, or a hub dataset id")
    p.add_argument("output", help="normalised records (.jsonl)")
    p.add_argument("--format", default="r1", help=f"raw-format preset: {PRESETS_HELP} (default: r1)")
    p.add_argument("--split", default="train", help="dataset split for hub datasets (default: train)")
    p.add_argument("--name", default=None, help="dataset config name for hub datasets")
    p.add_argument("--limit", type=int, default=None, help="read only the first N records")
    p.add_argument("--on-bad-record", choices=["error", "quarantine"], default="error",
                   help="stop at the first bad record (default) or move bad records to the quarantine file")
    p.add_argument("--quarantine", default=None, help="quarantine file (default: OUTPUT with .quarantine.jsonl)")
    p.set_defaults(func=cmd_normalize)

    p = sub.add_parser("segment", help="count steps and thoughts of each trace",
                       description="Per trace: number of steps, thoughts and boundaries, and the "
                       "step index at which each boundary sits.")
    p.add_argument("input", help="traces (.jsonl)")
    p.add_argument("output", help="one row per trace (.jsonl)")
    p.add_argument("--format", default="records", help=FORMATS_HELP)
    p.add_argument("--keyword", action="append", help="transition keyword (repeat; default: the ALGORITHM.md list)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("grade", help="grade responses against reference answers with math-verify",
                       description="Rows with a reference answer and a response in; the same rows "
                       "with `correct` (bool), `extracted` (the answer found) and `grade_error` out.")
    p.add_argument("input", help="rows (.jsonl)")
    p.add_argument("output", help="graded rows (.jsonl)")
    p.add_argument("--gold-field", default="gold", help="field with the reference answer (default: gold)")
    p.add_argument("--response-field", default="response", help="field with the response (default: response)")
    p.add_argument("--processes", type=int, default=None, help="grader processes (default: all cores; 0 = serial)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per item before it counts as wrong (default: 10)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("search", help="Retro-Search one shard of traces",
                       description="Retro-Search every trace of one shard with one engine. Writes the "
                       "revised shard and the rollout log atomically; progress is kept in a hidden "
                       "file beside the output, so a killed run resumes where it stopped.",
                       epilog="Overrides: KEY=VALUE in Hydra's dotted syntax, e.g. "
                       "model.path=results/tiny-model search.rollouts=2 search.max_tokens=256 "
                       "engine.batch_size=8. Defaults: retro_search/conf/search.yaml.")
    p.add_argument("--input", required=True, help="shard of traces (.jsonl)")
    p.add_argument("--output", required=True, help="revised traces (.jsonl)")
    p.add_argument("--log", default=None, help="rollout log (.jsonl; default: OUTPUT with .rollouts.jsonl)")
    p.add_argument("--config", default=None, help="YAML config merged over the defaults (e.g. a stage's resolved config)")
    p.add_argument("--format", default="records", help=FORMATS_HELP)
    p.add_argument("--limit", type=int, default=None, help="search only the first N traces")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("tiny-model", help="build the tiny local test model (offline, seconds)",
                       description="Build a small random Llama-style model and a locally trained "
                       "tokenizer with an R1-style chat template; the demo's and tests' model.")
    p.add_argument("output", help="folder to write the model into")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default: 0)")
    p.set_defaults(func=cmd_tiny_model)

    _register_stage_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        # Bad input or config: one clear line, no traceback (use -v to see it).
        if args.verbose:
            raise
        print(f"retro-search {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
