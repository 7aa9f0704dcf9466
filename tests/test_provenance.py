"""Manifests hash a stage's artifacts, not what is written beside them later, and record a hub
model by its id and revision."""

import json

import pytest

from retro_search.audit import audit
from retro_search.provenance import hash_paths, write_manifest

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding `retro-search-test/tiny` at commit SHA (refs/main -> SHA)."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    repo = cache / "models--retro-search-test--tiny"
    (repo / "snapshots" / SHA).mkdir(parents=True)
    (repo / "snapshots" / SHA / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hash_paths_of_a_folder_skip_logs_checkpoints_and_hidden_files(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "eval.benchmark.tsv").write_text("s\n1\n")
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-2" / "state.json").write_text("{}")
    (tmp_path / ".progress.jsonl").write_text("{}\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "metrics.json").write_text("{}")
    paths = [e["path"] for e in hash_paths([tmp_path])]
    assert paths == [str(tmp_path / "metrics.json"), str(tmp_path / "model" / "config.json")]


def test_a_log_rewritten_by_a_rerun_does_not_break_the_audit(tmp_path):
    stage = tmp_path / "results" / "eval" / "x-0123456789"
    (stage / "logs").mkdir(parents=True)
    (stage / "logs" / "eval.log").write_text("first run\n")
    (stage / "metrics.json").write_text('{"accuracy": 0.5}\n')
    write_manifest(stage / "manifest.json", stage="eval", config_file=None, inputs=[],
                   outputs=[stage], upstream=[], started="t0", command=["eval"])
    (stage / "logs" / "eval.log").write_text("second run\n")
    assert audit(stage).ok, audit(stage).problems
    (stage / "metrics.json").write_text('{"accuracy": 0.9}\n')
    report = audit(stage)
    assert not report.ok and any("metrics.json" in p for p in report.problems)


def test_a_hub_model_input_is_recorded_by_id_and_cached_revision_not_hashed(tmp_path, hub_cache):
    stage = tmp_path / "results" / "eval" / "x-0123456789"
    (stage / "metrics.json").parent.mkdir(parents=True)
    (stage / "metrics.json").write_text("{}")
    manifest = write_manifest(stage / "manifest.json", stage="eval", config_file=None, inputs=[],
                              outputs=[stage], upstream=[], started="t0", command=["eval"],
                              model_inputs=["retro-search-test/tiny"])
    assert manifest["hub_models"] == [{"id": "retro-search-test/tiny", "revision": SHA}]
    assert manifest["inputs"] == []
    assert json.loads((stage / "manifest.json").read_text())["hub_models"] == manifest["hub_models"]
    assert audit(stage).ok, audit(stage).problems


def test_a_local_model_folder_is_hashed_as_an_input(tmp_path):
    model = tmp_path / "results" / "sft" / "run" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    manifest = write_manifest(tmp_path / "out" / "manifest.json", stage="eval", config_file=None,
                              inputs=[], outputs=[], upstream=[], started="t0", command=["eval"],
                              model_inputs=[str(model)])
    assert [e["path"] for e in manifest["inputs"]] == [str(model / "config.json")]
    assert manifest["hub_models"] == []


@pytest.mark.parametrize("missing", ["./foo", "/abs/x", "results/eval/x/model", "~/models/x"])
def test_a_missing_model_path_is_an_error(tmp_path, hub_cache, missing, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths resolve in an empty folder
    with pytest.raises(FileNotFoundError, match="no such local path"):
        write_manifest(tmp_path / "out" / "manifest.json", stage="eval", config_file=None,
                       inputs=[], outputs=[], upstream=[], started="t0", command=["eval"],
                       model_inputs=[missing])


def test_a_hub_id_missing_from_the_cache_is_recorded_without_a_revision(tmp_path, hub_cache,
                                                                         caplog):
    # The stage has done its work by now: a missing commit must not fail it.
    manifest = write_manifest(tmp_path / "out" / "manifest.json", stage="eval", config_file=None,
                              inputs=[], outputs=[], upstream=[], started="t0", command=["eval"],
                              model_inputs=["retro-search-test/other"])
    assert manifest["hub_models"] == [{"id": "retro-search-test/other", "revision": None}]
    assert "without a revision" in caplog.text
