"""Shared fixtures. Tests never reach the Hugging Face hub: the offline flags are set before any
test module imports transformers."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402

# `make test` runs two pytest-xdist workers, each a whole file at a time, in collection order
# (--no-loadscope-reorder). The file that runs the demo takes half the suite's time on its own
# worker: started first, it ends with the others instead of after them.
FIRST = ("test_workflow.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: order within a file kept


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Llama model + R1-style tokenizer, built once per test session (~2 s)."""
    from retro_search.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0))


@pytest.fixture(scope="session")
def trained_tiny_model_dir(tmp_path_factory) -> str:
    """The tiny model fitted to its R1-style corpus for 60 steps (~15 s): it closes its reasoning
    with </think> and boxes answers, so rollouts and samples end like real ones."""
    from retro_search.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-trained") / "model", seed=0,
                                train_steps=60))


@pytest.fixture(scope="session")
def make_checkout(tmp_path_factory):
    """Makes a clean copy of the working tree with the shared data beside it, as CI has it
    (workflow_helpers.copy_checkout): workflow tests run there, never in the developer's own
    checkout."""
    from workflow_helpers import copy_checkout

    return lambda: copy_checkout(tmp_path_factory.mktemp("checkout"))
