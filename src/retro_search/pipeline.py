"""The experiment plan: Hydra-composed configs -> content-addressed stage directories.

Snakemake asks this module, at parse time, which stages each requested experiment needs and where
they live. A stage lives in `results/<kind>/<readable-name>-<hash>/`, where the hash covers the
stage's own slice of the config and the ids of its upstream stages (ARCHITECTURE.md, property 2).
So two experiments that agree on everything upstream of a stage share it, and changing a search
setting changes the search stage and everything downstream of it, and nothing else.

Stages (kind: what it needs):
    tiny_model   the project's tiny model, when `model.path`, `student.path` or the sampler's
                 path is "tiny"; also the miniature's untrained model (role reasoner_init)
    task         the miniature task's splits and teacher traces (`reasoner.task`), when the
                 experiment has a `reasoner` section (the demo)
    (reasoner)   when a model path is "reasoner": sft_data + sft on the task's teacher traces,
                 from the untrained miniature model (roles sft_data:reasoner, sft:reasoner); the
                 trained model then samples, searches and is the student
    sample       data.sample + the sampler model (data.sample.model, else `model`) + engine,
                 when the data config samples its traces instead of reading them (one job per
                 data.sample.num_shards)
    prepare      data, grading, decontamination against the evaluation benchmarks (+ sample)
    shard        prepare + pipeline.num_shards
    search       shard + model, engine, search, grading           (one job per shard)
    merge        search
    sft_data     prepare (arm "original") or merge (arm "retro_search") + student, sft
                 (or the task, for the reasoner)
    sft          sft_data + student, sft
    eval         sft (or the student itself for arm "base") + eval, engine   (one per arm,
                 covering every benchmark: one job per shard index, each loading the engine
                 once for shard i of every benchmark with more than i shards; then one
                 eval-merge per benchmark, see `eval_shard_counts`)
    summary      merge + every eval

A stage's hash covers what makes its output, never how the job runs: the keys in
`runtime.RUNTIME_KEYS` (batch sizes, memory shares, worker counts, logging and checkpoint
cadence, devices, tensor-parallel size, the engine-call retries, time limits and failed shares)
are split off into the stage's `runtime` (written to
`runtime.yaml` beside its `config.yaml` and recorded in its manifest), so changing one reruns
nothing. An eval stage's
hash covers the rest of the `eval` section, so changing the benchmark list or any benchmark's
shard count re-addresses (reruns) every arm's evaluation, all benchmarks included: the price of
one engine start per job instead of one per benchmark.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

from retro_search.local_paths import REASONER, TINY
from retro_search.runtime import deep_merge, is_runtime_override, split_runtime

TASK_QUESTIONS = "task:sample"  # data.sample.questions: the miniature task's sampling split
ARMS = ("base", "original", "retro_search")
# What `retro-search sft-data` reads of the sft section (the rest is the trainer's).
SFT_DATA_KEYS = ("max_length", "drop_overlong", "eos_token")
# The prompt format eval takes from the student when eval.<key> is null.
EVAL_PROMPT_KEYS = ("user_template", "system_prompt", "think_open", "think_close")
# Every kind of stage, i.e. the folders of results/ (`results/<kind>/<name>-<hash>/`).
STAGE_KINDS = ("tiny_model", "task", "sample", "prepare", "shard", "search", "merge", "sft_data",
               "sft", "eval", "summary")
MODEL_SECTIONS = ("model", "student")  # the sections of a stage config that name a model
HASH_CACHE = ".hash-cache.json"  # under results/: provenance.HashCache

def stage_hash(kind: str, config: dict[str, Any], upstream_ids: list[str]) -> str:
    """The hash in a stage directory's name: its kind, its config (config.yaml) and the ids of
    its upstream stages. The audit recomputes it from what a folder holds."""
    payload = {"kind": kind, "config": config, "upstream": list(upstream_ids)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Stage:
    kind: str
    name: str
    config: dict[str, Any]            # what makes the output: hashed, written to config.yaml
    upstream: list["Stage"] = field(default_factory=list)
    results: str = "results"
    runtime: dict[str, Any] = field(default_factory=dict)  # how the job runs: runtime.yaml
    resources: dict[str, Any] = field(default_factory=dict)  # what it asks of SLURM: resources.KIND

    @property
    def settings(self) -> dict[str, Any]:
        """Everything the job reads: the config with the runtime settings merged back in."""
        return deep_merge(self.config, self.runtime)

    @cached_property  # asked for on every path lookup Snakemake makes; fixed once planned
    def hash(self) -> str:
        return stage_hash(self.kind, self.config, [u.id for u in self.upstream])

    @property
    def id(self) -> str:
        return f"{self.name}-{self.hash}"

    @property
    def dir(self) -> str:
        return f"{self.results}/{self.kind}/{self.id}"

    def path(self, name: str) -> str:
        return f"{self.dir}/{name}"

    def upstream_of(self, kind: str) -> "Stage":
        return next(u for u in self.upstream if u.kind == kind)


@dataclass
class Experiment:
    name: str
    config: dict[str, Any]
    stages: dict[str, Stage]          # role -> stage, e.g. "search", "sft:original", "eval:base"

    def index(self) -> dict[str, Any]:
        return {"experiment": self.name,
                "stages": [{"role": role, "kind": s.kind, "id": s.id, "dir": s.dir}
                           for role, s in self.stages.items()]}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text)).strip("_")[:60] or "x"


def compose(config_dir: str | Path, experiment: str, overrides: Iterable[str] = ()) -> dict:
    """The resolved config of one experiment, composed by Hydra from `config_dir`."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from hydra.errors import ConfigCompositionException

    from retro_search import schemas

    import yaml

    schemas.register()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        try:
            cfg = hydra_compose("config", overrides=[f"experiment={experiment}", *overrides])
        except yaml.YAMLError as err:  # a file of the Hydra root
            from retro_search.config import yaml_error

            raise yaml_error(err) from None
        except ConfigCompositionException as err:
            from retro_search.config import unknown_override_error

            raise unknown_override_error(err, experiment, overrides, hydra_compose) from None
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


