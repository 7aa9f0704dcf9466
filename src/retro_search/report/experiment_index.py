"""An experiment's front page, `results/experiments/NAME/`: `index.json` (which stage directory
holds each artifact), `config.yaml` (the experiment's resolved config without its runtime
settings: what `retro-search compare` reads the swept values from), `results.md` (a copy of the
summary's table, where a reader looks first; the audit checks both) and `README.md` (the table,
the figures, links to the search statistics, the table's CSV and HTML pages and the config, and
the stages), with a manifest like a stage's, whose upstream is every stage of the index: the audit
of the experiment starts there."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from retro_search.artifacts import write_json, write_text

# What the summary stage writes beside its results.md, as the README shows it: figures inline,
# the rest as links; a file the summary lacks (no search statistics) is left out.
FIGURES = (("accuracy_vs_length.png", "Accuracy vs response length"),
           ("trace_lengths.png", "Reasoning lengths before and after Retro-Search"),
           ("boundary_acceptance.png", "Acceptance of rollouts by boundary"))
LINKED = (("results.html", "results table as a web page (HTML)"),
          ("results.csv", "results table, full precision (CSV)"),
          ("search_stats.md", "search statistics"),
          ("search_stats.html", "search statistics as a web page (HTML)"),
          ("summary.json", "summary: metrics read, table and search statistics (JSON)"))
CONFIG_FILE = "config.yaml"


def experiment_config(config: dict[str, Any]) -> dict[str, Any]:
    """The composed experiment config without its runtime settings (`runtime.split_runtime`,
    `resources`, the reasoner's SFT runtime keys): the workflow passes it as a rule parameter,
    and a changed runtime setting must rerun nothing, this page included."""
    from retro_search.runtime import split_runtime

    hashed, _ = split_runtime(config)
    hashed.pop("resources", None)
    reasoner = hashed.get("reasoner")
    if isinstance(reasoner, dict) and isinstance(reasoner.get("sft"), dict):
        hashed["reasoner"] = {**reasoner, "sft": split_runtime({"sft": reasoner["sft"]})[0]["sft"]}
    return copy.deepcopy(hashed)


def _link(target: Path, start: Path) -> str:
    return Path(os.path.relpath(target, start)).as_posix()


def _files_section(summary_dir: Path, out: Path, config_written: bool) -> list[str]:
    lines = []
    figures = [(name, title) for name, title in FIGURES if (summary_dir / name).is_file()]
    if figures:
        lines += ["## Figures", ""]
        for name, title in figures:
            lines += [f"### {title}", "", f"![{title}]({_link(summary_dir / name, out)})", ""]
    links = [f"- [{title}]({_link(summary_dir / name, out)})" for name, title in LINKED
             if (summary_dir / name).is_file()]
    if config_written:
        links.append(f"- [resolved config]({CONFIG_FILE}) (runtime settings aside; each stage's "
                     "own config.yaml and runtime.yaml are in its folder)")
    if links:
        lines += ["## Files", "", *links, ""]
    return lines


def write_experiment_index(output_dir: str | Path, index: dict[str, Any] | str,
                           table: str | Path | None = None, *,
                           config: dict[str, Any] | str | None = None,
                           log: str | Path | None = None) -> list[Path]:
    """Write the index (a dict, or its JSON as the workflow's params pass it), with `config`
    (`experiment_config`'s dict or its JSON) the resolved config, and, with `table` (the summary
    stage's results.md), the table's copy; then the README and the manifest. Returns the files
    written (manifest aside), and lists them in `log` when given."""
    from retro_search.provenance import MANIFEST_SUFFIX, now, write_manifest

    started = now()
    if isinstance(index, str):
        index = json.loads(index)
    if isinstance(config, str):
        config = json.loads(config)
    out = Path(output_dir)
    written = [write_json(out / "index.json", index)]
    if config is not None:
        import yaml

        written.append(write_text(out / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False)))
    lines = [f"# Experiment {index['experiment']}", ""]
    if table:
        text = Path(table).read_text(encoding="utf-8")
        written.append(write_text(out / "results.md", text))
        lines += ["## Results", "", f"From `{table}`.", "", text.rstrip(), ""]
    lines += _files_section(Path(table).parent if table else out, out, config is not None)
    lines += ["## Stages", "", "| role | stage directory |", "|---|---|"]
    root = out / ".." / ".." / ".."  # the index names stage folders from results/'s parent
    lines += [f"| {s['role']} | [`{s['dir']}`]({_link(root / s['dir'], out)}) |"
              for s in index["stages"]]
    written.append(write_text(out / "README.md", "\n".join(lines) + "\n"))
    write_manifest(out / MANIFEST_SUFFIX, stage="experiment-index", config_file=None,
                   inputs=[table] if table else [], outputs=written,
                   upstream=[s["dir"] for s in index["stages"]], started=started,
                   command=["snakemake rule experiment_index"])
    if log:
        write_text(log, "".join(f"{path}\n" for path in written))
    return written
