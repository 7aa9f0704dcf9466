"""The eval stages behind a table: each arm's stage folder and, per (arm, benchmark), its
metrics.json and generations.parquet, hashed and checked against the stage's manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retro_search.artifacts import read_eval_metrics, read_json
from retro_search.lineage.chain import count_rows, load_config, manifest_entries, read_manifests
from retro_search.lineage.layout import Layout
from retro_search.pipeline import eval_benchmark_dir
from retro_search.provenance import sha256_file
from retro_search.report.tables import ORIGINAL_ARM, RETRO_ARM

# What lineage shows of a metrics.json (evaluation.metrics writes more).
METRICS_SHOWN = ("accuracy", "accuracy_stderr", "mean_tokens", "n_problems", "n_samples",
                 "n_generations", "truncation_rate")


class Evals:
    """Where each arm's eval stage and each (arm, benchmark)'s files are: from summary.json's
    metrics list (stages.summarize records each metrics file), else the index's eval roles, else
    the eval stages among the summary manifests' upstream (by their config's arm)."""

    def __init__(self, layout: Layout, summary_upstream: list[str]) -> None:
        self.layout = layout
        self.metrics_files: dict[tuple[str, str], str] = {}
        self.original_arm, self.retro_arm = ORIGINAL_ARM, RETRO_ARM
        self.dirs: dict[str, str] = {}
        summary_json = layout.path(layout.summary) / "summary.json" if layout.summary else None
        if summary_json is not None and summary_json.is_file():
            try:
                summary = read_json(summary_json)
                self.original_arm = summary.get("original_arm") or self.original_arm
                self.retro_arm = summary.get("retro_arm") or self.retro_arm
                for row in summary.get("metrics") or []:
                    if row.get("metrics_file"):
                        self.metrics_files[(row["arm"], row["benchmark"])] = row["metrics_file"]
                        self.dirs.setdefault(row["arm"], _stage_dir_of(row["metrics_file"]))
            except (ValueError, AttributeError, KeyError, TypeError):
                pass  # a damaged summary.json: the audit names it; the arms are found below
        for role, dir_name in layout.index_dirs.items():
            if role.startswith("eval:"):
                self.dirs.setdefault(role.split(":", 1)[1], dir_name)
        for up in summary_upstream:
            if Path(up).parent.name == "eval":
                config = load_config(layout.path(up) / "config.yaml") or {}
                if config.get("arm"):
                    self.dirs.setdefault(config["arm"], up)

    def source(self, arm: str, benchmark: str) -> dict[str, Any]:
        """The metrics and generations files of one (arm, benchmark), with notes on what is
        missing."""
        layout = self.layout
        entry: dict[str, Any] = {"benchmark": benchmark, "metrics": None, "generations": None,
                                 "notes": []}
        eval_dir = self.dirs.get(arm)
        metrics_name = self.metrics_files.get((arm, benchmark))
        if metrics_name is None and eval_dir is not None:
            config = load_config(layout.path(eval_dir) / "config.yaml") or {}
            try:
                metrics_name = (f"{eval_dir}/{eval_benchmark_dir(config['eval'], benchmark)}"
                                "/metrics.json")
            except (KeyError, TypeError, ValueError):
                entry["notes"].append(f"{eval_dir}/config.yaml does not list benchmark "
                                      f"{benchmark!r}")
        if metrics_name is None:
            if eval_dir is None:
                entry["notes"].append(f"no eval stage found for arm {arm!r} (summary.json, "
                                      "index.json and the summary's manifest name none)")
            return entry
        recorded = _recorded_hashes(layout, eval_dir or _stage_dir_of(metrics_name))
        metrics_path = layout.path(metrics_name)
        entry["metrics"] = _described(layout, metrics_name, recorded)
        if metrics_path.is_file():
            try:
                values = read_eval_metrics(metrics_path)
                entry["metrics"]["values"] = {k: values.get(k) for k in METRICS_SHOWN}
            except ValueError as err:
                entry["notes"].append(str(err))
        else:
            entry["notes"].append(f"missing: {metrics_name}")
        generations_name = f"{Path(metrics_name).parent.as_posix()}/generations.parquet"
        entry["generations"] = _described(layout, generations_name, recorded)
        entry["generations"].update(_generation_counts(layout.path(generations_name)))
        if not layout.path(generations_name).is_file():
            entry["notes"].append(f"missing: {generations_name}")
        return entry


def _stage_dir_of(file_name: str) -> str:
    """results/eval/ID/shard-0/arith/metrics.json -> results/eval/ID."""
    path = Path(file_name)
    for parent in path.parents:
        if parent.parent.name == "eval":
            return parent.as_posix()
    return path.parent.as_posix()


def _recorded_hashes(layout: Layout, dir_name: str) -> dict[str, tuple[str, str]]:
    """Path key -> (sha256, manifest file) of every output the stage's manifests record."""
    found = {}
    for file, manifest in read_manifests(layout.path(dir_name)):
        for entry in manifest_entries(manifest, "outputs") if manifest else []:
            found.setdefault(layout.key(entry["path"]), (entry.get("sha256"), file.name))
    return found


def _described(layout: Layout, name: str, recorded: dict[str, tuple[str, str]]) -> dict:
    path = layout.path(name)
    digest = sha256_file(path) if path.is_file() else None
    record = recorded.get(layout.key(name))
    return {"path": name, "sha256": digest,
            "recorded_in": record[1] if record else None,
            "matches_manifest": (record[0] == digest) if record and digest else None}


def _generation_counts(path: Path) -> dict[str, Any]:
    """Rows, distinct problems and samples of a generations.parquet (artifacts.
    GENERATION_COLUMNS), and whether every problem has every sample."""
    if not path.is_file():
        return {"rows": None, "problems": None, "samples": None,
                "rows_are_problems_x_samples": None}
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["problem_id", "sample"])
    except Exception:  # noqa: BLE001 - damaged or not generations: named, no traceback
        return {"rows": count_rows(path), "problems": None, "samples": None,
                "rows_are_problems_x_samples": None}
    problems = len(set(table.column("problem_id").to_pylist()))
    samples = len(set(table.column("sample").to_pylist()))
    return {"rows": table.num_rows, "problems": problems, "samples": samples,
            "rows_are_problems_x_samples": table.num_rows == problems * samples}
