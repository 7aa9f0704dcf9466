"""Verify the chain of artifacts behind a result (ARCHITECTURE.md, property 3).

`audit(target)` takes an experiment index folder (`results/experiments/<name>`, whose
`index.json` lists the stage directories), a stage directory, or a whole results folder, and checks
every manifest it reaches, following `upstream` links:

- **missing**: a stage directory, manifest or recorded output file is gone;
- **modified**: an output's (or a recorded input's) sha256 differs from the manifest, i.e. it was
  changed after it was made;
- **different code**: the manifest's code version (git commit, plus the hash of uncommitted
  changes) differs from the code that is checked out now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from retro_search.provenance import MANIFEST_SUFFIX, code_version, sha256_file


@dataclass
class AuditReport:
    checked: list[str] = field(default_factory=list)  # manifests verified
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.checked)


def _same_code(recorded: dict, current: dict) -> bool:
    keys = ("git_commit", "diff_sha256")
    return all(recorded.get(k) == current.get(k) for k in keys)


def stage_dirs_of(target: Path) -> list[Path]:
    """The stage directories a target names."""
    index = target / "index.json"
    if index.exists():
        stages = json.loads(index.read_text())["stages"]
        return [Path(entry["dir"]) for entry in stages]
    if list(target.glob(f"*{MANIFEST_SUFFIX}")):
        return [target]
    # a results folder: every stage directory below it that has a manifest
    return sorted({m.parent for m in target.glob(f"*/*/*{MANIFEST_SUFFIX}")})


def audit(target: str | Path) -> AuditReport:
    target = Path(target)
    report = AuditReport()
    if not target.exists():
        report.problems.append(f"missing: {target} does not exist")
        return report
    current = code_version()
    queue, seen = list(stage_dirs_of(target)), set()
    if not queue:
        report.problems.append(f"missing: no manifests found under {target}")
    while queue:
        stage_dir = queue.pop(0)
        if stage_dir in seen:
            continue
        seen.add(stage_dir)
        if not stage_dir.is_dir():
            report.problems.append(f"missing: stage directory {stage_dir}")
            continue
        manifests = sorted(stage_dir.glob(f"*{MANIFEST_SUFFIX}"))
        if not manifests:
            report.problems.append(f"missing: {stage_dir} has no manifest (never finished?)")
        for manifest_path in manifests:
            _check_manifest(manifest_path, current, report)
            for up in json.loads(manifest_path.read_text()).get("upstream", []):
                queue.append(Path(up["path"]))
    return report


def _check_manifest(path: Path, current: dict, report: AuditReport) -> None:
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        report.problems.append(f"modified: {path} is not valid JSON")
        return
    report.checked.append(str(path))
    name = manifest.get("artifact_id", str(path.parent))
    for kind, entries in (("output", manifest.get("outputs", [])),
                          ("input", manifest.get("inputs", []))):
        for entry in entries:
            file = Path(entry["path"])
            if not file.exists():
                report.problems.append(f"missing: {kind} {file} of {name}")
            elif sha256_file(file) != entry["sha256"]:
                report.problems.append(f"modified: {kind} {file} of {name} changed after it was made")
    if not _same_code(manifest.get("code", {}), current):
        recorded = manifest.get("code", {})
        report.problems.append(
            f"different code: {name} was made by commit {recorded.get('git_commit')}"
            f"{' (with uncommitted changes)' if recorded.get('dirty') else ''}, "
            f"checked out now: {current.get('git_commit')}"
            f"{' (with uncommitted changes)' if current.get('dirty') else ''}")
