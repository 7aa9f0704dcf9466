"""The files `retro-search eval` writes, and the progress files a killed call resumes from.

One call with `--output-dir OUT` writes, for every benchmark it evaluates,

    OUT/<benchmark>/generations.parquet   one row per generation (`artifacts.GENERATION_COLUMNS`)
    OUT/<benchmark>/metrics.json          the benchmark's metrics and the settings behind them

each file atomically (a temp file beside it, then a rename).

While the call runs, its work waits in the hidden folder `.<OUT's name>.progress/` beside OUT:

- `<benchmark>-<key>.generations.jsonl` (`GenerationLog`): each generation, appended (and
  fsynced) as soon as the engine returns it, one JSON object a line (`log_record`). The key
  (`generation_key`) covers what a generation depends on: the model (and its files), its
  revision, the engine section without its runtime keys (`runtime.RUNTIME_KEYS`), the decoding
  settings (temperature, top_p, max_tokens, seed), the benchmark and its prompt template; each
  line also carries its request's seed and a hash of its prompt. A restarted call requests only
  the generations not found there; other settings find another file and start afresh. A torn last
  line (the process died while writing it) is ignored and cut off before the next append. Failed
  generations are not written: a rerun tries them again.
- `<benchmark>-<key>/` (`EvalProgress.entry`): the benchmark's two output files, saved as soon as
  it is graded. This key covers everything those outputs depend on, so a restarted call skips the
  benchmarks a killed one finished.

Once every benchmark is saved, the files are linked into OUT (a hard link, then a rename: no
copy). Finished work waits outside OUT because Snakemake deletes a job's declared outputs before it
reruns the job: written straight into OUT, it would not survive the kill it is meant for. The
progress folder outlives the call until eval-merge reads the shard (`artifacts.drop_progress`):
a Snakemake killed while the call ran deletes OUT and runs it again, and the rerun links the
same files again without generating anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from retro_search.artifacts import write_generations, write_json
from retro_search.engines.base import GenerationRequest, GenerationResult
from retro_search.evaluation.config import EvalSettings

if TYPE_CHECKING:
    from retro_search.evaluation.generate import BenchmarkShard

__all__ = ["GENERATIONS", "METRICS", "EvalProgress", "GenerationLog", "eval_context",
           "generation_key", "log_record", "prompt_hash"]

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
    (and its files), the eval settings except the benchmark list and the engine-call keys, and
    the engine section."""
    from retro_search.runtime import ENGINE_CALL_KEYS

    section = dataclasses.asdict(settings)
    section.pop("benchmarks")  # a benchmark's outputs do not depend on which others a call has
    for key in ENGINE_CALL_KEYS:  # nor on how the engine's faults were put up with
        section.pop(key)
    return {"model": model, "model_files": _model_files(model), "eval": section,
            "engine": engine}


