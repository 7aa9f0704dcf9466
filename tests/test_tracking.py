"""Experiment tracking (`tracking.report_to`): SFT's losses and eval's metrics in one run, off by
default with nothing imported, and never part of a stage's id.

Every tracker runs for real, offline: TensorBoard through tensorboardX, W&B in offline mode,
MLflow against a SQLite store in the test's folder (the `tracking` extra, in the dev install: a
tracker that is missing fails its tests, none is skipped). A tiny SFT (4 steps) and a 2-problem
eval of its model take a few seconds each on CPU.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

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
    run = tmp_path_factory.mktemp("sft") / "retro_search-tiny-0123456789"
    config = _stage(run, _sft_config(tiny_model_dir), TRACKED)
    assert main(["sft", "--train", str(train_file), "--output-dir", str(run),
                 "--config", str(config)]) == 0
    return run


@pytest.fixture(scope="module")
def untracked_run(tmp_path_factory, tiny_model_dir, train_file) -> tuple[Path, list[str], bool]:
    """The same SFT with tracking off, in a process of its own: its folder, the trackers that
    process imported beyond those TRL imports by itself (wandb, where it is installed: TRL's
    trainers import it whatever report_to says), and whether a W&B run was started."""
    run = tmp_path_factory.mktemp("off") / "retro_search-tiny-0123456789"
    config = _stage(run, _sft_config(tiny_model_dir))  # no runtime.yaml: tracking off
    script = (
        "import json, sys\n"
        "def trackers():\n"
        f"    return {{m for m in sys.modules if m in {TRACKERS!r}"
        " or m.split('.')[0] in ('tensorboardX', 'tensorboard', 'wandb', 'mlflow')}\n"
        "from trl import SFTTrainer\n"
        "by_trl = trackers()\n"
        "from retro_search.cli import main\n"
        f"code = main(['sft', '--train', {str(train_file)!r}, '--output-dir', {str(run)!r},"
        f" '--config', {str(config)!r}])\n"
        "started = getattr(sys.modules.get('wandb'), 'run', None) is not None\n"
        "print(json.dumps([code, sorted(trackers() - by_trl), started]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    code, imported, started = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 0
    return run, imported, started


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
    run, imported, started = untracked_run
    assert imported == [] and not started
    assert (run / "model").is_dir() and not (run / "tracking").exists()


def test_tracking_changes_none_of_the_hashed_outputs(tracked_run, untracked_run):
    untracked, _, _ = untracked_run
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
# Both run for real and offline: W&B in offline mode (no login; its run folders in the SFT's
# tracking/wandb/, its settings, cache and logs in the test's folder), MLflow against a SQLite
# store in the test's folder. Each tiny SFT is killed after its checkpoint at step 2 and run
# again, as a preempted job is, and then its model's eval metrics are logged. A tracker that is
# not installed fails these tests: the dev install has both.

METRICS = {"benchmark": "amc23", "accuracy": 0.5, "accuracy_stderr": 0.25, "mean_tokens": 7.0,
           "truncation_rate": 0.0}


def _settings(report_to: str) -> tracking.TrackingSettings:
    return tracking.TrackingSettings(report_to=report_to, project="demo", run_name="retro_search")


class _Killed(Exception):
    pass


def _killed_resumed_and_evaluated(run: Path, model: str, train_file: Path, report_to: str,
                                  after_kill=lambda record: None) -> tuple[dict, Any]:
    """The tiny SFT in `run`, killed after its checkpoint at step 2 (a callback raises, as in
    tests/test_sft.py), run again (it resumes there), then log_eval of its model. Returns run.json
    as the killed job left it, and what `after_kill` saw of the tracker then."""
    from transformers import TrainerCallback

    from retro_search.sft.config import ModelSettings, SFTSettings
    from retro_search.sft.train import train

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise _Killed

    student, sft = ModelSettings(path=model), SFTSettings(**_sft_config(model)["sft"])
    with pytest.raises(_Killed):
        train(train_file, run, student, sft, callbacks=[Kill()], tracking=_settings(report_to))
    killed = json.loads((run / "tracking" / "run.json").read_text())
    seen = after_kill(killed)
    metrics = train(train_file, run, student, sft, tracking=_settings(report_to))
    assert metrics["resumed_from"] == "checkpoint-2"
    assert tracking.log_eval(_settings(report_to), str(run / "model"), run.parent / "eval",
                             [METRICS]) == run / "tracking"
    return killed, seen


def _losses(run: Path) -> list[tuple[int, float]]:
    """(step, loss) of every step the SFT logged (train_metrics.json)."""
    return [(e["step"], e["loss"])
            for e in json.loads((run / "train_metrics.json").read_text())["log"]]


@pytest.fixture(scope="module")
def wandb_offline(tmp_path_factory) -> Iterator[None]:
    """W&B in offline mode: no login, no network, nothing written outside the test's folders."""
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT",
                    "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_NAME"):
            patch.delenv(key, raising=False)
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            patch.setenv(key, str(home / key.lower()))
        yield


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> Iterator[str]:
    """A local MLflow store (SQLite, MLflow's default kind) in the test's folder: its URI."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
            patch.delenv(key, raising=False)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def _wandb_sessions(folder: Path) -> list[list[Any]]:
    """The records of each W&B session under `folder` (tracking/wandb/), in the order they
    started, read with wandb's own Record proto from the offline-run-*/run-<id>.wandb files.
    Their framing is LevelDB's log: a 7-byte file header (":W&B", magic, version), then 32 KiB
    blocks of chunks with a 7-byte header each (CRC, length, type: 1 full, 2 first, 3 middle,
    4 last); a block's last <7 bytes are padding."""
    from wandb.proto.wandb_internal_pb2 import Record

    sessions = []
    for path in folder.glob("offline-run-*/run-*.wandb"):
        data, offset, chunks, records = path.read_bytes(), 7, b"", []
        assert data[:4] == b":W&B", path
        while offset + 7 <= len(data):
            if 32768 - offset % 32768 < 7:
                offset += 32768 - offset % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
            chunks += data[offset + 7:offset + 7 + length]
            offset += 7 + length
            if kind in (1, 4):
                records.append(Record.FromString(chunks))
                chunks = b""
        sessions.append(records)
    return sorted(sessions, key=lambda records: _of(records, "run")[0].start_time.ToNanoseconds())


