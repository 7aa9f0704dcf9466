"""The typed schema of each config section: the only source of its defaults.

Hydra composes the pipeline's config over these dataclasses (registered in its ConfigStore as
`<group>/schema`, which each group file lists first in its defaults), so a group file holds only
what its preset changes, a key that no schema has is refused, and a value of the wrong type is
refused when the plan is built. Jobs read their sections back into the same dataclasses
(`config.load_section`, `check_section`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from omegaconf import OmegaConf

from retro_search.evaluation.config import EvalSettings
from retro_search.search_types import SearchConfig
from retro_search.sft.config import ModelSettings, SFTSettings
from retro_search.tracking import TrackingSettings


@dataclass
class GradingSettings:
    """math-verify in worker processes (prepare, search)."""

    processes: int = 2                   # worker processes per job (0 = grade in the job's process)
    timeout: float = 10.0                # seconds per answer before it counts as wrong

    def __post_init__(self) -> None:
        if self.processes < 0:
            raise ValueError(f"grading.processes must be >= 0 (0 grades in the job's process), "
                             f"got {self.processes}")
        if not self.timeout > 0:
            raise ValueError(f"grading.timeout must be > 0 (seconds per answer), "
                             f"got {self.timeout}")


@dataclass
class JobResources:
    """What one job asks of SLURM besides GPUs (those come from the engine, and sft.gpus)."""

    cpus: int = 2                        # cpus_per_task
    mem_mb: int = 8000
    runtime: int = 60                    # minutes

    def __post_init__(self) -> None:
        for key in ("cpus", "mem_mb", "runtime"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")


@dataclass
class Resources:
    """What the heavy jobs ask of SLURM, per stage kind: runtime settings, never part of a
    stage's key (a change reruns nothing). The defaults fit the paper's runs; the CPU demos set
    small ones. Other jobs (a few minutes of CPU) keep their rule's."""

    sample: JobResources = field(default_factory=lambda: JobResources(8, 64000, 1440))
    search: JobResources = field(default_factory=lambda: JobResources(8, 64000, 1440))
    eval: JobResources = field(default_factory=lambda: JobResources(8, 64000, 1440))
    sft: JobResources = field(default_factory=lambda: JobResources(32, 512000, 2880))
    prepare: JobResources = field(default_factory=lambda: JobResources(8, 32000, 120))


# group -> schema of the section of the same name
GROUP_SCHEMAS: dict[str, type] = {"search": SearchConfig, "sft": SFTSettings, "eval": EvalSettings}
# Sections a `model` group file sets (the reviser and the student), and the root's own.
MODEL_SECTIONS: dict[str, type] = {"model": ModelSettings, "student": ModelSettings}
ROOT_SECTIONS: dict[str, type] = {"grading": GradingSettings, "resources": Resources,
                                  "tracking": TrackingSettings}  # tracking: runtime.py
SECTION_SCHEMAS: dict[str, type] = {**GROUP_SCHEMAS, **MODEL_SECTIONS, **ROOT_SECTIONS}


def node(schema: type) -> Any:
    """The schema as a config node that presets may change (a frozen dataclass would make a
    read-only node)."""
    cfg = OmegaConf.structured(schema)
    OmegaConf.set_readonly(cfg, False)
    return cfg


def register() -> None:
    """Store the schemas in Hydra's ConfigStore: `search/schema`, `sft/schema`, `eval/schema`
    (listed first by each file of those groups), `model_schema` (by each `model` file) and
    `root_schema` (by config.yaml)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=group, name="schema", node=node(schema))
    store.store(name="model_schema", node={k: node(s) for k, s in MODEL_SECTIONS.items()})
    store.store(name="root_schema", node={k: node(s) for k, s in ROOT_SECTIONS.items()})


def check_model(settings: ModelSettings, section: str) -> ModelSettings:
    """What a `model`/`student` section's dataclass cannot say by its types: the reasoning closer
    is not empty (the search and eval split every response at it) and the user template has the
    question's place."""
    if not settings.think_close.strip():
        raise ValueError(f"{section}.think_close must be the reasoning closer the model writes, "
                         f"e.g. {section}.think_close='</think>', got {settings.think_close!r}")
    if "{question}" not in settings.user_template:
        raise ValueError(f"{section}.user_template must contain '{{question}}' (where the question "
                         f"goes), got {settings.user_template!r}")
    return settings


