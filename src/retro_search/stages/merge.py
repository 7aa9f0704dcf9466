"""The merge stage: the revised shards and rollout logs of one search -> one revised set, its
rollout log and its statistics (`retro-search merge`).

Shards are concatenated in the order given; a trace id seen twice is an error naming both
places, since it almost always means a shard was passed twice. Traces a search lost to an engine
error (status "engine_error") are kept, counted in the summary and the statistics
(`engine_errors`) and named in a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from retro_search.stages import StageResult


def run(inputs: Sequence[str | Path], rollouts: Sequence[str | Path], output: str | Path,
        rollout_log: str | Path | None, stats_path: str | Path) -> StageResult:
    """Concatenate the revised shards `inputs` into `output` and the rollout logs `rollouts` into
    `rollout_log` (not written when None); write the search statistics to `stats_path`."""
    from retro_search.artifacts import drop_progress, read_jsonl, write_json, write_jsonl
    from retro_search.report.search_stats import merge_stats

    revised, first_seen = [], {}
    for path in inputs:
        for number, row in enumerate(read_jsonl(path), 1):
            trace_id = row.get("id")
            if trace_id is None:
                raise ValueError(f"{path}: row {number} has no 'id'")
            if trace_id in first_seen:
                raise ValueError(f"{path}: row {number}: duplicate trace id {trace_id!r}, already "
                                 f"in {first_seen[trace_id]}; was a shard passed twice?")
            first_seen[trace_id] = f"{path} (row {number})"
            revised.append(row)
    rollout_rows = [row for path in rollouts for row in read_jsonl(path)]
    stats = merge_stats(revised, rollout_rows)
    stats["inputs"] = {"revised": [str(p) for p in inputs], "rollouts": [str(p) for p in rollouts]}

    write_jsonl(output, revised)
    outputs = {"revised": Path(output), "stats": Path(stats_path)}
    if rollout_log:
        write_jsonl(rollout_log, rollout_rows)
        outputs["rollout_log"] = Path(rollout_log)
    write_json(stats_path, stats)
    for path in inputs:  # the search jobs are finished: their progress is no longer needed
        drop_progress(path)
    summary = {"traces": stats["traces"], **stats["by_status"],
               "engine_error": stats["engine_errors"]["traces"],
               "rollouts": stats["rollouts"]["tried"],
               "accepted": stats["rollouts"]["accepted"],
               "reasoning_token_change_pct": stats["reasoning_tokens"]["relative_change_pct"],
               "output": str(output), "stats": str(stats_path)}
    return StageResult(outputs=outputs, summary=summary, warnings=[f"warning: {w}" for w in stats["warnings"]])
