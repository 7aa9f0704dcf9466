"""The tiny_model stage: a small local model built offline in seconds: the random (or briefly
fitted) R1-style model of `traces_demo` and the tests, or the miniature task's untrained model
(`miniature: SIZE`), which the demo's reasoner starts from."""

from __future__ import annotations

from pathlib import Path

from retro_search.stages import StageResult


def run(output: str | Path, *, seed: int = 0, train_steps: int = 0,
        miniature: str | None = None) -> StageResult:
    if miniature:
        from retro_search.miniature import build_miniature_model

        path = build_miniature_model(output, seed=seed, size=miniature)
    else:
        from retro_search.tiny_model import build_tiny_model

        path = build_tiny_model(output, seed=seed, train_steps=train_steps)
    return StageResult(outputs={"model": Path(path)},
                       summary={"model": str(path), "seed": seed, "train_steps": train_steps,
                                "miniature": miniature})
