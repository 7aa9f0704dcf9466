# Path helpers over the experiment plan (retro_search.pipeline). No logic beyond lookups here.
import json
import os
import sys

# Plan with this checkout's package, like the jobs (shell.prefix below), not an installed copy.
sys.path.insert(0, f"{workflow.basedir}/src")
from retro_search.config import workflow_plan
from retro_search.pipeline import STAGE_KINDS, eval_benchmark_dir, eval_shard_counts
from retro_search.report.experiment_index import write_experiment_index
from retro_search.runtime import write_stage_file

# The experiments of --config (experiment=, overrides=, config_dir=) planned from the Hydra root;
# a bad key or value stops Snakemake here in one line.
PLAN = workflow_plan(config, f"{workflow.basedir}/config")
# Every rule calls the package CLI (`python -m retro_search.cli`), importable from the source tree
# in any environment (the venv or a rule's conda env). Set here, not in the rules' commands, so a
# moved checkout does not change the commands Snakemake tracks.
# (Snakemake formats the prefix like a command: the shell expansion's braces are doubled twice.)
shell.prefix(
    f"export PYTHONPATH={workflow.basedir}/src${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


localrules:
    stage_config,
    stage_runtime,
    experiment_index,


wildcard_constraints:
    sid=r"[^/]+",
    i=r"\d+",
    bench=r"[a-z0-9_]+",  # a benchmark name; never a shard folder ("shard-0")
    kind="|".join(STAGE_KINDS),


def stage(kind, wildcards):
    return PLAN.stage(kind, wildcards.sid)


def upstream_of(kind, up_kind, wildcards):
    return stage(kind, wildcards).upstream_of(up_kind)


def upstream_flags(kind):
    def flags(wildcards):
        return " ".join(f"--upstream {u.dir}" for u in stage(kind, wildcards).upstream)

    return flags


def stage_config_json(wildcards):
    return json.dumps(PLAN.stage(wildcards.kind, wildcards.sid).config, sort_keys=True)


def stage_runtime_json(wildcards):
    return json.dumps(PLAN.stage(wildcards.kind, wildcards.sid).runtime, sort_keys=True)


def model_inputs(kind):
    """The folder of a model the pipeline made (the tiny model, or a fine-tuned one such as the
    demo's reasoner) when the stage starts from it (a hub model is not a file input)."""

    def inputs(wildcards):
        return [
            u.path("model")
            for u in stage(kind, wildcards).upstream
            if u.kind in ("tiny_model", "sft")
        ]

    return inputs


def local_files(kind):
    """The files from outside the pipeline a stage reads (local benchmark copies, a local
    data.source), whose sha256 its config holds (pipeline.input_files)."""

    def files(wildcards):
        return sorted(stage(kind, wildcards).config.get("input_files", {}))

    return files


def task_files(kind, name):
    """A file of the miniature task stage when the stage reads it (else nothing)."""

    def files(wildcards):
        return [
            u.path(name) for u in stage(kind, wildcards).upstream if u.kind == "task"
        ]

    return files


def engine_gpus(kind):
    """GPUs a generation job needs: vLLM's tensor-parallel size, none for the openai engine
    (the server it calls has them), one for transformers unless it is pinned to the CPU.
    """

    def gpus(wildcards):
        engine = stage(kind, wildcards).settings["engine"]
        if engine["name"] == "openai":
            return 0
        if engine["name"] == "vllm":
            return int(engine.get("tensor_parallel_size", 1))
        return 0 if engine.get("device") == "cpu" else 1

    return gpus


def job_resource(kind, key):
    """One of `resources.<kind>` of the experiment (cpus, mem_mb, runtime): what the job asks
    of SLURM."""

    def value(wildcards):
        return stage(kind, wildcards).resources[key]

    return value


def sft_gpus(wildcards):
    """The SFT job's GPUs: sft.gpus (0: it trains on the CPU)."""
    return int(stage("sft", wildcards).settings["sft"].get("gpus", 0))


def sft_partition(wildcards):
    return "gpu" if sft_gpus(wildcards) > 0 else "cpu"


def engine_partition(kind):
    """The SLURM partition of a generation job: `gpu` when its engine needs GPUs, else `cpu`
    (a CPU engine, as in the demo)."""

    def partition(wildcards):
        return "gpu" if engine_gpus(kind)(wildcards) > 0 else "cpu"

    return partition


def num_shards(stage_):
    return stage_.config["num_shards"]


def all_targets():
    targets = []
    for experiment in PLAN.experiments:
        targets.append(f"results/experiments/{experiment.name}/index.json")
        targets.append(experiment.stages["summary"].path("results.md"))
    return targets


# --- inputs and params of the rules in data.smk


def sample_questions(wildcards):
    """The questions file when it is local or made by the task stage (a hub id is no file)."""
    sample = stage("sample", wildcards)
    questions = sample.config["sample"]["questions"]
    made = any(u.kind == "task" for u in sample.upstream)
    return [questions] if made or os.path.exists(questions) else []


def prepare_source(wildcards):
    """The raw data file when it is local (a hub dataset id, or sampled traces, is not)."""
    source = stage("prepare", wildcards).config["data"]["source"]
    return [source] if source and os.path.exists(source) else []


def prepare_samples(wildcards):
    """Every shard of the sample stage, when the traces are sampled (else none)."""
    return [
        u.path(f"shard-{i}.jsonl")
        for u in stage("prepare", wildcards).upstream
        if u.kind == "sample"
        for i in range(u.config["sample"]["num_shards"])
    ]


def shard_input(wildcards):
    return upstream_of("shard", "prepare", wildcards).path("traces.jsonl")


# --- inputs and params of the rules in search.smk


def search_shard(wildcards):
    return upstream_of("search", "shard", wildcards).path(f"shard-{wildcards.i}.jsonl")


def merge_inputs(suffix):
    def inputs(wildcards):
        search = upstream_of("merge", "search", wildcards)
        return [search.path(f"shard-{i}{suffix}") for i in range(num_shards(search))]

    return inputs


# --- inputs and params of the rules in sft.smk


def sft_data_input(wildcards):
    # prepare (arm original), merge (arm retro_search), or the task (the demo's reasoner)
    source = stage("sft_data", wildcards).upstream[0]
    name = {
        "prepare": "traces.jsonl",
        "merge": "revised.jsonl",
        "task": "teacher_records.jsonl",
    }
    return source.path(name[source.kind])


def sft_train(wildcards):
    return upstream_of("sft", "sft_data", wildcards).path("train.jsonl")


# --- inputs and params of the rules in eval.smk


def eval_shard_dirs(wildcards):
    """The folders of the eval jobs that hold a shard of this benchmark: shards 0..n-1."""
    evaluation = stage("eval", wildcards)
    shards = eval_shard_counts(evaluation.config["eval"])[wildcards.bench]
    return [evaluation.path(f"shard-{i}") for i in range(shards)]


def eval_shard_files(name):
    """The benchmark's file `name` in each of its shard folders (eval_shard_dirs)."""

    def files(wildcards):
        return [f"{d}/{wildcards.bench}/{name}" for d in eval_shard_dirs(wildcards)]

    return files


def eval_model_input(wildcards):
    """The evaluated model's folder when it is a file (fine-tuned or tiny), else nothing."""
    model_dir = stage("eval", wildcards).config["model_dir"]
    return [model_dir] if model_dir.startswith("results/") else []


# --- inputs and params of the rules in report.smk


def summary_evals(wildcards):
    """(eval stage, benchmark) of every metrics file the summary reads, arm by arm."""
    summary = stage("summary", wildcards)
    return [
        (u, bench)
        for u in summary.upstream
        if u.kind == "eval"
        for bench in u.config["eval"]["benchmarks"]
    ]


def summary_inputs(name):
    def inputs(wildcards):
        merge = stage("summary", wildcards).upstream_of("merge")
        return {
            "revised": merge.path("revised.jsonl"),
            "rollouts": merge.path("rollouts.jsonl"),
            "stats": merge.path("stats.json"),
        }[name]

    return inputs


def summary_metrics(wildcards):
    """Every benchmark's metrics.json, arm by arm (eval_benchmark_dir says where it lies)."""
    return [
        u.path(f"{eval_benchmark_dir(u.config['eval'], b)}/metrics.json")
        for u, b in summary_evals(wildcards)
    ]


def summary_metrics_inputs(wildcards):
    """What makes those files: an eval job's shard folder (a rule cannot name a file inside a
    folder another rule makes), or eval_merge's metrics.json."""
    made = set()
    for u, bench in summary_evals(wildcards):
        folder = eval_benchmark_dir(u.config["eval"], bench)
        made.add(u.path("shard-0" if folder != bench else f"{bench}/metrics.json"))
    return sorted(made)


def summary_arms(wildcards):
    return " ".join(u.config["arm"] for u, _ in summary_evals(wildcards))


def short_list(names, shown=3):
    """'a, b, c + 6 more': a label column as wide as the list would squeeze the report's view."""
    rest = f" + {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + rest


def summary_labels(item):
    """The `snakemake --report` labels of a summary file: what it is, and the experiment, arms
    and benchmarks (the first three) it covers by name (its folder's name is a hash)."""

    def labels(wildcards):
        summary = stage("summary", wildcards)
        evals = summary_evals(wildcards)
        names = [
            e.name for e in PLAN.experiments if e.stages["summary"].dir == summary.dir
        ]
        return {
            "item": item,
            "experiment": ", ".join(names),
            "arms": ", ".join(dict.fromkeys(u.config["arm"] for u, _ in evals)),
            "benchmarks": short_list(list(dict.fromkeys(bench for _, bench in evals))),
        }

    return labels


def experiment_by_name(name):
    return next(e for e in PLAN.experiments if e.name == name)


def experiment_summary(name):
    def path(wildcards):
        return experiment_by_name(wildcards.name).stages["summary"].path(name)

    return path
