"""Experiment tracking (`tracking.report_to`): SFT's losses and eval's metrics in one run, off by
default with nothing imported, and never part of a stage's id.

TensorBoard runs for real through tensorboardX (the `tracking` extra); a tiny SFT (4 steps) and
a 2-problem eval of its model take a few seconds each on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from retro_search.cli import main
from retro_search.pipeline import build_plan
from retro_search import tracking

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"
BENCHMARKS = ROOT / "data" / "benchmarks"  # 5-problem slices shipped with the repository
EOS = "<|end_of_text|>"  # the tiny tokenizer's eos
TRACKERS = ("tensorboard", "tensorboardX", "torch.utils.tensorboard", "wandb", "mlflow")
needs_tensorboard = pytest.mark.skipif(
    not (importlib.util.find_spec("tensorboardX") or importlib.util.find_spec("tensorboard")),
    reason="neither tensorboardX nor tensorboard is installed (pip install '.[tracking]')")


def _stage(folder: Path, config: dict, runtime: dict | None = None) -> Path:
    """A stage folder as the workflow writes it: config.yaml, and runtime.yaml beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if runtime is not None:
        (folder / "runtime.yaml").write_text(yaml.safe_dump(runtime))
    return folder / "config.yaml"


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, tiny_model_dir) -> Path:
    from transformers import AutoTokenizer

    from retro_search.prompts import load_prompt_format
    from retro_search.records import TraceRecord
    from retro_search.sft.data import build_sft_data
    from retro_search.tiny_model import corpus_examples

    records = [TraceRecord(id=f"q{i}", question=q, reference_answer="0", reasoning=r,
                           solution=s) for i, (q, r, s) in enumerate(corpus_examples(8, seed=7))]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = build_sft_data(records, load_prompt_format(tiny_model_dir), tokenizer, eos_token=EOS)
    path = tmp_path_factory.mktemp("tracking") / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in data.rows))
    return path


