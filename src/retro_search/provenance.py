"""Manifests: how every artifact was made (ARCHITECTURE.md, property 3).

A manifest is a JSON file beside a stage's outputs. It records:

- the sha256 of every output file, and of every input: the files the stage read, its
  `config.yaml` (always, whether or not the job was given it), the files from outside the
  pipeline named in its config (`input_files`), a local model folder's weights;
- its upstream stages by id and the sha256 of each of their manifests, so a manifest pins the
  chain behind it: an upstream stage rerun or edited afterwards is seen from downstream;
- the code: the sha256 of each module of the package the job had loaded when it finished (so a
  README-only commit changes nothing recorded and an edit to `search.py` changes what search
  recorded), plus git commit and dirty flag for the reader;
- the environment: a full package freeze of the interpreter's site folders (and its hash), where
  those folders are (the audit reads the freeze there again), and the sha256 of the environment
  files (`envs/*.yaml`, `requirements/*.lock`, `pyproject.toml`);
- models: those named in the config (id, revision), hub models resolved to the commit the local
  Hugging Face cache holds with the hash of each file (`hub_model`), hub datasets the job read
  with the commit they resolved to (`hub_dataset_read`), seeds;
- host, Python, GPUs, engine, SLURM job id, start and end time and the command: recorded, never
  compared (they differ between two honest runs).

`retro_search.audit` verifies a chain of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from retro_search.artifacts import write_json

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = "manifest.json"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
# What defines the software environment besides the installed packages (relative to REPO_ROOT).
ENVIRONMENT_FILES = ("envs/*.yaml", "requirements/*.lock", "pyproject.toml")
# Beside a stage's artifacts, not part of them: its config (hashed as an input instead), its
# runtime settings (rewritten by a runtime override, recorded inside the manifest) and manifests.
STAGE_FILES = ("config.yaml", "runtime.yaml")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# Folders of a stage directory that are not its artifact: Snakemake writes logs/ after the
# command (and again on a rerun), checkpoints/ is SFT's resume state, and tracking/ what a
# tracker logged (retro_search.tracking; eval adds to it after the SFT stage is done).
NOT_ARTIFACTS = ("logs", "checkpoints", "tracking")


def _is_artifact(relative: Path) -> bool:
    return not (any(part.startswith(".") for part in relative.parts)
                or relative.parts[0] in NOT_ARTIFACTS)


class HashCache:
    """sha256 of files remembered by path, size and modification time in a JSON file, for the
    plan: Snakemake plans again in every cluster job, and a local model's weights (tens of GB)
    are part of the key of the stages that load them. A changed file has a new size or time,
    so it is read again; manifests and the audit never use the cache."""

    def __init__(self, file: str | Path):
        self.file = Path(file)
        try:
            self.known = json.loads(self.file.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.dirty = False

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key, stamp = str(path.resolve()), [stat.st_size, stat.st_mtime_ns]
        if self.known.get(key, [None])[:2] != stamp:
            self.known[key] = [*stamp, sha256_file(path)]
            self.dirty = True
        return self.known[key][2]

    def save(self) -> None:
        if self.dirty:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.file, self.known)  # atomic: concurrent plans lose entries, not files
            self.dirty = False


def hash_paths(paths: Iterable[str | Path], cache: HashCache | None = None) -> list[dict[str, Any]]:
    """sha256 and size of each file; a folder contributes every file below it (sorted), except
    hidden files (progress and temp data) and the folders in NOT_ARTIFACTS."""
    entries = []
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and _is_artifact(p.relative_to(path))) \
            if path.is_dir() else [path]
        for file in files:
            entries.append({"path": str(file),
                            "sha256": cache.sha256(file) if cache else sha256_file(file),
                            "bytes": file.stat().st_size})
    if cache:
        cache.save()
    return entries


def _git(*args: str) -> str | None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        return None
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout
    except (subprocess.SubprocessError, OSError):
        return None


def loaded_modules() -> dict[str, str]:
    """sha256 of each source file of this package that the process has imported, by its path
    from the package's parent (`retro_search/search.py`): the code a stage ran, whatever git
    says (uncommitted edits and untracked modules included)."""
    found = {}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file:
            continue
        path = Path(file).resolve()
        if path.is_relative_to(PACKAGE_DIR) and path.suffix == ".py" and path.is_file():
            found[path.relative_to(PACKAGE_DIR.parent).as_posix()] = sha256_file(path)
    return dict(sorted(found.items()))


def code_version() -> dict[str, Any]:
    """The code that ran: each loaded module's hash (what the audit compares), and the git
    commit and whether tracked files differed from it (for the reader)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", "src", "workflow", "Snakefile", "config",
                  "envs", "requirements", "pyproject.toml")
    try:
        version = metadata.version("retro-search")
    except metadata.PackageNotFoundError:
        version = None
    return {"package_version": version,
            "git_commit": commit.strip() if commit else None,
            "dirty": bool(status.strip()) if status is not None else None,
            "modules": loaded_modules()}


