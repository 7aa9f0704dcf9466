"""The sft stage: the student fine-tuned on sft_data's rows (`retro-search sft`, rule `sft`).

`run` trains in this process: OUTPUT_DIR/checkpoints/ (resumed from the newest complete one),
OUTPUT_DIR/model/ and OUTPUT_DIR/train_metrics.json. `launch` runs the same `sft` command once
per GPU under `accelerate launch`; each launched process re-reads the stage config and overrides
and calls `run`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from retro_search.stages import StageResult

if TYPE_CHECKING:
    from retro_search.sft.config import ModelSettings, SFTSettings
    from retro_search.tracking import TrackingSettings

# The job's log (the summary, printed to stderr): the session's fields (runtime, steps, resumed
# checkpoint), which train_metrics.json leaves out so that it is the same on every run, and a
# few of the file's.
SUMMARY_METRICS = ("resumed_from", "session_steps", "session_runtime_s", "global_step", "epoch",
                   "mean_logged_loss", "num_input_tokens_seen")


def _require_train(train: str | Path) -> None:
    if not Path(train).is_file():
        raise FileNotFoundError(f"--train {train}: no such file")


def accelerate_command(*, train: str | Path, output_dir: str | Path, accelerate_config: str,
                       processes: int, config: str | Path | None = None,
                       overrides: Sequence[str] = ()) -> list[str]:
    """The `accelerate launch` command that runs `sft` once per GPU (without --processes, so the
    launched processes train instead of launching again)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               accelerate_config, "--num_processes", str(processes),
               "-m", "retro_search.cli", "sft", "--train", str(train),
               "--output-dir", str(output_dir)]
    if config:
        command += ["--config", str(config)]
    return command + list(overrides)


def launch(settings: SFTSettings, train: str | Path, output_dir: str | Path, *, processes: int,
           config: str | Path | None = None, overrides: Sequence[str] = ()) -> int:
    """Train with `processes` processes under accelerate (sft.accelerate_config); returns the
    launcher's exit status. The launched processes get the config file and overrides rather than
    `settings`, since each resolves them itself."""
    import subprocess

    _require_train(train)
    if not Path(settings.accelerate_config).is_file():
        raise FileNotFoundError(f"sft.accelerate_config={settings.accelerate_config}: no such "
                                "file (paths are relative to where the command runs)")
    command = accelerate_command(train=train, output_dir=output_dir,
                                 accelerate_config=settings.accelerate_config,
                                 processes=processes, config=config, overrides=overrides)
    # Printed before the launch, not returned: training runs for hours and its log follows.
    print("launching: " + " ".join(command), file=sys.stderr, flush=True)
    return subprocess.run(command).returncode


def run(student: ModelSettings, settings: SFTSettings, train: str | Path,
        output_dir: str | Path, tracking: TrackingSettings | None = None) -> StageResult:
    """Fine-tune `student` on the rows of `train` in this process; with `tracking` on, its
    tracker gets the losses (OUTPUT_DIR/tracking/, not an output)."""
    from retro_search.sft.train import train as train_student

    _require_train(train)
    metrics = train_student(train, output_dir, student, settings, tracking=tracking)
    model = Path(output_dir) / "model"
    summary = {**{k: metrics[k] for k in SUMMARY_METRICS}, "model": str(model)}
    return StageResult(outputs={"model": model,
                                "metrics": Path(output_dir) / "train_metrics.json"},
                       summary=summary)
