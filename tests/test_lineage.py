"""`retro-search lineage`: a results-table cell traced back to the raw input rows, on a small but
real results layout (real manifests, stage hashes, eval files and the summary's table writer):

    task (heldout.jsonl, sample.jsonl) + raw/traces.jsonl (outside results/) -> prepare
    prepare -> sft:ARM -> eval:ARM (+ task: the arith benchmark), ARM = original, retro_search
    eval:original + eval:retro_search -> summary (results.md/.csv, summary.json) -> experiments/x
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml

from retro_search.artifacts import write_generations, write_json, write_jsonl
from retro_search.cli import main
from retro_search.lineage import lineage, render_text
from retro_search.pipeline import stage_hash
from retro_search.provenance import write_manifest

ARMS = ("original", "retro_search")
# correct answers per (arm, problem, sample): 2 problems x 2 samples each
CORRECT = {"original": [True, False, False, False], "retro_search": [True, True, True, False]}


def make_stage(kind, name, config, upstream=(), files=None, manifest="manifest.json",
               outputs=None):
    """results/KIND/NAME-HASH with config.yaml, its files (path -> text or rows) and a manifest
    written by the real write_manifest (relative paths: the test runs in tmp_path)."""
    ids = [Path(u).name for u in upstream]
    stage = Path("results") / kind / f"{name}-{stage_hash(kind, config, ids)}"
    stage.mkdir(parents=True)
    (stage / "config.yaml").write_text(yaml.safe_dump(config))
    for file, content in (files or {}).items():
        (stage / file).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, list):
            write_jsonl(stage / file, content)
        else:
            (stage / file).write_text(content)
    write_manifest(stage / manifest, stage=kind, config_file=None, inputs=[],
                   outputs=outputs or [stage / f for f in files or {}],
                   upstream=list(upstream), started="t0", command=[kind])
    return stage


def generations(arm):
    rows = []
    for i, correct in enumerate(CORRECT[arm]):
        rows.append({"benchmark": "arith", "problem_id": f"p{i // 2}", "sample": i % 2,
                     "seed": i, "question": "1+1", "gold": "2", "response": "x",
                     "reasoning_closed": True, "extracted": "2" if correct else "3",
                     "correct": correct, "grade_error": None, "num_tokens": 10 + 5 * i,
                     "finish_reason": "stop", "model": arm, "error": None})
    return rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The layout above, built once (manifests take a package freeze each) in a folder that is
    the working directory while it is built, as the workflow's is."""
    import os

    folder = tmp_path_factory.mktemp("lineage")
    here = os.getcwd()
    os.chdir(folder)
    try:
        return folder, build_layout(folder)
    finally:
        os.chdir(here)


@pytest.fixture
def layout(built, tmp_path, monkeypatch):
    """A copy of the layout for one test to read or damage, in its working directory."""
    folder, stages = built
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return stages