def site_dirs() -> list[str]:
    """The folders this interpreter imports installed packages from."""
    return [p for p in sys.path if p and Path(p).name in ("site-packages", "dist-packages")
            and Path(p).is_dir()]


def package_freeze(sites: Iterable[str] | None = None) -> dict[str, str]:
    """name -> version of every distribution installed in `sites` (default: `site_dirs()`)."""
    sites = list(site_dirs() if sites is None else sites)
    freeze = {}
    for dist in metadata.distributions(path=sites):
        name = dist.metadata["Name"]
        if name:
            freeze.setdefault(re.sub(r"[-_.]+", "-", name).lower(), dist.version)
    return dict(sorted(freeze.items()))


def freeze_sha256(freeze: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(freeze, sort_keys=True).encode()).hexdigest()


def environment_files(root: Path = REPO_ROOT) -> dict[str, str]:
    """sha256 of the files that define the environment, by path from the checkout's root."""
    files = sorted({f for pattern in ENVIRONMENT_FILES for f in root.glob(pattern) if f.is_file()})
    return {f.relative_to(root).as_posix(): sha256_file(f) for f in files}


def gpu_names() -> list[str]:
    torch = sys.modules.get("torch")  # only ask torch if the stage already loaded it
    if torch is not None and torch.cuda.is_available():
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (subprocess.SubprocessError, OSError):
            pass
    return []


def _models_and_seeds(config: dict[str, Any]) -> tuple[dict, dict]:
    models, seeds = {}, {}
    for section, value in config.items():
        if not isinstance(value, dict):
            continue
        if "path" in value and ("revision" in value or section in ("model", "student")):
            models[section] = {"id": value.get("path"), "revision": value.get("revision")}
        if "seed" in value:
            seeds[section] = value["seed"]
    return models, seeds


# A hub repo id: `name` or `org/name`, each part letters, digits, `_`, `-`, `.`, not starting with
# `.` or `-` (so `./x`, `../x`, `/abs/x`, `~/x` and `a/b/c` are paths, never ids).
HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")