# --- the engine section -------------------------------------------------------------------------
# The engine section has no dataclass and no Hydra schema, deliberately:
# - it holds one engine's constructor arguments, and the vLLM adapter passes its section through
#   to vLLM's AsyncEngineArgs (engines/vllm_engine.py), which has some 250 arguments that change
#   with vLLM's releases; mirroring them here would refuse a valid argument of the next vLLM;
# - a Hydra schema would fill every key into the composed section, which is hashed into the
#   search, sample and eval stages: every existing stage id would change.
# So the keys the project knows are typed here and checked when the plan is built (`check_engine`,
# from `config.check_sections`) and again before any engine loads (`config.engine_kwargs`). Keys
# are refused where the engine would refuse them: the transformers engine and `auto` take a fixed
# set (a close match is suggested); vLLM takes its other arguments as they are, except a near
# miss of a key listed here (`engine.gpu_memory_utilisation`) and the transformers engine's own
# keys; the openai engine takes OPENAI_ARGS; a user's engine class (`package.module:ClassName`)
# takes anything.

BUILTIN_ENGINE_NAMES = ("transformers", "vllm", "openai", "auto")
DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _optional_positive_int(value: Any) -> bool:
    return value is None or _positive_int(value)


def _fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


def _number(value: Any) -> bool:
    """A number >= 0 (not a bool, which Python counts as one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _device(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", value) is not None


# key -> (accepts(value), what is allowed)
ENGINE_VALUES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str) and (v in BUILTIN_ENGINE_NAMES or ":" in v),
             "transformers, vllm, openai, auto or package.module:ClassName"),
    "device": (_device, "auto, cpu, cuda or cuda:N"),
    "dtype": (lambda v: v in DTYPES, ", ".join(DTYPES)),
    "batch_size": (_positive_int, "an integer >= 1"),
    "max_batch_tokens": (_positive_int, "an integer >= 1"),
    "num_threads": (_optional_positive_int, "an integer >= 1 or null"),
    "attn_implementation": (lambda v: isinstance(v, str) and bool(v),
                            "a transformers attention name (grouped_sdpa, sdpa, eager, ...)"),
    "trust_remote_code": (lambda v: isinstance(v, bool), "true or false"),
    "tensor_parallel_size": (_positive_int, "an integer >= 1 (GPUs per engine)"),
    "gpu_memory_utilization": (_fraction, "a fraction in (0, 1]"),
    "max_model_len": (_optional_positive_int, "an integer >= 1 (tokens) or null"),
    "max_num_seqs": (_positive_int, "an integer >= 1"),
    "kv_cache_memory_bytes": (_optional_positive_int, "an integer >= 1 (bytes) or null"),
    "enable_prefix_caching": (lambda v: isinstance(v, bool), "true or false"),
    "enforce_eager": (lambda v: isinstance(v, bool), "true or false"),
    "enable_chunked_prefill": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (_is_int, "an integer"),
    "base_url": (lambda v: isinstance(v, str) and re.match(r"https?://[^/\s]+", v) is not None,
                 "an http(s) URL of the server's API, e.g. http://host:8000/v1"),
    "served_model": (lambda v: v is None or (isinstance(v, str) and bool(v)),
                     "the model id the server serves, or null (the experiment's model.path)"),
    "api_key_env": (lambda v: isinstance(v, str) and v.isidentifier(),
                    "the name of an environment variable, e.g. OPENAI_API_KEY"),
    "concurrency": (_positive_int, "an integer >= 1 (requests in flight)"),
    "timeout_s": (lambda v: v is None or (_number(v) and v > 0), "seconds > 0 or null"),
    "max_retries": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "retry_backoff_s": (_number, "seconds >= 0"),
    "tokenize": (lambda v: isinstance(v, bool), "true or false"),
}
# TransformersEngine's arguments but the model's (tests/test_config_faults.py compares them).
TRANSFORMERS_ARGS = ("device", "dtype", "batch_size", "max_batch_tokens", "num_threads",
                     "attn_implementation", "trust_remote_code")
# The vLLM arguments the project sets or documents (all of them AsyncEngineArgs fields).
VLLM_ARGS = ("dtype", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len",
             "max_num_seqs", "kv_cache_memory_bytes", "enable_prefix_caching", "enforce_eager",
             "enable_chunked_prefill", "seed", "trust_remote_code")
# OpenAIEngine's arguments but the model's (tests/test_openai_engine.py compares them).
OPENAI_ARGS = ("base_url", "served_model", "api_key_env", "concurrency", "timeout_s",
               "max_retries", "retry_backoff_s", "tokenize")
AUTO_KEYS = ("name", "device", "vllm", "transformers")  # engines._auto_engine's arguments
FROM_MODEL = {"model": "model.path", "tokenizer": "model.tokenizer", "revision": "model.revision"}
VLLM_INSTEAD = {"device": "vLLM picks its device itself",
                "batch_size": "vLLM batches by max_num_seqs and max_num_batched_tokens",
                "max_batch_tokens": "vLLM batches by max_num_seqs and max_num_batched_tokens"}
NEAR_MISS = 0.85  # a vLLM key this close to a listed one is taken for its typo


def _auto_homes(name: str, where: str) -> list[str]:
    """Where engine auto takes the setting `name`: engine.vllm.NAME and/or
    engine.transformers.NAME."""
    return [f"{where}.{sub}.{name}" for sub, keys in (("vllm", VLLM_ARGS),
            ("transformers", TRANSFORMERS_ARGS)) if name in keys and name != "device"]


def _engine_kind(engine: Mapping[str, Any]) -> str:
    """Whose rules the section follows: a built-in engine's name, or "user" (a class path)."""
    name = engine.get("name")
    return name if name in BUILTIN_ENGINE_NAMES else "user"


