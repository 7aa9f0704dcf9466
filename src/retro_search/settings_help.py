"""The settings a subcommand reads, with their defaults, for the end of its `--help`.

Read from the sections' schemas (the only source of defaults) when the help is shown, not when
the parser is built: importing the schemas takes most of a second, and every `retro-search` call
builds every subcommand's parser.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
from typing import Any

# command -> the sections it reads, in the order they are listed
COMMAND_SECTIONS = {
    "search": ("search", "model", "grading", "engine"),
    "sample": ("sample", "model", "engine"),
    "eval": ("eval", "engine", "tracking"),
    "sft-data": ("student", "sft"),
    "sft": ("student", "sft", "tracking"),
}
# The defaults of the engine section where no --config sets it (each command's loader).
DEFAULT_ENGINE = "transformers"
WIDTH = 44  # column where a setting's comment starts


def schema_of(section: str) -> type:
    from retro_search.evaluation.config import EvalSettings
    from retro_search.sampling import SampleSettings
    from retro_search.schemas import GradingSettings
    from retro_search.search_types import SearchConfig
    from retro_search.sft.config import ModelSettings, SFTSettings
    from retro_search.tracking import TrackingSettings

    return {"search": SearchConfig, "model": ModelSettings, "student": ModelSettings,
            "grading": GradingSettings, "sample": SampleSettings, "eval": EvalSettings,
            "sft": SFTSettings, "tracking": TrackingSettings}[section]


def settings_help(command: str) -> str:
    """The block ending `retro-search COMMAND --help`: every KEY=VALUE the command takes, at its
    default, with the schema's comment on it."""
    lines = [f"settings of `{command}` (KEY=VALUE overrides; shown at their defaults, which a "
             "--config file changes):"]
    for section in COMMAND_SECTIONS[command]:
        lines += engine_lines() if section == "engine" else section_lines(section, command)
    return "\n".join(lines) + "\n"


def section_lines(section: str, command: str) -> list[str]:
    schema = schema_of(section)
    comments = field_comments(schema)
    keep = None
    if command == "sft-data" and section == "sft":  # it reads only these of the section
        from retro_search.pipeline import SFT_DATA_KEYS

        keep = SFT_DATA_KEYS
    lines = []
    for field in dataclasses.fields(schema):
        if keep is not None and field.name not in keep:
            continue
        lines.append(line(f"{section}.{field.name}={render(default_of(field))}",
                          comments.get(field.name, "")))
    return lines


def engine_lines() -> list[str]:
    from retro_search.schemas import BUILTIN_ENGINE_NAMES, TRANSFORMERS_ARGS, VLLM_ARGS

    names = " | ".join(BUILTIN_ENGINE_NAMES)
    return [line(f"engine.name={DEFAULT_ENGINE}", f"{names}, or package.module:Class"),
            line("engine.KEY=VALUE", "the engine's own arguments; transformers: "
                 + ", ".join(TRANSFORMERS_ARGS) + "; vllm: any AsyncEngineArgs field, e.g. "
                 + ", ".join(VLLM_ARGS[:4]))]


def line(setting: str, comment: str) -> str:
    if not comment:
        return f"  {setting}"
    return f"  {setting:<{WIDTH}} {comment}" if len(setting) < WIDTH else f"  {setting}  {comment}"


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return "???"


def render(value: Any) -> str:
    """A default as it is written on the command line (Hydra's syntax)."""
    if value == "???":
        return "??? (required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        text = value.encode("unicode_escape").decode()  # "<think>\n" shows its newline
        return f"'{text}'" if not text or re.search(r"[\s,=\[\]{}]", text) else text
    return str(value)


def field_comments(schema: type) -> dict[str, str]:
    """The comment at the end of each field's line in the schema's source (its documentation)."""
    try:
        source = inspect.getsource(schema)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        match = re.match(r"\s{4}(\w+)\s*:", lines[token.start[0] - 1])
        if match and token.start[1] > match.end():
            found[match.group(1)] = token.string.lstrip("#").strip()
    return found