def eval_shard_counts(section: dict[str, Any]) -> dict[str, int]:
    """Shards of each benchmark of an `eval` config section, in `eval.benchmarks` order:
    `num_shards_per_benchmark[name]`, else `num_shards` (`EvalSettings.shards_for` in a job).
    An eval stage has max(counts) jobs; job i covers shard i of each benchmark with more than i
    shards. Raises ValueError naming the key of a count below 1 or a benchmark listed twice."""
    names = list(section["benchmarks"])
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"eval.benchmarks: {twice} listed more than once")
    per_benchmark = section.get("num_shards_per_benchmark") or {}
    counts = {name: per_benchmark.get(name, section.get("num_shards", 1)) for name in names}
    for name, count in counts.items():
        if not isinstance(count, int) or count < 1:
            key = (f"num_shards_per_benchmark.{name}" if name in per_benchmark else "num_shards")
            raise ValueError(f"eval.{key} must be an integer of at least 1, got {count!r}")
    return counts


def input_files(benchmarks: Iterable[str], data_dir: str | None, data_dirs: dict[str, str],
                results: str, source: str | None = None, key: str = "eval") -> dict[str, str]:
    """sha256 of every local file a stage reads from outside the pipeline, by path: the local
    copies of its benchmarks (`data_dir`, or `data_dirs[name]`) and a local `data.source` (a file
    or a folder of files). Part of the stage's key, so an edited gold answer makes a new stage
    instead of passing unnoticed. A benchmark made by a stage (the task's arith) is keyed by that
    stage; one from the hub by its id. A missing copy is refused here, before any job runs."""
    from retro_search.evaluation.benchmarks import get_benchmark
    from retro_search.local_paths import looked_in
    from retro_search.provenance import HashCache, hash_paths

    paths = []
    for name in benchmarks:
        folder = data_dirs.get(name, data_dir)
        if folder is None or str(folder).startswith(f"{results}/"):
            continue
        path = Path(folder) / get_benchmark(name).local_file
        if not path.is_file():
            where = f"{key}.data_dirs.{name}" if name in data_dirs else f"{key}.data_dir"
            raise ValueError(f"{where}: {path} does not exist{looked_in(path)} (the local copy "
                             f"of benchmark {name!r}); null reads it from the hub")
        paths.append(path)
    if source and Path(source).exists():
        paths.append(source)  # a folder: every file in it (provenance.hash_paths)
    return {entry["path"]: entry["sha256"] for entry in hash_paths(paths, HashCache(
        Path(results) / HASH_CACHE))}


