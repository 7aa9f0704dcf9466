"""Configuration: reading stage config files (with their runtime settings), the `search`
command's config (the sections' schemas < --config file < KEY=VALUE overrides), and the checks that
refuse a bad value when the plan is built, in one line naming the key.

Overrides use Hydra's dotted syntax (`search.rollouts=4`, `engine.batch_size=8`,
`model.path=/models/r1-7b`), so the same strings work from Snakemake and Hydra experiments.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue,
                              OmegaConfBaseException)

from retro_search.search_types import SearchConfig


def load_config_file(config_file: str | Path) -> DictConfig:
    """A config file; for a stage's `config.yaml`, with the `runtime.yaml` the workflow wrote
    beside it merged over it (settings that change how the job runs, not what it writes: not part
    of the stage's hash, see `retro_search.runtime.RUNTIME_KEYS`)."""
    from retro_search.runtime import runtime_file_beside

    cfg = OmegaConf.load(config_file)
    runtime = runtime_file_beside(config_file)
    if runtime is not None:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(runtime))
    return cfg


def load_config_dict(config_file: str | Path | None) -> dict[str, Any]:
    """`load_config_file` as a plain dict ({} for no file)."""
    if config_file is None:
        return {}
    return OmegaConf.to_container(load_config_file(config_file), resolve=True) or {}


def default_config() -> DictConfig:
    """The defaults of `retro-search search` (and of `sample`'s model section): each section's
    schema (`retro_search.schemas`); `model.path` is required, the engine is transformers."""
    from retro_search.schemas import GradingSettings, node
    from retro_search.sft.config import ModelSettings

    return OmegaConf.create({"model": node(ModelSettings), "engine": {"name": "transformers"},
                             "search": node(SearchConfig), "grading": node(GradingSettings)})


def compose(config_file: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config as a plain dict. Errors name the offending key or file."""
    cfg = default_config()
    try:
        if config_file is not None:
            cfg = OmegaConf.merge(cfg, load_config_file(config_file))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"override {bad[0]!r} is not KEY=VALUE (e.g. search.rollouts=4)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ValueError(f"config value {err.full_key} is required (set it with {err.full_key}=...)") from None
    except OmegaConfBaseException as err:
        raise config_error(err) from None
    search_config(resolved)  # validate early, before any model is loaded
    return resolved


def search_config(cfg: dict[str, Any]) -> SearchConfig:
    return check_section(SearchConfig, "search", cfg["search"])


def engine_kwargs(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Engine name and constructor arguments: the engine section plus the model paths and the
    model's hub revision (`model.revision`: a commit, branch or tag of `model.path`), so that a
    pinned hub model is loaded at that commit, not at the latest one. The revision is added only
    when set: a user's engine class without a `revision` argument keeps working unpinned."""
    section = dict(cfg["engine"])
    name = section.pop("name")
    section.setdefault("model", cfg["model"]["path"])
    if cfg["model"].get("tokenizer"):
        section.setdefault("tokenizer", cfg["model"]["tokenizer"])
    if cfg["model"].get("revision"):
        section.setdefault("revision", cfg["model"]["revision"])
    return name, section


def load_section(schema: type, section: str, config_file: str | Path | None = None,
                 overrides: Sequence[str] = ()) -> Any:
    """One config section as an instance of the dataclass `schema`.

    Values: the dataclass defaults < `config_file[section]` (a stage's resolved config, which may
    hold other sections too) < overrides `section.key=value`. Unknown keys and wrong types raise
    ValueError naming the key.
    """
    try:
        cfg = OmegaConf.structured(schema)
        if config_file is not None:
            loaded = load_config_file(config_file)
            if section in loaded:
                cfg = OmegaConf.merge(cfg, loaded[section])
        prefix = section + "."
        mine = [o[len(prefix):] for o in overrides if o.startswith(prefix)]
        others = [o for o in overrides if not o.startswith(prefix)]
        if others:
            raise ValueError(f"override(s) {others} do not belong to the {section!r} section")
        bad = [o for o in mine if "=" not in o]
        if bad:
            raise ValueError(f"override {prefix + bad[0]!r} is not KEY=VALUE")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(mine))
        return OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ValueError(f"config value {section}.{err.full_key} is required") from None
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid {section} config: {err}") from None


def config_error(err: OmegaConfBaseException) -> ValueError:
    """OmegaConf's error as one line naming the key: an unknown key of a schema with a close
    match, or a value the schema's type refuses."""
    key = getattr(err, "full_key", None)
    message = str(err).splitlines()[0]
    if not key:
        return ValueError(f"invalid config: {message}")
    schema = getattr(err, "object_type", None)
    if isinstance(err, (ConfigAttributeError, ConfigKeyError)) and dataclasses.is_dataclass(schema):
        section, _, name = key.rpartition(".")
        known = [f.name for f in dataclasses.fields(schema)]
        return ValueError(f"{key}: no such setting{close_match_hint(name, known, section + '.')}")
    return ValueError(f"{key}: {message}")


