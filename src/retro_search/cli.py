"""`retro-search` command line: one subcommand per pipeline step.

Each subcommand reads files, calls the package, and writes its outputs atomically; heavy imports
(torch, transformers, math-verify) happen inside the subcommand so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

from retro_search.locks import output_lock

log = logging.getLogger("retro_search")

PRESETS_HELP = ("r1 (chat messages), r1_response (one string), samples (`retro-search sample` "
                "output), openthoughts, openthoughts_metadata, thought_anchors, skythought")
FORMATS_HELP = ("input format: 'records' (normalised jsonl written by `retro-search normalize`) "
                f"or a raw-format preset: {PRESETS_HELP}")


# --- normalize, segment, grade ------------------------------------------------------------------

def cmd_normalize(args: argparse.Namespace) -> int:
    from retro_search import tools

    if args.on_bad_record == "quarantine":  # the manifest lists it among the outputs
        args.quarantine = args.quarantine or str(Path(args.output).with_suffix(".quarantine.jsonl"))
    else:
        args.quarantine = None
    print(tools.normalize(args.source, args.output, format=args.format, split=args.split,
                          name=args.name, limit=args.limit, quarantine=args.quarantine),
          file=sys.stderr)
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from retro_search import tools

    print(tools.segment(args.input, args.output, format=args.format, keywords=args.keyword),
          file=sys.stderr)
    return 0


def cmd_grade(args: argparse.Namespace) -> int:
    from retro_search import tools

    print(tools.grade(args.input, args.output, gold_field=args.gold_field,
                      response_field=args.response_field, processes=args.processes,
                      timeout=args.timeout, progress=not args.no_progress), file=sys.stderr)
    return 0


# --- search ----------------------------------------------------------------------------------

def cmd_search(args: argparse.Namespace) -> int:
    from retro_search.config import compose
    from retro_search.stages import search

    args.log = args.log or str(Path(args.output).with_suffix(".rollouts.jsonl"))  # a manifest output
    result = search.run(compose(args.config, args.overrides), args.input, args.output, args.log,
                        input_format=args.format, limit=args.limit,
                        show_progress=not args.no_progress)
    args.engine_info = result.engine  # the manifest says which engine ran
    return result.report(args.command)


# --- prepare, shard ---------------------------------------------------------------------------

def cmd_prepare(args: argparse.Namespace) -> int:
    from retro_search.config import load_config_dict
    from retro_search.stages import prepare

    cfg = load_config_dict(args.config)
    source = cfg["data"].get("source")
    args.source = source if source and Path(source).exists() else None  # hashed if local
    folder = prepare.outputs_in(args.output_dir) if args.output_dir else {}
    for name in prepare.OUTPUTS:  # the manifest hashes each
        setattr(args, name, getattr(args, name) or folder.get(name))
    result = prepare.run(cfg, {name: getattr(args, name) for name in prepare.OUTPUTS
                               if getattr(args, name)},
                         samples=args.samples or [], progress=not args.no_progress)
    print(f"prepare: {result.summary['summary']}", file=sys.stderr)
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from retro_search.config import load_config_dict
    from retro_search.stages import shard

    num_shards = args.num_shards
    if args.config:  # the workflow's stage config: its num_shards, the value the plan hashed
        num_shards = load_config_dict(args.config)["num_shards"]
    elif num_shards is None:
        raise ValueError("give --num-shards N, or --config with num_shards")
    result = shard.run(args.input, args.output, args.index, num_shards)
    return result.report(args.command)


# --- audit ---------------------------------------------------------------------------------

def cmd_audit(args: argparse.Namespace) -> int:
    from retro_search.audit import audit

    report = audit(args.target)
    for problem in report.problems:
        print(problem)
    for line in report.unverified:
        print(f"unverified: {line}")
    print(f"audit: {len(report.checked)} manifests checked, {len(report.problems)} problems, "
          f"{len(report.unverified)} things not verifiable -> "
          f"{'OK' if report.ok else 'FAILED'}", file=sys.stderr)
    return 0 if report.ok else 1


def cmd_lineage(args: argparse.Namespace) -> int:
    from retro_search.lineage import lineage, render_json, render_text

    result = lineage(args.table, cell=args.cell)
    print(render_json(result) if args.json else render_text(result), end="")
    return result["exit_status"]


# --- tiny-model ------------------------------------------------------------------------------

def cmd_tiny_model(args: argparse.Namespace) -> int:
    from retro_search.stages import tiny_model

    settings = {"seed": args.seed, "train_steps": args.train_steps, "miniature": args.miniature}
    if args.config:  # the workflow's stage config: its tiny_model section wins
        from retro_search.config import load_config_dict

        section = load_config_dict(args.config).get("tiny_model", {})
        settings.update({k: v for k, v in section.items() if k in settings})
    result = tiny_model.run(args.output, **settings)
    print(f"tiny model -> {result.outputs['model']}", file=sys.stderr)
    return 0


# --- parser ----------------------------------------------------------------------------------

# Stage subcommands live beside their stage: each module has `register(subparsers)`.
STAGE_COMMAND_MODULES = (
    "retro_search.task_cli",
    "retro_search.sampling_cli",
    "retro_search.sft.cli",
    "retro_search.evaluation.cli",
    "retro_search.report.cli",
)


# Steps only the workflow runs between two stages: left out of `retro-search -h` (each still runs
# and has its own -h), so the list shows what a user runs by hand.
WORKFLOW_INTERNAL = ("shard", "merge", "eval-merge")


class HelpParser(argparse.ArgumentParser):
    """An ArgumentParser whose `-h` of a command in `settings_help.COMMAND_SECTIONS` ends with
    the settings the command reads, at their defaults (read from the schemas only then)."""

    settings_of: str | None = None

    def format_help(self) -> str:
        text = super().format_help()
        if self.settings_of:
            from retro_search.settings_help import settings_help

            text += "\n" + settings_help(self.settings_of)
        return text


class VersionAction(argparse.Action):
    """`--version`: the installed package's version, and the commit of the checkout it runs
    from (computed when asked: git is not run on every call)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the version (and the git commit of a checkout) and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def version_line() -> str:
    from importlib import metadata

    from retro_search.provenance import REPO_ROOT, _git

    try:
        line = f"retro-search {metadata.version('retro-search')}"
    except metadata.PackageNotFoundError:
        line = "retro-search (not installed)"
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit:
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        modified = ", modified" if dirty and dirty.strip() else ""
        line += f" (git {commit.strip()}{modified}, {REPO_ROOT})"
    return line


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
    parser = HelpParser(
        prog="retro-search",
        description="Retro-Search (arXiv 2504.04383): revise long reasoning traces into shorter, "
                    "correct ones. Each subcommand is one pipeline step; see `retro-search CMD -h`.",
        epilog=f"Workflow-internal steps, run by the workflow between stages and left out "
               f"of the list above: {', '.join(WORKFLOW_INTERNAL)} (each has -h).")
    parser.add_argument("--version", action=VersionAction)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--manifest", default=None, metavar="PATH",
                        help="after the command succeeds, write its provenance manifest here "
                        "(sha256 of inputs and outputs, code version, packages, host, times)")
    parser.add_argument("--upstream", action="append", default=[], metavar="DIR",
                        help="an upstream artifact (stage directory) this run used; repeatable")
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
                   help="stop at the first bad record with one line naming file, line and field "
                        "(default), or move each bad record (a torn or non-UTF-8 line, a "
                        "missing or mistyped field, a reference the grader cannot read, a "
                        "repeated id) to the quarantine file with its reason and go on; an "
                        "empty file is an error, or adds nothing in quarantine mode")
    p.add_argument("--quarantine", default=None, help="quarantine file (default: OUTPUT with .quarantine.jsonl)")
    p.set_defaults(func=cmd_normalize, input_args=("source",), output_args=("output", "quarantine"))

    p = sub.add_parser("segment", help="count steps and thoughts of each trace",
                       description="Per trace: number of steps, thoughts and boundaries, and the "
                       "step index at which each boundary sits.")
    p.add_argument("input", help="traces (.jsonl)")
    p.add_argument("output", help="one row per trace (.jsonl)")
    p.add_argument("--format", default="records", help=FORMATS_HELP)
    p.add_argument("--keyword", action="append", help="transition keyword (repeat; default: the ALGORITHM.md list)")
    p.set_defaults(func=cmd_segment, input_args=("input",), output_args=("output",))

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
    p.set_defaults(func=cmd_grade, input_args=("input",), output_args=("output",))

    p = sub.add_parser("search", help="Retro-Search one shard of traces",
                       description="Retro-Search every trace of one shard with one engine. Writes the "
                       "revised shard and the rollout log atomically; progress is kept in a hidden "
                       "file beside the output, so a killed run resumes where it stopped. A request "
                       "the engine fails is tried 1 + search.retries times (default 3) and given "
                       "up past search.request_timeout_s (default null: 600 s + 0.5 s per token of "
                       "its budget; 0: no limit); its trace is kept unchanged with status "
                       "engine_error. When more than search.max_failed_share (default 0.5) of the "
                       "traces end so, nothing is written and the command exits with status 1, "
                       "keeping its progress.",
                       epilog="Overrides: KEY=VALUE in Hydra's dotted syntax, e.g. "
                       "model.path=results/tiny-model search.rollouts=2 search.max_tokens=256 "
                       "engine.batch_size=8; every setting and its default is listed below.")
    p.add_argument("--input", required=True, help="shard of traces (.jsonl)")
    p.add_argument("--output", required=True, help="revised traces (.jsonl)")
    p.add_argument("--log", default=None, help="rollout log (.jsonl; default: OUTPUT with .rollouts.jsonl)")
    p.add_argument("--config", default=None, help="YAML config merged over the defaults (e.g. a stage's resolved config)")
    p.add_argument("--format", default="records", help=FORMATS_HELP)
    p.add_argument("--limit", type=int, default=None, help="search only the first N traces")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_search, input_args=("input",), output_args=("output", "log"))

    p = sub.add_parser("tiny-model", help="build the tiny local test model (offline, seconds)",
                       description="Build a small random Llama-style model and a locally trained "
                       "tokenizer with an R1-style chat template; the demo's and tests' model.")
    p.add_argument("output", help="folder to write the model into")
    p.add_argument("--seed", type=int, default=0, help="weights seed (default: 0)")
    p.add_argument("--train-steps", type=int, default=0,
                   help="fit the model to its built-in R1-style corpus for N steps so that it "
                   "closes its reasoning and boxes an answer (200: about 40 s; default: 0, random)")
    p.add_argument("--miniature", default=None, metavar="SIZE",
                   help="build the miniature task's untrained model of this size instead "
                   "(its own tokenizer, one token per digit; retro_search.miniature.MODEL_SIZES)")
    p.add_argument("--config", default=None, help="stage config whose tiny_model section sets seed, train_steps and miniature")
    p.set_defaults(func=cmd_tiny_model, input_args=(), output_args=("output",))

    p = sub.add_parser("prepare", help="normalise, grade, filter and decontaminate raw traces",
                       description="The prepare stage: reads data.source in data.format (or, "
                       "with data.sample, the sample stage's shards given as --samples), grades "
                       "each trace's own answer, drops wrong ones (data.drop_incorrect), too long "
                       "ones (data.max_reasoning_chars), questions that overlap the evaluation "
                       "benchmarks, sampled responses that never closed their reasoning, and the "
                       "traces of a question beyond data.max_correct_per_question (the lowest "
                       "sample indices are kept). Writes traces.jsonl, stats.json, removed.jsonl "
                       "(every removed trace with its reason) and quarantine.jsonl (bad records "
                       "of the source): each where its flag says, else in --output-dir.")
    p.add_argument("--config", required=True, help="the stage config (YAML with data, grading, decontamination)")
    p.add_argument("--output-dir", default=None, help="folder for the outputs not given by their own flag")
    p.add_argument("--traces", default=None, help="the prepared pool (.jsonl)")
    p.add_argument("--stats", default=None, help="counts read, removed by reason, kept (.json)")
    p.add_argument("--removed", default=None, help="every removed trace with its reason (.jsonl)")
    p.add_argument("--quarantine", default=None, help="bad records of the source with the reason (.jsonl)")
    p.add_argument("--samples", nargs="*", default=[], metavar="SHARD",
                   help="the sample stage's shards (`retro-search sample` outputs), when the "
                   "config has data.sample")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_prepare, input_args=("source", "samples"),
                   output_args=("traces", "stats", "removed", "quarantine"))

    p = sub.add_parser("shard", help="take shard INDEX of NUM_SHARDS from a trace file",
                       description="Round-robin sharding: shard i holds traces i, i+N, i+2N, ...")
    p.add_argument("--input", required=True, help="traces (.jsonl)")
    p.add_argument("--output", required=True, help="the shard (.jsonl)")
    p.add_argument("--index", type=int, required=True, help="shard number, from 0")
    p.add_argument("--num-shards", type=int, default=None, help="number of shards (or --config)")
    p.add_argument("--config", default=None, help="the shard stage's config.yaml (its num_shards)")
    p.set_defaults(func=cmd_shard, input_args=("input",), output_args=("output",))

    p = sub.add_parser("audit", help="verify the provenance chain behind an experiment",
                       description="Walk the manifests behind an experiment "
                       "(results/experiments/NAME), a stage directory or a results folder, and "
                       "print one line per problem: missing, modified (a file or a manifest), "
                       "stale (made from an upstream manifest that has changed since), misnamed "
                       "(a folder whose name is not the hash of its config and upstream), "
                       "unexpected (a file no manifest records), different code (a package "
                       "module changed since), different environment (packages or envs/ and "
                       "lock files). Lines starting 'unverified:' name what could not be "
                       "checked. Exit 0 when there is no problem, 1 otherwise. Run it from the "
                       "folder the workflow ran in (manifests name paths relative to it).")
    p.add_argument("target", help="results/experiments/NAME, a stage directory, or results/")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("lineage", help="trace a results-table cell back to the raw input rows",
                       description="Walk from a results table to everything behind it: for the "
                       "cell ROW,COLUMN (or every cell), the arm's eval stage, the benchmark's "
                       "metrics.json and generations.parquet (sha256, rows = problems x samples) "
                       "and whether the metrics reproduce the value shown; then every stage "
                       "the eval stage was made from, through the manifests' upstream links, "
                       "down to the raw input rows (the task's files, the samples, prepare's "
                       "traces, files read from outside results/): per stage its role, config "
                       "hash and identifying values, manifests, outputs' hashes, code, "
                       "packages, hub models and engine. Verifies by running the audit once on "
                       "the experiment folder (else the summary stage) and attaching each "
                       "problem to the stage it names; what could not be verified is listed "
                       "last. Exit 0 when the audit finds no problem and every cell "
                       "reproduces, 1 otherwise, 2 for a bad argument.")
    p.add_argument("table", help="results/experiments/NAME/results.md (or README.md, "
                   "index.json there), or results/summary/ID/results.md or results.csv")
    p.add_argument("--cell", default=None, metavar="ROW,COLUMN",
                   help="one cell, e.g. retro_search,arith/acc (columns as in the table: "
                   "BENCH/acc, BENCH/len, average/acc; results.csv also has BENCH/se); "
                   "default: every cell")
    p.add_argument("--json", action="store_true", help="print the lineage as JSON")
    p.set_defaults(func=cmd_lineage)

    _register_stage_commands(sub)
    from retro_search import config_cli
    from retro_search.settings_help import COMMAND_SECTIONS

    config_cli.register(sub)
    for command in COMMAND_SECTIONS:
        if command in sub.choices:
            sub.choices[command].settings_of = command
    # argparse (3.11) prints help=SUPPRESS as "==SUPPRESS==": drop their lines instead.
    sub._choices_actions[:] = [a for a in sub._choices_actions if a.dest not in WORKFLOW_INTERNAL]
    return parser