def build_layout(tmp_path):
    from retro_search.evaluation.metrics import summarize_benchmark
    from retro_search.pipeline import eval_benchmark_dir
    from retro_search.report.experiment_index import write_experiment_index
    from retro_search.stages import summarize

    (tmp_path / "raw").mkdir()
    write_jsonl("raw/traces.jsonl", [{"id": f"t{i}", "question": "1+1"} for i in range(3)])
    raw_sha = hashlib.sha256((tmp_path / "raw" / "traces.jsonl").read_bytes()).hexdigest()
    task = make_stage("task", "miniature", {"task": {"seed": 7}},
                      files={"heldout.jsonl": [{"id": "p0"}, {"id": "p1"}],
                             "sample.jsonl": [{"id": "q0"}]})
    prepare = make_stage("prepare", "data",
                         {"data": {"source": "raw/traces.jsonl", "seed": 1},
                          "input_files": {"raw/traces.jsonl": raw_sha}},
                         [task], files={"traces.jsonl": [{"id": "t0"}, {"id": "t1"}],
                                        "stats.json": "{}"})
    evals = {}
    for arm in ARMS:
        model = {f"model/{f}": "w" for f in ("config.json", "model.safetensors",
                                            "tokenizer.json", "generation_config.json")}
        sft = make_stage("sft", f"{arm}-student",
                         {"student": {"path": "org/student", "revision": None},
                          "sft": {"seed": 0, "lr": 1e-4 if arm == "original" else 2e-4}},
                         [prepare], files=model)
        section = {"benchmarks": ["arith"], "num_shards": 1, "seed": 0,
                   "data_dirs": {"arith": str(task)}}
        config = {"eval": section, "arm": arm, "model_dir": f"{sft}/model",
                  "student": {"path": "org/student", "revision": None}}
        key = stage_hash("eval", config, [sft.name, task.name])
        stage = Path("results/eval") / f"{arm}-student-{key}"
        bench = stage / eval_benchmark_dir(section, "arith")
        bench.mkdir(parents=True)
        (stage / "config.yaml").write_text(yaml.safe_dump(config))
        rows = generations(arm)
        write_generations(bench / "generations.parquet", rows)
        write_json(bench / "metrics.json", {"benchmark": "arith", **summarize_benchmark(rows)})
        write_manifest(stage / "shard-0.manifest.json", stage="eval", config_file=None,
                       inputs=[], outputs=[stage / "shard-0"], upstream=[sft, task],
                       started="t0", command=["eval"])
        evals[arm] = stage
    summary_config = {"arms": list(ARMS)}
    summary = (Path("results/summary") /
               f"x-{stage_hash('summary', summary_config, [evals[a].name for a in ARMS])}")
    summary.mkdir(parents=True)
    (summary / "config.yaml").write_text(yaml.safe_dump(summary_config))
    metrics = [f"{evals[arm]}/{eval_benchmark_dir(section, 'arith')}/metrics.json"
               for arm in ARMS]
    result = summarize.run(metrics, list(ARMS), summary, title="x")
    write_manifest(summary / "manifest.json", stage="summarize", config_file=None,
                   inputs=metrics, outputs=list(result.outputs.values()),
                   upstream=[evals[a] for a in ARMS], started="t0", command=["summarize"])
    stages = {"task": task, "prepare": prepare, **{f"eval:{a}": evals[a] for a in ARMS},
              "summary": summary}
    index = {"experiment": "x", "stages": [{"role": role, "kind": d.parent.name, "id": d.name,
                                            "dir": str(d)} for role, d in stages.items()]}
    write_experiment_index("results/experiments/x", index, summary / "results.md")
    return {**stages, "experiment": Path("results/experiments/x")}


def test_a_cell_is_traced_to_the_raw_rows_and_reproduced(layout):
    result = lineage(layout["experiment"] / "results.md", cell="retro_search,arith/acc")
    assert result["exit_status"] == 0, result["could_not_be_verified"]
    [cell] = result["cells"]
    assert cell["shown"].startswith("75.0") and cell["reproduces"]
    assert cell["value"] == pytest.approx(75.0)
    [source] = result["evals"]
    assert source["dir"] == str(layout["eval:retro_search"])
    [bench] = source["benchmarks"]
    assert bench["generations"]["rows"] == 4
    assert (bench["generations"]["problems"], bench["generations"]["samples"]) == (2, 2)
    assert bench["metrics"]["matches_manifest"] is True
    ids = [node["id"] for node in result["chain"]]
    assert ids[0] == f"eval/{layout['eval:retro_search'].name}"
    assert f"task/{layout['task'].name}" in ids and f"prepare/{layout['prepare'].name}" in ids
    assert not any(i.startswith("eval/original") for i in ids)  # the other arm is not behind it
    task = next(n for n in result["chain"] if n["kind"] == "task")
    assert task["upstream"] == [] and task["role"] == "task"
    raw = {entry["path"]: entry["rows"] for entry in result["raw_inputs"]}
    assert raw[f"{layout['task']}/heldout.jsonl"] == 2
    assert raw[f"{layout['prepare']}/traces.jsonl"] == 2
    assert raw["raw/traces.jsonl"] == 3  # read from outside the results by prepare
    sft = next(n for n in result["chain"] if n["kind"] == "sft")
    [model] = [o for o in sft["outputs"] if "files" in o]
    assert model["files"] == 4 and model["safetensors"]["path"].endswith("model.safetensors")
    assert sft["config"]["values"]["student.path"] == "org/student"
    assert sft["seeds"] == {"sft": 0}
    text = render_text(result)
    assert f"{layout['task']}/heldout.jsonl: 2 rows" in text
    assert "reproduced from the metrics" in text and "-> OK" in text