def hub_model(name: str, revision: str | None = None,
              cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The model input `name` as a hub model: {"id", "revision" (as asked, None = main),
    "commit" (what it resolved to, or None), "files" (path in the snapshot -> blob hash)}.

    Rule: an input that names a model and does not exist on disk is a hub id when it looks like
    one (HUB_ID: `name` or `org/name`, no leading `.`/`/`, at most one `/`); anything else is a
    missing local path (FileNotFoundError). The commit is the one the local Hugging Face cache
    (`cache_dir`, default HF_HUB_CACHE, i.e. HF_HOME/hub) resolves `revision` to: refs/<revision>
    -> snapshots/<sha>, the files the stage loaded. Each snapshot file links to a blob named by
    its content hash (sha256 for weights and other LFS files, the git blob sha1 for small ones),
    so the weights are pinned without reading them again. Only the cache is read, so it works
    with HF_HUB_OFFLINE=1. An id the cache does not hold (an engine that downloads elsewhere) is
    recorded without a commit, with a warning: the manifest is written after the stage's work,
    which must not be lost over a missing commit (the audit names it as unverified).
    """
    from huggingface_hub import try_to_load_from_cache

    if not HUB_ID.fullmatch(name):
        raise FileNotFoundError(f"model {name!r}: no such local path, and not a hub id "
                                "(`name` or `org/name`)")
    # Every transformers model has config.json at the top of its snapshot: its folder is the commit.
    found = try_to_load_from_cache(name, "config.json", revision=revision, cache_dir=cache_dir)
    if not isinstance(found, str):  # None, or the cache's "known not to exist" marker
        log.warning("model %r is not a local path and not in the Hugging Face cache "
                    "(HF_HUB_CACHE / HF_HOME): recorded as a hub id without a commit", name)
        return {"id": name, "revision": revision, "commit": None, "files": {}}
    snapshot = Path(found).parent
    files = {f.relative_to(snapshot).as_posix(): _blob_hash(f)
             for f in sorted(snapshot.rglob("*")) if f.is_file()}
    return {"id": name, "revision": revision, "commit": snapshot.name, "files": files}


def _blob_hash(file: Path) -> str:
    """A snapshot file's content hash: the name of the cache blob it links to, or, in a cache
    without links (a copied snapshot), its sha256."""
    blob = Path(os.path.realpath(file))
    return blob.name if blob.parent.name == "blobs" else sha256_file(file)


# The hub datasets this process has read (`hub_dataset_read`), for its manifest.
_HUB_DATASETS: list[dict[str, Any]] = []


def hub_dataset_read(repo_id: str, revision: str | None = None) -> dict[str, Any]:
    """Note that a hub dataset was loaded at `revision` (None: the latest), resolved to the commit
    the local Hugging Face cache holds for it (refs/<revision> of datasets--ORG--NAME), or the
    revision itself when it is a commit sha. The job's manifest lists them (`hub_datasets`)."""
    import huggingface_hub.constants

    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        commit = revision
    else:
        ref = (Path(huggingface_hub.constants.HF_HUB_CACHE)
               / f"datasets--{repo_id.replace('/', '--')}" / "refs" / (revision or "main"))
        commit = ref.read_text().strip() if ref.is_file() else None
    entry = {"id": repo_id, "revision": revision, "commit": commit}
    if entry not in _HUB_DATASETS:
        _HUB_DATASETS.append(entry)
    return entry


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def upstream_entry(stage_dir: str | Path) -> dict[str, Any]:
    """An upstream stage as a manifest names it: id, path, and the sha256 of each of its
    manifests as they are when this stage finishes."""
    stage_dir = Path(stage_dir)
    return {"id": f"{stage_dir.parent.name}/{stage_dir.name}", "path": str(stage_dir),
            "manifests": {m.name: sha256_file(m)
                          for m in sorted(stage_dir.glob(f"*{MANIFEST_SUFFIX}"))}}


def write_manifest(path: str | Path, *, stage: str, config_file: str | Path | None,
                   inputs: Iterable[str | Path], outputs: Iterable[str | Path],
                   upstream: Iterable[str | Path], started: str, command: list[str],
                   model_inputs: Iterable[str | Path] = (),
                   engine: dict[str, Any] | None = None) -> dict:
    """Write the manifest of a finished stage job to `path` (atomically) and return it.

    `config_file` defaults to the `config.yaml` beside `path`, which is always hashed.
    `model_inputs` are inputs that name a model: a local folder is hashed with the other inputs;
    a hub id is recorded under `hub_models` (see `hub_model`), at the revision its config
    section asks for. `engine`: which generation engine ran the job (`engines.engine_info`)."""
    import yaml  # pyyaml comes with omegaconf

    from retro_search.local_paths import PIPELINE_MODELS
    from retro_search.runtime import runtime_file_beside

    path = Path(path)
    if config_file is None and (path.parent / "config.yaml").is_file():
        config_file = path.parent / "config.yaml"
    config = (yaml.safe_load(Path(config_file).read_text()) if config_file else None) or {}
    # The runtime settings the job ran with (not hashed: they change no output, runtime.py).
    runtime_file = runtime_file_beside(config_file)
    runtime = yaml.safe_load(runtime_file.read_text()) if runtime_file else None
    models, seeds = _models_and_seeds(config)
    revisions = {m["id"]: m["revision"] for m in models.values()}
    # The models the config names are what the job loaded (weights or tokenizer): pinned too.
    named = [config.get("model_dir"), *(section.get(key) for name in ("model", "student")
                                        if isinstance(section := config.get(name), dict)
                                        for key in ("path", "tokenizer"))]
    named = [m for m in named if isinstance(m, str) and m not in PIPELINE_MODELS
             and (Path(m).exists() or HUB_ID.fullmatch(m))]
    model_inputs = list(dict.fromkeys([*(str(m) for m in model_inputs if m), *named]))
    local_models = [m for m in model_inputs if Path(m).exists()]
    hub_models = [hub_model(m, revisions.get(m)) for m in model_inputs if not Path(m).exists()]
    # Files from outside the pipeline the stage read (benchmark copies, a local data source):
    # their hashes are in the config (the stage's key); hashing them here lets the audit see a
    # later edit.
    outside = sorted((config.get("input_files") or {}))
    input_paths = [*inputs, *local_models, *outside, *([config_file] if config_file else [])]
    freeze = package_freeze()
    manifest = {
        "stage": stage,
        "kind": path.parent.parent.name,
        "artifact_id": f"{path.parent.parent.name}/{path.parent.name}",
        "config_file": str(config_file) if config_file else None,
        "runtime": runtime,
        "inputs": hash_paths(dict.fromkeys(str(p) for p in input_paths if p)),
        "outputs": hash_paths(p for p in outputs if p),
        "upstream": [upstream_entry(u) for u in upstream],
        "code": code_version(),
        "environment": {"python": platform.python_version(), "prefix": sys.prefix,
                        "sites": site_dirs(), "packages_sha256": freeze_sha256(freeze),
                        "files": environment_files()},
        "packages": freeze,
        "models": models,
        "hub_models": hub_models,
        "hub_datasets": list(_HUB_DATASETS),
        "seeds": seeds,
        "host": platform.node(),
        "gpus": gpu_names(),
        "engine": engine,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": started,
        "ended": now(),
        "command": command,
    }
    write_json(path, manifest)
    return manifest
