"""The engine interface: what every generation backend implements.

An engine turns `GenerationRequest`s into `GenerationResult`s. Batch engines implement
`generate`; engines that can stream (vLLM's async engine) also implement `generate_async`, which the
scheduler uses to send a trace's next request as soon as its previous one finishes.
Token counts are in tokens of the engine's own tokenizer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol, Sequence, runtime_checkable

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to generate.

    `prompt` is the full text the model continues (chat template already applied). Generation ends
    at the model's end-of-sequence token, at the first of `stop` (the stop string itself is not
    returned), or after `max_tokens` new tokens. `banned_words` must never appear in the output in
    any of their tokenisations (with and without a leading space are separate entries). `seed`
    makes sampling reproducible per request, independent of what else is in the batch;
    `temperature == 0` means greedy decoding.
    """

    request_id: str
    prompt: str
    max_tokens: int
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int | None = None
    stop: tuple[str, ...] = ()
    banned_words: tuple[str, ...] = ()


def request_seed(request: GenerationRequest) -> int:
    """The request's seed, or one derived from its id with SHA-256 (stable across processes,
    unlike Python's salted `hash`). Always in [0, 2**63)."""
    if request.seed is not None:
        return request.seed % 2**63
    digest = hashlib.sha256(request.request_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 2**63


@dataclass(frozen=True)
class GenerationResult:
    """What an engine produced for one request.

    `finish_reason` is "stop" when generation ended by itself (end-of-sequence token or a stop
    string) and "length" when it hit `max_tokens`. `stop_string` is the stop string that ended it,
    or None (end-of-sequence, or length). `num_tokens` counts generated tokens.
    """

    request_id: str
    text: str
    num_tokens: int
    finish_reason: FinishReason
    stop_string: str | None = None


@runtime_checkable
class Engine(Protocol):
    """A batch engine: results come back in the order of the requests."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...


@runtime_checkable
class StreamingEngine(Engine, Protocol):
    """An engine that accepts requests one by one while others are running."""

    async def generate_async(self, request: GenerationRequest) -> GenerationResult: ...


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from any parts, stable across processes and Python versions (not hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def rollout_budget(max_tokens: int, context_length: int | None, prompt_tokens: int) -> int:
    """Tokens a request may generate: min(max_tokens, context - prompt); may be < 1 (none)."""
    if context_length is None:
        return max_tokens
    return min(max_tokens, context_length - prompt_tokens)
