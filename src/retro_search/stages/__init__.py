"""The pipeline's stages, one module each: a function that takes the stage's resolved settings
and its explicit input and output paths, does the work, and returns what it wrote.

    task, tiny_model     the miniature task's files; a tiny local model
    sample               questions -> a model's own responses (one shard)
    prepare              raw or sampled traces -> the graded, filtered, decontaminated pool
    shard                the pool -> shard i of n
    search               one shard -> revised traces and the rollout log
    merge                the shards -> one revised set, its rollout log and statistics
    sft_data, sft        traces -> the student's training rows -> the fine-tuned student
    evaluate             a model -> generations and metrics per benchmark (one shard); merge
    summarize            metrics and search statistics -> tables, plots, summary.json

The command line (`retro_search.cli` and the `*_cli` modules) only maps flags to these calls and
prints what they return; the workflow's rules call the command line with every declared input
and output by name. Heavy imports (torch, transformers, vLLM, math-verify, pandas) happen inside
the functions, so importing a stage module is cheap.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """What a stage wrote (`outputs`, by name), counts for its log (`summary`, printed as one
    JSON line), the engine that ran (`engine`, for the manifest) and `warnings` (one line
    each, printed before the summary)."""

    outputs: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def report(self, command: str) -> int:
        """Print the warnings ("retro-search COMMAND: ...") and the summary to stderr, the
        job's log: one line to read, then one JSON line for tools. Returns 0, the command's
        exit status."""
        for line in self.warnings:
            print(f"retro-search {command}: {line}", file=sys.stderr)
        done = headline(self.summary) or "wrote " + ", ".join(
            Path(path).name for path in self.outputs.values())
        print(f"retro-search {command}: done: {done}", file=sys.stderr)
        print(json.dumps(self.summary), file=sys.stderr)
        return 0


def headline(summary: dict[str, Any], most: int = 12) -> str:
    """The summary's counts as words ("traces 12, revised 5, ..."): its top-level numbers, in
    order, at most `most`; paths and nested tables are left to the JSON line. Empty without
    numbers."""
    numbers = [(key, value) for key, value in summary.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)]
    words = [f"{key.replace('_', ' ')} {value:,}" if isinstance(value, int)
             else f"{key.replace('_', ' ')} {value:.4g}" for key, value in numbers[:most]]
    more = f" (+{len(numbers) - most} more in the JSON line)" if len(numbers) > most else ""
    return ", ".join(words) + more


class JobFailed(Exception):
    """Most of a job's work ended in engine errors (more of its traces, samples or a benchmark's
    generations than its `max_failed_share`, `runtime.EngineCallSettings.too_many_failed`): the
    job wrote no declared output, so the workflow runs it again, and kept what finished in its
    progress file, so the rerun does only the rest. Not bad input: `retro-search` prints each
    line of the message as "retro-search COMMAND: FAILED: ..." and exits with status 1."""