def engine_key_error(engine: Mapping[str, Any], key: str, where: str = "engine") -> str | None:
    """Why the engine section `engine` cannot take the key `key` (dotted, inside the section:
    `batch_size`, `vllm.max_num_seqs`), or None when it can. See the comment above."""
    parts, kind, holder, top = key.split("."), _engine_kind(engine), where, True
    if kind == "auto" and len(parts) > 1 and parts[0] in ("vllm", "transformers"):
        kind, holder, top, parts = parts[0], f"{where}.{parts[0]}", False, parts[1:]
    problem = _engine_key_problem(engine, kind, top, parts[0], holder, where)
    if problem or len(parts) == 1:
        return problem
    if kind in ("vllm", "user"):
        return None  # a key inside a mapping argument (vLLM's compilation_config, a user's own)
    return f"{where}.{key}: no such setting ({holder}.{parts[0]} is not a section)"


def _engine_key_problem(engine: Mapping[str, Any], kind: str, top: bool, name: str, holder: str,
                        where: str) -> str | None:
    """`engine_key_error` for the key `name` of the section at `holder`, which follows `kind`'s
    rules (`top`: the engine section itself, else one of auto's sections)."""
    from difflib import get_close_matches

    from retro_search.config import close_match_hint

    full = f"{holder}.{name}"
    if name in FROM_MODEL:
        return f"{full}: not an engine setting; the engine loads {FROM_MODEL[name]}"
    if name == "name":
        return None if top else f"{full}: the engine is named by {where}.name"
    if name in ("vllm", "transformers") and kind in ("transformers", "vllm", "openai"):
        return (f"{full}: a section of engine auto only; with {where}.name={engine.get('name')} "
                f"choose the engine's group instead (engine=vllm or engine=transformers_cpu) or "
                f"set {where}.name=auto")
    if kind == "auto":
        if name in AUTO_KEYS:
            return None
        if _auto_homes(name, where):
            return (f"{full}: engine auto takes each engine's settings in its own section: "
                    f"{' or '.join(_auto_homes(name, where))}")
        near = get_close_matches(name, VLLM_ARGS + TRANSFORMERS_ARGS, n=1, cutoff=0.6)
        if near and _auto_homes(near[0], where):
            return (f"{full}: no such setting; did you mean "
                    f"{' or '.join(_auto_homes(near[0], where))}?")
        return (f"{full}: not a setting of engine auto"
                f"{close_match_hint(name, AUTO_KEYS, where + '.')} (it takes name, device, and "
                "the vllm and transformers sections)")
    if kind == "transformers":
        known = TRANSFORMERS_ARGS if top else tuple(k for k in TRANSFORMERS_ARGS if k != "device")
        if name in known:
            return None
        if name == "device":  # engine.transformers.device: auto passes its own engine.device
            return f"{full}: engine auto's device is {where}.device"
        return (f"{full}: not a setting of the transformers engine"
                f"{close_match_hint(name, known, holder + '.')}")
    if kind == "vllm":
        if name in VLLM_ARGS:
            return None
        if name in TRANSFORMERS_ARGS:
            return (f"{full}: a setting of the transformers engine, not an argument of vLLM's "
                    f"engine ({VLLM_INSTEAD.get(name, 'see vllm.AsyncEngineArgs')})")
        near = get_close_matches(name, VLLM_ARGS, n=1, cutoff=NEAR_MISS)
        if near:
            return f"{full}: no such setting; did you mean {holder}.{near[0]}?"
        return None  # passed to vllm.AsyncEngineArgs as it is
    if kind == "openai":
        if name in OPENAI_ARGS:
            return None
        if name == "api_key":  # configs and runtime.yaml are recorded beside every artifact
            return (f"{full}: a key is never written into a config; export it and name the "
                    f"variable with {holder}.api_key_env (default OPENAI_API_KEY)")
        return (f"{full}: not a setting of the openai engine"
                f"{close_match_hint(name, OPENAI_ARGS, holder + '.')} (the server's own "
                "engine settings are the server's command line)")
    return None  # a user's engine class takes its own arguments


