"""The experiment plan: Hydra composition into content-addressed stages (ARCHITECTURE.md, 1-2)."""

import hashlib
import json
from pathlib import Path

import pytest

from retro_search.pipeline import build_plan, eval_shard_counts

CONFIG = Path(__file__).resolve().parents[1] / "config"


def ids(experiment, roles):
    return {role: experiment.stages[role].id for role in roles}


def test_a_search_change_readdresses_search_and_downstream_only():
    base, = build_plan(CONFIG, ["traces_demo"]).experiments
    changed, = build_plan(CONFIG, ["traces_demo"], ["search.gamma=0.8"]).experiments
    same = ["tiny_model", "prepare", "shard", "sft_data:original", "sft:original",
            "eval:original", "eval:base"]
    moved = ["search", "merge", "sft_data:retro_search", "sft:retro_search",
             "eval:retro_search", "summary"]
    assert ids(base, same) == ids(changed, same)
    assert all(base.stages[r].id != changed.stages[r].id for r in moved)


def test_a_sweep_plans_one_experiment_per_value_sharing_the_upstream_stages():
    plan = build_plan(CONFIG, ["traces_demo"], ["search.rollouts=1,2"])
    one, two = plan.experiments
    assert (one.name, two.name) == ("traces_demo_search.rollouts=1", "traces_demo_search.rollouts=2")
    assert one.stages["prepare"] is not two.stages["prepare"]  # planned twice ...
    assert one.stages["prepare"].dir == two.stages["prepare"].dir  # ... one directory
    assert one.stages["search"].dir != two.stages["search"].dir
    assert len(plan.stages_of("prepare")) == 1 and len(plan.stages_of("search")) == 2
    assert one.stages["search"].config["search"]["rollouts"] == 1


def test_paper_presets_compose_with_hub_models_and_their_gpu_settings():
    plan = build_plan(CONFIG, ["self_improve_r1_distill_7b", "weak_to_strong_r1_distill_32b"])
    seven, w2s = plan.experiments
    assert seven.stages["search"].config["model"]["path"] == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
    assert seven.stages["search"].config["engine"]["name"] == "vllm"
    assert w2s.stages["sft:retro_search"].config["student"]["path"] == "Qwen/Qwen2.5-32B-Instruct"
    assert "eval:base" not in w2s.stages  # the preset compares the two SFT arms only
    assert w2s.stages["shard"].config["num_shards"] == 128
    assert not plan.stages_of("tiny_model")


def test_what_a_job_asks_of_slurm_comes_from_the_experiment_and_reruns_nothing():
    seven, = build_plan(CONFIG, ["self_improve_r1_distill_7b"]).experiments
    assert seven.stages["sft:retro_search"].resources == {"cpus": 32, "mem_mb": 512000,
                                                          "runtime": 2880}
    assert seven.stages["sft:retro_search"].settings["sft"]["gpus"] == 8
    assert seven.stages["search"].resources["mem_mb"] == 64000
    demo, = build_plan(CONFIG, ["demo"]).experiments
    assert {role: s.resources["mem_mb"] for role, s in demo.stages.items() if s.resources} == {
        "sample": 4000, "prepare": 4000, "search": 4000, "eval:base": 4000,
        "sft:reasoner": 8000, "sft:original": 8000, "sft:retro_search": 8000,
        "eval:original": 4000, "eval:retro_search": 4000}
    assert demo.stages["sft:retro_search"].settings["sft"]["gpus"] == 0

    # runtime settings: a change readdresses nothing; sft.gpus only with a global batch size
    more, = build_plan(CONFIG, ["self_improve_r1_distill_7b"],
                       ["resources.search.mem_mb=128000", "sft.gpus=4"]).experiments
    assert {r: s.id for r, s in more.stages.items()} == {r: s.id for r, s in seven.stages.items()}
    assert more.stages["search"].resources["mem_mb"] == 128000
    fewer, = build_plan(CONFIG, ["demo"], ["sft.gpus=2"]).experiments
    assert fewer.stages["sft:retro_search"].id != demo.stages["sft:retro_search"].id


@pytest.mark.parametrize("override, message", [
    ("resources.serch.mem_mb=1", "resources.serch.mem_mb: no such setting (no section "
                                 "'resources.serch'); did you mean resources.search?"),
    ("resources.search.mem=1", "resources.search.mem: no such setting; did you mean "
                               "resources.search.mem_mb?"),
    ("resources.sft.cpus=0", "resources.sft.cpus must be at least 1, got 0"),
    ("sft.gpus=-1", "sft.gpus=-1: must be 0 (train on the CPU) or more"),
])
def test_a_bad_resource_is_refused_when_the_plan_is_built(override, message):
    with pytest.raises(ValueError) as err:
        build_plan(CONFIG, ["demo"], [override])
    assert message in str(err.value)