def local_model_files(config: dict[str, Any], results: str) -> dict[str, str]:
    """sha256 of the files of every local model folder (and tokenizer folder) a stage's model
    sections name outside the pipeline's results: a user's checkpoint is part of the key of the
    stages that load it, as a hub model is by its revision."""
    from retro_search.provenance import HashCache, hash_paths

    folders = [section.get(key) for name in MODEL_SECTIONS
               if isinstance(section := config.get(name), dict) for key in ("path", "tokenizer")]
    folders = [f for f in folders if isinstance(f, str) and not f.startswith(f"{results}/")
               and Path(f).is_dir()]
    if not folders:
        return {}
    entries = hash_paths(dict.fromkeys(folders), HashCache(Path(results) / HASH_CACHE))
    return {entry["path"]: entry["sha256"] for entry in entries}


def eval_benchmark_dir(section: dict[str, Any], benchmark: str) -> str:
    """Where, inside an eval stage's folder, a benchmark's generations.parquet and metrics.json
    lie: in the folder of its only shard's job (no copy, no merge job), or, for a benchmark in
    several shards, in the folder `eval_merge` writes them to."""
    shards = eval_shard_counts(section)[benchmark]
    return f"shard-0/{benchmark}" if shards == 1 else benchmark


def eval_section(cfg: dict[str, Any]) -> dict[str, Any]:
    """The eval section with its prompt format filled in from the student's where it is null:
    eval asks as the student was trained unless told otherwise."""
    section = dict(cfg["eval"])
    for key in EVAL_PROMPT_KEYS:
        if section.get(key) is None:
            section[key] = cfg["student"].get(key)
    return section


def sft_data_section(sft: dict[str, Any]) -> dict[str, Any]:
    return {key: sft[key] for key in SFT_DATA_KEYS if key in sft}


