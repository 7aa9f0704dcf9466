"""Manifests hash a stage's artifacts, not what is written beside them later, record a hub
model by its id, commit and file hashes, and pin their upstream manifests; the audit names each
kind of tamper on a small chain of real manifests (the demo's chain: tests/test_workflow.py)."""

import hashlib
import json

import pytest

from retro_search.audit import audit
from retro_search.pipeline import stage_hash
from retro_search.provenance import hash_paths, write_manifest

SHA = "0123456789abcdef0123456789abcdef01234567"
SHA256_OF_EMPTY = hashlib.sha256(b"{}").hexdigest()


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
    assert manifest["hub_models"] == [{"id": "retro-search-test/tiny", "revision": None,
                                       "commit": SHA, "files": {"config.json": SHA256_OF_EMPTY}}]
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
    assert manifest["hub_models"] == [{"id": "retro-search-test/other", "revision": None,
                                       "commit": None, "files": {}}]
    assert "without a commit" in caplog.text
    assert any("without a commit" in line for line in audit(tmp_path / "out").unverified)


# --- the audit on a small chain of real manifests: prepare -> search -> merge -------------------

def make_stage(root, kind, name, config, upstream=(), files=None):
    """A finished stage as the workflow leaves it: results/KIND/NAME-HASH/ with its config.yaml,
    its files and its manifest (written after the upstream stages' manifests)."""
    import yaml

    ids = [u.name for u in upstream]
    stage = root / "results" / kind / f"{name}-{stage_hash(kind, config, ids)}"
    stage.mkdir(parents=True)
    (stage / "config.yaml").write_text(yaml.safe_dump(config))
    for file, text in (files or {"out.jsonl": f"{kind}\n"}).items():
        (stage / file).write_text(text)
    write_manifest(stage / "manifest.json", stage=kind, config_file=None, inputs=[],
                   outputs=[stage / f for f in (files or {"out.jsonl": ""})],
                   upstream=list(upstream), started="t0", command=[kind])
    return stage


@pytest.fixture
def chain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare = make_stage(tmp_path, "prepare", "p", {"data": {"seed": 1}})
    search = make_stage(tmp_path, "search", "s", {"search": {"seed": 2}}, [prepare])
    merge = make_stage(tmp_path, "merge", "m", {}, [search])
    return prepare, search, merge


def problems(target, kind):
    return [p for p in audit(target).problems if p.startswith(kind)]


def test_the_intact_chain_passes_and_every_manifest_pins_its_upstream(chain):
    prepare, search, merge = chain
    report = audit(merge)
    assert report.ok, report.problems
    assert len(report.checked) == 3
    up = json.loads((search / "manifest.json").read_text())["upstream"][0]
    assert up["manifests"] == {"manifest.json": sha256(prepare / "manifest.json")}


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_stage_rerun_after_its_downstream_makes_the_downstream_stale(chain):
    prepare, search, merge = chain
    write_manifest(prepare / "manifest.json", stage="prepare", config_file=None, inputs=[],
                   outputs=[prepare / "out.jsonl"], upstream=[], started="t1", command=["again"])
    [line] = problems(merge, "stale")
    assert line.startswith(f"stale: search/{search.name} was made from an earlier ")
    assert str(prepare / "manifest.json") in line


def test_an_edited_config_is_modified_and_its_folder_misnamed(chain):
    prepare, _, merge = chain
    (prepare / "config.yaml").write_text("data:\n  seed: 3\n")
    assert any(str(prepare / "config.yaml") in p for p in problems(merge, "modified"))
    [line] = problems(merge, "misnamed")
    assert str(prepare) in line


def test_a_file_added_to_an_output_folder_is_unexpected(chain):
    _, search, merge = chain
    (search / "adapter_config.json").write_text("{}")
    [line] = problems(merge, "unexpected")
    assert str(search / "adapter_config.json") in line
    # what is written beside artifacts on purpose is not: logs, progress files, runtime.yaml
    (search / "adapter_config.json").unlink()
    (search / "logs").mkdir()
    (search / "logs" / "search.log").write_text("x")
    (search / ".out.jsonl.progress-1.jsonl").write_text("{}")
    (search / "runtime.yaml").write_text("engine: {batch_size: 2}\n")
    assert audit(merge).ok, audit(merge).problems


def test_a_stage_made_by_another_module_is_flagged_with_what_was_made_from_it(tmp_path,
                                                                              monkeypatch):
    import retro_search.provenance as provenance

    monkeypatch.chdir(tmp_path)
    prepare = make_stage(tmp_path, "prepare", "p", {})
    real = provenance.loaded_modules
    # search ran with a search.py other than the one checked out now
    monkeypatch.setattr(provenance, "loaded_modules",
                        lambda: {**real(), "retro_search/search.py": "0" * 64})
    search = make_stage(tmp_path, "search", "s", {}, [prepare])
    monkeypatch.setattr(provenance, "loaded_modules", real)
    merge = make_stage(tmp_path, "merge", "m", {}, [search])
    [line] = problems(merge, "different code")
    assert line.startswith(f"different code: {search} was made with retro_search/search.py")
    assert line.endswith(f"made from it: {merge}")
    assert audit(prepare).ok


def test_edited_versions_or_seeds_in_a_manifest_are_caught(chain):
    prepare, search, merge = chain
    manifest = json.loads((search / "manifest.json").read_text())
    manifest["packages"]["torch"] = "0.0.1"
    (search / "manifest.json").write_text(json.dumps(manifest))
    assert any("package freeze in the manifest of search/" in p
               for p in problems(merge, "modified"))
    assert any("torch 0.0.1 -> " in p for p in problems(merge, "different environment"))
    assert problems(merge, "stale")  # merge was made from the manifest as it was
    manifest = json.loads((prepare / "manifest.json").read_text())
    manifest["seeds"]["data"] = 7
    (prepare / "manifest.json").write_text(json.dumps(manifest))
    assert any("models or seeds in the manifest of prepare/" in p
               for p in problems(prepare, "modified"))


