"""An experiment's front page, `results/experiments/NAME/`: `index.json` (which stage directory
holds each artifact), `results.md` (a copy of the summary's table, where a reader looks first;
the audit checks both) and `README.md` (both, readable), with a manifest like a stage's, whose
upstream is every stage of the index: the audit of the experiment starts there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retro_search.artifacts import write_json, write_text


def write_experiment_index(output_dir: str | Path, index: dict[str, Any] | str,
                           table: str | Path | None = None, *,
                           log: str | Path | None = None) -> list[Path]:
    """Write the index (a dict, or its JSON as the workflow's params pass it) and, with `table`
    (the summary stage's results.md), the table's copy, then the manifest; returns the files
    written (manifest aside), and lists them in `log` when given."""
    from retro_search.provenance import MANIFEST_SUFFIX, now, write_manifest

    started = now()
    if isinstance(index, str):
        index = json.loads(index)
    out = Path(output_dir)
    written = [write_json(out / "index.json", index)]
    lines = [f"# Experiment {index['experiment']}", ""]
    if table:
        text = Path(table).read_text(encoding="utf-8")
        written.append(write_text(out / "results.md", text))
        lines += ["## Results", "", f"From `{table}`.", "", text.rstrip(), ""]
    lines += ["## Stages", "", "| role | stage directory |", "|---|---|"]
    lines += [f"| {s['role']} | `{s['dir']}` |" for s in index["stages"]]
    written.append(write_text(out / "README.md", "\n".join(lines) + "\n"))
    write_manifest(out / MANIFEST_SUFFIX, stage="experiment-index", config_file=None,
                   inputs=[table] if table else [], outputs=written,
                   upstream=[s["dir"] for s in index["stages"]], started=started,
                   command=["snakemake rule experiment_index"])
    if log:
        write_text(log, "".join(f"{path}\n" for path in written))
    return written