def plan_experiment(name: str, cfg: dict, results: str = "results") -> Experiment:
    """Every stage of one experiment, keyed by role."""
    from retro_search.config import check_sections
    from retro_search.local_paths import check_local_paths
    from retro_search.stages.prepare import check_data_section
    from retro_search.sampling import check_sampler, sample_settings
    from retro_search import tracking

    evaluation = eval_section(cfg)
    check_sections({**cfg, "eval": evaluation})  # a bad value: refused here, not in a job
    eval_shard_counts(cfg["eval"])  # so is a bad eval shard count
    check_data_section(cfg["data"])  # and a data section with no source, or two
    check_local_paths(cfg, results)  # and a local file or folder that is not there
    stages: dict[str, Stage] = {}

    def stage(role: str, kind: str, label: str, config: dict, upstream: list[Stage]) -> Stage:
        files = {**config.get("input_files", {}), **local_model_files(config, results)}
        if files:
            config = {**config, "input_files": dict(sorted(files.items()))}
        hashed, runtime = split_runtime(config)
        stages[role] = Stage(kind, slug(label), hashed, upstream, results, runtime,
                             (cfg.get("resources") or {}).get(kind, {}))
        return stages[role]

    def model_ref(section: str | dict) -> tuple[dict, list[Stage]]:
        """A model section (named, or given) with `path: tiny` resolved to the tiny-model
        stage's folder, and `path: reasoner` to the miniature's trained reasoning model."""
        model = dict(cfg[section] if isinstance(section, str) else section)
        if model["path"] == REASONER:
            reasoner = reasoner_stage()
            model["path"] = reasoner.path("model")
            return model, [reasoner]
        if model["path"] != TINY:
            return model, []
        tiny = stages.get("tiny_model") or stage("tiny_model", "tiny_model", TINY,
                                                 {"tiny_model": cfg["tiny_model"]}, [])
        model["path"] = tiny.path("model")
        return model, [tiny]

    def task_stage() -> Stage | None:
        """The miniature task's files, when the experiment has a reasoner (else None)."""
        if "reasoner" not in cfg:
            return None
        return stages.get("task") or stage("task", "task", "miniature",
                                           {"task": cfg["reasoner"]["task"]}, [])

    def reasoner_stage() -> Stage:
        """The demo's reasoning model: an untrained miniature model fine-tuned from scratch on
        the task's teacher traces with the project's SFT stage (`reasoner` config section)."""
        if "sft:reasoner" in stages:
            return stages["sft:reasoner"]
        if "reasoner" not in cfg:
            raise ValueError("a model path is 'reasoner', but the experiment has no `reasoner` "
                             "section (the miniature's task, model size and training)")
        section = cfg["reasoner"]
        init = stage("reasoner_init", "tiny_model", f"miniature-{section['size']}",
                     {"tiny_model": {"miniature": section["size"], "seed": section["seed"]}}, [])
        student = {**cfg["model"], "path": init.path("model"), "tokenizer": None,
                   "label": "reasoner"}
        task = task_stage()
        data = stage("sft_data:reasoner", "sft_data", "reasoner",
                     {"student": student, "sft": sft_data_section(section["sft"])}, [task, init])
        return stage("sft:reasoner", "sft", "reasoner",
                     {"student": student, "sft": section["sft"]}, [data, init])

    def with_task(section: dict, benchmarks: list[str]) -> tuple[dict, list[Stage]]:
        """An eval-like section whose `arith` benchmark is read from the task stage's folder."""
        task = task_stage()
        if task is None or "arith" not in benchmarks:
            return section, []
        return {**section, "data_dirs": {**section.get("data_dirs", {}), "arith": task.dir}}, [task]

    data_label = cfg["data"].get("label", "data")
    prepare_up = []
    if cfg["data"].get("sample") is not None:
        # The traces are the sampler's own answers: data.sample.model, else the revision model.
        settings = sample_settings(cfg["data"]["sample"], "data.sample")
        if settings.model is None:
            check_sampler(cfg["model"], "model")
        sampler, sampler_up = model_ref(settings.model or "model")
        section = {**dataclasses.asdict(settings), "model": None}  # the sampler is `model` below
        if section["questions"] == TASK_QUESTIONS:  # the miniature's own sampling split
            task = task_stage()
            if task is None:
                raise ValueError(f"data.sample.questions is {TASK_QUESTIONS!r}, but the "
                                 "experiment has no `reasoner` section with a task")
            section["questions"] = task.path("sample.jsonl")
            sampler_up = [*sampler_up, task]
        prepare_up.append(stage(
            "sample", "sample",
            f"{data_label}-{(settings.model or cfg['model']).get('label', 'model')}",
            {"sample": section, "model": sampler, "engine": cfg["engine"]}, sampler_up))
    # Decontaminated against data.decontamination.benchmarks (the presets list every benchmark,
    # so evaluating fewer reruns no search or training), else against eval.benchmarks.
    decontamination = {"data_dir": cfg["eval"].get("data_dir"),
                       "data_dirs": cfg["eval"].get("data_dirs", {}),
                       "hub_revisions": cfg["eval"].get("hub_revisions", {}),
                       **cfg["data"].get("decontamination", {})}
    decontamination["benchmarks"] = (decontamination.get("benchmarks")
                                     or cfg["eval"]["benchmarks"])
    decontamination, decontamination_up = with_task(decontamination,
                                                    decontamination["benchmarks"])
    prepare = stage("prepare", "prepare", data_label,
                    {"data": cfg["data"], "grading": cfg["grading"],
                     "decontamination": decontamination,
                     "input_files": input_files(
                         decontamination["benchmarks"], decontamination.get("data_dir"),
                         decontamination.get("data_dirs") or {}, results,
                         source=cfg["data"].get("source"), key="data.decontamination")},
                    prepare_up + decontamination_up)
    shard = stage("shard", "shard", data_label,
                  {"num_shards": cfg["pipeline"]["num_shards"]}, [prepare])
    model, model_up = model_ref("model")
    search = stage("search", "search", f"{data_label}-{cfg['model'].get('label', 'model')}",
                   {"model": model, "engine": cfg["engine"], "search": cfg["search"],
                    "grading": cfg["grading"], "num_shards": cfg["pipeline"]["num_shards"]},
                   [shard, *model_up])
    merge = stage("merge", "merge", search.name, {}, [search])

    student, student_up = model_ref("student")
    student_label = cfg["student"].get("label", "student")
    arms = cfg["pipeline"]["arms"]
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"pipeline.arms: unknown arm(s) {sorted(unknown)}; known: {list(ARMS)}")
    # One eval stage per arm over every benchmark: its jobs load the engine once for all of them.
    evaluation, eval_up = with_task(evaluation, cfg["eval"]["benchmarks"])
    eval_files = input_files(evaluation["benchmarks"], evaluation.get("data_dir"),
                             evaluation.get("data_dirs") or {}, results)
    evals = []
    for arm in arms:
        if arm == "base":
            model_dir, upstream = student["path"], student_up
        else:
            source = prepare if arm == "original" else merge
            data = stage(f"sft_data:{arm}", "sft_data", f"{arm}-{student_label}",
                         {"student": student, "sft": sft_data_section(cfg["sft"])},
                         [source, *student_up])
            sft = stage(f"sft:{arm}", "sft", f"{arm}-{student_label}",
                        {"student": student, "sft": cfg["sft"]}, [data, *student_up])
            model_dir, upstream = sft.path("model"), [sft]
        evals.append(stage(
            f"eval:{arm}", "eval", f"{arm}-{student_label}",
            {"eval": evaluation, "engine": cfg["engine"], "student": student,
             "model_dir": model_dir, "arm": arm, "input_files": eval_files},
            [*upstream, *eval_up]))
    stage("summary", "summary", name, {"arms": arms}, [merge, *evals])
    for role, planned in stages.items():  # where sft and eval jobs log: runtime, never hashed
        tracked = (tracking.stage_section(cfg, name, role.partition(":")[2])
                   if planned.kind in ("sft", "eval") else None)
        if tracked:
            planned.runtime = {**planned.runtime, "tracking": tracked}
    return Experiment(name, cfg, stages)


