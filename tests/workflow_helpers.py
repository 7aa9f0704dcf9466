"""What the workflow tests share: the venv's Snakemake, the environment its jobs need, and the
shipped SLURM profile as these machines can use it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"


def copy_checkout(root: Path, shared: bool = True) -> Path:
    """A clean copy of the working tree (tracked and untracked-but-not-ignored files, so no
    results/) in `root`/main, with `root`/shared -> the shared data beside the repository, as CI
    has it (`shared=False`: nothing beside it, as in a user's fresh clone)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / "main" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / "main" / name)
    if shared:
        (root / "shared").symlink_to(REPO.parent / "shared")
    return root / "main"


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of `snakemake -n`: rule -> jobs, and "total"."""
    counts = {}
    table = dry_run_output.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def workflow_env() -> dict[str, str]:
    """No hub access, and the venv first on PATH: the rules call `python -m retro_search.cli`."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def slurm_profile_without_conda() -> dict:
    """profiles/slurm/config.yaml without conda deployment: conda cannot be installed on these
    machines and even a dry run with conda deployment calls `conda info`."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    profile.pop("software-deployment-method")
    profile.pop("conda-frontend", None)
    return profile


def write_profile(directory: Path, profile: dict) -> Path:
    """A Snakemake profile folder holding `profile` as its config.yaml."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(profile))
    return directory
