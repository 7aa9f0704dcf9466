"""The experiment plan: Hydra composition into content-addressed stages (ARCHITECTURE.md, 1-2)."""

from pathlib import Path

import pytest

from retro_search.pipeline import build_plan

CONFIG = Path(__file__).resolve().parents[1] / "config"


def ids(experiment, roles):
    return {role: experiment.stages[role].id for role in roles}


def test_a_search_change_readdresses_search_and_downstream_only():
    base, = build_plan(CONFIG, ["demo"]).experiments
    changed, = build_plan(CONFIG, ["demo"], ["search.gamma=0.8"]).experiments
    same = ["tiny_model", "prepare", "shard", "sft_data:original", "sft:original",
            "eval:original:math500", "eval:base:aime24"]
    moved = ["search", "merge", "sft_data:retro_search", "sft:retro_search",
             "eval:retro_search:math500", "summary"]
    assert ids(base, same) == ids(changed, same)
    assert all(base.stages[r].id != changed.stages[r].id for r in moved)


def test_a_sweep_plans_one_experiment_per_value_sharing_the_upstream_stages():
    plan = build_plan(CONFIG, ["demo"], ["search.rollouts=1,2"])
    one, two = plan.experiments
    assert (one.name, two.name) == ("demo_search.rollouts=1", "demo_search.rollouts=2")
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
    assert "eval:base:math500" not in w2s.stages  # the preset compares the two SFT arms only
    assert w2s.stages["shard"].config["num_shards"] == 128
    assert not plan.stages_of("tiny_model")


def test_each_eval_stage_carries_only_its_own_shard_count():
    base, = build_plan(CONFIG, ["demo"]).experiments
    more, = build_plan(CONFIG, ["demo"], ["eval.num_shards_per_benchmark.math500=3"]).experiments
    assert base.stages["eval:base:math500"].config["eval"]["num_shards"] == 2
    assert more.stages["eval:base:math500"].config["eval"]["num_shards"] == 3
    assert base.stages["eval:base:gsm8k"].config["eval"]["num_shards"] == 1
    assert base.stages["eval:base:gsm8k"].id == more.stages["eval:base:gsm8k"].id


def test_an_unknown_arm_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="pipeline.arms: unknown arm"):
        build_plan(CONFIG, ["demo"], ["pipeline.arms=[base,distilled]"])


def test_gamma_of_one_is_refused_when_the_plan_is_built_not_in_a_job():
    with pytest.raises(ValueError, match=r"search\.gamma must be strictly between 0 and 1"):
        build_plan(CONFIG, ["demo"], ["search.gamma=1"])
