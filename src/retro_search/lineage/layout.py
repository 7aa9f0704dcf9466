"""Where a results table lies: the file whose cells are read, the summary stage and experiment
folder behind it, the roles the experiment's index.json gives to stage folders, and how a path
that a manifest records opens from here.

Manifests record paths relative to the folder the workflow ran in, the parent of the results
folder; it is found from the table's own path (results/experiments/NAME/results.md or
results/summary/ID/results.md), so lineage works from any working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retro_search.artifacts import read_json

# The files report.experiment_index writes into an experiment folder, and those
# stages.summarize writes into a summary stage's (summary.json names the stage, not a table).
EXPERIMENT_FILES = ("results.md", "README.md", "index.json")
SUMMARY_FILES = ("results.md", "results.csv")


@dataclass
class Layout:
    given: Path                   # the TABLE argument
    table: Path                   # the file whose cells are read
    base: Path                    # where the manifests' relative paths start (absolute)
    root: Path                    # the results folder (absolute)
    summary: str | None           # the summary stage folder, as manifests name it
    experiment: str | None        # the experiment folder, as manifests name it
    roles: dict[str, list[str]] = field(default_factory=dict)  # abs dir -> roles
    index_dirs: dict[str, str] = field(default_factory=dict)   # role -> dir

    def path(self, name: str | Path) -> Path:
        """A path as a manifest names it -> a path that opens from here."""
        path = Path(name)
        return path if path.is_absolute() else self.base / path

    def key(self, name: str | Path) -> str:
        """One spelling per file, whether a manifest named it relatively or absolutely."""
        return os.path.normpath(self.path(name))

    def name(self, path: str | Path) -> str:
        """A path from here -> as the manifests name it (relative to the base when inside it)."""
        relative = os.path.relpath(os.path.abspath(path), self.base)
        return Path(relative).as_posix() if not relative.startswith("..") else str(path)

    def outside(self, name: str | Path) -> bool:
        return not Path(self.key(name)).is_relative_to(os.path.normpath(self.root))


def stage_id(dir_name: str) -> str:
    """results/KIND/NAME -> KIND/NAME, the id provenance.upstream_entry gives a stage."""
    path = Path(dir_name)
    return f"{path.parent.name}/{path.name}"


def _not_a_table(table: Path) -> ValueError:
    return ValueError(f"{table} is not a results table: give results/experiments/NAME/results.md "
                      "(or README.md / index.json there), or a summary stage's results.md / "
                      "results.csv (results/summary/ID/)")


def locate(given: str | Path) -> Layout:
    """The layout around an experiment's table (or index) or a summary stage's table; a path
    anywhere else is a ValueError."""
    given = Path(given)
    if not given.exists():
        raise ValueError(f"{given} does not exist")
    folder, file = (given, None) if given.is_dir() else (given.parent, given.name)
    folder = Path(os.path.abspath(folder))
    kind_dir = folder.parent
    root = kind_dir.parent
    base = root.parent
    if kind_dir.name == "experiments" and (folder / "index.json").is_file():
        if file not in (None, *EXPERIMENT_FILES):
            raise _not_a_table(given)
        index = _read_index(folder / "index.json")
        layout = Layout(given, folder / "results.md", base, root, None, None)
        layout.experiment = layout.name(folder)
        _take_roles(layout, index)
        layout.summary = layout.index_dirs.get("summary")
        if not layout.table.is_file():  # an index written without the table's copy
            if layout.summary is None:
                raise ValueError(f"{folder} has no results.md and its index.json names no "
                                 "summary stage")
            layout.table = layout.path(layout.summary) / "results.md"
        return layout
    if kind_dir.name == "summary" and file in (None, *SUMMARY_FILES, "summary.json"):
        table = folder / (file if file in SUMMARY_FILES else "results.md")
        layout = Layout(given, table, base, root, None, None)
        layout.summary = layout.name(folder)
        # Roles from an experiment whose index names this summary, when there is one.
        for index_file in sorted((root / "experiments").glob("*/index.json")):
            try:
                index = _read_index(index_file)
            except ValueError:
                continue
            if any(s.get("role") == "summary" and layout.key(s.get("dir", "")) ==
                   layout.key(layout.summary) for s in index["stages"]):
                _take_roles(layout, index)
                break
        return layout
    raise _not_a_table(given)


def _read_index(path: Path) -> dict[str, Any]:
    index = read_json(path)
    if not isinstance(index, dict) or not isinstance(index.get("stages"), list):
        raise ValueError(f"{path}: not an experiment index (no stages list)")
    return index


def _take_roles(layout: Layout, index: dict[str, Any]) -> None:
    for stage in index["stages"]:
        if "dir" in stage and "role" in stage:
            layout.roles.setdefault(layout.key(stage["dir"]), []).append(stage["role"])
            layout.index_dirs.setdefault(stage["role"], stage["dir"])
