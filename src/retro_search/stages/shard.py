"""The shard stage: shard i of n of the prepared pool, round robin (traces i, i + n, i + 2n, ...),
so a pool sorted by source or length still gives shards of similar cost. The pool is read as
trace records (`artifacts.read_records`), so a damaged or bad record (a blank field, a reference
the grader cannot read, a repeated id) stops the stage, naming its line, before any shard is
written."""

from __future__ import annotations

from pathlib import Path

from retro_search.stages import StageResult


def run(input_path: str | Path, output: str | Path, index: int, num_shards: int) -> StageResult:
    from retro_search.artifacts import read_records, write_records

    if not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer of at least 1, got {num_shards!r}")
    if not 0 <= index < num_shards:
        raise ValueError(f"--index must be in 0..{num_shards - 1}, got {index}")
    records = read_records(input_path)
    shard = records[index::num_shards]
    write_records(shard, output)
    return StageResult(outputs={"shard": Path(output)},
                       summary={"shard": index, "num_shards": num_shards, "traces": len(shard),
                                "of": len(records), "output": str(output)})