def close_match_hint(key: str, known: Sequence[str], prefix: str = "") -> str:
    """"; did you mean PREFIX.MATCH?" for a close match, else the known keys."""
    from difflib import get_close_matches

    near = get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {prefix}{near[0]}?" if near else f"; known: {sorted(known)}"


def check_section(schema: type, section: str, values: dict[str, Any] | None) -> Any:
    """A config section as an instance of its dataclass `schema`, or ValueError in one line
    naming the key, the value and what is allowed: an unknown key (with a close match), a wrong
    type, or a value the dataclass refuses (its __post_init__ checks)."""
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(schema)]
    for key in values:
        if key not in known:
            raise ValueError(f"{section}.{key}: no such setting{close_match_hint(key, known, section + '.')}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), values))
    except OmegaConfBaseException as err:
        message = str(err).splitlines()[0]
        raise ValueError(f"{section}.{err.full_key}: {message}") from None


def check_sections(cfg: dict[str, Any]) -> None:
    """Each section a job reads, checked against the dataclass the job will build from it:
    unknown keys (with a close match), wrong types and impossible values (ValueError)."""
    from retro_search.evaluation.config import EvalSettings
    from retro_search.sft.config import SFTSettings, ModelSettings, check as check_sft

    check_section(SearchConfig, "search", cfg["search"])
    check_sft(check_section(SFTSettings, "sft", cfg["sft"]))
    if "reasoner" in cfg:
        try:
            check_sft(check_section(SFTSettings, "reasoner.sft", cfg["reasoner"]["sft"]))
        except ValueError as err:  # check_sft names its keys sft.*
            message = str(err)
            raise ValueError(message if message.startswith("reasoner.") else
                             f"reasoner.{message}") from None
    check_section(ModelSettings, "student", cfg["student"])
    check_section(EvalSettings, "eval", cfg["eval"])


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Hydra multirun syntax: `search.rollouts=1,2,4` -> one override list per value
    (cartesian product over every swept key). Quoted values are not split."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    runs: list[list[str]] = [[]]
    for override in parsed:
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            runs = [run + [f"{override.get_key_element()}={v}"] for run in runs for v in values]
        else:
            runs = [run + [override.input_line] for run in runs]
    return runs


WORKFLOW_KEYS = ("experiment", "overrides", "config_dir")  # Snakemake's --config KEY=VALUE


def check_workflow_config(config: dict[str, Any]) -> None:
    """Snakemake's `--config` keys: an unknown one (e.g. `override=`, a typo of `overrides=`) is
    refused instead of silently ignored."""
    for key in config:
        if key not in WORKFLOW_KEYS:
            raise ValueError(f"--config {key}=...: not a setting of this workflow"
                             f"{close_match_hint(key, WORKFLOW_KEYS)} (experiment=NAME, "
                             "overrides=\"KEY=VALUE ...\", config_dir=DIR)")


def unknown_override_error(err: Exception, experiment: str, overrides: Iterable[str],
                           hydra_compose) -> Exception:
    """Hydra's "Could not override 'search.rollout'. To append ... use +search.rollout" as one
    line naming the key and a close match of the keys that exist (a typo is the usual cause)."""
    match = re.match(r"Could not override '([^']+)'", str(err))
    if not match:
        if isinstance(err.__cause__, OmegaConfBaseException):  # a schema refused a value
            return config_error(err.__cause__)
        return ValueError(str(err).splitlines()[0])
    key = match.group(1)
    section, _, name = key.rpartition(".")
    others = [o for o in overrides if not o.lstrip("+~").startswith(key + "=")]
    cfg = OmegaConf.to_container(hydra_compose("config", overrides=[f"experiment={experiment}",
                                                                    *others]))
    node = cfg
    for part in section.split(".") if section else []:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return ValueError(f"{key}: no such setting (no section {section!r})"
                          f"{close_match_hint(section.split('.')[0], list(cfg))}")
    from retro_search.schemas import SECTION_SCHEMAS

    # A section without a schema (data, engine, pipeline) takes new keys, e.g. engine arguments.
    addable = "" if section in SECTION_SCHEMAS else f" (a new key is added with +{key}=...)"
    return ValueError(f"{key}: no such setting{close_match_hint(name, list(node), section + '.')}"
                      f"{addable}")