def _of(records: list[Any], kind: str) -> list[Any]:
    """The `kind` parts (run, history, exit, metric, ...) of the records of one W&B session."""
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def _rows(records: list[Any]) -> list[dict[str, Any]]:
    """The rows one W&B session logged (history records): key -> value."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
             for item in history.item} for history in _of(records, "history")]


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, tiny_model_dir, train_file, wandb_offline) -> tuple[Path, dict]:
    """The killed, resumed and evaluated SFT with report_to=wandb: its folder, the killed job's
    run.json."""
    run = tmp_path_factory.mktemp("wandb") / "retro_search-tiny-0123456789"
    killed, _ = _killed_resumed_and_evaluated(run, tiny_model_dir, train_file, "wandb")
    return run, killed


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory, tiny_model_dir, train_file, mlflow_store) -> tuple[Path, dict]:
    """The same with report_to=mlflow: its folder, the killed job's run.json with the status the
    store had then (`status`)."""
    from mlflow import MlflowClient

    def status(record):
        return MlflowClient(mlflow_store).get_run(record["run_id"]).info.status

    run = tmp_path_factory.mktemp("mlflow") / "retro_search-tiny-0123456789"
    killed, seen = _killed_resumed_and_evaluated(run, tiny_model_dir, train_file, "mlflow",
                                                 after_kill=status)
    return run, {**killed, "status": seen}


def test_wandb_run_gets_the_losses_of_a_killed_and_resumed_sft_each_once(wandb_run):
    run, killed = wandb_run
    record = json.loads((run / "tracking" / "run.json").read_text())
    assert record["report_to"] == "wandb" and record["global_step"] == 4
    assert record["run_id"] == killed["run_id"]  # the resumed job continued the recorded run
    sessions = _wandb_sessions(run / "tracking" / "wandb")
    assert len(sessions) == 3  # the killed job, the resumed one, eval
    for records in sessions:
        started, = _of(records, "run")
        assert (started.run_id, started.project, started.display_name) == \
            (record["run_id"], "demo", "retro_search")
    killed_job, resumed_job = sessions[:2]
    assert [exit.exit_code for exit in _of(killed_job, "exit")] == [1]  # it failed
    assert [exit.exit_code for exit in _of(resumed_job, "exit")] == [0]
    logged = [[(row["train/global_step"], row["train/loss"]) for row in _rows(records)
               if "train/loss" in row] for records in sessions[:2]]
    losses = _losses(run)
    assert [[step for step, _ in session] for session in logged] == [[1, 2], [3, 4]]
    assert logged[0] + logged[1] == [(step, pytest.approx(loss)) for step, loss in losses]


def test_wandb_eval_metrics_land_in_the_sft_run_at_its_last_step(wandb_run):
    run, _ = wandb_run
    evaluation = _wandb_sessions(run / "tracking" / "wandb")[-1]
    row, = [row for row in _rows(evaluation) if "eval/amc23/accuracy" in row]
    assert row["train/global_step"] == 4  # the x-axis of every eval/* chart
    assert {(m.glob_name, m.step_metric) for m in _of(evaluation, "metric")} >= \
        {("eval/*", "train/global_step")}
    assert {key: row[f"eval/amc23/{key}"] for key in tracking.EVAL_METRICS} == \
        {key: METRICS[key] for key in tracking.EVAL_METRICS}
    assert not (run.parent / "eval" / "tracking").exists()  # no second run


def test_mlflow_run_gets_the_losses_of_a_killed_and_resumed_sft_each_once(mlflow_run,
                                                                          mlflow_store):
    from mlflow import MlflowClient

    run, killed = mlflow_run
    record = json.loads((run / "tracking" / "run.json").read_text())
    assert record["report_to"] == "mlflow" and record["global_step"] == 4
    assert record["run_id"] == killed["run_id"]  # the resumed job continued the recorded run
    assert killed["status"] == "FAILED"  # what the killed job left
    client = MlflowClient(mlflow_store)
    found = client.get_run(record["run_id"])
    assert found.info.status == "FINISHED" and found.info.run_name == "retro_search"
    assert client.get_experiment(found.info.experiment_id).name == "demo"
    assert (found.data.params["learning_rate"], found.data.params["max_steps"]) == ("0.001", "4")
    history = [(m.step, m.value) for m in client.get_metric_history(record["run_id"], "loss")]
    assert sorted(history) == [(step, pytest.approx(loss)) for step, loss in _losses(run)]


def test_mlflow_eval_metrics_land_in_the_sft_run_at_its_last_step(mlflow_run, mlflow_store):
    from mlflow import MlflowClient

    run, killed = mlflow_run
    client = MlflowClient(mlflow_store)
    for key in tracking.EVAL_METRICS:
        assert [(m.step, m.value) for m in client.get_metric_history(
            killed["run_id"], f"eval/amc23/{key}")] == [(4, METRICS[key])], key
    experiment = client.get_experiment_by_name("demo")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == \
        [killed["run_id"]]  # no second run
    assert not (run.parent / "eval" / "tracking").exists()


def test_mlflow_runs_are_ours_whatever_mlflow_run_id_says(tmp_path, tiny_model_dir,
                                                          mlflow_store, monkeypatch):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_store)
    other = client.create_run(client.create_experiment("someone-else")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", other)  # MLflow (and TRL) would continue that run
    with tracking.TrainingRun(_settings("mlflow"), tmp_path / "sft") as run:
        assert "MLFLOW_RUN_ID" not in os.environ
        run.finished(4)
    tracking.log_eval(_settings("mlflow"), tiny_model_dir, tmp_path / "eval", [METRICS])
    ours = [json.loads((folder / "tracking" / "run.json").read_text())["run_id"]
            for folder in (tmp_path / "sft", tmp_path / "eval")]
    assert other not in ours and len(set(ours)) == 2
    assert client.get_run(other).data.metrics == {}
    assert os.environ["MLFLOW_RUN_ID"] == other  # as it was


def _tracked_runs(report_to: str, store: str | None, folder: Path) -> set[str]:
    """The ids of the runs the tracker has: W&B's sessions under `folder`, the MLflow store's
    runs of the experiment "demo"."""
    if report_to == "wandb":
        return {_of(records, "run")[0].run_id
                for records in _wandb_sessions(folder / "tracking" / "wandb")}
    from mlflow import MlflowClient

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("demo")
    return {r.info.run_id for r in client.search_runs([experiment.experiment_id])} \
        if experiment else set()


@pytest.fixture(params=["wandb", "mlflow"])
def tracker(request) -> tuple[str, str | None]:
    """Each of W&B and MLflow, offline: its name, and the MLflow store's URI."""
    if request.param == "wandb":
        request.getfixturevalue("wandb_offline")
        return "wandb", None
    return "mlflow", request.getfixturevalue("mlflow_store")