@dataclass
class Plan:
    experiments: list[Experiment]
    by_dir: dict[str, Stage]

    def stage(self, kind: str, stage_id: str) -> Stage:
        try:
            return self.by_dir[f"{self.results}/{kind}/{stage_id}"]
        except KeyError:
            raise KeyError(f"no {kind} stage {stage_id!r} in the requested experiments") from None

    @property
    def results(self) -> str:
        return next(iter(self.by_dir.values())).results if self.by_dir else "results"

    def stages_of(self, kind: str) -> list[Stage]:
        return [s for s in self.by_dir.values() if s.kind == kind]


def build_plan(config_dir: str | Path, experiments: Iterable[str], overrides: Iterable[str] = (),
               results: str = "results") -> Plan:
    """All stages of every requested experiment (x every point of a sweep), deduplicated."""
    planned, by_dir = [], {}
    from retro_search.config import expand_sweep

    runs = expand_sweep(list(overrides))
    for experiment in experiments:
        for run in runs:
            cfg = compose(config_dir, experiment, run)
            # Named after its overrides, except runtime ones (they change no result).
            named = [o for o in run if not is_runtime_override(o.split("=", 1)[0], cfg)]
            name = slug("+".join([cfg.get("name", experiment), *named])) if named else cfg.get("name", experiment)
            exp = plan_experiment(name, cfg, results)
            planned.append(exp)
            for stage in exp.stages.values():
                by_dir.setdefault(stage.dir, stage)
    return Plan(planned, by_dir)
