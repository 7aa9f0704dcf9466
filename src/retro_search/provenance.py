"""Manifests: how every artifact was made (ARCHITECTURE.md, property 3).

A manifest is a JSON file beside a stage's outputs. It records the sha256 of every input and
output file, the ids of the upstream artifacts, the code (git commit, dirty flag and a hash of the
uncommitted diff), package versions, the models and seeds named in the stage config, the hub
models a stage read by id (id and resolved commit, see `hub_model`), the host, GPU, SLURM job and
start/end times. `retro_search.audit` checks a chain of them.
"""

from __future__ import annotations

import hashlib
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
PACKAGES = ("retro-search", "torch", "transformers", "tokenizers", "datasets", "trl", "accelerate",
            "vllm", "math-verify", "hydra-core", "snakemake", "pandas", "numpy")
REPO_ROOT = Path(__file__).resolve().parents[2]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# Folders of a stage directory that are not its artifact: Snakemake writes logs/ after the
# command (and again on a rerun), and checkpoints/ is SFT's resume state.
NOT_ARTIFACTS = ("logs", "checkpoints")


def _is_artifact(relative: Path) -> bool:
    return not (any(part.startswith(".") for part in relative.parts)
                or relative.parts[0] in NOT_ARTIFACTS)


def hash_paths(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """sha256 and size of each file; a folder contributes every file below it (sorted), except
    hidden files (progress and temp data) and the folders in NOT_ARTIFACTS."""
    entries = []
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*")
                       if p.is_file() and _is_artifact(p.relative_to(path))) \
            if path.is_dir() else [path]
        for file in files:
            entries.append({"path": str(file), "sha256": sha256_file(file),
                            "bytes": file.stat().st_size})
    return entries


def _git(*args: str) -> str | None:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        return None
    try:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout
    except (subprocess.SubprocessError, OSError):
        return None


def code_version() -> dict[str, Any]:
    """The code that runs: git commit, whether tracked files differ from it, and a hash of that
    difference (so two runs of the same uncommitted code compare equal)."""
    commit = _git("rev-parse", "HEAD")
    diff = _git("diff", "HEAD", "--", "src", "workflow", "Snakefile", "config", "pyproject.toml")
    try:
        version = metadata.version("retro-search")
    except metadata.PackageNotFoundError:
        version = None
    return {"package_version": version,
            "git_commit": commit.strip() if commit else None,
            "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None}


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


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
              cache_dir: str | Path | None = None) -> dict[str, str | None]:
    """The model input `name` as a hub model: {"id": name, "revision": commit sha or None}.

    Rule: an input that names a model and does not exist on disk is a hub id when it looks like
    one (HUB_ID: `name` or `org/name`, no leading `.`/`/`, at most one `/`); anything else is a
    missing local path (FileNotFoundError). The revision recorded is the commit the local Hugging
    Face cache (`cache_dir`, default HF_HUB_CACHE, i.e. HF_HOME/hub) resolves `revision` (default
    main) to: refs/<revision> -> snapshots/<sha>, the files the stage loaded. Only the cache is
    read, so it works with HF_HUB_OFFLINE=1. An id the cache does not hold (an engine that
    downloads elsewhere) is recorded with revision None and a warning: the manifest is written
    after the stage's work, which must not be lost over a missing commit.
    """
    from huggingface_hub import try_to_load_from_cache

    if not HUB_ID.fullmatch(name):
        raise FileNotFoundError(f"model {name!r}: no such local path, and not a hub id "
                                "(`name` or `org/name`)")
    # Every transformers model has config.json at the top of its snapshot: its folder is the commit.
    found = try_to_load_from_cache(name, "config.json", revision=revision, cache_dir=cache_dir)
    if not isinstance(found, str):  # None, or the cache's "known not to exist" marker
        log.warning("model %r is not a local path and not in the Hugging Face cache "
                    "(HF_HUB_CACHE / HF_HOME): recorded as a hub id without a revision", name)
        return {"id": name, "revision": None}
    return {"id": name, "revision": Path(found).parent.name}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_manifest(path: str | Path, *, stage: str, config_file: str | Path | None,
                   inputs: Iterable[str | Path], outputs: Iterable[str | Path],
                   upstream: Iterable[str | Path], started: str, command: list[str],
                   model_inputs: Iterable[str | Path] = (),
                   engine: dict[str, Any] | None = None) -> dict:
    """Write the manifest of a finished stage job to `path` (atomically) and return it.

    `model_inputs` are inputs that name a model: a local folder is hashed with the other inputs;
    a hub id is recorded under `hub_models` as id + resolved revision (see `hub_model`).
    `engine`: which generation engine ran the job (`engines.engine_info`), where one did."""
    import yaml  # pyyaml comes with omegaconf

    from retro_search.runtime import runtime_file_beside

    path = Path(path)
    config = yaml.safe_load(Path(config_file).read_text()) if config_file else {}
    # The runtime settings the job ran with (not hashed: they change no output, runtime.py).
    runtime_file = runtime_file_beside(config_file)
    runtime = yaml.safe_load(runtime_file.read_text()) if runtime_file else None
    models, seeds = _models_and_seeds(config or {})
    model_inputs = [m for m in model_inputs if m]
    local_models = [m for m in model_inputs if Path(m).exists()]
    hub_models = [hub_model(str(m)) for m in model_inputs if not Path(m).exists()]
    input_paths = list(inputs) + local_models + ([config_file] if config_file else [])
    manifest = {
        "stage": stage,
        "artifact_id": f"{path.parent.parent.name}/{path.parent.name}",
        "config_file": str(config_file) if config_file else None,
        "runtime": runtime,
        "inputs": hash_paths(p for p in input_paths if p),
        "outputs": hash_paths(p for p in outputs if p),
        "upstream": [{"id": f"{Path(u).parent.name}/{Path(u).name}", "path": str(u)}
                     for u in upstream],
        "code": code_version(),
        "packages": package_versions(),
        "models": models,
        "hub_models": hub_models,
        "seeds": seeds,
        "host": platform.node(),
        "python": platform.python_version(),
        "gpus": gpu_names(),
        "engine": engine,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": started,
        "ended": now(),
        "command": command,
    }
    write_json(path, manifest)
    return manifest
