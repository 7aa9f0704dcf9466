"""A bad config value is refused before any job runs or any model loads, in one line naming the
key and what is allowed (issue "Reliability", item 7): when the plan is built (`build_plan`), by
`snakemake -n` (no traceback), and by `retro-search search --config FILE KEY=VALUE` (exit 2).
The engine section, which has no dataclass, is checked against what its engine takes."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from retro_search.cli import main
from retro_search.config import workflow_plan
from retro_search.pipeline import build_plan
from retro_search.schemas import (AUTO_KEYS, BUILTIN_ENGINE_NAMES, NEAR_MISS, TRANSFORMERS_ARGS,
                                  VLLM_ARGS, check_engine, engine_key_error)
from workflow_helpers import BIN, REPO, SNAKEMAKE, workflow_env

CONFIG = REPO / "config"
SEVEN = "self_improve_r1_distill_7b"
TRANSFORMERS = "engine=transformers_cpu"  # the demo with the transformers engine, not auto

# (experiment, overrides) -> what the one-line refusal says (it starts with the key)
BAD = {
    # the cases
    ("demo", "search.rollouts=two"): "search.rollouts: Value 'two' of type 'str' could not be "
                                     "converted to Integer",
    ("demo", "search.gamma=abc"): "search.gamma: Value 'abc' of type 'str' could not be "
                                  "converted to Float",
    ("demo", "engine.batch_size=abc"): "engine.batch_size: engine auto takes each engine's "
                                       "settings in its own section: engine.transformers."
                                       "batch_size",
    ("demo", f"{TRANSFORMERS} engine.batch_size=abc"): "engine.batch_size must be an integer "
                                                       ">= 1, got 'abc'",
    ("demo", "engine.device=tpu"): "engine.device must be auto, cpu, cuda or cuda:N, got 'tpu'",
    ("demo", f"{TRANSFORMERS} engine.device=tpu"): "engine.device must be auto, cpu, cuda or "
                                                   "cuda:N, got 'tpu'",
    ("traces_demo", "model.think_close=''"): "model.think_close must be the reasoning closer",
    ("demo", "model.think_close=''"): "model.think_close must be the reasoning closer",
    ("demo", "+model.tokenzer=x"): "model.tokenzer: no such setting; did you mean "
                                   "model.tokenizer?",
    ("demo", "+grading.timout=3"): "grading.timout: no such setting; did you mean "
                                   "grading.timeout?",
    ("demo", "+engine.batch_sise=3"): "engine.batch_sise: no such setting; did you mean "
                                      "engine.transformers.batch_size?",
    ("demo", f"{TRANSFORMERS} +engine.batch_sise=3"): "engine.batch_sise: not a setting of the "
                                                      "transformers engine; did you mean "
                                                      "engine.batch_size?",
    ("demo", "search.seed=abc"): "search.seed: Value 'abc' of type 'str' could not be converted",
    ("demo", "search.drop_incorrect=maybe"): "search.drop_incorrect: Value 'maybe' is not a "
                                             "valid bool",
    ("demo", "search.keywords=Wait"): "search.keywords must be a list, e.g. "
                                      "search.keywords=[Wait]",
    ("demo", "search.temperature=-1"): "search.temperature must be >= 0 (0 is greedy), got -1.0",
    ("demo", "search.top_p=2"): "search.top_p must be in (0, 1], got 2.0",
    # more of the same kind
    ("demo", "search.top_p=0"): "search.top_p must be in (0, 1], got 0.0",
    ("demo", "search.keywords=[]"): "search.keywords must be a non-empty list",
    ("demo", "search.max_tokens=-5"): "search.max_tokens must be >= 1 (tokens), got -5",
    ("demo", "search.max_step_tokens=0"): "search.max_step_tokens must be >= 1 (tokens), got 0",
    ("demo", "search.rollouts=[1"): "override 'search.rollouts=[1' is not KEY=VALUE in Hydra's "
                                    "syntax",
    ("demo", "eval.n_samples=0"): "eval.n_samples must be at least 1, got 0",
    ("demo", "sft.learning_rate=-1"): "sft.learning_rate must be > 0, got -1.0",
    ("demo", "sft.num_train_epochs=0"): "sft.num_train_epochs must be > 0, got 0.0",
    ("demo", "reasoner.sft.learning_rate=0"): "reasoner.sft.learning_rate must be > 0, got 0.0",
    ("demo", "grading.timeout=0"): "grading.timeout must be > 0 (seconds per answer), got 0.0",
    ("demo", "grading.processes=-1"): "grading.processes must be >= 0",
    ("traces_demo", "student.think_close=''"): "student.think_close must be the reasoning closer",
    ("traces_demo", "model.user_template=x"): "model.user_template must contain '{question}'",
    ("demo", "pipeline.num_shards=0"): "pipeline.num_shards must be an integer >= 1",
    ("demo", "pipeline.arms=base"): "pipeline.arms must be a list, e.g. pipeline.arms=[base]",
    ("demo", "+pipeline.num_shard=3"): "pipeline.num_shard: no such setting; did you mean "
                                       "pipeline.num_shards?",
    ("demo", "engine.name=foo"): "engine.name is not an engine: use transformers, vllm, openai, "
                                 "auto or package.module:ClassName, got 'foo'",
    ("demo", "engine.name=transformers"): "engine.vllm: a section of engine auto only",
    ("demo", "+engine.vllm.gpu_memory_utilization=2"): "engine.vllm.gpu_memory_utilization must "
                                                       "be a fraction in (0, 1], got 2",
    ("demo", "+engine.transformers.device=cpu"): "engine.transformers.device: engine auto's "
                                                 "device is engine.device",
    ("demo", "+engine.model=x"): "engine.model: not an engine setting; the engine loads "
                                 "model.path",
    (SEVEN, "engine.gpu_memory_utilization=1.5"): "engine.gpu_memory_utilization must be a "
                                                  "fraction in (0, 1], got 1.5",
    (SEVEN, "engine.tensor_parallel_size=0"): "engine.tensor_parallel_size must be an integer "
                                              ">= 1",
    (SEVEN, "+engine.tensor_paralel_size=2"): "engine.tensor_paralel_size: no such setting; did "
                                              "you mean engine.tensor_parallel_size?",
    (SEVEN, "engine.batch_size=4"): "engine.batch_size: a setting of the transformers engine, "
                                    "not an argument of vLLM's engine",
    (SEVEN, "+engine.device=cuda"): "engine.device: a setting of the transformers engine",
    (SEVEN, "engine.max_model_len=0"): "engine.max_model_len must be an integer >= 1",
}


def refusal(experiment: str, overrides: str) -> str:
    with pytest.raises(ValueError) as err:
        build_plan(CONFIG, [experiment], overrides.split())
    return str(err.value)


@pytest.mark.parametrize("experiment, overrides", sorted(BAD))
def test_a_bad_value_is_refused_when_the_plan_is_built_in_one_line_naming_the_key(experiment,
                                                                                  overrides):
    message = refusal(experiment, overrides)
    assert "\n" not in message
    assert message.startswith(BAD[experiment, overrides]), message


@pytest.mark.parametrize("experiment, overrides", [
    (SEVEN, "+engine.max_num_batched_tokens=8192"),  # vLLM's own arguments pass through
    (SEVEN, "+engine.pipeline_parallel_size=2"),     # (not a near miss of tensor_parallel_size)
    ("demo", "+engine.vllm.max_num_seqs=8"),
    ("demo", f"{TRANSFORMERS} engine.device=cuda:1"),
    ("demo", "search.keywords=[Wait]"),
    ("demo", "search.temperature=0 search.top_p=1"),
])
def test_good_values_still_plan(experiment, overrides):
    build_plan(CONFIG, [experiment], overrides.split())


def broken_config_dir(tmp_path: Path) -> Path:
    """A copy of config/ whose search preset of the demo is not valid YAML (line 4)."""
    root = tmp_path / "config"
    shutil.copytree(CONFIG, root)
    (root / "search" / "miniature.yaml").write_text(
        "defaults:\n  - schema\n  - _self_\nrollouts: [1, 2\ngamma: 0.5\n")
    return root


@pytest.mark.parametrize("config, message", [
    ({"overrides": "search.keywords=Wait"}, "search.keywords must be a list"),
    ({"overrides": "search.rollouts=two"}, "search.rollouts: Value 'two'"),
    ({"overrides": "+grading.timout=3"}, "grading.timout: no such setting"),
    ({"experiment": SEVEN, "overrides": "engine.gpu_memory_utilization=1.5"},
     "engine.gpu_memory_utilization must be a fraction in (0, 1]"),
    ({"overide": "x"}, "--config overide=...: not a setting of this workflow"),
    ({"config_dir": "/nonexistent/config"},
     "--config config_dir=/nonexistent/config: no such folder"),
])
def test_the_workflow_refuses_its_config_in_one_line_before_the_plan(config, message):
    """What the Snakefile checks first (`workflow_plan`): a refusal is SystemExit with one
    line, which Snakemake prints as it is (a ValueError it would print with a traceback)."""
    with pytest.raises(SystemExit) as err:
        workflow_plan(config)
    line = str(err.value)
    assert line.startswith(f"retro-search: error: {message}") and "\n" not in line, line


def test_a_malformed_yaml_file_of_the_hydra_root_is_named_with_its_line(tmp_path):
    root = broken_config_dir(tmp_path)
    with pytest.raises(SystemExit) as err:
        workflow_plan({"config_dir": str(root)})
    line = str(err.value)
    assert line.startswith(f"retro-search: error: {root / 'search' / 'miniature.yaml'}, line 5")
    assert "not valid YAML" in line and "\n" not in line


def test_snakemake_stops_in_one_line_before_any_job(tmp_path):
    """A real `snakemake -n` per case, all at once (Snakemake takes ~10 s to start here)."""
    root = broken_config_dir(tmp_path)
    cases = {
        "overrides=search.rollouts=two": "search.rollouts: Value 'two' of type 'str' could not "
                                         "be converted to Integer",
        "overrides=search.keywords=Wait": "search.keywords must be a list, e.g. "
                                          "search.keywords=[Wait]",
        "overrides=engine.device=tpu": "engine.device must be auto, cpu, cuda or cuda:N, got "
                                       "'tpu'",
        "overrides=+grading.timout=3": "grading.timout: no such setting; did you mean "
                                       "grading.timeout?",
        f"config_dir={root}": f"{root / 'search' / 'miniature.yaml'}, line 5, column 6: not "
                              "valid YAML",
    }
    running = {config: subprocess.Popen([str(SNAKEMAKE), "-n", "--cores", "1", "--config", config],
                                        cwd=REPO, env=workflow_env(), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for config in cases}
    for config, process in running.items():
        out, _ = process.communicate(timeout=120)
        lines = [line for line in out.splitlines()
                 if line.strip() and not line.startswith("Using workflow specific profile")]
        assert process.returncode == 1, out
        assert len(lines) == 1 and lines[0].startswith(f"retro-search: error: {cases[config]}"), out


# --- retro-search search --config FILE KEY=VALUE ----------------------------------------------

CLI_BAD = {
    "search.rollouts=two": "search.rollouts: Value 'two' of type 'str' could not be converted",
    "search.gamma=abc": "search.gamma: Value 'abc' of type 'str' could not be converted",
    "engine.batch_size=abc": "engine.batch_size must be an integer >= 1, got 'abc'",
    "engine.device=tpu": "engine.device must be auto, cpu, cuda or cuda:N, got 'tpu'",
    "engine.batch_sise=3": "engine.batch_sise: not a setting of the transformers engine; did you "
                           "mean engine.batch_size?",
    "engine.name=foo": "engine.name is not an engine",
    "engine.tensor_parallel_size=2": "engine.tensor_parallel_size: not a setting of the "
                                     "transformers engine",
    "model.think_close=''": "model.think_close must be the reasoning closer",
    "model.tokenzer=x": "model.tokenzer: no such setting; did you mean model.tokenizer?",
    "grading.timout=3": "grading.timout: no such setting; did you mean grading.timeout?",
    "grading.timeout=0": "grading.timeout must be > 0",
    "search.seed=abc": "search.seed: Value 'abc' of type 'str' could not be converted",
    "search.drop_incorrect=maybe": "search.drop_incorrect: Value 'maybe' is not a valid bool",
    "search.keywords=Wait": "search.keywords must be a list, e.g. search.keywords=[Wait]",
    "search.temperature=-1": "search.temperature must be >= 0",
    "search.top_p=2": "search.top_p must be in (0, 1]",
    "search.max_tokens=-5": "search.max_tokens must be >= 1",
}


@pytest.fixture
def search_files(tmp_path):
    """A shard, a --config file as a user writes one, and where the outputs would go. The model
    does not exist: a run that got past its config would fail loading it, with another message."""
    shard = tmp_path / "shard.jsonl"
    shard.write_text(json.dumps({"id": "t", "question": "1+1?", "reference_answer": "2",
                                 "reasoning": "1+1 is 2.\n\nWait, yes.",
                                 "solution": "\\boxed{2}"}) + "\n")
    config = tmp_path / "search.yaml"
    config.write_text("model: {path: /nonexistent/model}\nengine: {name: transformers, "
                      "device: cpu}\nsearch: {rollouts: 2}\n")
    return shard, config, tmp_path / "out" / "revised.jsonl"


def search(shard, config, output, *overrides):
    return main(["search", "--input", str(shard), "--output", str(output), "--config",
                 str(config), "--no-progress", *overrides])


@pytest.mark.parametrize("override", sorted(CLI_BAD))
def test_retro_search_search_refuses_a_bad_value_before_the_model_loads(override, search_files,
                                                                        capsys):
    shard, config, output = search_files
    assert search(shard, config, output, override) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"retro-search search: error: {CLI_BAD[override]}"), err
    assert "\n" not in err and not output.parent.exists()


@pytest.mark.parametrize("text, where", [
    ("search:\n  rollouts: [1, 2\n  gamma: 0.5\n", ", line 3, column 8: not valid YAML ("),
    ("engine:\n  batch_size: 4\n   device: cpu\n", ", line 3, column 10: not valid YAML ("),
    ("[1, 2]\n", ": not a mapping of config sections"),
])
def test_a_malformed_config_file_is_named_with_its_line(text, where, search_files, capsys):
    shard, _, output = search_files
    config = shard.with_name("broken.yaml")
    config.write_text(text)
    assert search(shard, config, output, "model.path=/nonexistent/model") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"retro-search search: error: {config}{where}"), err
    assert "\n" not in err


def test_the_installed_command_exits_2_with_one_line(search_files):
    shard, config, output = search_files
    done = subprocess.run([str(BIN / "retro-search"), "search", "--input", str(shard), "--output",
                           str(output), "--config", str(config), "engine.device=tpu"],
                          capture_output=True, text=True, timeout=120, env=workflow_env(),
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == ("retro-search search: error: engine.device must be auto, cpu, "
                                   "cuda or cuda:N, got 'tpu'"), done.stderr


# --- the engine section's rules against the engines themselves ---------------------------------

def test_every_engine_preset_passes_its_check():
    for path in sorted((CONFIG / "engine").glob("*.yaml")):
        check_engine(yaml.safe_load(path.read_text()))


def test_the_engine_names_and_auto_keys_are_the_engines_own():
    from retro_search import engines

    assert set(BUILTIN_ENGINE_NAMES) == {*engines.BUILTIN_ENGINES, "auto"}
    auto = set(inspect.signature(engines._auto_engine).parameters)
    assert {*AUTO_KEYS} - {"name"} == auto - {"model", "tokenizer", "revision"}


def init_parameters(path: Path, class_name: str) -> set[str]:
    """The parameters of a class's __init__ (or its annotated fields, for a dataclass), read from
    its source without importing it (torch, vllm)."""
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"),
                None)
    if init is not None:
        return {a.arg for a in init.args.args + init.args.kwonlyargs} - {"self"}
    return {n.target.id for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def test_the_transformers_keys_are_the_transformers_engines_arguments():
    path = REPO / "src" / "retro_search" / "engines" / "transformers_engine.py"
    assert set(TRANSFORMERS_ARGS) == init_parameters(path, "TransformersEngine") - {
        "model", "tokenizer", "revision"}


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed")
def test_the_vllm_keys_are_vllms_and_none_of_its_arguments_is_taken_for_a_typo():
    folder = Path(importlib.util.find_spec("vllm").submodule_search_locations[0])
    fields = init_parameters(folder / "engine" / "arg_utils.py", "EngineArgs")
    assert len(fields) > 100 and set(VLLM_ARGS) <= fields
    engine = {"name": "vllm"}
    refused = {f: engine_key_error(engine, f) for f in sorted(fields - {"model", "tokenizer",
                                                                         "revision"})}
    assert {f: why for f, why in refused.items() if why} == {}, NEAR_MISS
