"""The results table as the summarize stage wrote it: its columns and, per row label, the text of
each cell, read back from the Markdown of `report.tables.to_markdown` or the CSV of
`report.tables.write_csv`; and `--cell ROW,COLUMN` checked against them."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

Cells = dict[str, dict[str, str]]  # row label -> column -> cell text

_SEPARATOR = re.compile(r"^\|[\s:|-]+\|$")


def column_name(header: str) -> str:
    """"arith acc" (how to_markdown heads a column) -> "arith/acc" (results_table's name)."""
    return "/".join(header.rsplit(" ", 1))


def _split_row(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_markdown(text: str) -> tuple[list[str], Cells]:
    """The first Markdown table of `text` (to_markdown puts a caption above it and a note on
    units below)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        return [], {}
    columns = [column_name(h) for h in _split_row(lines[start])[1:]]
    rows: Cells = {}
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            break
        if _SEPARATOR.match(line.strip()):
            continue
        cells = _split_row(line)
        rows[cells[0]] = dict(zip(columns, cells[1:]))
    return columns, rows


def parse_csv(text: str) -> tuple[list[str], Cells]:
    """write_csv's table: the arm first, then results_table's columns at full precision."""
    reader = list(csv.reader(text.splitlines()))
    if not reader:
        return [], {}
    columns = reader[0][1:]
    return columns, {row[0]: dict(zip(columns, row[1:])) for row in reader[1:] if row}


def read_table(path: Path) -> tuple[list[str], Cells]:
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    text = path.read_text(encoding="utf-8")
    columns, rows = parse_csv(text) if path.suffix == ".csv" else parse_markdown(text)
    if not columns or not rows:
        raise ValueError(f"{path} holds no results table")
    return columns, rows


def parse_cell(spec: str, table: str, columns: list[str], rows: Cells) -> tuple[str, str]:
    """`--cell ROW,COLUMN` -> (row, column); the column also as the Markdown header writes it
    ("arith acc"). A malformed spec or an unknown row or column is a ValueError listing the
    valid ones."""
    parts = [part.strip() for part in spec.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--cell takes ROW,COLUMN (e.g. retro_search,{columns[0]}), "
                         f"got {spec!r}")
    row, column = parts
    if column not in columns:
        column = column_name(column)
    if row not in rows:
        raise ValueError(f"no row {row!r} in {table}; rows: {', '.join(rows)}")
    if column not in columns:
        raise ValueError(f"no column {parts[1]!r} in {table}; columns: {', '.join(columns)}")
    return row, column


def as_float(text: str | None) -> float:
    """A cell's number; NaN for an empty or non-numeric cell (write_csv leaves NaN empty)."""
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan
