"""Runtime settings: what changes how a stage's job runs, not what it writes.

The plan splits them off each stage's config (`split_runtime`): they are not part of the stage's
hash, so changing one reruns nothing and does not rename the experiment. The workflow writes them
to `runtime.yaml` beside the stage's `config.yaml` (`write_stage_file`); a job reads both
(`config.load_config_file`) and its manifest records them.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNTIME_FILE = "runtime.yaml"  # beside a stage's config.yaml

# How search, sample and eval put up with a faulty engine (`engines.calls`): keys of their
# sections `search`, `data.sample` and `eval`, the defaults of their schemas (SearchConfig,
# SampleSettings, EvalSettings). They change how a job runs, not what it writes: a request that
# works gives the same result whatever its tries and limits.
RETRIES = 2               # tries of a failed request after the first (same request, same seed)
REQUEST_TIMEOUT_S = None  # seconds per request; null: engines.calls.request_limit's formula
                          # (600 s + 0.5 s per token of its max_tokens); 0: no limit
MAX_FAILED_SHARE = 0.5    # a job with more of its items failed than this share fails (JobFailed)
ENGINE_CALL_KEYS = frozenset({"retries", "request_timeout_s", "max_failed_share"})

# Settings that change how a job runs, not what it writes, by section of a stage config (a
# dotted section is nested: `data.sample`; engine keys also inside engine.vllm /
# engine.transformers, as `engine.name=auto` nests them).
RUNTIME_KEYS: dict[str, frozenset[str]] = {
    "engine": frozenset({"device", "tensor_parallel_size", "gpu_memory_utilization",
                         "kv_cache_memory_bytes", "enable_prefix_caching", "enforce_eager",
                         "max_num_seqs", "batch_size", "max_batch_tokens",
                         # the openai engine's: how it talks to the server, not what it asks
                         "concurrency", "timeout_s", "max_retries", "retry_backoff_s",
                         "api_key_env"}),
    "grading": frozenset({"processes"}),
    "search": ENGINE_CALL_KEYS,
    "sample": ENGINE_CALL_KEYS,       # the sample stage's section
    "data.sample": ENGINE_CALL_KEYS,  # the same, as the data section (prepare's config) has it
    "eval": frozenset({"grading_processes"}) | ENGINE_CALL_KEYS,
    "sft": frozenset({"logging_steps", "save_steps", "save_total_limit", "dataset_num_proc",
                      "accelerate_config", "gradient_checkpointing"}),
}
# With sft.global_batch_size set, the split of the global batch into per-device rows and
# accumulation steps is how the job fits its GPUs, not what it trains.
SFT_BATCH_SPLIT = frozenset({"per_device_train_batch_size", "gradient_accumulation_steps", "gpus"})


@dataclass(frozen=True)
class EngineCallSettings:
    """The engine-call keys of one section (see ENGINE_CALL_KEYS above), as `engines.calls`
    takes them."""

    retries: int = RETRIES
    request_timeout_s: float | None = REQUEST_TIMEOUT_S
    max_failed_share: float = MAX_FAILED_SHARE

    @classmethod
    def of(cls, section: Any, where: str = "") -> "EngineCallSettings":
        """The settings of a section's dataclass (SearchConfig, SampleSettings, EvalSettings),
        checked: a bad value raises ValueError naming `where.KEY`."""
        return cls(**{key: getattr(section, key) for key in ENGINE_CALL_KEYS}).check(where)

    def check(self, where: str = "") -> "EngineCallSettings":
        prefix = f"{where}." if where else ""
        retries, timeout, share = self.retries, self.request_timeout_s, self.max_failed_share
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"{prefix}retries must be an integer >= 0 (tries of a failed "
                             f"request after the first), got {retries!r}")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float))
                                    or math.isnan(timeout) or timeout < 0):
            raise ValueError(f"{prefix}request_timeout_s must be seconds >= 0 (0: no limit) or "
                             f"null (600 s + 0.5 s per token of the request's max_tokens), "
                             f"got {timeout!r}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) \
                or not 0 <= share < 1:
            raise ValueError(f"{prefix}max_failed_share must be in [0, 1) (the share of a "
                             f"job's items that may fail), got {share!r}")
        return self

    def too_many_failed(self, failed: int, total: int) -> bool:
        """Whether `failed` of `total` items is more than a job may lose."""
        return total > 0 and failed > self.max_failed_share * total


def runtime_file_beside(config_file: str | Path | None) -> Path | None:
    """The `runtime.yaml` written beside a stage's `config.yaml`, when there is one."""
    if config_file is None or Path(config_file).name != "config.yaml":
        return None
    path = Path(config_file).with_name(RUNTIME_FILE)
    return path if path.exists() else None


def runtime_keys_of(section: str, values: dict[str, Any]) -> frozenset[str]:
    keys = RUNTIME_KEYS.get(section, frozenset())
    if section == "sft" and values.get("global_batch_size") is not None:
        keys |= SFT_BATCH_SPLIT
    return keys


def split_runtime(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stage config -> (what makes the output: hashed, the runtime settings: not hashed)."""
    hashed, runtime = copy.deepcopy(config), {}
    for section in RUNTIME_KEYS:
        values = _nested(hashed, section)
        if not isinstance(values, dict):
            continue
        holders = [(tuple(section.split(".")), values)]
        if section == "engine":
            holders += [((section, sub), values[sub]) for sub in ("vllm", "transformers")
                        if isinstance(values.get(sub), dict)]
        keys = runtime_keys_of(section, values)
        for path, holder in holders:
            for key in sorted(keys & holder.keys()):
                node = runtime
                for part in path:
                    node = node.setdefault(part, {})
                node[key] = holder.pop(key)
    return hashed, runtime


def _nested(config: dict[str, Any], section: str) -> Any:
    """config["data"]["sample"] for section "data.sample" (None where a part is missing)."""
    node: Any = config
    for part in section.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def is_runtime_override(key: str, cfg: dict[str, Any]) -> bool:
    """Whether an experiment-level key (`engine.gpu_memory_utilization`, `reasoner.sft.save_steps`,
    `data.sample.retries`) of the composed config `cfg` is a runtime setting: such overrides do
    not rename the experiment."""
    parts = key.lstrip("+~").split(".")
    if parts[0] in ("resources", "tracking"):  # what the jobs ask of SLURM, and where they log
        return True                            # (runtime.yaml of sft and eval): in no config.yaml
    values = cfg
    if parts[:2] == ["reasoner", "sft"]:
        parts, values = parts[1:], cfg.get("reasoner", {})
    if len(parts) == 3 and parts[0] == "engine" and parts[1] in ("vllm", "transformers"):
        parts = [parts[0], parts[2]]
    section, name = ".".join(parts[:-1]), parts[-1]
    if section not in RUNTIME_KEYS:
        return False
    return name in runtime_keys_of(section, _nested(values, section) or {})


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = (deep_merge(merged[key], value)
                       if isinstance(value, dict) and isinstance(merged.get(key), dict) else value)
    return merged


def write_stage_file(path: str | Path, plan_json: str, log: str | Path) -> None:
    """A stage's config.yaml or runtime.yaml from the plan's JSON (a rule's params, so that a
    changed value reruns the rule), with a line saying so in `log`. Run inside Snakemake by a
    local rule: a file per stage is not worth a job."""
    from retro_search.artifacts import write_text, write_yaml

    write_yaml(path, json.loads(plan_json), sort_keys=True)
    write_text(log, f"{path}: {plan_json}\n")
