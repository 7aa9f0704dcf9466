"""Evaluation stage: sample a model on math benchmarks, grade with math-verify, report metrics.

    from retro_search.evaluation import BENCHMARKS, load_problems, EvalSettings
    from retro_search.evaluation import evaluate_benchmarks, summarize_benchmark

- `benchmarks`: the benchmark registry and `load_problems` (local copies or the hub).
- `config`: `EvalSettings` (the `eval` config section) and `load_eval_config`.
- `generate`: requests per problem x sample, sent to the engine (`engines.calls`: retries, time
  limits, failed requests), logged, graded -> rows.
- `metrics`: pass@1 with standard error, pass@k, maj@k, lengths, truncation and no-answer rates.
- `outputs`: the files an evaluation writes, and the progress files a killed call resumes from.
- `cli`: the `retro-search eval` and `eval-merge` subcommands.

Names are imported lazily, so `retro-search --help` does not load math-verify.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BENCHMARKS": "benchmarks", "Benchmark": "benchmarks", "Problem": "benchmarks",
    "get_benchmark": "benchmarks", "load_problems": "benchmarks",
    "EvalSettings": "config", "load_eval_config": "config",
    "evaluate_benchmark": "generate", "evaluate_benchmarks": "generate",
    "BenchmarkShard": "generate", "build_requests": "generate", "run_requests": "generate",
    "sample_seed": "generate", "split_solution": "generate", "COLUMNS": "generate",
    "pass_at_k": "metrics", "majority_vote": "metrics", "summarize_benchmark": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"retro_search.evaluation.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'retro_search.evaluation' has no attribute {name!r}")