def generation_key(context: dict[str, Any], shard: BenchmarkShard) -> str:
    """The key of one benchmark's generation log: a hash over what a generation depends on (see
    the module docstring), not over what only grading, metrics or the run's speed depend on."""
    from retro_search.runtime import split_runtime

    decoding = context.get("eval") or {}
    engine, _ = split_runtime({"engine": context.get("engine") or {}})
    payload = {"model": context.get("model"), "model_files": context.get("model_files"),
               "revision": context.get("revision"), "engine": engine["engine"],
               "decoding": {k: decoding.get(k) for k in ("temperature", "top_p", "max_tokens",
                                                         "seed")},
               "benchmark": shard.benchmark, "prompt": shard.render_prompt("{question}")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def log_record(request: GenerationRequest, result: GenerationResult) -> dict[str, Any]:
    """One line of a generation log."""
    return {"id": request.request_id, "seed": request.seed, "prompt": prompt_hash(request.prompt),
            "text": result.text, "num_tokens": int(result.num_tokens),
            "finish_reason": result.finish_reason, "stop_string": result.stop_string}


def _result_of(record: Any) -> GenerationResult | None:
    """The result a log line holds, or None for a line that is not one."""
    if not isinstance(record, dict):
        return None
    rid, text, tokens = record.get("id"), record.get("text"), record.get("num_tokens")
    finish, stop = record.get("finish_reason"), record.get("stop_string")
    if not isinstance(rid, str) or not isinstance(text, str) or isinstance(tokens, bool) \
            or not isinstance(tokens, int) or tokens < 0 or finish not in ("stop", "length") \
            or not (stop is None or isinstance(stop, str)):
        return None
    return GenerationResult(rid, text, tokens, finish, stop)


class GenerationLog:
    """The finished generations of one benchmark: a JSON-lines file appended as they come."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = None
        self.resumed = 0  # generations the last `read` found

    def read(self, requests: Sequence[GenerationRequest]) -> dict[str, GenerationResult]:
        """The logged result of each of `requests` (by request id) whose line has its seed and
        prompt hash. Lines that do not parse (a torn last one) or match no request are skipped;
        a later line for the same request wins."""
        if not self.path.is_file():
            return {}
        wanted = {r.request_id: r for r in requests}
        hashes: dict[str, str] = {}
        found: dict[str, GenerationResult] = {}
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn: the process died while writing it
                try:
                    record = json.loads(raw)
                except (ValueError, RecursionError):
                    continue
                result = _result_of(record)
                request = wanted.get(result.request_id) if result else None
                if request is None or record.get("seed") != request.seed:
                    continue
                if request.request_id not in hashes:
                    hashes[request.request_id] = prompt_hash(request.prompt)
                if record.get("prompt") == hashes[request.request_id]:
                    found[request.request_id] = result
        self.resumed = len(found)
        return found

    def _open(self):
        from retro_search.artifacts import open_progress

        return open_progress(self.path, "ab")

    def append(self, pairs: Sequence[tuple[GenerationRequest, GenerationResult]]) -> None:
        """Append one line per (request, result), then flush and fsync."""
        if not pairs:
            return
        if self._fh is None:
            self._fh = self._open()
        self._fh.write(b"".join(json.dumps(log_record(request, result), ensure_ascii=False)
                                .encode("utf-8") + b"\n" for request, result in pairs))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class EvalProgress:
    """The benchmarks one call has finished, kept beside `output_dir` until all are done."""

    def __init__(self, output_dir: str | Path, context: dict[str, Any]):
        self.output_dir = Path(output_dir)
        self.dir = self.output_dir.parent / f".{self.output_dir.name}.progress"
        self.context = context
        self._logs: dict[Path, GenerationLog] = {}

    def generation_log(self, shard: BenchmarkShard) -> GenerationLog:
        """The log of one benchmark's finished generations (one object per file per call)."""
        path = self.dir / f"{shard.benchmark}-{generation_key(self.context, shard)}.generations.jsonl"
        return self._logs.setdefault(path, GenerationLog(path))

    @property
    def resumed(self) -> int:
        """The generations found in the logs, not requested again."""
        return sum(log.resumed for log in self._logs.values())

    def close(self) -> None:
        """Close the generation logs' files (they stay on disk)."""
        for generations in self._logs.values():
            generations.close()

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
        """Link every shard's finished outputs into `output_dir/<benchmark>/` (the progress
        folder keeps them); returns the files written. Raises FileNotFoundError naming a shard
        that is not finished."""
        entries = [(shard, self.entry(shard)) for shard in shards]
        for shard, entry in entries:
            if not self.finished(shard):
                raise FileNotFoundError(f"{shard.benchmark}: no finished outputs in {entry}")
        self.close()
        written = []
        for shard, entry in entries:
            folder = self.output_dir / shard.benchmark
            folder.mkdir(parents=True, exist_ok=True)
            for name in (GENERATIONS, METRICS):
                _link(entry / name, folder / name)
                written.append(folder / name)
        return written


def _link(source: Path, target: Path) -> None:
    """`target` becomes `source`'s file, atomically; a copy where hard links are not allowed."""
    temp = target.with_name(f".{target.name}.link")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:
        shutil.copy2(source, temp)
    os.replace(temp, target)
