"""What each stage's hash covers (issue "The stage contract", item 1): exactly the keys that make
its output. Runtime settings (runtime.RUNTIME_KEYS) move no stage and do not rename the
experiment; each key below moves exactly the stages that read it and what follows them."""

from pathlib import Path

import pytest

from retro_search.config import workflow_plan
from retro_search.pipeline import build_plan
from retro_search.runtime import RUNTIME_KEYS, runtime_keys_of, split_runtime

CONFIG = Path(__file__).resolve().parents[1] / "config"
SEVEN = "self_improve_r1_distill_7b"


def stage_ids(experiment: str, overrides=()):
    exp, = build_plan(CONFIG, [experiment], list(overrides)).experiments
    return exp.name, {role: stage.id for role, stage in exp.stages.items()}


def moved(experiment: str, override: str) -> set[str]:
    _, base = stage_ids(experiment)
    _, new = stage_ids(experiment, [override])
    return {role for role in base if base[role] != new[role]}


REVISED_ARM = {"sft_data:retro_search", "sft:retro_search", "eval:retro_search"}
ALL_EVALS = {"eval:base", "eval:original", "eval:retro_search"}

# key -> the stages it moves (the summary follows any stage; "summary" is listed where it moves)
SEVEN_KEYS = {
    "data.sample.n=2": {"sample", "prepare", "shard", "search", "merge", "sft_data:original",
                        "sft:original", "eval:original", *REVISED_ARM, "summary"},
    "data.max_correct_per_question=2": {"prepare", "shard", "search", "merge",
                                        "sft_data:original", "sft:original", "eval:original",
                                        *REVISED_ARM, "summary"},
    "grading.timeout=5": {"prepare", "shard", "search", "merge", "sft_data:original",
                          "sft:original", "eval:original", *REVISED_ARM, "summary"},
    "pipeline.num_shards=8": {"shard", "search", "merge", *REVISED_ARM, "summary"},
    "search.gamma=0.8": {"search", "merge", *REVISED_ARM, "summary"},
    "engine.max_model_len=32768": {"sample", "prepare", "shard", "search", "merge",
                                   "sft_data:original", "sft:original", *REVISED_ARM,
                                   *ALL_EVALS, "summary"},
    "sft.learning_rate=2e-5": {"sft:original", "eval:original", "sft:retro_search",
                               "eval:retro_search", "summary"},
    "sft.max_length=8192": {"sft_data:original", "sft:original", "eval:original",
                            *REVISED_ARM, "summary"},
    "eval.temperature=0.7": {*ALL_EVALS, "summary"},
    "eval.benchmarks=[math500,gsm8k]": {*ALL_EVALS, "summary"},  # no prepare: see data config
}


@pytest.mark.parametrize("override", sorted(SEVEN_KEYS))
def test_each_key_moves_exactly_the_stages_that_read_it_and_what_follows(override):
    assert moved(SEVEN, override) == SEVEN_KEYS[override]


# A changed device that the engine section's check accepts (engine.device: auto, cpu, cuda[:N]).
OTHER_DEVICE = {"cpu": "cuda", "auto": "cpu", "cuda": "cpu"}


def runtime_overrides(experiment: str) -> list[str]:
    """One changed, valid value for every runtime key the experiment's config has."""
    exp, = build_plan(CONFIG, [experiment]).experiments
    cfg, found = exp.config, []
    sections = [(section, section, cfg.get(section) or {}) for section in RUNTIME_KEYS]
    if "reasoner" in cfg:  # the demo's reasoner trains with a section of its own
        sections.append(("reasoner.sft", "sft", cfg["reasoner"]["sft"]))
    for prefix, section, values in sections:
        holders = [(prefix, values)] + [(f"engine.{sub}", values[sub])
                                        for sub in ("vllm", "transformers")
                                        if section == "engine" and isinstance(values.get(sub), dict)]
        for where, holder in holders:
            for key in sorted(runtime_keys_of(section, values) & holder.keys()):
                value = holder[key]
                if isinstance(value, bool):
                    new = str(not value).lower()
                elif isinstance(value, float) and 0 < value <= 1:  # a fraction: gpu memory
                    new = value / 2
                elif isinstance(value, (int, float)):
                    new = value * 2
                else:  # a string or null
                    new = 7 if value is None else OTHER_DEVICE.get(value, value + "x")
                found.append(f"{where}.{key}={new}")
    return found


@pytest.mark.parametrize("experiment", [SEVEN, "demo", "weak_to_strong_r1_distill_32b"])
def test_changing_a_runtime_key_moves_no_stage_and_keeps_the_experiments_name(experiment):
    overrides = runtime_overrides(experiment)
    assert len(overrides) >= 4, overrides  # the experiment has runtime keys to change
    name, base = stage_ids(experiment)
    for override in overrides:
        assert stage_ids(experiment, [override]) == (name, base), override


def test_runtime_keys_are_split_off_and_kept_for_the_job():
    exp, = build_plan(CONFIG, [SEVEN], ["engine.gpu_memory_utilization=0.5"]).experiments
    search = exp.stages["search"]
    assert "gpu_memory_utilization" not in search.config["engine"]
    assert search.runtime["engine"]["gpu_memory_utilization"] == 0.5
    assert search.settings["engine"]["gpu_memory_utilization"] == 0.5
    assert search.settings["engine"]["name"] == "vllm"
    hashed, runtime = split_runtime({"engine": {"name": "auto", "vllm": {"max_num_seqs": 8},
                                                "transformers": {"batch_size": 4, "dtype": "auto"}}})
    assert hashed == {"engine": {"name": "auto", "vllm": {}, "transformers": {"dtype": "auto"}}}
    assert runtime == {"engine": {"vllm": {"max_num_seqs": 8}, "transformers": {"batch_size": 4}}}