def test_a_job_from_scratch_starts_a_new_run_and_one_from_a_checkpoint_continues_it(
        tmp_path, tracker):
    report_to, store = tracker
    known = _tracked_runs(report_to, store, tmp_path) if report_to == "mlflow" else set()
    ids = []
    for resuming in (False, True, False):
        with tracking.TrainingRun(_settings(report_to), tmp_path, resuming=resuming) as run:
            run.finished(4)
        ids.append(json.loads((tmp_path / "tracking" / "run.json").read_text())["run_id"])
    assert ids[0] == ids[1] != ids[2]
    assert _tracked_runs(report_to, store, tmp_path) - known == {ids[0], ids[2]}


def test_the_base_arm_gets_a_wandb_or_mlflow_run_in_its_eval_folder(tmp_path, tiny_model_dir,
                                                                    tracker):
    report_to, store = tracker
    settings = tracking.TrackingSettings(report_to=report_to, project="demo", run_name="base")
    folder = tracking.log_eval(settings, tiny_model_dir, tmp_path / "eval-base", [METRICS])
    assert folder == tmp_path / "eval-base" / "tracking"
    record = json.loads((folder / "run.json").read_text())
    assert record["run_name"] == "base" and record["run_id"] in \
        _tracked_runs(report_to, store, tmp_path / "eval-base")
    if report_to == "wandb":
        rows = _rows(_wandb_sessions(folder / "wandb")[0])
        assert [(r["train/global_step"], r["eval/amc23/accuracy"]) for r in rows] == [(0, 0.5)]
    else:
        from mlflow import MlflowClient

        assert [(m.step, m.value) for m in MlflowClient(store).get_metric_history(
            record["run_id"], "eval/amc23/accuracy")] == [(0, 0.5)]