def _sft_config(tiny_model_dir: str) -> dict:
    """4 optimizer steps of 2 rows on the tiny model (tests/test_sft.py's settings)."""
    return {"student": {"path": tiny_model_dir},
            "sft": {"learning_rate": 1e-3, "max_steps": 4, "per_device_train_batch_size": 2,
                    "save_steps": 2, "save_total_limit": 3, "max_length": 512, "seed": 0}}


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files of `folder`: tag -> [(step, value), ...].
    Event files are TFRecords (length, its CRC, an Event proto, its CRC)."""
    try:
        from tensorboardX.proto.event_pb2 import Event
    except ImportError:
        from tensorboard.compat.proto.event_pb2 import Event
    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            length, = struct.unpack("<Q", data[offset:offset + 8])
            event = Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                number = (value.simple_value if value.WhichOneof("value") == "simple_value"
                          else (list(value.tensor.float_val) or [None])[0])
                if number is not None:
                    found.setdefault(value.tag, []).append((event.step, number))
    return found


TRACKED = {"tracking": {"report_to": "tensorboard", "project": "demo", "run_name": "retro_search"}}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model_dir, train_file) -> Path:
    """The tiny SFT with tracking on TensorBoard, its stage folder as the workflow lays it."""
    if not (importlib.util.find_spec("tensorboardX") or importlib.util.find_spec("tensorboard")):
        pytest.skip("neither tensorboardX nor tensorboard is installed (pip install '.[tracking]')")
    run = tmp_path_factory.mktemp("sft") / "retro_search-tiny-0123456789"
    config = _stage(run, _sft_config(tiny_model_dir), TRACKED)
    assert main(["sft", "--train", str(train_file), "--output-dir", str(run),
                 "--config", str(config)]) == 0
    return run


@pytest.fixture(scope="module")
def untracked_run(tmp_path_factory, tiny_model_dir, train_file) -> tuple[Path, list[str]]:
    """The same SFT with tracking off, in a process of its own: its folder, and the trackers
    that process imported."""
    run = tmp_path_factory.mktemp("off") / "retro_search-tiny-0123456789"
    config = _stage(run, _sft_config(tiny_model_dir))  # no runtime.yaml: tracking off
    script = (
        "import json, sys\n"
        "from retro_search.cli import main\n"
        f"code = main(['sft', '--train', {str(train_file)!r}, '--output-dir', {str(run)!r},"
        f" '--config', {str(config)!r}])\n"
        f"print(json.dumps([code, sorted(m for m in sys.modules if m in {TRACKERS!r}"
        " or m.split('.')[0] in ('tensorboardX', 'tensorboard', 'wandb', 'mlflow'))]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    code, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0
    return run, imported


def test_sft_losses_and_eval_accuracy_land_in_one_tensorboard_run(tmp_path, tracked_run):
    run = tracked_run
    record = json.loads((run / "tracking" / "run.json").read_text())
    assert record["report_to"] == "tensorboard" and record["global_step"] == 4
    assert record["project"] == "demo" and record["run_name"] == "retro_search"
    losses = _scalars(run / "tracking")["train/loss"]
    assert [step for step, _ in losses] == [1, 2, 3, 4]
    logged = json.loads((run / "train_metrics.json").read_text())["log"]
    assert [value for _, value in losses] == pytest.approx([e["loss"] for e in logged])

    evaluation = tmp_path / "eval" / "retro_search-tiny-9876543210"
    config = _stage(evaluation, {
        "model_dir": str(run / "model"), "arm": "retro_search",
        "eval": {"benchmarks": ["amc23"], "data_dir": str(BENCHMARKS), "limit": 2,
                 "max_tokens": 8, "grading_processes": 0},
        "engine": {"name": "transformers", "device": "cpu"}}, TRACKED)
    assert main(["eval", "--config", str(config), "--output-dir", str(evaluation / "shard-0"),
                 "--no-progress"]) == 0

    metrics = json.loads((evaluation / "shard-0" / "amc23" / "metrics.json").read_text())
    scalars = _scalars(run / "tracking")  # the SFT run's folder, at its last step
    assert scalars["eval/amc23/accuracy"] == [(4, pytest.approx(metrics["accuracy"]))]
    assert scalars["eval/amc23/mean_tokens"] == [(4, pytest.approx(metrics["mean_tokens"]))]
    assert {"eval/amc23/accuracy_stderr", "eval/amc23/truncation_rate"} <= set(scalars)
    assert not (evaluation / "tracking").exists()  # the arm's run has it; no second run


def test_a_benchmark_in_shards_is_logged_once_when_eval_merge_joins_them(tmp_path, tracked_run):
    evaluation = tmp_path / "eval" / "retro_search-tiny-5555555555"
    config = _stage(evaluation, {
        "model_dir": str(tracked_run / "model"), "arm": "retro_search",
        "eval": {"benchmarks": ["aime24"], "data_dir": str(BENCHMARKS), "limit": 4,
                 "num_shards": 2, "max_tokens": 8, "grading_processes": 0},
        "engine": {"name": "transformers", "device": "cpu"}}, TRACKED)
    for shard in (0, 1):
        assert main(["eval", "--config", str(config), "--output-dir",
                     str(evaluation / f"shard-{shard}"), "--no-progress",
                     f"eval.shard={shard}"]) == 0
    assert "eval/aime24/accuracy" not in _scalars(tracked_run / "tracking")  # a shard is not it
    merged = evaluation / "aime24" / "metrics.json"
    assert main(["eval-merge", "--config", str(config),
                 "--inputs", *(str(evaluation / f"shard-{i}" / "aime24" / "generations.parquet")
                               for i in (0, 1)),
                 "--metrics", *(str(evaluation / f"shard-{i}" / "aime24" / "metrics.json")
                                for i in (0, 1)),
                 "--generations", str(evaluation / "aime24" / "generations.parquet"),
                 "--output", str(merged)]) == 0
    accuracy = json.loads(merged.read_text())["accuracy"]
    assert _scalars(tracked_run / "tracking")["eval/aime24/accuracy"] == [
        (4, pytest.approx(accuracy))]


@needs_tensorboard
def test_the_base_arm_without_an_sft_run_gets_a_run_in_its_eval_folder(tmp_path,
                                                                       tiny_model_dir):
    settings = tracking.TrackingSettings(report_to="tensorboard", run_name="base")
    metrics = {"benchmark": "amc23", "accuracy": 0.5, "accuracy_stderr": 0.1,
               "mean_tokens": 7.0, "truncation_rate": 1.0}
    folder = tracking.log_eval(settings, tiny_model_dir, tmp_path / "eval-base", [metrics])
    assert folder == tmp_path / "eval-base" / "tracking"
    assert _scalars(folder)["eval/amc23/accuracy"] == [(0, 0.5)]
    assert json.loads((folder / "run.json").read_text())["run_name"] == "base"


def test_tracking_off_imports_no_tracker_and_writes_no_folder(untracked_run):
    run, imported = untracked_run
    assert imported == []
    assert (run / "model").is_dir() and not (run / "tracking").exists()


def test_tracking_changes_none_of_the_hashed_outputs(tracked_run, untracked_run):
    untracked, _ = untracked_run
    for name in ("model/model.safetensors", "model/config.json", "train_metrics.json"):
        assert (tracked_run / name).read_bytes() == (untracked / name).read_bytes(), name
    assert sorted(p.name for p in (tracked_run / "model").iterdir()) == \
        sorted(p.name for p in (untracked / "model").iterdir())


def test_tracking_settings_change_no_stage_id_and_reach_sft_and_eval_runtime():
    plain, = build_plan(CONFIG, ["traces_demo"]).experiments
    tracked, = build_plan(CONFIG, ["traces_demo"],
                          ["tracking.report_to=wandb", "tracking.project=mine",
                           "tracking.run_name=lr"]).experiments
    assert tracked.name == plain.name
    assert {r: s.dir for r, s in tracked.stages.items()} == \
        {r: s.dir for r, s in plain.stages.items()}
    assert all("tracking" not in s.config and "tracking" not in s.runtime
               for s in plain.stages.values())
    for role, stage in tracked.stages.items():
        assert "tracking" not in stage.config
        if stage.kind in ("sft", "eval"):
            arm = role.partition(":")[2]
            assert stage.runtime["tracking"] == {"report_to": "wandb", "project": "mine",
                                                 "run_name": f"lr-{arm}"}
        else:
            assert "tracking" not in stage.runtime


def test_the_project_defaults_to_the_experiment_name():
    experiment, = build_plan(CONFIG, ["traces_demo"], ["tracking.report_to=mlflow"]).experiments
    assert experiment.stages["sft:original"].runtime["tracking"] == {
        "report_to": "mlflow", "project": experiment.name, "run_name": "original"}


def test_an_unknown_tracker_is_refused_when_the_plan_is_built():
    with pytest.raises(ValueError, match="tracking.report_to must be one of none, tensorboard"):
        build_plan(CONFIG, ["traces_demo"], ["tracking.report_to=tensorbord"])


def test_the_tracking_folder_is_not_an_artifact_the_audit_expects():
    from retro_search.provenance import NOT_ARTIFACTS

    assert tracking.FOLDER in NOT_ARTIFACTS


# ----------------------------------------------------------------------------- W&B and MLflow
# Neither is installed here: stand-ins record what the tracking code asks of them.

def _stand_in(monkeypatch, name: str):
    import importlib.machinery
    import types

    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # found by find_spec
    module.calls = []
    monkeypatch.setitem(sys.modules, name, module)
    return module


class _Run:
    def __init__(self, module, run_id):
        self.module, self.id = module, run_id
        self.info = type("Info", (), {"run_id": run_id})()
        self.summary = {}

    def log(self, values):
        self.module.calls.append(("log", values))

    def finish(self):
        self.module.calls.append(("finish",))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.module.calls.append(("end_run",))


def test_wandb_eval_resumes_the_run_the_sft_job_recorded(monkeypatch, tmp_path):
    wandb = _stand_in(monkeypatch, "wandb")

    def init(**kwargs):
        wandb.calls.append(("init", kwargs))
        return _Run(wandb, kwargs["id"] or "run-1")

    wandb.init = init
    settings = tracking.TrackingSettings(report_to="wandb", project="demo",
                                         run_name="retro_search")
    with tracking.TrainingRun(settings, tmp_path / "sft") as run:
        assert run.report_to == "wandb" and run.run_name == "retro_search"
        run.finished(4)
    assert wandb.calls[0] == ("init", {"project": "demo", "name": "retro_search", "id": None,
                                       "dir": str(tmp_path / "sft" / "tracking"),
                                       "resume": "allow"})
    assert wandb.calls[-1] == ("finish",)
    record = json.loads((tmp_path / "sft" / "tracking" / "run.json").read_text())
    assert record["run_id"] == "run-1" and record["global_step"] == 4

    wandb.calls.clear()
    metrics = {"benchmark": "amc23", "accuracy": 0.5, "accuracy_stderr": 0.1,
               "mean_tokens": 7.0, "truncation_rate": 0.0, "n": 2}
    tracking.log_eval(settings, str(tmp_path / "sft" / "model"), tmp_path / "eval", [metrics])
    assert wandb.calls[0][1]["id"] == "run-1"
    assert wandb.calls[1] == ("log", {"eval/amc23/accuracy": 0.5, "eval/amc23/accuracy_stderr":
                                      0.1, "eval/amc23/mean_tokens": 7.0,
                                      "eval/amc23/truncation_rate": 0.0})
    assert not (tmp_path / "eval" / "tracking").exists()

    wandb.calls.clear()  # a job resumed from a checkpoint continues the run; a new one does not
    with tracking.TrainingRun(settings, tmp_path / "sft", resuming=True):
        pass
    with tracking.TrainingRun(settings, tmp_path / "sft", resuming=False):
        pass
    assert [c[1]["id"] for c in wandb.calls if c[0] == "init"] == ["run-1", None]


def test_mlflow_eval_logs_into_the_run_the_sft_job_started(monkeypatch, tmp_path):
    mlflow = _stand_in(monkeypatch, "mlflow")
    mlflow.set_experiment = lambda name: mlflow.calls.append(("set_experiment", name))

    def start_run(run_id=None, run_name=None):
        mlflow.calls.append(("start_run", run_id, run_name))
        return _Run(mlflow, run_id or "mlflow-1")

    mlflow.start_run = start_run
    mlflow.end_run = lambda: mlflow.calls.append(("end_run",))
    mlflow.log_metrics = lambda values, step: mlflow.calls.append(("log_metrics", values, step))
    monkeypatch.setenv("MLFLOW_RUN_ID", "someone-elses")
    settings = tracking.TrackingSettings(report_to="mlflow", project="demo")
    with tracking.TrainingRun(settings, tmp_path / "original-x") as run:
        assert "MLFLOW_RUN_ID" not in os.environ  # TRL would start a second run
        run.finished(7)
    assert os.environ["MLFLOW_RUN_ID"] == "someone-elses"
    assert mlflow.calls == [("set_experiment", "demo"), ("start_run", None, "original-x"),
                            ("end_run",)]

    mlflow.calls.clear()
    tracking.log_eval(settings, str(tmp_path / "original-x" / "model"), tmp_path / "eval",
                      [{"benchmark": "arith", "accuracy": 1.0}])
    assert mlflow.calls == [("set_experiment", "demo"), ("start_run", "mlflow-1", None),
                            ("log_metrics", {"eval/arith/accuracy": 1.0}, 7), ("end_run",)]
