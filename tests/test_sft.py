"""The SFT stage: chat formatting, prompt masking, training, resume, batch sizes, over-long rows.

Training tests run a few optimizer steps of the tiny model on CPU (a few seconds each).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from retro_search.prompts import PromptFormat, load_prompt_format
from retro_search.artifacts import write_records
from retro_search.records import TraceRecord
from retro_search.sft.config import (SFTSettings, ModelSettings, gradient_accumulation_steps,
                                     load_settings)
from retro_search.sft.data import build_sft_data, sft_row

ROOT = Path(__file__).resolve().parents[1]
EOS = "<|end_of_text|>"  # the tiny tokenizer's eos


def _records(n: int = 8) -> list[TraceRecord]:
    from retro_search.tiny_model import corpus_examples

    return [TraceRecord(id=f"q{i}", question=q, reference_answer="0", reasoning=r, solution=s)
            for i, (q, r, s) in enumerate(corpus_examples(n, seed=7))]


def _settings(**changes) -> SFTSettings:
    """Tiny CPU training: 4 steps of 2 rows, a learning rate that visibly moves the weights."""
    base = SFTSettings(learning_rate=1e-3, max_steps=4, per_device_train_batch_size=2,
                       save_steps=2, save_total_limit=3, max_length=512, seed=0)
    return replace(base, **changes)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, tiny_model_dir) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = build_sft_data(_records(), load_prompt_format(tiny_model_dir), tokenizer, eos_token=EOS)
    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data.rows))
    return path


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_model_dir, train_file) -> Path:
    """4 steps straight through (shared by the training and the resume test)."""
    from retro_search.sft.train import train

    out = tmp_path_factory.mktemp("straight")
    train(train_file, out, ModelSettings(path=tiny_model_dir), _settings())
    return out


def _artifacts(run: Path) -> dict[str, bytes]:
    """The bytes of what the stage's manifest hashes: every file under model/ (by relative path)
    and train_metrics.json."""
    files = {str(path.relative_to(run)): path.read_bytes()
             for path in sorted((run / "model").rglob("*")) if path.is_file()}
    return {**files, "train_metrics.json": (run / "train_metrics.json").read_bytes()}


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


# ----------------------------------------------------------------------------- chat formatting

def test_completion_keeps_reasoning_closer_solution_and_eos(tiny_model_dir):
    record = _records(1)[0]
    row = sft_row(record, load_prompt_format(tiny_model_dir), EOS)
    assert row["completion"] == f"{record.reasoning}\n</think>\n\n{record.solution}{EOS}"
    assert row["id"] == record.id


def test_prompt_ends_with_the_opener_once_when_the_template_already_opens_it(tiny_model_dir):
    # The tiny template's generation prompt ends with "<think>\n", like R1-distill's.
    record = _records(1)[0]
    prompt = sft_row(record, load_prompt_format(tiny_model_dir), EOS)["prompt"]
    assert prompt.endswith("<|Assistant|><think>\n")
    assert prompt.count("<think>") == 1
    assert record.question in prompt


def test_prompt_gets_the_opener_when_the_template_lacks_it():
    plain = PromptFormat(render_question=lambda q: f"<|User|>{q}<|Assistant|>",
                         count_tokens=len)
    prompt = sft_row(_records(1)[0], plain, EOS)["prompt"]
    assert prompt.endswith("<|Assistant|><think>\n") and prompt.count("<think>") == 1


# ----------------------------------------------------------------------------- masking

def test_collated_batch_masks_exactly_the_prompt_tokens(tmp_path, tiny_model_dir, train_file):
    from transformers import AutoTokenizer

    from retro_search.sft.train import build_trainer

    trainer = build_trainer(train_file, tmp_path, ModelSettings(path=tiny_model_dir),
                            _settings())
    rows = [json.loads(line) for line in train_file.read_text().splitlines()[:2]]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for i, row in enumerate(rows):
        prompt = tokenizer(row["prompt"], add_special_tokens=False).input_ids
        completion = tokenizer(row["completion"], add_special_tokens=False).input_ids
        n_p, n_c = len(prompt), len(completion)
        ids, labels = batch["input_ids"][i].tolist(), batch["labels"][i].tolist()
        assert ids[:n_p + n_c] == prompt + completion
        assert ids.count(tokenizer.bos_token_id) == 1  # the template's BOS, no second one
        assert labels[:n_p] == [-100] * n_p                   # prompt: no loss
        assert labels[n_p:n_p + n_c] == completion            # completion (with eos): loss
        assert labels[n_p + n_c:] == [-100] * (len(ids) - n_p - n_c)  # padding: no loss
        assert batch["attention_mask"][i].tolist() == [1] * (n_p + n_c) + [0] * (len(ids) - n_p - n_c)
    assert (batch["attention_mask"] == 0).any()  # the batch really was padded


# ----------------------------------------------------------------------------- training

def test_training_writes_a_loadable_model_that_moved_and_the_losses(straight_run, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(straight_run / "model")
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained, initial = model.state_dict(), start.state_dict()
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)
    assert (straight_run / "model" / "tokenizer.json").is_file()

    metrics = json.loads((straight_run / "train_metrics.json").read_text())
    assert [e["step"] for e in metrics["log"]] == [1, 2, 3, 4]
    assert all(e["loss"] > 0 for e in metrics["log"])
    assert metrics["global_step"] == 4 and metrics["num_input_tokens_seen"] > 0
    assert metrics["bf16"] is False  # auto on CPU
    # The session's fields go to the job's log, not into the hashed file.
    from retro_search.sft.train import SESSION_FIELDS

    assert not set(SESSION_FIELDS) & set(metrics)
    assert not (straight_run / "model" / "training_args.bin").exists()


class _Killed(Exception):
    pass


# (where the kill comes, the checkpoint the rerun resumes from, the steps it trains)
KILLS = {"after checkpoint-2": ("on_save", 2, "checkpoint-2", [3, 4]),
         "during step 3": ("on_step_end", 3, "checkpoint-2", [3, 4]),  # step 3 was never saved
         "after the end": (None, None, "checkpoint-4", [])}


@pytest.mark.parametrize("kill", sorted(KILLS))
def test_killed_run_resumes_from_its_last_checkpoint_and_matches_a_straight_run(
        tmp_path, tiny_model_dir, train_file, straight_run, kill):
    from transformers import TrainerCallback

    from retro_search.sft.train import train

    event, at_step, resumed_from, trained = KILLS[kill]

    class Kill(TrainerCallback):  # raises like SIGKILL at that point
        def on_step_end(self, args, state, control, **kwargs):
            if event == "on_step_end" and state.global_step == at_step:
                raise _Killed

        def on_save(self, args, state, control, **kwargs):
            if event == "on_save" and state.global_step == at_step:
                raise _Killed

    class RecordSteps(TrainerCallback):
        def __init__(self):
            self.steps: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    student = ModelSettings(path=tiny_model_dir)
    if event is None:
        # Snakemake, killed before it saw the job end, deletes its outputs and runs it again.
        train(train_file, tmp_path, student, _settings())
        shutil.rmtree(tmp_path / "model")
        (tmp_path / "train_metrics.json").unlink()
    else:
        with pytest.raises(_Killed):
            train(train_file, tmp_path, student, _settings(), callbacks=[Kill()])
        assert (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
        assert not (tmp_path / "model").exists()  # a killed run leaves no final model

    recorder = RecordSteps()
    metrics = train(train_file, tmp_path, student, _settings(), callbacks=[recorder])
    assert metrics["resumed_from"] == resumed_from and metrics["session_steps"] == len(trained)
    assert recorder.steps == trained  # only the steps the killed run had not saved
    assert [e["step"] for e in metrics["log"]] == [1, 2, 3, 4]

    # Weights, optimizer, scheduler, RNG and data position all come back from the checkpoint and
    # CPU float math is deterministic for the same ops, so the result is bit-identical.
    resumed, straight = _weights(tmp_path / "model"), _weights(straight_run / "model")
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert (resumed[name] == straight[name]).all(), name
    straight_losses = json.loads((straight_run / "train_metrics.json").read_text())["log"]
    assert [e["loss"] for e in metrics["log"]] == [e["loss"] for e in straight_losses]
    # ... and so are the hashed outputs, the session's fields being only in the log.
    assert _artifacts(tmp_path) == _artifacts(straight_run)


def test_two_runs_with_the_same_seeds_write_byte_identical_model_and_metrics(
        tmp_path, tiny_model_dir, train_file):
    # The manifest hashes model/ and train_metrics.json: run times, the run folder's path (the
    # pickled training arguments) or a model card would make every run's hashes differ.
    from retro_search.sft.train import train
    from retro_search.stages import sft

    student = ModelSettings(path=tiny_model_dir)
    first, second = tmp_path / "first", tmp_path / "second"
    train(train_file, first, student, _settings())
    result = sft.run(student, _settings(), train_file, second)  # the stage, as the job runs it

    a, b = _artifacts(first), _artifacts(second)
    assert sorted(a) == sorted(b)
    assert "model/model.safetensors" in a and "model/tokenizer.json" in a
    assert [name for name in a if a[name] != b[name]] == []
    # The run-dependent fields are still in the job's log.
    assert result.summary["session_runtime_s"] > 0 and result.summary["session_steps"] == 4
    assert result.summary["resumed_from"] is None and result.summary["global_step"] == 4


def test_incomplete_checkpoint_is_skipped_and_removed(tmp_path):
    from retro_search.sft.train import last_checkpoint

    # 4: no trainer_state.json yet; 6: killed while the Trainer wrote it (created, not filled);
    # 8: cut midway
    for step, state in ((2, "{}"), (4, None), (6, ""), (8, '{"global_step": 8, "log_hi')):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert (tmp_path / "checkpoint-4").exists()
    assert last_checkpoint(tmp_path, remove_incomplete=True) == tmp_path / "checkpoint-2"
    assert not any((tmp_path / f"checkpoint-{step}").exists() for step in (4, 6, 8))


# ----------------------------------------------------------------------------- batch sizes

def test_global_batch_size_sets_gradient_accumulation():
    settings = SFTSettings(global_batch_size=128, per_device_train_batch_size=2)
    assert gradient_accumulation_steps(settings, world_size=8) == 8
    assert gradient_accumulation_steps(replace(settings, global_batch_size=96), world_size=8) == 6
    assert gradient_accumulation_steps(SFTSettings(), world_size=4) == 1  # no global size: as set


def test_global_batch_size_not_divisible_is_an_error_naming_the_keys():
    settings = SFTSettings(global_batch_size=96, per_device_train_batch_size=4)
    with pytest.raises(ValueError, match=r"sft\.global_batch_size=96 .*\(4\) x 5 process"):
        gradient_accumulation_steps(settings, world_size=5)
    with pytest.raises(ValueError, match="contradicts"):
        gradient_accumulation_steps(replace(settings, gradient_accumulation_steps=2), world_size=8)


# ----------------------------------------------------------------------------- sft-data CLI

def test_sft_data_drops_overlong_rows_into_the_side_file(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    from retro_search.cli import main

    records = _records(6)
    traces = tmp_path / "revised.jsonl"
    write_records(records, traces)
    # Revised traces carry a `search` key: it is ignored.
    rows = [dict(json.loads(line), search={"status": "revised"})
            for line in traces.read_text().splitlines()]
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = {r.id: len(tokenizer(sft_row(r, load_prompt_format(tiny_model_dir), EOS)["prompt"]
                                   + sft_row(r, load_prompt_format(tiny_model_dir), EOS)["completion"],
                                   add_special_tokens=False).input_ids) for r in records}
    limit = sorted(lengths.values())[3]  # keeps 4 rows (ties aside), drops the longer ones
    stage = tmp_path / "stage.yaml"
    stage.write_text(yaml.safe_dump({"student": {"path": tiny_model_dir},
                                     "sft": {"max_length": limit}}))
    out = tmp_path / "train.jsonl"

    assert main(["sft-data", "--input", str(traces), "--output", str(out),
                 "--config", str(stage)]) == 0

    kept = [json.loads(line) for line in out.read_text().splitlines()]
    dropped = [json.loads(line) for line in (tmp_path / "train.dropped.jsonl").read_text().splitlines()]
    assert {r["id"] for r in kept} == {i for i, n in lengths.items() if n <= limit}
    assert {r["id"] for r in dropped} == {i for i, n in lengths.items() if n > limit}
    assert dropped and all(d["tokens"] == lengths[d["id"]] > limit for d in dropped)
    assert all(f"sft.max_length={limit}" in d["reason"] for d in dropped)
    assert set(kept[0]) == {"id", "prompt", "completion"}


def test_sft_data_without_student_path_is_an_error_naming_the_key(tmp_path, capsys):
    from retro_search.cli import main

    traces = tmp_path / "traces.jsonl"
    write_records(_records(1), traces)
    assert main(["sft-data", "--input", str(traces), "--output", str(tmp_path / "t.jsonl")]) == 2
    assert "student.path" in capsys.readouterr().err


# ----------------------------------------------------------------------------- config files

def test_sft_presets_compose_over_the_schema_and_load_in_a_job(tmp_path):
    from retro_search.pipeline import compose

    for experiment, preset in (("self_improve_r1_distill_7b", "default"),
                               ("traces_demo", "demo"), ("demo", "miniature")):
        assert (ROOT / "config" / "sft" / f"{preset}.yaml").read_text().startswith(
            "# @package sft\n")
        cfg = compose(ROOT / "config", experiment)
        stage = tmp_path / f"{experiment}.yaml"
        stage.write_text(yaml.safe_dump({"student": cfg["student"], "sft": cfg["sft"]}))
        student, settings = load_settings(stage)
        assert isinstance(settings, SFTSettings) and student.path == cfg["student"]["path"]
    # the paper's values: the schema's defaults, and the 7B preset's global batch
    paper = compose(ROOT / "config", "self_improve_r1_distill_7b")["sft"]
    assert (paper["learning_rate"], paper["num_train_epochs"], paper["max_length"],
            paper["global_batch_size"]) == (1e-5, 3, 16384, 128)
    assert SFTSettings().learning_rate == 1e-5 and SFTSettings().global_batch_size is None


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    zero3 = load_config_from_file(str(ROOT / "accelerate" / "deepspeed_zero3.yaml"))
    assert zero3.deepspeed_config["zero_stage"] == 3 and zero3.mixed_precision == "bf16"
    fsdp = load_config_from_file(str(ROOT / "accelerate" / "fsdp.yaml"))
    assert fsdp.fsdp_config["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_activation_checkpointing"] is False


def test_subcommands_declare_their_inputs_and_outputs():
    from retro_search.cli import build_parser

    parser = build_parser()
    data = parser.parse_args(["sft-data", "--input", "a", "--output", "b", "sft.seed=1"])
    assert (data.input_args, data.output_args, data.overrides) == (("input",), ("output", "dropped"), ["sft.seed=1"])
    run = parser.parse_args(["sft", "--train", "a", "--output-dir", "d"])
    assert (run.input_args, run.output_args) == (("train",), ("output_dir",))


def test_processes_build_an_accelerate_launch_of_the_same_sft_without_processes():
    import sys

    from retro_search.stages.sft import accelerate_command

    command = accelerate_command(train="t.jsonl", output_dir="out", config="stage.yaml",
                                 overrides=["sft.max_steps=3"], processes=8,
                                 accelerate_config="accelerate/fsdp.yaml")
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--config_file") + 1] == "accelerate/fsdp.yaml"
    assert command[command.index("--num_processes") + 1] == "8"
    launched = command[command.index("retro_search.cli") + 1:]
    assert launched == ["sft", "--train", "t.jsonl", "--output-dir", "out", "--config",
                        "stage.yaml", "sft.max_steps=3"]  # no --processes: it trains, not relaunches


@pytest.mark.slow
def test_processes_relaunch_runs_the_training_under_accelerate(tmp_path, tiny_model_dir,
                                                               train_file):
    # Several GPUs cannot be had on CPU (accelerate's multi-CPU launch needs mpirun); a one-process
    # accelerate config still runs the whole relaunch: the launcher, the launched sft, the outputs.
    import os
    import subprocess
    import sys

    accelerate_config = tmp_path / "local.yaml"
    accelerate_config.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "NO", "use_cpu": True,
        "num_machines": 1, "num_processes": 1, "mixed_precision": "no"}))
    stage = tmp_path / "config.yaml"
    stage.write_text(yaml.safe_dump({
        "student": {"path": tiny_model_dir},
        "sft": {"learning_rate": 1e-3, "max_steps": 2, "per_device_train_batch_size": 2,
                "save_steps": 1, "max_length": 512, "accelerate_config": str(accelerate_config)}}))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "retro_search.cli", "sft", "--train", str(train_file),
         "--output-dir", str(out), "--config", str(stage), "--processes", "2"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "launching: " in done.stderr and "accelerate.commands.launch" in done.stderr
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["global_step"] == 2
    assert (out / "model" / "config.json").exists()


def test_sft_with_missing_accelerate_config_is_an_error_naming_the_key(tmp_path, train_file,
                                                                       tiny_model_dir, capsys):
    from retro_search.cli import main

    status = main(["sft", "--train", str(train_file), "--output-dir", str(tmp_path / "run"),
                   f"student.path={tiny_model_dir}", "sft.accelerate_config=nowhere.yaml",
                   "--processes", "2"])
    assert status == 2
    assert "sft.accelerate_config=nowhere.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sigkilled_sft_command_resumes_and_writes_what_a_straight_run_writes(
        tmp_path, tiny_model_dir, train_file):
    import os
    import signal
    import subprocess
    import sys
    import time

    stage = tmp_path / "config.yaml"  # long enough to be killed midway, checkpoints every 2 steps
    stage.write_text(yaml.safe_dump({
        "student": {"path": tiny_model_dir},
        "sft": {"learning_rate": 1e-3, "max_steps": 40, "per_device_train_batch_size": 2,
                "save_steps": 2, "save_total_limit": 3, "max_length": 512, "seed": 0}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def command(out):
        return [sys.executable, "-m", "retro_search.cli", "sft", "--train", str(train_file),
                "--output-dir", str(out), "--config", str(stage)]

    def finish(out):
        done = subprocess.run(command(out), capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stderr

    straight = tmp_path / "straight"
    finish(straight)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (killed / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists()
    saved = sorted(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("checkpoint-*")
                   if (p / "trainer_state.json").exists())
    assert saved and saved[-1] < 40

    log = finish(killed)
    assert f"resuming from {killed / 'checkpoints' / f'checkpoint-{saved[-1]}'}" in log
    assert _artifacts(killed) == _artifacts(straight)
