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

    cfg = load_yaml(config_file)
    runtime = runtime_file_beside(config_file)
    if runtime is not None:
        cfg = OmegaConf.merge(cfg, load_yaml(runtime))
    return cfg


def load_yaml(path: str | Path) -> DictConfig:
    """A YAML file as a config; a file that is not valid YAML is refused in one line naming it
    and the line (ValueError), not with the parser's traceback."""
    import yaml

    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise yaml_error(err, path) from None


def yaml_error(err: Exception, path: str | Path | None = None) -> ValueError:
    """A YAML parser's error as one line: the file, the line (and column) and the problem."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = str(path or (mark.name if mark is not None else "a config file"))
    if mark is not None:
        where += f", line {mark.line + 1}, column {mark.column + 1}"
    parts = [getattr(err, "problem", None), getattr(err, "context", None)]
    what = " ".join(p for p in parts if p) or str(err).splitlines()[0]
    return ValueError(f"{where}: not valid YAML ({what})")


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
            loaded = load_config_file(config_file)
            if not isinstance(loaded, DictConfig):
                raise ValueError(f"{config_file}: not a mapping of config sections (model: ..., "
                                 "search: ...)")
            cfg = OmegaConf.merge(cfg, loaded)
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"override {bad[0]!r} is not KEY=VALUE (e.g. search.rollouts=4)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ValueError(f"config value {err.full_key} is required (set it with {err.full_key}=...)") from None
    except OmegaConfBaseException as err:
        raise config_error(err) from None
    # Validated early, before any model is loaded: the sections the search job reads.
    from retro_search.schemas import GradingSettings, check_engine, check_model
    from retro_search.sft.config import ModelSettings

    search_config(resolved)
    check_model(check_section(ModelSettings, "model", resolved["model"]), "model")
    check_section(GradingSettings, "grading", resolved["grading"])
    check_engine(resolved["engine"])
    return resolved


def search_config(cfg: dict[str, Any]) -> SearchConfig:
    return check_section(SearchConfig, "search", cfg["search"])


def engine_kwargs(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Engine name and constructor arguments: the engine section plus the model paths and the
    model's hub revision (`model.revision`: a commit, branch or tag of `model.path`), so that a
    pinned hub model is loaded at that commit, not at the latest one. The revision is added only
    when set: a user's engine class without a `revision` argument keeps working unpinned. The
    section is checked first (`schemas.check_engine`), so a bad key stops the job before the
    engine loads the model."""
    from retro_search.schemas import check_engine

    check_engine(cfg["engine"])
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
    return ValueError(value_message(err, key, message))


def value_message(err: OmegaConfBaseException, key: str, message: str) -> str:
    """A schema's refusal of a value: a scalar given for a list says how a list is written
    (`search.keywords=Wait` -> `search.keywords=[Wait]`); else OmegaConf's first line."""
    from omegaconf import ListConfig

    if isinstance(getattr(err, "child_node", None), ListConfig):
        return f"{key} must be a list, e.g. {key}=[{getattr(err, 'value', '...')}]"
    return f"{key}: {message}"


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
        raise ValueError(value_message(err, f"{section}.{err.full_key}", message)) from None


def check_sections(cfg: dict[str, Any]) -> None:
    """Each section a job reads, checked against the dataclass the job will build from it:
    unknown keys (with a close match), wrong types and impossible values (ValueError); the
    engine section against what its engine takes (`schemas.check_engine`)."""
    from retro_search.evaluation.config import EvalSettings
    from retro_search.schemas import GradingSettings, check_engine, check_model
    from retro_search.sft.config import SFTSettings, ModelSettings, check as check_sft

    for section in ("search", "sft", "model", "student", "grading", "engine", "eval"):
        if not isinstance(cfg.get(section), dict):
            raise ValueError(f"{section}: the section is missing or not a mapping, got "
                             f"{cfg.get(section)!r}")
    check_section(SearchConfig, "search", cfg["search"])
    sft = check_section(SFTSettings, "sft", cfg["sft"])
    check_sft(sft)
    check_training(sft, "sft")
    if "reasoner" in cfg:
        try:
            settings = check_section(SFTSettings, "reasoner.sft", cfg["reasoner"]["sft"])
            check_sft(settings)
            check_training(settings, "sft")
        except ValueError as err:  # check_sft names its keys sft.*
            message = str(err)
            raise ValueError(message if message.startswith("reasoner.") else
                             f"reasoner.{message}") from None
    for section in ("model", "student"):
        check_model(check_section(ModelSettings, section, cfg[section]), section)
    check_section(GradingSettings, "grading", cfg["grading"])
    check_engine(cfg["engine"])
    check_pipeline(cfg.get("pipeline"))
    check_section(EvalSettings, "eval", cfg["eval"])
    check_resources(cfg.get("resources"))