def test_one_eval_stage_per_arm_covers_every_benchmark():
    demo, = build_plan(CONFIG, ["traces_demo"]).experiments
    evals = {role: s for role, s in demo.stages.items() if s.kind == "eval"}
    assert sorted(evals) == ["eval:base", "eval:original", "eval:retro_search"]
    for role, evaluation in evals.items():
        assert evaluation.config["arm"] == role.split(":")[1]
        assert len(evaluation.config["eval"]["benchmarks"]) == 8
    assert demo.stages["summary"].upstream[1:] == list(evals.values())
    assert {s["role"] for s in demo.index()["stages"]} >= set(evals)


def test_eval_shard_counts_take_the_per_benchmark_count_else_num_shards():
    section = {"benchmarks": ["math500", "gsm8k", "aime24"], "num_shards": 2,
               "num_shards_per_benchmark": {"gsm8k": 4, "olympiadbench": 3}}
    assert eval_shard_counts(section) == {"math500": 2, "gsm8k": 4, "aime24": 2}
    demo, = build_plan(CONFIG, ["traces_demo"]).experiments
    counts = eval_shard_counts(demo.stages["eval:base"].config["eval"])
    assert counts["math500"] == 2 and max(counts.values()) == 2  # 2 eval jobs per arm
    assert set(counts.values()) == {1, 2}


def test_a_shard_count_change_readdresses_every_arms_eval_and_nothing_upstream():
    # One eval stage covers all benchmarks, so resharding one re-addresses the whole stage.
    # (The benchmark list also decontaminates the training data: changing it re-addresses prepare
    # and everything after it.)
    base, = build_plan(CONFIG, ["traces_demo"]).experiments
    changed, = build_plan(CONFIG, ["traces_demo"], ["eval.num_shards_per_benchmark.math500=3"]).experiments
    for role in ("prepare", "search", "sft:original", "sft:retro_search"):
        assert base.stages[role].id == changed.stages[role].id, role
    for role in ("eval:base", "eval:original", "eval:retro_search", "summary"):
        assert base.stages[role].id != changed.stages[role].id, role


@pytest.mark.parametrize("override, key", [
    ("eval.num_shards_per_benchmark.math500=0", "eval.num_shards_per_benchmark.math500"),
    ("+eval.num_shards=0", "eval.num_shards"),
])
def test_a_shard_count_below_one_is_refused_when_the_plan_is_built(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_plan(CONFIG, ["traces_demo"], [override])


def test_an_unknown_arm_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="pipeline.arms: unknown arm"):
        build_plan(CONFIG, ["traces_demo"], ["pipeline.arms=[base,distilled]"])


def test_gamma_of_one_is_refused_when_the_plan_is_built_not_in_a_job():
    with pytest.raises(ValueError, match=r"search\.gamma must be strictly between 0 and 1"):
        build_plan(CONFIG, ["traces_demo"], ["search.gamma=1"])


R1_DISTILL_7B = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
# The demo with its traces sampled by the tiny model from its own questions, instead of read.
SAMPLED_DEMO = ["data.source=null",
                "data.sample={questions: data/demo/traces.jsonl, "
                "format: {preset: r1_response, id: id}, n: 2, max_tokens: 64}"]


def test_the_self_improvement_preset_samples_searches_and_trains_the_same_7b_model():
    seven, = build_plan(CONFIG, ["self_improve_r1_distill_7b"]).experiments
    s = seven.stages
    # sample -> prepare -> shard -> search -> merge -> sft_data -> sft -> eval
    assert s["sample"].upstream == [] and s["prepare"].upstream == [s["sample"]]
    assert s["shard"].upstream == [s["prepare"]] and s["search"].upstream == [s["shard"]]
    assert s["merge"].upstream == [s["search"]]
    assert s["sft_data:retro_search"].upstream == [s["merge"]]
    assert s["sft_data:original"].upstream == [s["prepare"]]  # its own unrevised correct traces
    assert s["sft:retro_search"].upstream == [s["sft_data:retro_search"]]
    assert s["eval:retro_search"].upstream == [s["sft:retro_search"]]
    # one model in the three roles: it samples, it revises, it is fine-tuned (and evaluated)
    assert s["sample"].config["model"]["path"] == R1_DISTILL_7B
    assert s["search"].config["model"]["path"] == R1_DISTILL_7B
    assert s["sft:retro_search"].config["student"]["path"] == R1_DISTILL_7B
    assert s["eval:base"].config["model_dir"] == R1_DISTILL_7B
    questions = s["sample"].config["sample"]
    assert (questions["questions"], questions["split"]) == ("DigitalLearningGmbH/MATH-lighteval",
                                                            "train")
    assert s["sample"].config["engine"]["name"] == "vllm"
    assert s["prepare"].config["data"]["max_correct_per_question"] == 1
    assert s["prepare"].config["decontamination"]["benchmarks"]  # still decontaminated


def test_the_demo_with_data_sample_samples_its_traces_with_the_tiny_model():
    demo, = build_plan(CONFIG, ["traces_demo"], SAMPLED_DEMO).experiments
    sample, tiny = demo.stages["sample"], demo.stages["tiny_model"]
    assert sample.upstream == [tiny] and demo.stages["prepare"].upstream == [sample]
    assert sample.config["model"]["path"] == tiny.path("model")  # the reviser samples
    assert sample.config["sample"]["n"] == 2 and sample.config["sample"]["num_shards"] == 1
    assert sample.config["sample"]["model"] is None  # resolved into the stage's `model`
    assert "sample" not in build_plan(CONFIG, ["traces_demo"]).experiments[0].stages


def test_a_sample_setting_readdresses_sampling_and_what_follows_it_only():
    base, = build_plan(CONFIG, ["traces_demo"], SAMPLED_DEMO).experiments
    changed, = build_plan(CONFIG, ["traces_demo"], [*SAMPLED_DEMO, "data.sample.n=3"]).experiments
    assert ids(base, ["tiny_model", "eval:base"]) == ids(changed, ["tiny_model", "eval:base"])
    for role in ("sample", "prepare", "shard", "search", "sft:original", "eval:retro_search"):
        assert base.stages[role].id != changed.stages[role].id, role


def test_a_sampler_of_its_own_is_planned_apart_from_the_reviser():
    demo, = build_plan(CONFIG, ["traces_demo"], [
        *SAMPLED_DEMO, "+data.sample.model={label: other, path: org/other-model}"]).experiments
    assert demo.stages["sample"].config["model"]["path"] == "org/other-model"
    assert demo.stages["sample"].upstream == []
    assert demo.stages["sample"].name == "demo-other"
    assert demo.stages["search"].config["model"]["path"].startswith("results/tiny_model/")


