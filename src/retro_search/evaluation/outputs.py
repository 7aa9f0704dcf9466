"""The files `retro-search eval` writes, and the progress folder a killed call resumes from.

One call with `--output-dir OUT` writes, for every benchmark it evaluates,

    OUT/<benchmark>/generations.parquet   one row per generation (`artifacts.GENERATION_COLUMNS`)
    OUT/<benchmark>/metrics.json          the benchmark's metrics and the settings behind them

each file atomically (a temp file beside it, then a rename).

While the call runs, each benchmark is saved as soon as it is graded, into the hidden folder
`.<OUT's name>.progress/` beside OUT, as `<benchmark>-<key>/` with the same two files. The key
covers everything those outputs depend on (`EvalProgress.entry`), so a restarted call skips the
benchmarks a killed one finished, and a call with other settings never takes them. Once every
benchmark is saved, the files move into OUT (one rename each) and the progress folder goes.
Finished work waits outside OUT because Snakemake deletes a job's declared outputs before it
reruns the job: written straight into OUT, it would not survive the kill it is meant for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

from retro_search.artifacts import write_generations, write_json
from retro_search.evaluation.config import EvalSettings
from retro_search.evaluation.generate import BenchmarkShard

__all__ = ["GENERATIONS", "METRICS", "EvalProgress", "eval_context"]

GENERATIONS = "generations.parquet"
METRICS = "metrics.json"


def _model_files(model: str) -> list[tuple[str, int, int]] | None:
    """(relative path, bytes, mtime in ns) of each file of a local model; None for a hub id.
    Sizes and times, not hashes: reading tens of GB of weights at every restart costs more than
    the benchmarks it would save, and a retrained model in the same folder changes both."""
    path = Path(model)
    if not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(str(f.relative_to(path)) if path.is_dir() else f.name, f.stat().st_size,
             f.stat().st_mtime_ns) for f in files]


def eval_context(model: str, settings: EvalSettings, engine: dict[str, Any]) -> dict[str, Any]:
    """What every benchmark's outputs of one call depend on besides its own problems: the model
    (and its files), the eval settings except the benchmark list, and the engine section."""
    section = dataclasses.asdict(settings)
    section.pop("benchmarks")  # a benchmark's outputs do not depend on which others a call has
    return {"model": model, "model_files": _model_files(model), "eval": section,
            "engine": engine}


class EvalProgress:
    """The benchmarks one call has finished, kept beside `output_dir` until all are done."""

    def __init__(self, output_dir: str | Path, context: dict[str, Any]):
        self.output_dir = Path(output_dir)
        self.dir = self.output_dir.parent / f".{self.output_dir.name}.progress"
        self.context = context

    def entry(self, shard: BenchmarkShard) -> Path:
        """The folder of one benchmark's finished outputs, named by the benchmark and a key over
        the call's context, the benchmark, its prompt (chat template and user template) and
        its problems (ids, questions, golds)."""
        payload = {**self.context, "benchmark": shard.benchmark,
                   "prompt": shard.render_prompt("{question}"),
                   "problems": [[p.id, p.question, p.gold] for p in shard.problems]}
        key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode())
        return self.dir / f"{shard.benchmark}-{key.hexdigest()[:12]}"

    def finished(self, shard: BenchmarkShard) -> bool:
        entry = self.entry(shard)
        return (entry / GENERATIONS).is_file() and (entry / METRICS).is_file()

    def save(self, shard: BenchmarkShard, rows: list[dict[str, Any]],
             metrics: dict[str, Any]) -> None:
        """Write one benchmark's outputs into its entry; metrics.json last, so an entry with
        both files is complete."""
        entry = self.entry(shard)
        write_generations(entry / GENERATIONS, rows)
        write_json(entry / METRICS, metrics)

    def promote(self, shards: Sequence[BenchmarkShard]) -> list[Path]:
        """Move every shard's finished outputs to `output_dir/<benchmark>/` and remove the
        progress folder; returns the files written. Raises FileNotFoundError naming a shard
        that is not finished."""
        entries = [(shard, self.entry(shard)) for shard in shards]
        for shard, entry in entries:
            if not self.finished(shard):
                raise FileNotFoundError(f"{shard.benchmark}: no finished outputs in {entry}")
        written = []
        for shard, entry in entries:
            folder = self.output_dir / shard.benchmark
            folder.mkdir(parents=True, exist_ok=True)
            for name in (GENERATIONS, METRICS):
                os.replace(entry / name, folder / name)
                written.append(folder / name)
        shutil.rmtree(self.dir, ignore_errors=True)
        return written
