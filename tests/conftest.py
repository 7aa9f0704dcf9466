"""Shared fixtures. Tests never reach the Hugging Face hub: the offline flags are set before any
test module imports transformers."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Llama model + R1-style tokenizer, built once per test session (~2 s)."""
    from retro_search.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0))


@pytest.fixture(scope="session")
def make_checkout(tmp_path_factory):
    """Makes a clean copy of the working tree (tracked and untracked-but-not-ignored files, no results/)
    with the shared data beside it, as CI has it: workflow tests run there, never in the
    developer's own checkout."""
    import shutil
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=repo, capture_output=True, text=True, check=True).stdout.split()

    def make() -> Path:
        root = tmp_path_factory.mktemp("checkout")
        for name in files:
            if (repo / name).is_file():
                (root / "main" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(repo / name, root / "main" / name)
        (root / "shared").symlink_to(repo.parent / "shared")
        return root / "main"

    return make