def test_every_cell_one_block_per_arm(layout):
    result = lineage(layout["summary"] / "results.md")
    assert result["exit_status"] == 0, result["could_not_be_verified"]
    assert {c["row"] for c in result["cells"]} == {"original", "retro_search",
                                                   "retro vs original"}
    assert all(c["reproduces"] for c in result["cells"]), result["cells"]
    text = render_text(result)
    assert text.count("  arm original -> eval/") == 1 and text.count("  arm retro_search") == 1
    assert result["chain"][0]["kind"] == "eval"  # the summary is the table's, above the chain
    assert result["table"]["summary"]["dir"] == str(layout["summary"])
    # roles from the experiment whose index names this summary
    assert {n["role"] for n in result["chain"] if n["kind"] == "eval"} == \
        {"eval:original", "eval:retro_search"}


def test_the_relative_row_and_csv_cells_come_from_both_arms(layout):
    result = lineage(layout["summary"] / "results.csv", cell="retro vs original,arith/se")
    [cell] = result["cells"]
    assert cell["reproduces"] and cell["from"] == ["original:arith", "retro_search:arith"]
    assert {e["arm"] for e in result["evals"]} == set(ARMS)


def test_json_has_the_documented_structure(layout, capsys):
    status = main(["lineage", str(layout["experiment"] / "index.json"),
                   "--cell", "original,arith/len", "--json"])
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["table", "cell", "cells", "evals", "chain", "raw_inputs", "audit",
                            "could_not_be_verified", "exit_status"]
    assert set(result["table"]) >= {"path", "read", "sha256", "rows", "columns", "experiment",
                                    "summary"}
    assert result["table"]["columns"] == ["arith/acc", "arith/len", "average/acc", "average/len"]
    node = result["chain"][0]
    assert list(node) == ["role", "kind", "id", "dir", "exists", "depth", "config", "manifests",
                          "upstream", "seeds", "models", "outside_inputs", "outputs", "code",
                          "environment", "hub_models", "hub_datasets", "engine", "notes", "audit"]
    assert node["manifests"][0]["file"] == "shard-0.manifest.json"
    assert node["code"][0]["modules"] > 0 and node["environment"][0]["packages_sha256"]
    assert result["audit"]["target"] == str(layout["experiment"])


def test_a_tampered_file_is_named_under_could_not_be_verified(layout, capsys):
    traces = layout["prepare"] / "traces.jsonl"
    traces.write_text(traces.read_text() + '{"id": "forged"}\n')
    status = main(["lineage", str(layout["experiment"] / "results.md"),
                   "--cell", "retro_search,arith/acc"])
    assert status == 1
    out = capsys.readouterr().out
    section = out.split("could not be verified:")[1]
    assert f"{traces}" in section and f"[prepare/{layout['prepare'].name}]" in section
    assert "-> FAILED" in out
    result = lineage(layout["experiment"] / "results.md", cell="retro_search,arith/acc")
    prepare = next(n for n in result["chain"] if n["kind"] == "prepare")
    assert any(str(traces) in line for line in prepare["audit"]["problems"])