@pytest.mark.parametrize("overrides, message", [
    (["data.sample={questions: q.jsonl}"], r"exactly one of data\.source .* and data\.sample"),
    ([*SAMPLED_DEMO, "data.sample.n=0"], r"data\.sample\.n must be an integer of at least 1"),
    ([*SAMPLED_DEMO, "+data.sample.samples=2"], r"data\.sample: unknown setting"),
    (["data.max_correct_per_question=0"], r"data\.max_correct_per_question must be at least 1"),
])
def test_a_bad_data_section_is_refused_when_the_plan_is_built(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_plan(CONFIG, ["traces_demo"], overrides)


def test_the_demo_trains_its_reasoner_which_samples_searches_and_is_the_student():
    demo, = build_plan(CONFIG, ["demo"]).experiments
    s = demo.stages
    task, init, reasoner = s["task"], s["reasoner_init"], s["sft:reasoner"]
    assert s["sft_data:reasoner"].upstream == [task, init]
    assert init.config["tiny_model"] == {"miniature": "xs", "seed": 0}
    trained = reasoner.path("model")
    # the one trained model in every role: sampler, reviser, student of both arms, base arm
    assert s["sample"].config["model"]["path"] == trained
    assert s["sample"].config["sample"]["questions"] == task.path("sample.jsonl")
    assert s["search"].config["model"]["path"] == trained
    for arm in ("original", "retro_search"):
        assert s[f"sft:{arm}"].config["student"]["path"] == trained
    assert s["eval:base"].config["model_dir"] == trained
    # the held-out questions come from the task stage, for evaluation and decontamination
    for role in ("eval:base", "eval:original", "eval:retro_search"):
        assert s[role].config["eval"]["data_dirs"] == {"arith": task.dir} and task in s[role].upstream
    assert s["prepare"].config["decontamination"]["data_dirs"] == {"arith": task.dir}


def test_a_reasoner_path_without_a_reasoner_section_is_refused():
    with pytest.raises(ValueError, match="no `reasoner` section"):
        build_plan(CONFIG, ["traces_demo"], ["model.path=reasoner"])


def test_an_edited_benchmark_copy_readdresses_prepare_and_eval_and_a_missing_one_stops_the_plan(
        tmp_path, monkeypatch):
    import shutil

    for folder in ("benchmarks", "demo"):  # relative data paths are read from here
        shutil.copytree(CONFIG.parent / "data" / folder, tmp_path / "data" / folder)
    monkeypatch.chdir(tmp_path)  # data_dir is relative to where the workflow runs
    base, = build_plan(CONFIG, ["traces_demo"]).experiments
    assert "data/benchmarks/math500.jsonl" in base.stages["eval:base"].config["input_files"]
    gold = tmp_path / "data" / "benchmarks" / "math500.jsonl"
    gold.write_text(gold.read_text().replace('"answer": "', '"answer": "9', 1))
    edited, = build_plan(CONFIG, ["traces_demo"]).experiments
    assert ids(base, ["tiny_model"]) == ids(edited, ["tiny_model"])
    for role in ("prepare", "search", "eval:base", "eval:retro_search", "summary"):
        assert base.stages[role].id != edited.stages[role].id, role
    gold.unlink()
    with pytest.raises(ValueError, match=r"data/benchmarks/math500.jsonl does not exist"):
        build_plan(CONFIG, ["traces_demo"])


def test_a_pinned_hub_revision_is_part_of_the_key_of_every_stage_that_reads_it():
    seven = "self_improve_r1_distill_7b"
    base, = build_plan(CONFIG, [seven]).experiments
    pinned, = build_plan(CONFIG, [seven], ["+eval.hub_revisions.math500=0123abc"]).experiments
    # prepare decontaminates against math500, every arm is evaluated on it
    for role in ("prepare", "eval:base", "eval:original", "eval:retro_search"):
        assert base.stages[role].id != pinned.stages[role].id, role
    assert base.stages["sample"].id == pinned.stages["sample"].id
    questions, = build_plan(CONFIG, [seven], ["data.sample.revision=0123abc"]).experiments
    assert questions.stages["sample"].id != base.stages["sample"].id
    assert questions.stages["sample"].config["sample"]["revision"] == "0123abc"
    with pytest.raises(ValueError, match=r"eval.hub_revisions: unknown benchmark\(s\) \['math5'\]"):
        build_plan(CONFIG, [seven], ["+eval.hub_revisions.math5=0123abc"])


def test_a_local_model_folder_is_part_of_the_key_of_every_stage_that_loads_it(tmp_path,
                                                                             monkeypatch):
    import shutil

    for folder in ("benchmarks", "demo"):  # relative data paths are read from here
        shutil.copytree(CONFIG.parent / "data" / folder, tmp_path / "data" / folder)
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "checkpoints" / "reviser"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(b"\0" * 64)
    plan = lambda: build_plan(CONFIG, ["traces_demo"], [f"model.path={model}"]).experiments[0]
    base = plan()
    assert base.stages["search"].config["input_files"][str(weights)] == \
        hashlib.sha256(b"\0" * 64).hexdigest()
    assert json.loads((tmp_path / "results" / ".hash-cache.json").read_text())  # read once
    weights.write_bytes(b"\1" * 64)  # the same size: a new time makes it read again
    edited = plan()
    assert base.stages["search"].id != edited.stages["search"].id
    # the student is another (tiny) model: nothing of its arms moves
    assert ids(base, ["prepare", "sft:original", "eval:original"]) == \
        ids(edited, ["prepare", "sft:original", "eval:original"])


@pytest.mark.parametrize("override, key", [
    ("data.source=data/demo/no_such_traces.jsonl", "data.source"),
    ("data.source=./traces", "data.source"),
    ("model.path=/no/such/model", "model.path"),
    ("student.tokenizer=checkpoints/run1/tokenizer", "student.tokenizer"),
    ("eval.data_dir=/no/such/benchmarks", "eval.data_dir"),
])
def test_a_local_path_that_is_not_there_is_refused_naming_its_key(override, key):
    with pytest.raises(ValueError) as err:
        build_plan(CONFIG, ["traces_demo"], [override])
    message = str(err.value)
    assert message.startswith(f"{key}: {override.split('=', 1)[1]} does not exist")
    assert f"set {key} to a local file or folder, or to a hub id" in message


def test_a_hub_id_is_not_taken_for_a_missing_local_path():
    demo, = build_plan(CONFIG, ["traces_demo"], ["data.source=owner/dataset"]).experiments
    assert demo.stages["prepare"].config["data"]["source"] == "owner/dataset"
