"""The typed schema of each config section: the only source of its defaults.

Hydra composes the pipeline's config over these dataclasses (registered in its ConfigStore as
`<group>/schema`, which each group file lists first in its defaults), so a group file holds only
what its preset changes, a key that no schema has is refused, and a value of the wrong type is
refused when the plan is built. Jobs read their sections back into the same dataclasses
(`config.load_section`, `check_section`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from retro_search.evaluation.config import EvalSettings
from retro_search.search_types import SearchConfig
from retro_search.sft.config import ModelSettings, SFTSettings


@dataclass
class GradingSettings:
    """math-verify in worker processes (prepare, search)."""

    processes: int = 2                   # worker processes per job (0 = grade in the job's process)
    timeout: float = 10.0                # seconds per answer before it counts as wrong

    def __post_init__(self) -> None:
        if self.processes < 0 or not self.timeout > 0:
            raise ValueError("grading.processes must be >= 0 and grading.timeout > 0")


# group -> schema of the section of the same name
GROUP_SCHEMAS: dict[str, type] = {"search": SearchConfig, "sft": SFTSettings, "eval": EvalSettings}
# Sections a `model` group file sets (the reviser and the student), and the root's own.
MODEL_SECTIONS: dict[str, type] = {"model": ModelSettings, "student": ModelSettings}
ROOT_SECTIONS: dict[str, type] = {"grading": GradingSettings}
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