def provenance_now() -> str:
    from retro_search.provenance import now

    return now()


def _paths(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    found = []
    for name in names:
        value = getattr(args, name, None)
        if value:
            found.extend(value if isinstance(value, list) else [value])
    return found


def _write_manifest(args: argparse.Namespace, started: str, argv: list[str]) -> None:
    from retro_search.provenance import write_manifest

    write_manifest(args.manifest, stage=args.command, config_file=getattr(args, "config", None),
                   inputs=_paths(args, getattr(args, "input_args", ())),
                   outputs=_paths(args, getattr(args, "output_args", ())),
                   upstream=args.upstream, started=started, command=["retro-search", *argv],
                   # a model argument may be a hub id, recorded as id + revision, not hashed
                   model_inputs=_paths(args, getattr(args, "model_args", ())),
                   engine=getattr(args, "engine_info", None))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        started = provenance_now()
        outputs = _paths(args, getattr(args, "output_args", ()))
        with output_lock(outputs[0], started) if outputs else nullcontext():
            status = args.func(args)
            if status == 0 and args.manifest:
                _write_manifest(args, started, list(argv) if argv is not None else sys.argv[1:])
        return status
    except (ValueError, FileNotFoundError, ImportError) as err:
        # Bad input or config: one clear line, no traceback (use -v to see it).
        if args.verbose:
            raise
        print(f"retro-search {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        # Most of the job's work failed (an engine that failed it): each line said, exit 1.
        from retro_search.stages import JobFailed

        if not isinstance(err, JobFailed):
            raise
        for line in str(err).splitlines() or [""]:
            print(f"retro-search {args.command}: FAILED: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
