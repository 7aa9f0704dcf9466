"""Verify the chain of artifacts behind a result (ARCHITECTURE.md, property 3).

`audit(target)` takes an experiment folder (`results/experiments/<name>`, whose manifest and
`index.json` name the stage directories), a stage directory, or a whole results folder, and
checks every manifest it reaches, following `upstream` links. Each problem is one line starting
with its class:

- **missing**: a stage directory, manifest, or a file a manifest records is gone;
- **modified**: a file's sha256 differs from its manifest (changed after it was made), or a
  manifest disagrees with itself (its freeze and the freeze's hash, its seeds and its config);
- **stale**: an upstream manifest is not the one this stage was made from (the upstream stage
  was rerun, or its manifest edited, after this stage ran);
- **misnamed**: a stage folder's name does not carry the hash of its kind, config and upstream
  ids (`pipeline.stage_hash`): renamed, or its config.yaml edited;
- **unexpected**: a file in an output folder that no manifest of the folder records;
- **different code**: a module of the package the stage ran is not the one checked out now
  (one line per stage, naming the modules and the stages made from it);
- **different environment**: an environment file (`envs/`, the lock, `pyproject.toml`) differs
  from the checkout's, the packages installed where the stage ran differ from its freeze, or
  two stages ran in the same environment folder with different packages.

What cannot be checked is listed apart (`unverified`) and does not fail the audit: an environment
folder that no longer exists, a hub model recorded without a commit, manifests older than a check.
Times, host and GPU are recorded, never compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retro_search.pipeline import STAGE_KINDS, stage_hash
from retro_search.provenance import (
    MANIFEST_SUFFIX,
    NOT_ARTIFACTS,
    PACKAGE_DIR,
    STAGE_FILES,
    _models_and_seeds,
    environment_files,
    freeze_sha256,
    package_freeze,
    sha256_file,
)


@dataclass
class AuditReport:
    checked: list[str] = field(default_factory=list)     # manifests verified
    problems: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # could not be checked; not a failure

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.checked)


def stage_dirs_of(target: Path) -> list[Path]:
    """The folders a target names: an experiment folder itself (its manifest) and the stage
    directories of its index; a stage directory; or every folder with a manifest below a
    results folder."""
    if (target / "index.json").exists():
        try:
            stages = [Path(entry["dir"])
                      for entry in json.loads((target / "index.json").read_text())["stages"]]
        except (ValueError, KeyError, TypeError):
            stages = []  # the manifest beside it says what it should hold
        return [target, *stages]
    if list(target.glob(f"*{MANIFEST_SUFFIX}")):
        return [target]
    return sorted({m.parent for m in target.glob(f"*/*/*{MANIFEST_SUFFIX}")})


class _Auditor:
    def __init__(self) -> None:
        self.report = AuditReport()
        self._hashes: dict[Path, str] = {}
        self._freezes: dict[tuple[str, ...], dict[str, str]] = {}
        self.env_files = environment_files()
        self.upstream: dict[Path, set[Path]] = {}     # folder -> folders it was made from
        self.changed_code: dict[Path, list[str]] = {}  # folder -> modules changed since
        self.shown: dict[Path, Path] = {}              # resolved folder -> as first named
        # environment prefix -> freeze hash -> (the first stage with it, its freeze)
        self.freezes_seen: dict[str, dict[str, tuple[str, dict]]] = {}

    def sha(self, path: Path) -> str:
        key = path.resolve()
        if key not in self._hashes:
            self._hashes[key] = sha256_file(path)
        return self._hashes[key]

    def config(self, path: Path) -> dict[str, Any]:
        """A stage's config.yaml; {} and a problem when it is not a YAML mapping (its hash
        then fails too: damaged, not a traceback)."""
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (ValueError, yaml.YAMLError):
            config = None
        if isinstance(config, dict) or config is None and not path.read_bytes().strip():
            return config or {}
        self.problem(f"modified: {path} is not a YAML mapping")
        return {}

    def problem(self, line: str) -> None:
        if line not in self.report.problems:
            self.report.problems.append(line)

    def unverified(self, line: str) -> None:
        if line not in self.report.unverified:
            self.report.unverified.append(line)

    # --- one folder ---------------------------------------------------------------------------

    def folder(self, stage_dir: Path) -> list[Path]:
        """Check a folder and its manifests; returns the upstream folders to visit."""
        if not stage_dir.is_dir():
            self.problem(f"missing: stage directory {stage_dir}")
            return []
        manifests = []
        for path in sorted(stage_dir.glob(f"*{MANIFEST_SUFFIX}")):
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError):  # not UTF-8, not JSON
                self.problem(f"modified: {path} is not valid JSON")
                continue
            if not isinstance(manifest, dict):
                self.problem(f"modified: {path} is not a manifest (a JSON object)")
                continue
            manifests.append((path, manifest))
        if not manifests:
            self.problem(f"missing: {stage_dir} has no manifest (never finished?)")
            return []
        ups: list[Path] = []
        for path, manifest in manifests:
            self.report.checked.append(str(path))
            ups += self.manifest(path, manifest)
        self.upstream[stage_dir.resolve()] = {u.resolve() for u in ups}
        self.shown[stage_dir.resolve()] = stage_dir
        self.name(stage_dir, manifests[0][1])
        self.extra_files(stage_dir, [m for _, m in manifests])
        return ups

    def manifest(self, path: Path, manifest: dict[str, Any]) -> list[Path]:
        name = manifest.get("artifact_id", str(path.parent))
        for kind, entries in (("output", manifest.get("outputs", [])),
                              ("input", manifest.get("inputs", []))):
            for entry in entries:
                file = Path(entry["path"])
                if not file.exists():
                    self.problem(f"missing: {kind} {file} of {name}")
                elif self.sha(file) != entry["sha256"]:
                    self.problem(f"modified: {kind} {file} of {name} changed after it was made")
        ups = []
        for up in manifest.get("upstream", []):
            up_dir = Path(up["path"])
            ups.append(up_dir)
            if "manifests" not in up:
                self.unverified(f"{name}: its manifest does not pin its upstream manifests")
            for file_name, digest in (up.get("manifests") or {}).items():
                file = up_dir / file_name
                if not file.exists():
                    self.problem(f"missing: {file}, from which {name} was made")
                elif self.sha(file) != digest:
                    self.problem(f"stale: {name} was made from an earlier {file} (that stage "
                                 "was rerun or its manifest edited since)")
        self.code(path.parent, name, manifest.get("code") or {})
        self.environment(name, manifest)
        self.self_consistency(name, manifest)
        return ups

    def code(self, stage_dir: Path, name: str, code: dict[str, Any]) -> None:
        modules = code.get("modules")
        if modules is None:
            self.unverified(f"{name}: made before manifests recorded module hashes")
            return
        changed = []
        for module, digest in modules.items():
            current = PACKAGE_DIR.parent / module
            if not current.is_file() or self.sha(current) != digest:
                changed.append(module)
        if changed:
            known = self.changed_code.setdefault(stage_dir.resolve(), [])
            known += [m for m in changed if m not in known]

    def environment(self, name: str, manifest: dict[str, Any]) -> None:
        env = manifest.get("environment")
        if env is None:
            self.unverified(f"{name}: made before manifests recorded the environment")
            return
        files = env.get("files") or {}
        differ = sorted(f for f in set(files) | set(self.env_files)
                        if files.get(f) != self.env_files.get(f))
        if differ:
            self.problem(f"different environment: {name} was made with other {', '.join(differ)}"
                         " than the checkout's")
        self.freezes_seen.setdefault(env.get("prefix"), {}).setdefault(
            env.get("packages_sha256"), (name, manifest.get("packages") or {}))
        sites = tuple(env.get("sites") or ())
        if not sites or not all(Path(s).is_dir() for s in sites):
            self.unverified(f"{name}: the environment it ran in ({env.get('prefix')}) is not "
                            "on this machine: its packages were not compared")
            return
        if sites not in self._freezes:
            self._freezes[sites] = package_freeze(sites)
        now, then = self._freezes[sites], manifest.get("packages") or {}
        differ = [f"{p} {then.get(p, 'absent')} -> {now.get(p, 'absent')}"
                  for p in sorted(set(now) | set(then)) if now.get(p) != then.get(p)]
        if differ:
            more = f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""
            self.problem(f"different environment: packages in {env.get('prefix')} changed since "
                         f"{name} was made: {'; '.join(differ[:3])}{more}")

    def self_consistency(self, name: str, manifest: dict[str, Any]) -> None:
        env = manifest.get("environment") or {}
        if "packages_sha256" in env and \
                freeze_sha256(manifest.get("packages") or {}) != env["packages_sha256"]:
            self.problem(f"modified: the package freeze in the manifest of {name} does not "
                         "match its hash")
        config_file = manifest.get("config_file")
        if config_file and Path(config_file).is_file():
            models, seeds = _models_and_seeds(self.config(Path(config_file)))
            if (models, seeds) != (manifest.get("models", {}), manifest.get("seeds", {})):
                self.problem(f"modified: the models or seeds in the manifest of {name} are not "
                             f"those of {config_file}")
        for kind in ("model", "dataset"):
            for hub in manifest.get(f"hub_{kind}s") or []:
                if not hub.get("commit"):
                    self.unverified(f"{name}: hub {kind} {hub.get('id')} recorded without a "
                                    "commit")
                elif not hub.get("revision"):
                    self.unverified(f"{name}: hub {kind} {hub.get('id')} was read unpinned "
                                    f"(latest, then {hub['commit']})")

    def name(self, stage_dir: Path, manifest: dict[str, Any]) -> None:
        kind = stage_dir.parent.name
        if kind not in STAGE_KINDS:
            return
        if not manifest.get("config_file"):
            self.unverified(f"{stage_dir}: no config recorded, its name was not checked")
            return
        config_file = Path(manifest["config_file"])
        if not config_file.is_file():
            return  # named missing with the manifest's inputs
        config = self.config(config_file)
        ids = [u["id"].rsplit("/", 1)[-1] for u in manifest.get("upstream", [])]
        expected = stage_hash(kind, config, ids)
        if not stage_dir.name.endswith(f"-{expected}"):
            self.problem(f"misnamed: {stage_dir} holds a {kind} stage whose config and upstream "
                         f"hash to {expected} (folder renamed, or config.yaml edited)")

    def extra_files(self, stage_dir: Path, manifests: list[dict[str, Any]]) -> None:
        recorded = {Path(e["path"]).resolve() for m in manifests for e in m.get("outputs", [])}
        for file in sorted(stage_dir.rglob("*")):
            relative = file.relative_to(stage_dir)
            if (not file.is_file() or any(p.startswith(".") for p in relative.parts)
                    or relative.parts[0] in NOT_ARTIFACTS or str(relative) in STAGE_FILES
                    or file.name.endswith(MANIFEST_SUFFIX)):
                continue
            if file.resolve() not in recorded:
                self.problem(f"unexpected: {file} is in no manifest of {stage_dir}")

    # --- after the walk -----------------------------------------------------------------------

    def code_lines(self) -> None:
        """One line per folder made by other code, naming the folders made from it."""
        for stage_dir, modules in self.changed_code.items():
            made_from = sorted(str(self.shown[d]) for d in self.upstream if d != stage_dir
                               and stage_dir in self._ancestors(d))
            also = f"; made from it: {', '.join(made_from)}" if made_from else ""
            self.problem(f"different code: {self.shown[stage_dir]} was made with "
                         f"{', '.join(modules)} as it was before (changed since){also}")

    def environment_lines(self) -> None:
        """Stages that ran in one environment folder with different packages: it changed
        between their jobs (a package upgraded mid-experiment), even if it was put back since."""
        for prefix, freezes in self.freezes_seen.items():
            (first, then), *others = freezes.values()
            for name, now in others:
                differ = [f"{p} {then.get(p, 'absent')} -> {now.get(p, 'absent')}"
                          for p in sorted(set(now) | set(then)) if now.get(p) != then.get(p)]
                self.problem(f"different environment: {first} and {name} ran in {prefix} with "
                             f"different packages: {'; '.join(differ[:3])}"
                             f"{f' (+{len(differ) - 3} more)' if len(differ) > 3 else ''}")

    def _ancestors(self, stage_dir: Path) -> set[Path]:
        seen, queue = set(), list(self.upstream.get(stage_dir, ()))
        while queue:
            up = queue.pop()
            if up not in seen:
                seen.add(up)
                queue += self.upstream.get(up, ())
        return seen


def audit(target: str | Path) -> AuditReport:
    target = Path(target)
    auditor = _Auditor()
    if not target.exists():
        auditor.problem(f"missing: {target} does not exist")
        return auditor.report
    queue, seen = list(stage_dirs_of(target)), set()
    if not queue:
        auditor.problem(f"missing: no manifests found under {target}")
    while queue:
        stage_dir = queue.pop(0)
        if stage_dir.resolve() in seen:  # named relatively by one manifest, absolutely by another
            continue
        seen.add(stage_dir.resolve())
        queue += auditor.folder(stage_dir)
    auditor.code_lines()
    auditor.environment_lines()
    return auditor.report
