"""A model or tokenizer that cannot be loaded, said in one line: the config key that named it,
what was looked for (the folder or hub id, and the revision) and what to do.

transformers answers a missing folder or a hub id while offline with a traceback of 75 to 95
lines whose last line names neither the setting nor the fix. Every load site (the engines'
models and tokenizers, the prompt's chat template, the SFT student, the evaluated model) runs
inside `loading(...)`, which turns those errors into `ModelLoadError`, a ValueError: the CLI prints
it as one line `retro-search CMD: error: ...` and exits 2 (`-v` keeps the traceback, the original
error chained below it).
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class ModelSource:
    """What one config key asks to load: `name` is a local folder or a hub id, `revision` a hub
    commit, branch or tag (None: the latest), set by `revision_key`."""

    key: str
    name: str
    revision: str | None = None
    revision_key: str | None = None


class ModelLoadError(ValueError):
    """A model or tokenizer that could not be loaded; the message is one line."""


def sources_of(section: Mapping[str, Any], key: str, *,
               tokenizer_only: bool = False) -> list[ModelSource]:
    """The sources of a model section (`model`, `student`, `sample.model`): its `path` at its
    `revision`, and its `tokenizer` when set (another repository, read at its latest). With
    `tokenizer_only`, only what the tokenizer is read from (the prompt's chat template)."""
    path = ModelSource(f"{key}.path", str(section["path"]), section.get("revision"),
                       f"{key}.revision")
    tokenizer = section.get("tokenizer")
    if not tokenizer:
        return [path]
    own = ModelSource(f"{key}.tokenizer", str(tokenizer))
    return [own] if tokenizer_only else [path, own]


def load_errors() -> tuple[type[BaseException], ...]:
    """What a load raises when the model is not where it was looked for: OSError (transformers
    wraps most failures in one; the hub's HTTP, not-found and offline errors are ones), the hub's
    refusal of a name as a repository id, and connection errors that are not OSErrors (httpx)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub.errors import HFValidationError

        errors.append(HFValidationError)
    except ImportError:
        pass
    try:
        import httpx

        errors.append(httpx.TransportError)
    except ImportError:
        pass
    return tuple(errors)


@contextmanager
def loading(*sources: ModelSource) -> Iterator[None]:
    """Run a model or tokenizer load; a load error becomes a one-line `ModelLoadError` naming the
    source it is about (of `sources`, those the load reads)."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as err:
        if not sources or not is_load_error(err):
            raise
        raise ModelLoadError(describe(err, list(sources))) from err


# Where a model or tokenizer is read. An error raised elsewhere (an engine that calls a server,
# this package's own checks, which already say what to do) is not a missing model.
LOADER_PACKAGES = ("transformers", "huggingface_hub", "tokenizers", "safetensors", "vllm")
# Those whose ValueErrors are about the files read (a folder without tokenizer files gives one of
# several lines); vLLM's are about its settings, which are not the model's key.
FILE_READERS = ("transformers", "huggingface_hub", "tokenizers", "safetensors")


def is_load_error(err: BaseException) -> bool:
    if isinstance(err, load_errors()):
        return raised_in(err, LOADER_PACKAGES)
    return isinstance(err, ValueError) and raised_in(err, FILE_READERS)


def raised_in(err: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether the error, or one it was raised from, was raised inside one of `packages`."""
    for error in chain(err):
        frame = error.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        parts = Path(frame.tb_frame.f_code.co_filename).parts if frame is not None else ()
        if any(package in parts for package in packages):
            return True
    return False


@contextmanager
def opened_engine(sources: list[ModelSource], name: str, **kwargs: Any) -> Iterator[Any]:
    """`engines.open_engine(name, **kwargs)` with its load inside `loading(*sources)`: only the
    load, so an OSError of the work done with the engine is not taken for a missing model."""
    from retro_search import engines

    with ExitStack() as stack:
        with loading(*sources):
            engine = stack.enter_context(engines.open_engine(name, **kwargs))
        yield engine


def describe(err: BaseException, sources: list[ModelSource]) -> str:
    """One line: the key and what it named, why it was not found, what to do."""
    source = blamed(err, sources)
    what = f"{source.key} {source.name}" if source.key.startswith("--") else f"{source.key}={source.name}"
    if source.revision:
        what += f" (revision {source.revision})"
    causes = chain(err)
    found = first_line(causes[-1]) or first_line(err)
    folder = Path(source.name).expanduser()
    if folder.is_dir():
        return (f"{what}: the folder holds no model or tokenizer that loads ({found}); point "
                f"{source.key} at a folder written by save_pretrained, or a hub id")
    missing = f"no such local folder ({folder.resolve()})"
    if not looks_like_hub_id(source.name):
        return f"{what}: {missing}; check the path"
    kinds = {type(e).__name__ for e in causes}
    download = f"hf download {source.name}" + (f" --revision {source.revision}"
                                               if source.revision else "")
    if "GatedRepoError" in kinds:
        return (f"{what}: {missing}, and the hub repository is gated: accept its terms on "
                f"https://huggingface.co/{source.name} and log in with `hf auth login`")
    if "RevisionNotFoundError" in kinds:
        return (f"{what}: {missing}, and the hub repository has no revision {source.revision!r}; "
                f"set {source.revision_key or 'the revision'} to one of its commits, branches "
                "or tags")
    if "RepositoryNotFoundError" in kinds:
        return (f"{what}: {missing}, and the hub has no repository {source.name!r} (or it is "
                "private: log in with `hf auth login`); check the path or id")
    offline = [flag for flag in OFFLINE_FLAGS if is_set(os.environ.get(flag))]
    if offline:
        flag = offline[0]
        return (f"{what}: {missing}; a hub id needs the network, and {flag}="
                f"{os.environ[flag]} is set and the hub cache does not have it: download it "
                f"first with `{download}` or unset {flag}")
    if kinds & {"LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ConnectionError",
                "TimeoutException", "ReadTimeout", "OfflineModeIsEnabled"}:
        return (f"{what}: {missing}, and the hub could not be reached ({found}); check the "
                f"network, or download it where there is one with `{download}` and copy the "
                "hub cache")
    return f"{what}: could not be loaded ({found})"


def blamed(err: BaseException, sources: list[ModelSource]) -> ModelSource:
    """The source the error is about: of those that are not existing folders (else of all), the
    first the error's text names, else the first."""
    text = " ".join(str(e) for e in chain(err))
    absent = [s for s in sources if not Path(s.name).expanduser().is_dir()]
    pool = absent or sources
    named = [s for s in pool if s.name in text]
    return (named or pool)[0]


def chain(err: BaseException) -> list[BaseException]:
    """The error and its causes, outermost first (transformers wraps the hub's error)."""
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def looks_like_hub_id(name: str) -> bool:
    """Whether `name` could be a hub repository id ("owner/name" or "name"); a path such as
    /models/x or ./x cannot."""
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(name)
        return True
    except Exception:  # HFValidationError, or no huggingface_hub: a path, then
        return False


def is_set(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
