"""Experiment tracking: SFT's losses and eval's metrics in one TensorBoard, W&B or MLflow run.

Off by default (`tracking.report_to: none`), and then this module imports no tracker and starts
no run (TRL itself imports wandb, where it is installed, whatever report_to says). The
`tracking` section is a runtime setting (`runtime.py`): the plan puts it in the `runtime.yaml` of
each sft and eval stage, so turning it on or renaming a run reruns nothing and changes no stage id.

A tracked SFT run keeps, in its stage folder (never a hashed output; `provenance.NOT_ARTIFACTS`):

    DIR/tracking/run.json      tracker, project, run name, run id (wandb, mlflow), the TensorBoard
                               log dir and the last training step
    DIR/tracking/events.*      TensorBoard's event files (report_to tensorboard)
    DIR/tracking/wandb/        W&B's run folders, one per session (offline-run-*-<id>: a resumed
                               job or an eval continues the run in a folder of its own)

Training logs through TRL/transformers' own `report_to`. Eval then logs each benchmark's accuracy,
its standard error, mean tokens and truncation rate (`eval/<benchmark>/<metric>`, at the last
training step) into the same run: it finds run.json beside the evaluated model (`DIR/model`). The
base arm, which has no SFT run, gets a run of its own in the eval stage's folder (`tracking/`).
W&B needs `wandb login`, or WANDB_MODE=offline (then `wandb sync DIR/tracking/wandb/offline-run-*`
uploads the sessions). MLflow logs to MLFLOW_TRACKING_URI, by default MLflow's own
sqlite:///mlflow.db in the working directory (a SQL store: sqlalchemy and alembic, which
mlflow-skinny leaves out; the `tracking` extra has them).
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
FOLDER = "tracking"       # in the SFT (or base arm's eval) stage folder
RUN_FILE = "run.json"     # FOLDER/RUN_FILE: how eval finds the run
DEFAULT_PROJECT = "retro-search"  # outside the workflow, where no experiment names it
# What eval logs of each benchmark's metrics.json.
EVAL_METRICS = ("accuracy", "accuracy_stderr", "mean_tokens", "truncation_rate")
PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",),
            "mlflow": ("mlflow",)}


@dataclass
class TrackingSettings:
    """The `tracking` section (runtime: never part of a stage's key)."""

    report_to: str = "none"          # none | tensorboard | wandb | mlflow
    project: Optional[str] = None    # W&B project / MLflow experiment; null: the experiment's name
    # run_name: NAME-<arm>, so that the arms' runs stay apart (reasoner: the demo's model)
    run_name: Optional[str] = None   # null: the arm (base, original, retro_search)

    def name_for(self, arm: str) -> str:
        """The run name of one arm's runs."""
        return f"{self.run_name}-{arm}" if self.run_name else arm

    def __post_init__(self) -> None:
        if self.report_to not in REPORT_TO:
            raise ValueError(f"tracking.report_to must be one of {', '.join(REPORT_TO)}, "
                             f"got {self.report_to!r}")

    @property
    def enabled(self) -> bool:
        return self.report_to != "none"


def stage_section(cfg: Mapping[str, Any], experiment: str, arm: str) -> dict[str, Any] | None:
    """The `tracking` runtime section of one sft or eval stage of an experiment (project and run
    name filled in), or None when tracking is off (runtime.yaml then has no such section)."""
    from retro_search.config import check_section

    settings = check_section(TrackingSettings, "tracking", cfg.get("tracking") or {})
    if not settings.enabled:
        return None
    return {"report_to": settings.report_to, "project": settings.project or experiment,
            "run_name": settings.name_for(arm)}


def load(config_file: str | Path | None = None, overrides: Sequence[str] = ()
         ) -> TrackingSettings:
    """The `tracking` section of a stage config (runtime.yaml beside it included) with
    `tracking.*` overrides; the defaults (off) when it has none."""
    from retro_search.config import load_section

    return load_section(TrackingSettings, "tracking", config_file,
                        [o for o in overrides if o.startswith("tracking.")])


def _require(report_to: str) -> None:
    if not any(importlib.util.find_spec(name) for name in PACKAGES[report_to]):
        raise ValueError(f"tracking.report_to={report_to}: {' or '.join(PACKAGES[report_to])} is "
                         "not installed (pip install 'retro-search[tracking]')")


def _read_run(folder: Path) -> dict[str, Any]:
    from retro_search.artifacts import read_json

    path = folder / RUN_FILE
    return read_json(path) if path.is_file() else {}


@contextmanager
def _environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Environment variables set (None: removed) for the block, as they were afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class TrainingRun:
    """The tracked run of one SFT job, around building the trainer and training:

        with TrainingRun(settings, DIR, resuming=..., main_process=...) as run:
            trainer = ...(report_to=run.report_to, run_name=run.run_name); trainer.train()
            run.finished(trainer.state.global_step)

    W&B and MLflow runs are started here (TRL's callbacks then log into them) so that their id
    can be written to DIR/tracking/run.json; a job that resumes from a checkpoint continues the
    recorded run, one that starts from scratch starts a new one."""

    def __init__(self, settings: TrackingSettings | None, run_dir: str | Path, *,
                 resuming: bool = False, main_process: bool = True) -> None:
        self.settings = settings or TrackingSettings()
        self.folder = Path(run_dir) / FOLDER
        self.resuming, self.main_process = resuming, main_process
        # the workflow's runtime.yaml has the arm's name; a bare `sft` call, its folder's
        self.run_name = self.settings.run_name or Path(run_dir).name
        self.project = self.settings.project or DEFAULT_PROJECT
        self.record: dict[str, Any] = {}
        self._handle: Any = None
        self._env: Any = None

    @property
    def report_to(self) -> str:
        return self.settings.report_to

    def __enter__(self) -> "TrainingRun":
        if not self.settings.enabled:
            return self
        _require(self.report_to)
        self.folder.mkdir(parents=True, exist_ok=True)
        previous = _read_run(self.folder) if self.resuming else {}
        run_id = previous.get("run_id") if previous.get("report_to") == self.report_to else None
        env: dict[str, str | None] = {}
        if self.report_to == "tensorboard":
            env["TENSORBOARD_LOGGING_DIR"] = str(self.folder)
        elif self.report_to == "mlflow":
            env["MLFLOW_RUN_ID"] = None  # TRL would start a run of its own instead of ours
        self._env = _environment(env)
        self._env.__enter__()
        try:
            if self.main_process:
                run_id = self._start(run_id)
                self.record = {"report_to": self.report_to, "project": self.project,
                               "run_name": self.run_name, "run_id": run_id,
                               "log_dir": str(self.folder.resolve()), "global_step": None}
                self._write()
        except BaseException:  # no __exit__ follows a failed __enter__: restore the environment
            self._env.__exit__(None, None, None)
            raise
        return self

    def _start(self, run_id: str | None) -> str | None:
        if self.report_to == "wandb":
            import wandb

            self._handle = wandb.init(project=self.project, name=self.run_name, id=run_id,
                                      dir=str(self.folder), resume="allow")
            return self._handle.id
        if self.report_to == "mlflow":
            import mlflow

            mlflow.set_experiment(self.project)
            self._handle = mlflow.start_run(run_id=run_id,
                                            run_name=None if run_id else self.run_name)
            return self._handle.info.run_id
        return None  # TensorBoard: the log dir is the run

    def finished(self, global_step: int) -> None:
        """The step eval's metrics are logged at."""
        if self.settings.enabled and self.main_process:
            self.record["global_step"] = global_step
            self._write()

    def _write(self) -> None:
        from retro_search.artifacts import write_json

        write_json(self.folder / RUN_FILE, self.record)

    def __exit__(self, *exc: Any) -> None:
        failed = exc[0] is not None  # a job that raised: the run shows it failed, not finished
        try:
            if self._handle is not None and self.report_to == "wandb":
                self._handle.finish(exit_code=1 if failed else 0)
            elif self._handle is not None and self.report_to == "mlflow":
                import mlflow

                mlflow.end_run("FAILED" if failed else "FINISHED")
        finally:
            if self._env is not None:
                self._env.__exit__(*exc)


def eval_run_folder(model: str, stage_dir: str | Path) -> Path:
    """Where eval logs: the tracking folder of the SFT run that wrote `model` (DIR/model), or
    for a model no tracked SFT run wrote (the base arm) the eval stage's own."""
    beside = Path(model).parent / FOLDER
    return beside if (beside / RUN_FILE).is_file() else Path(stage_dir) / FOLDER


def log_eval(settings: TrackingSettings | None, model: str, stage_dir: str | Path,
             metrics: Sequence[Mapping[str, Any]]) -> Path | None:
    """Log each benchmark's EVAL_METRICS (`metrics`: metrics.json contents) into the run of
    `model` (see `eval_run_folder`); returns the tracking folder, or None when tracking is off or
    there is nothing to log."""
    settings = settings or TrackingSettings()
    if not settings.enabled or not metrics:
        return None
    _require(settings.report_to)
    folder = eval_run_folder(model, stage_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = _read_run(folder)
    if record.get("report_to") not in (None, settings.report_to):
        record = {}  # tracked with another tracker: a run of this one
    step = record.get("global_step") or 0
    values = {f"eval/{m['benchmark']}/{key}": float(m[key])
              for m in metrics for key in EVAL_METRICS if m.get(key) is not None}
    project = record.get("project") or settings.project or DEFAULT_PROJECT
    name = record.get("run_name") or settings.run_name or Path(stage_dir).name
    run_id = record.get("run_id")
    if settings.report_to == "tensorboard":
        writer = _summary_writer(folder)
        try:
            for tag, value in values.items():
                writer.add_scalar(tag, value, step)
        finally:
            writer.close()
    elif settings.report_to == "wandb":
        import wandb

        run = wandb.init(project=project, name=name, id=run_id, dir=str(folder), resume="allow")
        run_id = run.id
        # W&B counts its own _step per session (from 0 again in this one): the training step is
        # what the x-axis reads, as TRL's callback defines it for the losses
        run.define_metric("train/global_step")
        run.define_metric("eval/*", step_metric="train/global_step")
        run.log({**values, "train/global_step": step})
        run.finish()
    else:
        import mlflow

        mlflow.set_experiment(project)
        # start_run(run_id=None) would continue MLFLOW_RUN_ID's run instead of starting ours
        with _environment({"MLFLOW_RUN_ID": None}), \
                mlflow.start_run(run_id=run_id, run_name=None if run_id else name) as run:
            run_id = run.info.run_id
            mlflow.log_metrics(values, step=step)
    if not record:
        from retro_search.artifacts import write_json

        write_json(folder / RUN_FILE, {"report_to": settings.report_to, "project": project,
                                       "run_name": name, "run_id": run_id,
                                       "log_dir": str(folder.resolve()), "global_step": None})
    return folder


def _summary_writer(log_dir: Path):
    """TensorBoard's writer, as TRL picks it: torch's (needs `tensorboard`), else tensorboardX's."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        from tensorboardX import SummaryWriter
    return SummaryWriter(log_dir=str(log_dir))
