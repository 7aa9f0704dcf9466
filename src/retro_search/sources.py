"""Where raw records come from: local .jsonl/.json/.parquet files (a file, a folder, a glob) or a
hub dataset, read through `datasets` one file at a time so that errors can name the file."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Iterator

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def local_files(source: str, data_files) -> list[Path] | None:
    """The local files a source names, sorted; None when the source is a hub dataset id."""
    if source in ("json", "parquet") and data_files is not None:
        patterns = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
        files = [Path(f) for p in patterns for f in sorted(glob.glob(str(p), recursive=True))]
        if not files:
            raise FileNotFoundError(f"data_files {patterns} match no file")
        return files
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in _FILE_BUILDERS)
        if not files:
            raise FileNotFoundError(f"{source}: no .jsonl, .json or .parquet files in this folder")
    elif path.is_file():
        files = [path]
    elif glob.has_magic(source):
        files = [Path(f) for f in sorted(glob.glob(str(path), recursive=True))]
        files = [f for f in files if f.suffix in _FILE_BUILDERS]
        if not files:
            raise FileNotFoundError(f"{source}: the pattern matches no .jsonl/.json/.parquet file")
    elif path.suffix in _FILE_BUILDERS or source.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{source}: no such file (a hub dataset id has no file suffix)")
    else:
        return None
    if data_files is not None:
        raise ValueError(f"{source} is a local path; data_files is only for hub datasets or "
                         "with source='json'/'parquet'")
    unknown = [str(f) for f in files if f.suffix not in _FILE_BUILDERS]
    if unknown:
        raise ValueError(f"unsupported file type {unknown}: use .jsonl, .json or .parquet")
    return files


def raw_rows(files: list[Path] | None, source: str, *, name, split, data_files, cache_dir,
             streaming: bool, revision: str | None = None) -> Iterator[tuple[str, int, dict]]:
    """(source label, row within it, raw row) for every record of the source, in order; a hub
    dataset at `revision` (a commit; None: the latest)."""
    import datasets  # heavy import (about 1.5 s): only when data is actually loaded

    if files is None:
        # streaming when a limit is set: the first N rows of a large hub set without downloading it
        ds = datasets.load_dataset(source, name, split=split, data_files=data_files,
                                   cache_dir=cache_dir, streaming=streaming, revision=revision)
        if data_files is None:  # a hub repository, not local files through a builder
            from retro_search.provenance import hub_dataset_read

            hub_dataset_read(source, revision)
        for row_index, row in enumerate(ds):
            yield f"{source}[{split}]", row_index, row
        return
    for file in files:
        # One load per file: each gets its own inferred schema, so files of slightly different
        # layouts don't fail a common cast, and errors can name the file.
        try:
            ds = datasets.load_dataset(_FILE_BUILDERS[file.suffix], data_files=str(file),
                                       split="train", cache_dir=cache_dir)
        except Exception as e:  # datasets raises several types for unreadable files
            raise ValueError(f"{file}: datasets could not read it ({type(e).__name__}: {e}); "
                             "check that it is valid JSON Lines / parquet with one object per "
                             "record") from e
        for row_index, row in enumerate(ds):
            yield str(file), row_index, row