def check_resources(section: dict[str, Any] | None) -> None:
    """`resources.<kind>.<key>`: unknown kinds and keys, types, values below 1."""
    from retro_search.schemas import JobResources, Resources

    check_section(Resources, "resources", {k: {} for k in section or {}})
    for kind, values in (section or {}).items():
        try:
            check_section(JobResources, f"resources.{kind}", values)
        except ValueError as err:
            message = str(err)
            raise ValueError(message if message.startswith("resources.")
                             else f"resources.{kind}.{message}") from None


def check_training(settings: Any, section: str) -> None:
    """SFT values (an `SFTSettings`) that its dataclass's types allow but that would train
    nothing or fail in the trainer, after the model has loaded."""
    for key, low, strict in (("learning_rate", 0, True), ("num_train_epochs", 0, True),
                             ("weight_decay", 0, False), ("max_grad_norm", 0, False)):
        value = getattr(settings, key)
        if value < low or (strict and value == low):
            raise ValueError(f"{section}.{key} must be {'>' if strict else '>='} {low}, "
                             f"got {value}")


PIPELINE_KEYS = ("num_shards", "arms")  # config.yaml's pipeline section


def check_pipeline(section: dict[str, Any] | None) -> None:
    """The pipeline section (config.yaml): its keys, a shard count >= 1, and the arms as a list
    (a string would be read letter by letter)."""
    section = section or {}
    for key in section:
        if key not in PIPELINE_KEYS:
            raise ValueError(f"pipeline.{key}: no such setting"
                             f"{close_match_hint(key, PIPELINE_KEYS, 'pipeline.')}")
    shards = section.get("num_shards")
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ValueError(f"pipeline.num_shards must be an integer >= 1 (search jobs), "
                         f"got {shards!r}")
    arms = section.get("arms")
    if not isinstance(arms, list):
        raise ValueError(f"pipeline.arms must be a list, e.g. pipeline.arms=[{arms}]")


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Hydra multirun syntax: `search.rollouts=1,2,4` -> one override list per value
    (cartesian product over every swept key). Quoted values are not split."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser, parsed = OverridesParser.create(), []
    for override in overrides:
        try:
            parsed += parser.parse_overrides([override])
        except OverrideParseException as err:
            raise ValueError(f"override {override!r} is not KEY=VALUE in Hydra's syntax "
                             f"({str(err).splitlines()[0]})") from None
    runs: list[list[str]] = [[]]
    for override in parsed:
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            runs = [run + [f"{override.get_key_element()}={v}"] for run in runs for v in values]
        else:
            runs = [run + [override.input_line] for run in runs]
    return runs


WORKFLOW_KEYS = ("experiment", "overrides", "config_dir")  # Snakemake's --config KEY=VALUE
# The Hydra root the Snakefile reads unless --config config_dir=DIR: config/ of the checkout
# whose src/ the Snakefile imports this package from.
CHECKOUT = Path(__file__).resolve().parents[2]


def workflow_plan(config: dict[str, Any], config_dir: str | Path | None = None):
    """The plan of Snakemake's `--config` (`pipeline.Plan`; the Hydra root is `config_dir=` of
    it, else `config_dir`, else the checkout's config/), or SystemExit with one line saying what
    is refused: Snakemake prints an exception raised while it reads the Snakefile with a
    traceback."""
    import shlex

    from retro_search.pipeline import build_plan

    try:
        for key in config:
            if key not in WORKFLOW_KEYS:
                raise ValueError(f"--config {key}=...: not a setting of this workflow"
                                 f"{close_match_hint(key, WORKFLOW_KEYS)} (experiment=NAME, "
                                 "overrides=\"KEY=VALUE ...\", config_dir=DIR)")
        experiments = [e for e in str(config.get("experiment", "demo")).split(",") if e]
        overrides = shlex.split(str(config.get("overrides", "")))
        root = Path(config.get("config_dir") or config_dir or CHECKOUT / "config")
        if not root.is_dir():
            raise ValueError(f"--config config_dir={root}: no such folder"
                             if "config_dir" in config else f"no config folder at {root}")
        return build_plan(root, experiments, overrides)
    except ValueError as err:
        raise SystemExit(f"retro-search: error: {str(err).splitlines()[0]}") from None


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
    if key.startswith("engine.") and isinstance(cfg.get("engine"), dict):
        from retro_search.schemas import engine_key_error

        # A key the engine would refuse is named so, not offered to be added with +.
        problem = engine_key_error(cfg["engine"], key[len("engine."):])
        if problem:
            return ValueError(problem)
    node, found = cfg, []
    for part in section.split(".") if section else []:
        if not isinstance(node.get(part), dict):
            # a close match among the keys of the deepest section that does exist
            prefix = "".join(f"{p}." for p in found)
            return ValueError(f"{key}: no such setting (no section {section!r})"
                              f"{close_match_hint(part, list(node), prefix)}")
        node = node[part]
        found.append(part)
    from retro_search.schemas import SECTION_SCHEMAS

    # A section without a schema (data, engine, pipeline) takes new keys, e.g. engine arguments.
    addable = "" if section in SECTION_SCHEMAS else f" (a new key is added with +{key}=...)"
    return ValueError(f"{key}: no such setting{close_match_hint(name, list(node), section + '.')}"
                      f"{addable}")