def test_an_edited_table_cell_does_not_reproduce(layout):
    table = layout["experiment"] / "results.md"
    table.write_text(table.read_text().replace("| retro_search | 75.0", "| retro_search | 95.0"))
    result = lineage(table, cell="retro_search,arith/acc")
    assert result["exit_status"] == 1
    assert not result["cells"][0]["reproduces"]
    lines = [i["line"] for i in result["could_not_be_verified"]]
    assert any(line.startswith("not reproduced: cell retro_search,arith/acc") for line in lines)
    assert any("results.md" in line and line.startswith("modified") for line in lines)


def test_a_missing_stage_folder_is_named_not_a_traceback(layout):
    sft = next(p for p in (layout["prepare"].parents[1] / "sft").iterdir()
               if p.name.startswith("retro_search"))
    shutil.rmtree(sft)
    result = lineage(layout["experiment"] / "results.md", cell="retro_search,arith/acc")
    assert result["exit_status"] == 1
    node = next(n for n in result["chain"] if n["kind"] == "sft")
    assert not node["exists"] and any("missing" in note for note in node["notes"])
    assert any(str(sft) in i["line"] for i in result["could_not_be_verified"])
    assert "(MISSING)" in render_text(result)


def test_an_older_manifest_without_the_new_keys_is_read(layout):
    manifest = layout["task"] / "manifest.json"
    data = json.loads(manifest.read_text())
    for key in ("kind", "environment"):
        data.pop(key)
    data["code"].pop("modules")
    manifest.write_text(json.dumps(data))
    result = lineage(layout["experiment"] / "results.md", cell="retro_search,arith/acc")
    task = next(n for n in result["chain"] if n["kind"] == "task")
    assert task["code"][0]["modules"] is None
    assert any("module hashes" in line for line in task["audit"]["unverified"])
    assert "module hashes not recorded" in render_text(result)


@pytest.mark.parametrize("cell, message", [
    ("retro_search,arith/accuracy", "columns: arith/acc, arith/len, average/acc, average/len"),
    ("nobody,arith/acc", "rows: original, retro_search, retro vs original"),
    ("retro_search", "--cell takes ROW,COLUMN"),
    ("retro_search,arith/acc,x", "--cell takes ROW,COLUMN"),
])
def test_a_bad_cell_is_one_line_and_exit_2(layout, capsys, cell, message):
    assert main(["lineage", str(layout["experiment"] / "results.md"), "--cell", cell]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retro-search lineage: error:") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_file_outside_a_results_layout_is_refused(tmp_path, capsys):
    table = tmp_path / "results.md"
    table.write_text("| arm | arith acc |\n|---|---:|\n| base | 1.0 |\n")
    assert main(["lineage", str(table)]) == 2
    assert "is not a results table" in capsys.readouterr().err


def test_the_markdown_header_form_of_a_column_is_accepted(layout):
    result = lineage(layout["experiment"] / "README.md", cell="original,arith acc")
    assert result["cells"][0]["column"] == "arith/acc" and result["cells"][0]["reproduces"]


def test_without_summary_json_the_arms_are_found_through_the_index(layout):
    (layout["summary"] / "summary.json").unlink()
    result = lineage(layout["experiment"] / "results.md", cell="original,average/acc")
    assert result["cells"][0]["reproduces"]
    assert result["evals"][0]["dir"] == str(layout["eval:original"])
    assert result["exit_status"] == 1  # the audit names the missing file
    assert any("summary.json" in line for line in result["table"]["summary"]["audit"]["problems"])


def test_a_summary_alone_finds_its_arms_through_its_manifest(layout):
    shutil.rmtree(layout["experiment"])
    (layout["summary"] / "summary.json").unlink()
    result = lineage(layout["summary"] / "results.csv", cell="original,arith/acc")
    assert result["cells"][0]["reproduces"] and result["cells"][0]["value"] == 25.0
    assert result["table"]["experiment"] is None
    assert result["audit"]["target"] == str(layout["summary"])
    assert result["chain"][0]["role"] == "eval:original"  # from its config's arm
