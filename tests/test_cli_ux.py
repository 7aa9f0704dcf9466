"""What the command line tells a user (issue 14, items 7 and 8): its version, the resolved config
of an experiment or a stage, the settings of a command with their defaults, a help that lists
what a user runs by hand, and a model that cannot be loaded said in one line naming the key."""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from retro_search.cli import WORKFLOW_INTERNAL, main
from retro_search.evaluation.config import EvalSettings
from retro_search.sampling import SampleSettings
from retro_search.search_types import SearchConfig
from retro_search.sft.config import SFTSettings
from workflow_helpers import BIN

HUB_ID = "retro-search-tests/no-such-model"  # never on the hub cache of a test machine


def help_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def shown(argv, capsys) -> list[dict]:
    """`config show` output as YAML documents, with the comment heading each."""
    assert main(argv) == 0
    out = capsys.readouterr().out
    return [{"heading": doc.splitlines()[0], **yaml.safe_load(doc)} for doc in out.split("---\n")]


# --- --version -----------------------------------------------------------------------------

def test_version_prints_the_installed_version_and_the_checkout_commit(capsys):
    out = help_of(["--version"], capsys)
    assert out.startswith(f"retro-search {metadata.version('retro-search')}")
    assert "(git " in out  # the tests run from a checkout


# --- config show ---------------------------------------------------------------------------

def test_config_show_prints_the_demo_experiment_resolved(capsys):
    [cfg] = shown(["config", "show"], capsys)
    assert cfg["heading"] == "# experiment demo"
    assert cfg["model"]["path"] == "reasoner"
    assert cfg["search"]["max_tokens"] == 256
    assert cfg["search"]["gamma"] == SearchConfig().gamma  # a schema default, filled in
    assert cfg["pipeline"]["num_shards"] == 2


def test_config_show_applies_overrides(capsys):
    [cfg] = shown(["config", "show", "search.rollouts=3", "pipeline.num_shards=4"], capsys)
    assert cfg["search"]["rollouts"] == 3
    assert cfg["pipeline"]["num_shards"] == 4


def test_config_show_of_a_stage_is_the_config_yaml_the_workflow_writes(capsys):
    [stage] = shown(["config", "show", "--stage", "search"], capsys)
    assert stage["heading"].startswith("# search: results/search/")
    assert stage["heading"].endswith("/config.yaml")
    assert stage["search"]["max_tokens"] == 256
    assert stage["num_shards"] == 2
    assert stage["model"]["path"].startswith("results/sft/reasoner-")  # resolved to its stage
    assert "sft" not in stage  # only what makes the stage's output

    [changed] = shown(["config", "show", "--stage", "search", "search.gamma=0.8"], capsys)
    assert changed["search"]["gamma"] == 0.8
    assert changed["heading"] != stage["heading"]  # another hash, another folder


def test_config_show_of_a_kind_with_several_stages_prints_each(capsys):
    stages = shown(["config", "show", "--stage", "eval"], capsys)
    assert [s["arm"] for s in stages] == ["base", "original", "retro_search"]
    [one] = shown(["config", "show", "--stage", "eval:original"], capsys)
    assert one["arm"] == "original"


