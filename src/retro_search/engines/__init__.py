"""Generation engines selected by name: `transformers`, `vllm`, or `package.module:ClassName`."""

from __future__ import annotations

import importlib
from typing import Any

from retro_search.engines.base import (
    Engine,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamingEngine,
)

__all__ = ["Engine", "FinishReason", "GenerationRequest", "GenerationResult", "StreamingEngine",
           "load_engine", "BUILTIN_ENGINES"]

# Import paths, not classes: vllm (and torch) are imported only when that engine is chosen.
BUILTIN_ENGINES = {
    "transformers": "retro_search.engines.transformers_engine:TransformersEngine",
    "vllm": "retro_search.engines.vllm_engine:VLLMEngine",
}


def load_engine(name: str, **kwargs: Any) -> Engine:
    """Build the engine called `name` with `kwargs` (its section of the config).

    `name` is a built-in engine name or a dotted path `package.module:ClassName` to a user's class
    implementing `generate` (and optionally `generate_async`).
    """
    path = BUILTIN_ENGINES.get(name, name)
    if ":" not in path:
        raise ValueError(
            f"unknown engine {name!r}: use one of {sorted(BUILTIN_ENGINES)} "
            "or a dotted path 'package.module:ClassName'")
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"engine {name!r}: cannot import {module_name!r} ({err})") from err
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ValueError(f"engine {name!r}: module {module_name!r} has no {class_name!r}") from None
    engine = cls(**kwargs)
    if not callable(getattr(engine, "generate", None)):
        raise TypeError(f"engine {name!r}: {path} has no generate(requests) method")
    return engine