def test_a_package_installed_since_is_a_different_environment(chain, monkeypatch):
    import retro_search.audit as audit_module

    _, _, merge = chain
    real = audit_module.package_freeze
    monkeypatch.setattr(audit_module, "package_freeze",
                        lambda sites: {**real(sites), "torch": "99.0"})
    assert any("torch" in p and "-> 99.0" in p for p in problems(merge, "different environment"))


def test_the_experiment_folder_is_audited_with_its_table(chain):
    from retro_search.report.experiment_index import write_experiment_index

    prepare, search, merge = chain
    (merge / "results.md").write_text("| arm | acc |\n")
    index = {"experiment": "x", "stages": [{"role": r, "kind": d.parent.name, "id": d.name,
                                            "dir": str(d.relative_to(merge.parents[2]))}
                                           for r, d in (("prepare", prepare), ("search", search),
                                                        ("merge", merge))]}
    # the table is an output of merge here, as the summary's is in the workflow
    write_manifest(merge / "manifest.json", stage="merge", config_file=None, inputs=[],
                   outputs=[merge / "out.jsonl", merge / "results.md"], upstream=[search],
                   started="t0", command=["merge"])
    folder = merge.parents[2] / "results" / "experiments" / "x"
    write_experiment_index(folder, index, merge / "results.md")
    report = audit(folder)
    assert report.ok, report.problems
    assert len(report.checked) == 4
    (folder / "results.md").write_text("| arm | acc |\n| a | 100 |\n")
    assert any(str(folder / "results.md") in p for p in problems(folder, "modified"))


def test_a_hub_dataset_read_is_recorded_with_its_commit_and_unpinned_is_named(tmp_path,
                                                                             monkeypatch):
    import huggingface_hub.constants

    import retro_search.provenance as provenance

    monkeypatch.setattr(provenance, "_HUB_DATASETS", [])
    refs = tmp_path / "hub" / "datasets--org--bench" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA + "\n")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pinned = "f" * 40
    provenance.hub_dataset_read("org/bench")            # the latest: main, as the cache has it
    provenance.hub_dataset_read("org/other", pinned)    # a commit pins itself
    provenance.hub_dataset_read("org/bench")            # once per dataset and revision
    stage = tmp_path / "out"
    manifest = write_manifest(stage / "manifest.json", stage="eval", config_file=None, inputs=[],
                              outputs=[], upstream=[], started="t0", command=["eval"])
    assert manifest["hub_datasets"] == [
        {"id": "org/bench", "revision": None, "commit": SHA},
        {"id": "org/other", "revision": pinned, "commit": pinned}]
    report = audit(stage)
    assert report.ok
    hubs = [line for line in report.unverified if "hub dataset" in line]
    assert hubs == [f"{tmp_path.name}/out: hub dataset org/bench was read unpinned "
                    f"(latest, then {SHA})"]


def test_the_models_a_stage_config_names_are_pinned_in_its_manifest(tmp_path, hub_cache):
    import yaml

    model = tmp_path / "results" / "sft" / "s-1" / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    stage = tmp_path / "results" / "search" / "x"
    stage.mkdir(parents=True)
    (stage / "config.yaml").write_text(yaml.safe_dump({
        "model": {"path": str(model), "revision": None, "tokenizer": None},
        "student": {"path": "retro-search-test/tiny", "revision": "main", "tokenizer": None}}))
    manifest = write_manifest(stage / "manifest.json", stage="search", config_file=None,
                              inputs=[], outputs=[], upstream=[], started="t0", command=["s"])
    assert str(model / "model.safetensors") in {e["path"] for e in manifest["inputs"]}
    assert [(h["id"], h["revision"], h["commit"]) for h in manifest["hub_models"]] == \
        [("retro-search-test/tiny", "main", SHA)]
    (model / "model.safetensors").write_bytes(b"other weights")
    assert any(f"modified: input {model / 'model.safetensors'}" in p
               for p in audit(stage).problems)


def test_stages_run_in_one_environment_with_different_packages_are_named(chain):
    prepare, search, merge = chain
    # search's job saw another torch in the same environment than prepare's (restored since)
    for stage in (search, merge):
        manifest = json.loads((stage / "manifest.json").read_text())
        manifest["packages"]["torch"] = "0.0.1"
        manifest["environment"]["packages_sha256"] = hashlib.sha256(
            json.dumps(manifest["packages"], sort_keys=True).encode()).hexdigest()
        (stage / "manifest.json").write_text(json.dumps(manifest))
    lines = [p for p in problems(merge, "different environment") if " and " in p]
    assert len(lines) == 1 and "torch" in lines[0] and "0.0.1" in lines[0], lines


@pytest.mark.parametrize("damage", [b"data: [unclosed\n", b"- a list\n", b"\xff\xfe bytes\n"])
def test_a_damaged_config_or_manifest_is_a_problem_not_a_traceback(chain, damage):
    prepare, _, merge = chain
    (prepare / "config.yaml").write_bytes(damage)
    assert any(str(prepare / "config.yaml") in p for p in problems(merge, "modified"))
    (prepare / "manifest.json").write_bytes(damage)
    assert any(str(prepare / "manifest.json") in p for p in problems(merge, "modified"))