@pytest.mark.parametrize("argv, says", [
    (["search.rollout=2"], "search.rollout: no such setting; did you mean search.rollouts?"),
    (["search.gamma=1.5"], "search.gamma must be strictly between 0 and 1"),
    (["--experiment", "dmeo"], "--experiment dmeo: no "),
    (["--stage", "serach"], "--stage serach: experiment demo has no such stage"),
])
def test_config_show_refuses_a_bad_value_in_one_line(argv, says, capsys):
    assert main(["config", "show", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("retro-search config: error: ") and says in line


# --- help ------------------------------------------------------------------------------------

def listed_commands(text: str) -> list[str]:
    """The subcommands of the main help's list (indented names under COMMAND)."""
    block = text.split("COMMAND\n", 2)[-1].split("\noptions:")[0]
    return [line.split()[0] for line in block.splitlines() if line.startswith("    ")
            and not line.startswith("      ")]


def test_main_help_lists_user_commands_but_not_workflow_internal_steps(capsys):
    commands = listed_commands(help_of(["--help"], capsys))
    assert {"search", "sample", "eval", "sft", "config", "audit"} <= set(commands)
    assert not set(WORKFLOW_INTERNAL) & set(commands)


@pytest.mark.parametrize("command", WORKFLOW_INTERNAL)
def test_workflow_internal_steps_keep_their_own_help(command, capsys):
    assert f"usage: retro-search {command}" in help_of([command, "-h"], capsys)


def test_a_workflow_internal_step_still_runs(tmp_path):
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps({**TRACE, "id": str(i)}) + "\n" for i in range(4)))
    assert main(["shard", "--input", str(traces), "--output", str(tmp_path / "s1.jsonl"),
                 "--index", "1", "--num-shards", "2"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "s1.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "3"]


@pytest.mark.parametrize("command, defaults", [
    ("search", {"search.gamma": SearchConfig().gamma, "search.rollouts": SearchConfig().rollouts,
                "grading.timeout": 10.0, "engine.name": "transformers",
                "model.path": "??? (required)"}),
    ("sample", {"sample.n": SampleSettings.__dataclass_fields__["n"].default}),
    ("eval", {"eval.n_samples": EvalSettings().n_samples, "eval.max_tokens": 32768}),
    ("sft", {"sft.learning_rate": SFTSettings().learning_rate,
             "sft.max_length": SFTSettings().max_length}),
])
def test_command_help_lists_its_settings_with_their_defaults(command, defaults, capsys):
    text = help_of([command, "--help"], capsys)
    for key, value in defaults.items():
        assert f"  {key}={value}" in text
    assert "retro_search/" not in text and "retro_search." not in text  # no package file named


def test_search_help_says_what_a_setting_is_for(capsys):
    text = help_of(["search", "--help"], capsys)
    [line] = [line for line in text.splitlines() if line.strip().startswith("search.gamma=")]
    assert "discount per step" in line


# --- a model that cannot be loaded: one line naming the key -----------------------------------

TRACE = {"id": "t0", "question": "What is 1 + 1?", "reference_answer": "2",
         "reasoning": "1 + 1 = 2. Wait, let me check: 2.", "solution": "\\boxed{2}"}


def load_commands(tmp: Path, model: str) -> dict[str, tuple[list[str], str]]:
    """command -> (argv, the key its model is named by)."""
    shard, train = tmp / "shard.jsonl", tmp / "train.jsonl"
    shard.write_text(json.dumps(TRACE) + "\n")
    train.write_text(json.dumps({"id": "t0", "prompt": "q", "completion": "a"}) + "\n")
    return {
        "search": (["search", "--input", str(shard), "--output", str(tmp / "revised.jsonl"),
                    "--no-progress", f"model.path={model}"], "model.path"),
        "eval": (["eval", "--model", model, "--output-dir", str(tmp / "eval"), "--no-progress",
                  "--benchmarks", "math500"], "--model"),
        "sft": (["sft", "--train", str(train), "--output-dir", str(tmp / "sft"),
                 f"student.path={model}"], "student.path"),
    }


@pytest.fixture(scope="module")
def load_failures(tmp_path_factory):
    """Every (command, case) run at once as its own process (each spends seconds importing
    torch; together they take the time of two or three): case -> (rc, stderr, key, model)."""
    runs = {}
    for case in ("missing folder", "hub id offline"):
        tmp = tmp_path_factory.mktemp(case.replace(" ", "-"))
        model = str(tmp / "no-such-model") if case == "missing folder" else HUB_ID
        for command, (argv, key) in load_commands(tmp, model).items():
            process = subprocess.Popen([str(BIN / "retro-search"), *argv], cwd=tmp,
                                       env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            runs[command, case] = process, key, model
    results = {}
    for name, (process, key, model) in runs.items():
        _, err = process.communicate(timeout=300)
        results[name] = process.returncode, err, key, model
    return results


@pytest.mark.parametrize("command", ["search", "eval", "sft"])
@pytest.mark.parametrize("case", ["missing folder", "hub id offline"])
def test_a_model_that_cannot_be_loaded_is_one_line_naming_the_key(command, case, load_failures):
    rc, err, key, model = load_failures[command, case]
    assert rc == 2, err
    [line] = err.splitlines()
    assert line.startswith(f"retro-search {command}: error: {key}")
    assert model in line
    if case == "missing folder":
        assert "no such local folder" in line
    else:
        assert "HF_HUB_OFFLINE=1" in line and f"hf download {HUB_ID}" in line


def test_the_key_named_is_the_one_that_failed_the_tokenizer(tiny_model_dir, tmp_path, capsys):
    """The model is there, its separate tokenizer is not: model.tokenizer is named."""
    shard = tmp_path / "shard.jsonl"
    shard.write_text(json.dumps(TRACE) + "\n")
    missing = str(tmp_path / "no-such-tokenizer")
    assert main(["search", "--input", str(shard), "--output", str(tmp_path / "out.jsonl"),
                 f"model.path={tiny_model_dir}", f"model.tokenizer={missing}"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"model.tokenizer={missing}: no such local folder" in line


def test_a_folder_without_a_model_is_named_as_such(tmp_path, capsys):
    shard, empty = tmp_path / "shard.jsonl", tmp_path / "empty"
    shard.write_text(json.dumps(TRACE) + "\n")
    empty.mkdir()
    assert main(["search", "--input", str(shard), "--output", str(tmp_path / "out.jsonl"),
                 f"model.path={empty}"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"model.path={empty}: the folder holds no model or tokenizer that loads" in line


def test_verbose_keeps_the_traceback(tmp_path):
    from retro_search.model_errors import ModelLoadError

    shard = tmp_path / "shard.jsonl"
    shard.write_text(json.dumps(TRACE) + "\n")
    with pytest.raises(ModelLoadError) as raised:
        main(["-v", "search", "--input", str(shard), "--output", str(tmp_path / "out.jsonl"),
              f"model.path={tmp_path / 'none'}"])
    assert isinstance(raised.value.__cause__, OSError)  # transformers' error, chained