def check_engine(engine: Mapping[str, Any] | None, where: str = "engine") -> None:
    """The engine section, checked before any engine is built: its name, every key (refused
    where its engine would refuse it, with a close match), and the value of each key the project
    knows (ValueError naming the key and what is allowed)."""
    if not isinstance(engine, Mapping):
        raise ValueError(f"{where} must be a section (name: transformers, ...), got {engine!r}")
    name = engine.get("name")
    accepts, allowed = ENGINE_VALUES["name"]
    if not accepts(name):
        message = "is required" if name is None else "is not an engine"
        raise ValueError(f"{where}.name {message}: use {allowed}, got {name!r}")
    sections = ("vllm", "transformers")  # auto's; named first when another engine has them
    for key in sorted(engine, key=lambda k: k not in sections):
        value = engine[key]
        if key in sections and name == "auto":
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"{where}.{key} must be a section of {key}'s settings, got "
                                 f"{value!r}")
            for sub in value or {}:
                _check_engine_key(engine, f"{key}.{sub}", value[sub], where)
        else:
            _check_engine_key(engine, key, value, where)


def _check_engine_key(engine: Mapping[str, Any], key: str, value: Any, where: str) -> None:
    problem = engine_key_error(engine, key, where)
    if problem:
        raise ValueError(problem)
    name = key.rpartition(".")[2]
    if name in ENGINE_VALUES and _engine_kind(engine) != "user":
        accepts, allowed = ENGINE_VALUES[name]
        if not accepts(value):
            raise ValueError(f"{where}.{key} must be {allowed}, got {value!r}")
