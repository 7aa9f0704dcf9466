"""One schema per section is the only source of its defaults; presets list only what they change."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from retro_search.pipeline import build_plan, compose
from retro_search.schemas import GROUP_SCHEMAS, SECTION_SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config"


def schema_defaults(schema: type) -> dict:
    values = {}
    for f in dataclasses.fields(schema):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


@pytest.mark.parametrize("group", sorted(GROUP_SCHEMAS))
def test_group_presets_start_from_the_schema_and_restate_none_of_its_defaults(group):
    defaults = schema_defaults(GROUP_SCHEMAS[group])
    for path in sorted((CONFIG / group).glob("*.yaml")):
        preset = yaml.safe_load(path.read_text()) or {}
        assert preset.pop("defaults") == ["schema", "_self_"], path
        for key, value in preset.items():
            assert key in defaults, f"{path.name}: {key} is not a {group} setting"
            default = list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]
            assert value != default, f"{path.name}: {group}.{key}={value!r} is the schema's default"


def test_model_files_set_only_what_makes_the_model_and_take_the_prompt_from_a_family_file():
    prompt_keys = {"user_template", "system_prompt", "think_open", "think_close"}
    for path in sorted((CONFIG / "model").glob("*.yaml")):
        preset = yaml.safe_load(path.read_text())
        entries = preset["defaults"]
        assert "/model_schema" in entries
        assert {next(iter(e)) for e in entries if isinstance(e, dict)} == {"/prompt@model",
                                                                          "/prompt@student"}
        for section in ("model", "student"):
            assert not prompt_keys & set(preset[section]), f"{path.name}: {section}"
    for path in (CONFIG / "prompt").glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())) == prompt_keys


def test_the_student_prompt_family_is_switched_in_one_place_and_eval_follows_it():
    paper = compose(CONFIG, "self_improve_r1_distill_7b")
    assert paper["model"]["user_template"] == paper["student"]["user_template"] != "{question}"
    plain = compose(CONFIG, "self_improve_r1_distill_7b", ["prompt@student=plain"])
    assert plain["student"]["user_template"] == "{question}"
    assert plain["model"]["user_template"] == paper["model"]["user_template"]
    experiment, = build_plan(CONFIG, ["self_improve_r1_distill_7b"],
                             ["prompt@student=plain"]).experiments
    evals = [s for s in experiment.stages.values() if s.kind == "eval"]
    assert evals and all(s.config["eval"]["user_template"] == "{question}" for s in evals)


def test_every_section_with_a_schema_composes_with_every_key_of_it():
    for experiment in ("demo", "traces_demo", "self_improve_r1_distill_7b",
                       "weak_to_strong_r1_distill_32b"):
        cfg = compose(CONFIG, experiment)
        for section, schema in SECTION_SCHEMAS.items():
            assert set(cfg[section]) == {f.name for f in dataclasses.fields(schema)}, section


def test_a_key_a_schema_lacks_is_refused_without_the_advice_to_add_it():
    with pytest.raises(ValueError) as err:
        build_plan(CONFIG, ["demo"], ["student.pth=x"])
    assert str(err.value) == ("student.pth: no such setting; did you mean student.path?")
