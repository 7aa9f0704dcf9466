"""Configuration of the `search` command: packaged defaults < --config file < KEY=VALUE overrides.

Overrides use Hydra's dotted syntax (`search.rollouts=4`, `engine.batch_size=8`,
`model.path=/models/r1-7b`), so the same strings work from Snakemake and Hydra experiments.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from retro_search.search import SearchConfig


def default_config() -> DictConfig:
    text = resources.files("retro_search").joinpath("conf/search.yaml").read_text()
    return OmegaConf.create(text)


def compose(config_file: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config as a plain dict. Errors name the offending key or file."""
    cfg = default_config()
    try:
        if config_file is not None:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(config_file))
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"override {bad[0]!r} is not KEY=VALUE (e.g. search.rollouts=4)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ValueError(f"config value {err.full_key} is required (set it with {err.full_key}=...)") from None
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid config: {err}") from None
    search_config(resolved)  # validate early, before any model is loaded
    return resolved


def search_config(cfg: dict[str, Any]) -> SearchConfig:
    known = {f.name for f in dataclasses.fields(SearchConfig)}
    unknown = sorted(set(cfg["search"]) - known)
    if unknown:
        raise ValueError(f"unknown search setting(s) {unknown}; known: {sorted(known)}")
    return SearchConfig(**cfg["search"])


def engine_kwargs(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Engine name and constructor arguments: the engine section plus the model paths."""
    section = dict(cfg["engine"])
    name = section.pop("name")
    section.setdefault("model", cfg["model"]["path"])
    if cfg["model"].get("tokenizer"):
        section.setdefault("tokenizer", cfg["model"]["tokenizer"])
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
            loaded = OmegaConf.load(config_file)
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