def test_the_batch_split_is_runtime_only_when_the_global_batch_is_fixed():
    hashed, runtime = split_runtime({"sft": {"global_batch_size": 128,
                                             "per_device_train_batch_size": 2}})
    assert runtime == {"sft": {"per_device_train_batch_size": 2}}
    hashed, runtime = split_runtime({"sft": {"global_batch_size": None,
                                             "per_device_train_batch_size": 2}})
    assert hashed["sft"]["per_device_train_batch_size"] == 2 and runtime == {}
    # the demo's reasoner trains with no global batch: its per-device batch is what it trains
    assert moved("demo", "reasoner.sft.per_device_train_batch_size=16")


# The bad values: each refused when the plan is built, in one line naming the key.
BAD_VALUES = {
    "search.gamma=1.5": "search.gamma must be strictly between 0 and 1, got 1.5",
    "eval.benchmarks=[math5000]": "eval.benchmarks: unknown benchmark(s) ['math5000']",
    "sft.warmup_ratio=2": "sft.warmup_ratio=2.0: must be in [0, 1)",
    "search.rollouts=two": "search.rollouts: Value 'two' of type 'str' could not be converted",
    "search.rollout=2": "search.rollout: no such setting; did you mean search.rollouts?",
    "serch.rollouts=2": "serch.rollouts: no such setting (no section 'serch'); did you mean search?",
    "+search.rolouts=2": "search.rolouts: no such setting; did you mean search.rollouts?",
    "+sft.lerning_rate=1e-5": "sft.lerning_rate: no such setting; did you mean sft.learning_rate?",
    "reasoner.sft.warmup_ratio=-1": "reasoner.sft.warmup_ratio=-1.0: must be in [0, 1)",
    "+student.user_templat=x": "student.user_templat: no such setting; did you mean "
                               "student.user_template?",
}


@pytest.mark.parametrize("override", sorted(BAD_VALUES))
def test_a_bad_value_is_refused_when_the_plan_is_built_in_one_line(override):
    with pytest.raises(ValueError) as err:
        build_plan(CONFIG, ["demo"], [override])
    message = str(err.value)
    assert BAD_VALUES[override] in message and "\n" not in message


def test_an_unknown_workflow_config_key_is_refused_with_a_close_match():
    workflow_plan({"experiment": "demo", "overrides": "search.rollouts=2"})
    # Snakemake would print a ValueError with a traceback: the refusal is one line, SystemExit.
    with pytest.raises(SystemExit, match=r"^retro-search: error: --config override=\.\.\.: not a "
                                         r"setting of this workflow; did you mean overrides\?"):
        workflow_plan({"override": "search.rollouts=2"})


def test_eval_asks_as_the_student_was_trained_unless_told_otherwise():
    for experiment in ("traces_demo", SEVEN):
        exp, = build_plan(CONFIG, [experiment]).experiments
        student = exp.config["student"]
        for arm in ("base", "original", "retro_search"):
            evaluation = exp.stages[f"eval:{arm}"].config["eval"]
            for key in ("user_template", "system_prompt", "think_open", "think_close"):
                assert evaluation[key] == student.get(key), (experiment, arm, key)
    exp, = build_plan(CONFIG, ["traces_demo"], ["eval.user_template='Q: {question}'"]).experiments
    assert exp.stages["eval:base"].config["eval"]["user_template"] == "Q: {question}"
    # The student's own template is refused naming the key that was set, eval's too.
    with pytest.raises(ValueError, match="student.user_template must contain '{question}'"):
        build_plan(CONFIG, ["traces_demo"], ["student.user_template=nothing"])
    with pytest.raises(ValueError, match="eval.user_template must contain '{question}'"):
        build_plan(CONFIG, ["traces_demo"], ["eval.user_template=nothing"])


# The engine-call keys of search, sample (data.sample: no schema of Hydra's, so a key it does not
# list is added with +) and eval: runtime keys (runtime.ENGINE_CALL_KEYS), checked at plan time.
CALL_SECTIONS = {"search": ("search", "search"), "+data.sample": ("sample", "sample"),
                 "eval": ("eval:base", "eval")}  # override prefix -> (a stage, its section)
CALL_VALUES = {"retries": (["5", "0"], ["-1", "1.5", "true"]),
               "request_timeout_s": (["90", "0", "null"], ["-1", "nan"]),
               "max_failed_share": (["0.2", "0"], ["1", "-0.1", "1.5"])}


@pytest.mark.parametrize("experiment", ["demo", SEVEN])
def test_changing_an_engine_call_key_moves_no_stage_and_reaches_the_job(experiment):
    name, base = stage_ids(experiment)
    for prefix, (role, section) in CALL_SECTIONS.items():
        for key, (good, _) in CALL_VALUES.items():
            for value in good:
                override = f"{prefix}.{key}={value}"
                exp, = build_plan(CONFIG, [experiment], [override]).experiments
                assert (exp.name, {r: s.id for r, s in exp.stages.items()}) == (name, base), \
                    override
                got = exp.stages[role].settings[section][key]
                assert got == (None if value == "null" else float(value)), override


@pytest.mark.parametrize("prefix", sorted(CALL_SECTIONS))
@pytest.mark.parametrize("key", sorted(CALL_VALUES))
def test_a_bad_engine_call_value_is_refused_when_the_plan_is_built(prefix, key):
    for value in CALL_VALUES[key][1]:
        with pytest.raises(ValueError) as err:
            build_plan(CONFIG, ["demo"], [f"{prefix}.{key}={value}"])
        message = str(err.value)
        assert message.startswith(f"{prefix.lstrip('+')}.{key}") and "\n" not in message, message
