"""Where raw records come from: local .jsonl/.json/.parquet files (a file, a folder, a glob) or a
hub dataset, one row at a time, each named by where it sits so errors can point at it; and the
line-by-line JSON reading that every JSON-lines reader shares (`json_lines`: here for raw
records, in `artifacts` for the files stages exchange).

JSON is read here, not through `datasets`: line by line for JSON Lines, so one torn line, one byte
that is not UTF-8 or one line nested 100,000 deep is one bad row (named by file and line) and the
other lines still load; and untyped, so a record's values are what its own line says (`datasets`
builds one typed table per file, which fails the whole file on one odd line and re-types the
other rows when one differs: "025" became 25). Numbers keep their text (`JsonInt`,
`JsonFloat`). Parquet files and hub datasets are typed by their own schema and go through
`datasets`.
"""

from __future__ import annotations

import codecs
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# ----------------------------------------------------------------------------- JSON lines

# A value nested deeper than this is refused: no record comes close (a chat trace is 4 levels
# deep), and a line of 100,000 "[" must be one bad line, not a RecursionError (or, in a C parser,
# a crash). Python's parser stops itself at its recursion limit; shallower nesting is measured.
MAX_JSON_DEPTH = 100


class JsonInt(int):
    """An integer read from JSON that keeps its text as written (`text`, e.g. "-0")."""

    text: str


class JsonFloat(float):
    """A JSON number with a fraction or exponent that keeps its text as written ("3.10", "1e3"):
    a reference answer is the text the file holds, never Python's rewrite of it."""

    text: str


def _json_int(text: str) -> JsonInt:
    number = JsonInt(text)
    number.text = text
    return number


def _json_float(text: str) -> JsonFloat:
    number = JsonFloat(text)
    number.text = text
    return number


def json_text(value: Any) -> str:
    """JSON text of a value, numbers read with their text (`JsonInt`, `JsonFloat`) as written."""
    if isinstance(value, (JsonInt, JsonFloat)):
        return value.text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {json_text(v)}"
                               for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False, default=str)


def plain_json(value: Any) -> Any:
    """A value read from JSON with plain ints and floats: numbers as JSON means them, without
    the text `JsonInt`/`JsonFloat` carry (for metadata, which keeps values as read)."""
    if isinstance(value, JsonInt):
        return int(value)
    if isinstance(value, JsonFloat):
        return float(value)
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    return value


def json_kind(value: Any) -> str:
    """A value's type as an error message names it: JSON numbers by their Python type."""
    for base in (bool, int, float):
        if isinstance(value, base):
            return base.__name__
    return type(value).__name__


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep in a parsed value (iterative, so
    the check itself cannot recurse too deep)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


def parse_json_text(text: str, *, keep_number_text: bool = False,
                    max_depth: int = MAX_JSON_DEPTH) -> tuple[Any, str | None]:
    """(value, None), or (None, what is wrong) for text that is not one JSON value or nests
    arrays and objects deeper than `max_depth`. With `keep_number_text` numbers are
    `JsonInt`/`JsonFloat`, which remember their text."""
    hooks = {"parse_int": _json_int, "parse_float": _json_float} if keep_number_text else {}
    too_deep = f"nested more than {max_depth} levels deep"
    try:
        value = json.loads(text, **hooks)
    except json.JSONDecodeError as err:
        where = (f"column {err.colno}" if "\n" not in text.rstrip()
                 else f"line {err.lineno}, column {err.colno}")
        return None, f"not valid JSON: {err.msg} ({where})"
    except RecursionError:  # deeper than the interpreter's recursion limit (about 1,000)
        return None, too_deep
    if isinstance(value, (dict, list)) and _deeper_than(value, max_depth):
        return None, too_deep
    return value, None


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line of a JSON-lines file: its 1-based number, the parsed value, and what
    is wrong with it (`error`, then `value` is None); `text` is the line as read (bytes that are
    not UTF-8 as \\x.. escapes)."""

    number: int
    value: Any
    error: str | None
    text: str


def json_lines(path: str | Path, *, keep_number_text: bool = False) -> Iterator[JsonLine]:
    """Every non-blank line of a JSON-lines file, each decoded and parsed on its own, so a bad
    line (torn, not UTF-8, too deep, not JSON) is reported with its number and never stops the
    reading of the others. A UTF-8 byte-order mark before the first line and CRLF line ends are
    accepted. Whether a value must be an object is the caller's rule."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield JsonLine(number, None, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                               f"byte {err.start + 1} of the line)",
                               raw.decode("utf-8", "backslashreplace").rstrip("\r\n"))
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            value, error = parse_json_text(text, keep_number_text=keep_number_text)
            yield JsonLine(number, value, error, text)


