# Path helpers over the experiment plan (retro_search.pipeline). No logic beyond lookups here.
import json
import os
import shlex

from retro_search.pipeline import build_plan


EXPERIMENTS = [e for e in str(config.get("experiment", "demo")).split(",") if e]
OVERRIDES = shlex.split(str(config.get("overrides", "")))
CONFIG_DIR = config.get("config_dir", f"{workflow.basedir}/config")  # the Hydra root
PLAN = build_plan(CONFIG_DIR, EXPERIMENTS, OVERRIDES)
# The package CLI, importable from the source tree in any environment (venv or conda env).
RS = f"PYTHONPATH={workflow.basedir}/src${{PYTHONPATH:+:$PYTHONPATH}} python -m retro_search.cli"


localrules:
    stage_config,
    experiment_index,


wildcard_constraints:
    sid=r"[^/]+",
    i=r"\d+",
    kind="|".join(
        (
            "tiny_model",
            "prepare",
            "shard",
            "search",
            "merge",
            "sft_data",
            "sft",
            "eval",
            "summary",
        )
    ),


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


def model_inputs(kind):
    """The tiny model's folder when the stage uses it (a hub model is not a file input)."""

    def inputs(wildcards):
        return [
            u.path("model")
            for u in stage(kind, wildcards).upstream
            if u.kind == "tiny_model"
        ]

    return inputs


def num_shards(stage_):
    return stage_.config["num_shards"]


def all_targets():
    targets = []
    for experiment in PLAN.experiments:
        targets.append(f"results/experiments/{experiment.name}/index.json")
        targets.append(experiment.stages["summary"].path("results.md"))
    return targets


rule stage_config:
    output:
        "results/{kind}/{sid}/config.yaml",
    params:
        config=stage_config_json,
    log:
        "results/{kind}/{sid}/logs/config.log",
    benchmark:
        "results/{kind}/{sid}/logs/config.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    resources:
        runtime=5,
    shell:
        "{RS} write-config {output} --json {params.config:q} > {log} 2>&1"
