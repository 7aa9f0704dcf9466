"""Settings of the evaluation stage: the `eval` section, and the `engine` section it runs with.

Values come from the `EvalSettings` defaults, then a config file, then `eval.KEY=VALUE` overrides
(Hydra's dotted syntax). The config file is either a stage's resolved config (with `eval:` and
`engine:` sections) or a Hydra group file such as `config/eval/default.yaml`, whose first line
`# @package eval` says that the whole file is the `eval` section.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from retro_search.evaluation.benchmarks import BENCHMARKS, INSTRUCTION_SUFFIX, MATH_BENCHMARKS
from retro_search.runtime import MAX_FAILED_SHARE, REQUEST_TIMEOUT_S, RETRIES, EngineCallSettings

__all__ = ["EvalSettings", "load_eval_config", "DEFAULT_USER_TEMPLATE"]

DEFAULT_USER_TEMPLATE = "{question}" + INSTRUCTION_SUFFIX


@dataclass
class EvalSettings:
    """The `eval` config section (ALGORITHM.md, "Evaluation").

    benchmarks: the benchmarks evaluated; one `retro-search eval` call evaluates them all with one
        engine, unless `--benchmarks` names others.
    data_dir: folder with local benchmark copies (`<name>.jsonl`); None = load from the hub.
        Relative paths are relative to the current directory.
    data_dirs: the folder of each benchmark named here, over `data_dir` (the demo's `arith`
        problems are made by the pipeline, which fills this in).
    hub_revisions: the hub commit of each benchmark named here that is read from the hub, so
        its problems cannot change under an experiment (part of the stages' keys); others are
        read at the latest commit, which the key does not see.
    limit: at most this many problems per benchmark (the first ones); None = all.
    limit_per_benchmark: the limit of each benchmark named here, over `limit` (None = all).
    n_samples: samples per problem, unless `n_samples_per_benchmark` names the benchmark.
    temperature, top_p, max_tokens, seed: decoding. Each generation's seed derives from `seed`,
        the benchmark, the problem id and the sample index.
    user_template: the user turn; "{question}" is replaced by the question (plain replacement,
        not str.format, so other braces such as "\\boxed{}" are written as they are). In the
        pipeline, None (the default of config/eval) is the student's, as it was trained.
    system_prompt: optional system turn.
    tokenizer: tokenizer for prompts and token counts; None = the evaluated model's.
    think_open, think_close: the model's reasoning opener and closer; the graded solution is the
        text after the closer (the whole text when there is none).
    ks: k values for pass@k and maj@k; values above a benchmark's n are dropped.
    grading_processes, grading_timeout: math-verify worker processes (0 = in this process) and
        seconds per answer before it counts as wrong.
    num_shards: shards of each benchmark not listed in `num_shards_per_benchmark`.
    num_shards_per_benchmark: shards of the benchmarks listed (large ones).
    shard: which shard a call evaluates: shard i of a benchmark with s shards is its problems
        i, i + s, i + 2s, ...; a call covers shard i of every benchmark with more than i shards
        (so the pipeline runs as many eval jobs per model as the largest shard count, then
        `eval-merge` per benchmark).
    chunk_size: requests per engine call of a batch engine (`generate`); the most requests in
        flight at once for a streaming engine (`generate_async`).
    retries, request_timeout_s, max_failed_share: how the job puts up with a faulty engine
        (`runtime.EngineCallSettings`, `engines.calls`): tries of a failed request after the
        first; seconds per request (null: 600 + 0.5 per token of max_tokens; 0: no limit); a
        benchmark with more of its generations failed than this share is not saved, and the
        call fails (exit status 1) keeping its progress.
    """

    benchmarks: list[str] = field(default_factory=lambda: list(MATH_BENCHMARKS))
    data_dir: str | None = None
    data_dirs: dict[str, str] = field(default_factory=dict)
    hub_revisions: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    limit_per_benchmark: dict[str, Optional[int]] = field(default_factory=dict)
    n_samples: int = 1
    n_samples_per_benchmark: dict[str, int] = field(default_factory=dict)
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 32768
    seed: int = 0
    user_template: str | None = None   # None: the pipeline fills in the student's; alone, R1's
    system_prompt: str | None = None
    tokenizer: str | None = None
    think_open: str | None = None      # None: the student's (pipeline), else "<think>\n"
    think_close: str | None = None     # None: the student's (pipeline), else "</think>"
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])
    grading_processes: int = 2
    grading_timeout: float = 10.0
    num_shards: int = 1
    shard: int = 0
    num_shards_per_benchmark: dict[str, int] = field(default_factory=dict)
    chunk_size: int = 1024
    retries: int = RETRIES
    request_timeout_s: Optional[float] = REQUEST_TIMEOUT_S
    max_failed_share: float = MAX_FAILED_SHARE

    def __post_init__(self) -> None:
        # A stage config has these from the student (pipeline.eval_section); a bare call, R1's.
        for key, default in (("user_template", DEFAULT_USER_TEMPLATE), ("think_open", "<think>\n"),
                             ("think_close", "</think>")):
            if getattr(self, key) is None:
                setattr(self, key, default)
        self.validate()

    def validate(self) -> None:
        unknown = sorted(set(self.benchmarks) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"eval.benchmarks: unknown benchmark(s) {unknown}; "
                             f"known: {sorted(BENCHMARKS)}")
        unknown = sorted(set(self.n_samples_per_benchmark) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"eval.n_samples_per_benchmark: unknown benchmark(s) {unknown}")
        for name, n in [("n_samples", self.n_samples),
                        *((f"n_samples_per_benchmark.{k}", v)
                          for k, v in self.n_samples_per_benchmark.items())]:
            if n < 1:
                raise ValueError(f"eval.{name} must be at least 1, got {n}")
        for name, limit in [("limit", self.limit),
                            *((f"limit_per_benchmark.{k}", v)
                              for k, v in self.limit_per_benchmark.items())]:
            if limit is not None and limit < 1:
                raise ValueError(f"eval.{name} must be at least 1 or null, got {limit}")
        for key in ("data_dirs", "limit_per_benchmark", "hub_revisions"):
            unknown = sorted(set(getattr(self, key)) - set(BENCHMARKS))
            if unknown:
                raise ValueError(f"eval.{key}: unknown benchmark(s) {unknown}")
        if self.temperature < 0:
            raise ValueError(f"eval.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"eval.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"eval.max_tokens must be at least 1, got {self.max_tokens}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"eval.ks must be a non-empty list of k >= 1, got {self.ks}")
        if "{question}" not in self.user_template:
            raise ValueError("eval.user_template must contain '{question}'")
        if self.grading_processes < 0 or not self.grading_timeout > 0:
            raise ValueError("eval.grading_processes must be >= 0 and eval.grading_timeout > 0")
        if self.num_shards < 1:
            raise ValueError(f"eval.num_shards must be at least 1, got {self.num_shards}")
        if self.shard < 0:
            raise ValueError(f"eval.shard must be at least 0, got {self.shard}")
        unknown = sorted(set(self.num_shards_per_benchmark) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"eval.num_shards_per_benchmark: unknown benchmark(s) {unknown}")
        for name, shards in self.num_shards_per_benchmark.items():
            if shards < 1:
                raise ValueError(f"eval.num_shards_per_benchmark.{name} must be at least 1, "
                                 f"got {shards}")
        if self.chunk_size < 1:
            raise ValueError(f"eval.chunk_size must be at least 1, got {self.chunk_size}")
        EngineCallSettings.of(self, "eval")

    def data_dir_for(self, benchmark: str) -> str | None:
        """The folder this benchmark is read from (None: the hub)."""
        return self.data_dirs.get(benchmark, self.data_dir)

    def limit_for(self, benchmark: str) -> int | None:
        return self.limit_per_benchmark.get(benchmark, self.limit)

    def samples_for(self, benchmark: str) -> int:
        """n for this benchmark."""
        return self.n_samples_per_benchmark.get(benchmark, self.n_samples)

    def shards_for(self, benchmark: str) -> int:
        """The number of shards of this benchmark (the plan's `pipeline.eval_shard_counts`
        applies the same rule to the composed config)."""
        return self.num_shards_per_benchmark.get(benchmark, self.num_shards)

    def covers(self, benchmark: str) -> bool:
        """Whether this call's shard index is one of the benchmark's shards."""
        return self.shard < self.shards_for(benchmark)

    def ks_for(self, n: int) -> list[int]:
        """The k values usable with n samples (sorted, k <= n)."""
        return sorted({k for k in self.ks if k <= n})

    def decoding(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed}


_PACKAGE_RE = re.compile(r"#\s*@package\s+(\S+)\s*")


@contextlib.contextmanager
def _as_stage_file(config_file: str | Path | None) -> Iterator[Path | None]:
    """The config file as a stage config: a Hydra group file (`# @package eval`) is nested under
    its package first (through a temporary file, so `load_section` reads it like any other). Its
    defaults list is dropped: it names the section's schema, which `load_section` starts from."""
    if config_file is None:
        yield None
        return
    path = Path(config_file)
    text = path.read_text(encoding="utf-8")
    first = text.lstrip().split("\n", 1)[0] if text.strip() else ""
    m = _PACKAGE_RE.fullmatch(first)
    if not m or m.group(1) == "_global_":
        yield path
        return
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    cfg.pop("defaults", None)
    for part in reversed(m.group(1).split(".")):
        cfg = OmegaConf.create({part: cfg})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".yaml")
    os.close(fd)
    try:
        OmegaConf.save(cfg, tmp)
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_eval_config(config_file: str | Path | None = None, overrides: Sequence[str] = ()
                     ) -> tuple[EvalSettings, dict[str, Any]]:
    """`(EvalSettings, engine section)` from a config file and `eval.*` / `engine.*` overrides.

    The engine section defaults to `{"name": "transformers"}`; its other keys are the engine's
    constructor arguments (see `retro_search.config.engine_kwargs`). Raises ValueError naming a
    bad key or an override of another section.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from retro_search.config import load_config_file, load_section

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"override {bad[0]!r} is not KEY=VALUE (e.g. eval.limit=5)")
    others = [o for o in overrides if not o.startswith(("eval.", "engine."))]
    if others:
        raise ValueError(f"override(s) {others} belong to neither the 'eval' nor the 'engine' "
                         "section (write eval.KEY=VALUE or engine.KEY=VALUE)")
    with _as_stage_file(config_file) as path:
        settings = load_section(EvalSettings, "eval", path,
                                [o for o in overrides if o.startswith("eval.")])
        try:
            engine = OmegaConf.create({"name": "transformers"})
            if path is not None:
                loaded = load_config_file(path)
                if "engine" in loaded and loaded["engine"] is not None:
                    engine = OmegaConf.merge(engine, loaded["engine"])
            engine = OmegaConf.merge(engine, OmegaConf.from_dotlist(
                [o[len("engine."):] for o in overrides if o.startswith("engine.")]))
            engine_section = OmegaConf.to_container(engine, resolve=True)
        except OmegaConfBaseException as err:
            raise ValueError(f"invalid engine config: {err}") from None
    if not engine_section.get("name"):
        raise ValueError("engine.name is required (transformers | vllm | package.module:Class)")
    if "model" in engine_section:
        raise ValueError("engine.model is set by --model in the eval stage; remove it")
    return settings, engine_section