# ----------------------------------------------------------------------------- raw records

@dataclass(frozen=True)
class RawRow:
    """One raw record as read. `where` names it for the user: "FILE line N" (JSON Lines, N from
    1), "FILE item I" (a .json array), "FILE row I" (parquet) or "ID[split] row I" (hub; I from
    0). `error` says why the row could not be read as JSON (then `value` is None and `text`
    holds the line as read)."""

    where: str
    value: Any
    error: str | None = None
    line: int | None = None
    text: str | None = None


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
             streaming: bool, revision: str | None = None,
             on_empty: Callable[[str], None] | None = None) -> Iterator[RawRow]:
    """Every raw record of the source, in order: the files one after the other, or a hub
    dataset at `revision` (a commit; None: the latest). `on_empty(label)` is called for a file
    (or dataset) that holds no record at all (empty, or only blank lines)."""
    if files is None:
        yield from _counted(_hub_rows(source, name=name, split=split, data_files=data_files,
                                      cache_dir=cache_dir, streaming=streaming,
                                      revision=revision), f"{source}[{split}]", on_empty)
        return
    for file in files:
        if file.suffix == ".parquet":
            rows = _parquet_rows(file, cache_dir)
        elif file.suffix == ".json" and _starts_with(file, b"["):
            rows = _json_array_rows(file)
        else:  # JSON Lines (a .json that is not one array is read as JSON Lines, as datasets did)
            rows = (RawRow(f"{file} line {line.number}", line.value, line.error, line.number,
                           line.text)
                    for line in json_lines(file, keep_number_text=True))
        yield from _counted(rows, str(file), on_empty)


def _counted(rows: Iterator[RawRow], label: str,
             on_empty: Callable[[str], None] | None) -> Iterator[RawRow]:
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty and on_empty is not None:
        on_empty(label)


def _starts_with(file: Path, prefix: bytes) -> bool:
    with open(file, "rb") as fh:
        head = fh.read(4096)
    return head.removeprefix(codecs.BOM_UTF8).lstrip().startswith(prefix)


def _json_array_rows(file: Path) -> Iterator[RawRow]:
    """The items of a .json file holding one array. The file parses as a whole, so damage
    anywhere in it (torn, not UTF-8, too deep) is an error for the file, naming where."""
    data = file.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ValueError(f"{file} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); "
                         "a .json file must be UTF-8") from None
    value, error = parse_json_text(text, keep_number_text=True, max_depth=MAX_JSON_DEPTH + 1)
    if error is not None:
        raise ValueError(f"{file}: {error}; a .json file holds one array of records (or one "
                         "record per line)")
    for index, item in enumerate(value):
        yield RawRow(f"{file} item {index}", item)


def _parquet_rows(file: Path, cache_dir) -> Iterator[RawRow]:
    import datasets  # heavy import (about 1.5 s): only when a parquet file is read

    try:
        ds = datasets.load_dataset("parquet", data_files=str(file), split="train",
                                   cache_dir=cache_dir)
    except Exception as e:  # datasets raises several types for unreadable files
        reason = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{file}: datasets could not read it ({type(e).__name__}: {reason}); "
                         "check that it is a parquet file with one record per row") from e
    for row_index, row in enumerate(ds):
        yield RawRow(f"{file} row {row_index}", row)


def _hub_rows(source: str, *, name, split, data_files, cache_dir, streaming,
              revision) -> Iterator[RawRow]:
    import datasets  # heavy import (about 1.5 s): only when data is actually loaded

    # streaming when a limit is set: the first N rows of a large hub set without downloading it
    ds = datasets.load_dataset(source, name, split=split, data_files=data_files,
                               cache_dir=cache_dir, streaming=streaming, revision=revision)
    if data_files is None:  # a hub repository, not local files through a builder
        from retro_search.provenance import hub_dataset_read

        hub_dataset_read(source, revision)
    for row_index, row in enumerate(ds):
        yield RawRow(f"{source}[{split}] row {row_index}", row)

