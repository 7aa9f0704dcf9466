"""Plan-time checks of the local files and folders an experiment names.

A config value such as `data.source` or `model.path` is either a local path or a hub id; a
missing local path used to be taken for a hub id and fail inside a job, minutes later, with a
hub error. A value that can only be a path (absolute, `./`, `../`, `~`, a file suffix, a glob, or
more than one `/`, which no hub id has) must exist when the plan is built: otherwise one line
names the key, the path, the folder it was looked for in, and what to set.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterator

FILE_SUFFIXES = {".jsonl", ".json", ".parquet", ".csv", ".txt", ".gz", ".arrow", ".yaml"}
# Model paths that name a model the pipeline makes itself, neither a folder nor a hub id.
TINY = "tiny"
REASONER = "reasoner"  # the miniature's reasoning model
PIPELINE_MODELS = (TINY, REASONER)


def must_be_local(value: str) -> bool:
    """Whether `value` cannot be a hub id (`owner/name` or `name`)."""
    return (value.startswith(("/", "./", "../", "~")) or Path(value).suffix in FILE_SUFFIXES
            or any(c in value for c in "*?[") or value.count("/") > 1)


def named_paths(cfg: dict[str, Any], results: str) -> Iterator[tuple[str, str]]:
    """(key, value) of every string of the composed config that names a local path or a hub id:
    the data source and the questions sampled, the models and tokenizers, the benchmark copies."""
    data = cfg.get("data") or {}
    yield "data.source", data.get("source")
    sample = data.get("sample") or {}
    yield "data.sample.questions", sample.get("questions")
    models = {"model": cfg.get("model"), "student": cfg.get("student"),
              "data.sample.model": sample.get("model")}
    for section, values in models.items():
        for key in ("path", "tokenizer"):
            value = (values or {}).get(key)
            if value not in PIPELINE_MODELS:
                yield f"{section}.{key}", value
    for section in ("eval", "data.decontamination"):
        values = cfg.get("eval") if section == "eval" else data.get("decontamination") or {}
        yield f"{section}.data_dir", (values or {}).get("data_dir")
        for name, folder in ((values or {}).get("data_dirs") or {}).items():
            yield f"{section}.data_dirs.{name}", folder


def check_local_paths(cfg: dict[str, Any], results: str = "results") -> None:
    """Raise ValueError for the first value of `named_paths` that must be local and is not
    there (pipeline outputs under `results/` are made by the plan, and are not checked)."""
    for key, value in named_paths(cfg, results):
        if not isinstance(value, str) or value.startswith(f"{results}/"):
            continue
        path = os.path.expanduser(value)
        if not must_be_local(value) or Path(path).exists() or glob.glob(path):
            continue
        raise ValueError(f"{key}: {value} does not exist{looked_in(path)}; set {key} to a "
                         "local file or folder, or to a hub id (owner/name)")


def looked_in(path: str | Path) -> str:
    """Where a missing relative path was looked for, and why there; "" for an absolute one."""
    if os.path.isabs(path):
        return ""
    return (f" in {Path.cwd()} (relative paths are read from the working directory: run "
            "Snakemake in the repository, or give an absolute path)")
