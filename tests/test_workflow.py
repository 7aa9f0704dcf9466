"""The Snakemake pipeline, run as a user runs it: the demo (the miniature of the paper) end to end
from a clean copy of the repository with nothing beside it, its targets (issue "Self-improvement
for real"), then a dry run after one search override, then an audit before and after tampering."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_helpers import SNAKEMAKE, copy_checkout, job_counts, workflow_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed"),
]


def run(cmd, cwd, timeout=1500, check=True):
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=workflow_env())
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return done


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # No ../shared beside it: the demo must run from a user's fresh clone alone.
    checkout = copy_checkout(tmp_path_factory.mktemp("clone"), shared=False)
    run([str(SNAKEMAKE), "--cores", "2"], checkout)
    return checkout


def leaves(tree, prefix=""):
    """The dotted paths of a nested dict's non-dict values."""
    found = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        found |= leaves(value, path + ".") if isinstance(value, dict) else {path}
    return found


def summary_of(demo):
    index = json.loads((demo / "results/experiments/demo/index.json").read_text())
    summary = next(s["dir"] for s in index["stages"] if s["role"] == "summary")
    return json.loads((demo / summary / "summary.json").read_text())


def test_demo_runs_end_to_end_and_writes_the_summary_table(demo):
    index = json.loads((demo / "results/experiments/demo/index.json").read_text())
    stages = {s["role"]: Path(demo / s["dir"]) for s in index["stages"]}
    table = (stages["summary"] / "results.md").read_text()
    assert "retro" in table.lower() and "arith" in table and "math500" in table
    for png in ("accuracy_vs_length.png", "trace_lengths.png", "boundary_acceptance.png"):
        assert (stages["summary"] / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((stages["merge"] / "stats.json").read_text())
    assert stats  # the search statistics exist
    assert (stages["sft:retro_search"] / "model" / "config.json").exists()


def test_every_stage_has_its_config_and_a_manifest_naming_its_upstream(demo):
    index = json.loads((demo / "results/experiments/demo/index.json").read_text())
    for entry in index["stages"]:
        stage_dir = demo / entry["dir"]
        assert (stage_dir / "config.yaml").exists(), entry
        manifests = list(stage_dir.glob("*manifest.json"))
        assert manifests, entry
        manifest = json.loads(manifests[0].read_text())
        for key in ("inputs", "outputs", "upstream", "code", "packages", "host", "started", "ended"):
            assert key in manifest
        assert manifest["outputs"] and all(len(o["sha256"]) == 64 for o in manifest["outputs"])
        if entry["kind"] in ("shard", "search", "merge", "sft", "summary"):
            assert manifest["upstream"], entry
        if entry["kind"] in ("sample", "prepare", "search", "sft", "eval"):
            # the runtime settings the job ran with, recorded, beside a config without them
            runtime = yaml.safe_load((stage_dir / "runtime.yaml").read_text())
            assert manifest["runtime"] == runtime, entry
            config = yaml.safe_load((stage_dir / "config.yaml").read_text())
            assert runtime and not leaves(runtime) & leaves(config), entry


def test_the_demo_shows_the_papers_effect_within_its_targets(demo):
    # Fixed seeds: these are the demo's own figures on this machine (README, "The demo").
    summary = summary_of(demo)
    headline = summary["search_headline"]
    assert headline["revised_share"] > 0.3
    assert headline["reasoning_change_pct"] <= -20  # revised traces at least 20% shorter
    rows = {row["arm"]: row for row in summary["table"]}
    original, retro = rows["original"], rows["retro_search"]
    # the student fine-tuned on revised traces: at least 15% shorter answers on the held-out
    # problems, accuracy not lower by more than 2 points
    assert (retro["arith/len"] - original["arith/len"]) / original["arith/len"] <= -0.15
    assert retro["arith/acc"] - original["arith/acc"] >= -2
    assert rows["base"]["arith/acc"] >= 80  # the trained reasoner solves the task


def test_a_runtime_setting_reruns_no_stage(demo):
    out = run([str(SNAKEMAKE), "-n", "--cores", "2", "--config",
               "overrides=grading.processes=1 eval.grading_processes=2 sft.logging_steps=5 "
               "reasoner.sft.save_steps=100 +engine.vllm.max_num_seqs=8"], demo).stdout
    # only the runtime.yaml files of the stages whose settings changed are rewritten
    counts = job_counts(out)
    assert set(counts) - {"total", "all"} == {"stage_runtime"}, counts


def test_nothing_reruns_when_nothing_changed(demo):
    out = run([str(SNAKEMAKE), "-n", "--cores", "2"], demo).stdout
    assert "Nothing to be done" in out


def test_a_search_override_reruns_search_and_downstream_only(demo):
    out = run([str(SNAKEMAKE), "-n", "--cores", "2", "--config", "overrides=search.gamma=0.8"],
              demo).stdout
    counts = job_counts(out)
    for upstream in ("task", "tiny_model", "sample", "prepare", "shard"):
        assert upstream not in counts, counts
    assert counts["retro_search"] == 2 and counts["merge"] == 1
    # the retro arm only: the reasoner is not retrained, nor the original arm
    assert counts["sft_data"] == 1 and counts["sft"] == 1
    # one eval job per shard index (arith has 2 shards in the demo, the others 1), each over
    # every benchmark, then one merge for the benchmark in 2 shards (arith)
    assert counts["eval"] == 2 and counts["eval_merge"] == 1
    assert counts["summarize"] == 1


def audit_demo(demo):
    return subprocess.run([sys.executable, "-m", "retro_search.cli", "audit",
                           "results/experiments/demo"], cwd=demo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(demo / "src")})


def test_audit_passes_on_the_intact_chain_and_reads_every_manifest(demo):
    ok = audit_demo(demo)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    every = sorted(demo.glob("results/*/*/*manifest.json"))
    assert f"audit: {len(every)} manifests checked" in ok.stderr, (len(every), ok.stderr)


def _append(path, text="\n"):
    with open(path, "a") as fh:
        fh.write(text)


def _edit_json(path, **values):
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def _first(demo, pattern):
    return next(demo.glob(pattern)).relative_to(demo)


# tamper -> (the file it touches, what the audit must say about it)
TAMPERS = {
    "a stage's output": ("results/prepare/*/traces.jsonl", _append, "modified: output {path}"),
    "the experiment's table": ("results/experiments/demo/results.md", _append,
                               "modified: output {path}"),
    "the experiment's index": ("results/experiments/demo/index.json", _append,
                               "modified: output {path}"),
    "a merge config": ("results/merge/*/config.yaml", _append, "modified: input {path}"),
    "a shard config": ("results/shard/*/config.yaml", lambda p: _append(p, "num_shards: 3\n"),
                       "misnamed: {dir}"),
    "a benchmark copy": ("data/benchmarks/math500.jsonl", _append, "modified: input {path}"),
    "an extra file beside the weights": (
        "results/sft/retro_search-*/model/config.json",
        lambda p: (p.parent / "adapter_config.json").write_text("{}"),
        "unexpected: {dir}/adapter_config.json"),
    "an eval shard manifest": ("results/eval/retro_search-*/shard-1.manifest.json",
                               lambda p: _edit_json(p, seeds={"eval": 7}), "stale: summary/"),
    "an environment file": ("envs/core.yaml", lambda p: _append(p, "# pinned elsewhere\n"),
                            "different environment: "),
    "a module of the search": ("src/retro_search/search.py", lambda p: _append(p, "# edited\n"),
                               "different code: results/search/"),
}


@pytest.mark.parametrize("tamper", TAMPERS)
def test_audit_names_each_tamper(demo, tamper):
    pattern, change, expected = TAMPERS[tamper]
    path = _first(demo, pattern)
    folder = (demo / path).parent
    entries = set(folder.iterdir())
    before = {f: (f.read_bytes(), f.stat()) for f in entries if f.is_file()}
    change(demo / path)
    try:
        bad = audit_demo(demo)
    finally:  # put the demo back as it was, times included (Snakemake compares them)
        for extra in set(folder.iterdir()) - entries:
            extra.unlink()
        for file, (data, stat) in before.items():
            file.write_bytes(data)
            os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert expected.format(path=path, dir=path.parent) in bad.stdout, bad.stdout
    if tamper == "a module of the search":  # and what was made from it; not what came before
        line = next(l for l in bad.stdout.splitlines() if l.startswith(expected))
        assert "made from it:" in line and "results/summary/" in line, line
        for before_search in ("tiny_model", "task", "prepare", "shard"):
            assert f"different code: results/{before_search}/" not in bad.stdout, bad.stdout
    assert audit_demo(demo).returncode == 0


def test_a_readme_edit_flags_nothing(demo):
    _append(demo / "README.md", "A note.\n")
    ok = audit_demo(demo)
    assert ok.returncode == 0, ok.stdout


def test_lineage_walks_a_cell_of_the_demo_table_back_to_the_raw_rows(demo):
    done = subprocess.run([sys.executable, "-m", "retro_search.cli", "lineage",
                           "results/experiments/demo/results.md", "--cell",
                           "retro_search,arith/acc", "--json"], cwd=demo, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(demo / "src")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    result = json.loads(done.stdout)
    [cell] = result["cells"]
    assert cell["reproduces"], cell
    kinds = {node["kind"] for node in result["chain"]}
    # the revised arm's model <- its training rows <- the search <- the prepared traces <- the
    # reasoner's own samples <- the task's teacher traces and the untrained model
    assert {"sft", "sft_data", "merge", "search", "shard", "prepare", "sample", "task",
            "tiny_model"} <= kinds, kinds
    raw = {Path(entry["path"]).name for entry in result["raw_inputs"]}
    assert {"teacher_traces.jsonl", "shard-0.jsonl", "traces.jsonl"} <= raw, raw
    assert not result["could_not_be_verified"], result["could_not_be_verified"]


@pytest.fixture(scope="module")
def report(demo):
    """The demo's `snakemake --report report.html`, built once."""
    run([str(SNAKEMAKE), "--report", "report.html"], demo)
    return demo / "report.html"


def report_items(html):
    """The report's items as its page script reads them: path -> {name, labels, mime_type,
    data_uri, ...}."""
    # (the page's embedded libraries have "var results = " lines of their own)
    line = next(l for l in html.splitlines() if l.strip().startswith("var results = {"))
    return json.loads(line.strip().removeprefix("var results = ").removesuffix(";"))


def test_report_bundles_the_results_table_search_statistics_and_plots(demo, report):
    import base64

    html = report.read_text()
    index = json.loads((demo / "results/experiments/demo/index.json").read_text())
    summary = demo / next(s["dir"] for s in index["stages"] if s["role"] == "summary")
    for name in ("results.html", "results.csv", "search_stats.html", "accuracy_vs_length.png",
                 "trace_lengths.png", "boundary_acceptance.png"):
        assert name in html, name
        # embedded, not linked: the report opens on another machine
        encoded = base64.b64encode((summary / name).read_bytes()).decode()
        assert encoded[len(encoded) // 2:][:64] in html, name


def test_report_shows_the_tables_inline_labelled_by_experiment_arms_and_benchmarks(demo, report):
    items = {Path(path).name: item for path, item in report_items(report.read_text()).items()}
    # Snakemake shows text/html items in the page (an iframe), Markdown and CSV only as downloads
    assert items["results.html"]["mime_type"] == items["search_stats.html"]["mime_type"] == "text/html"
    benchmarks = summary_of(demo)["benchmarks"]
    for name, item in items.items():
        labels = item["labels"]
        assert labels["experiment"] == "demo", name  # names, not the stage's hashed folder
        assert labels["arms"] == "base, original, retro_search", name
        assert labels["benchmarks"] == f"{', '.join(benchmarks[:3])} + {len(benchmarks) - 3} more"
    assert items["results.html"]["labels"]["item"] == "results table"


def test_report_front_page_shows_the_headline_table(demo, report):
    # the workflow description: each arm's accuracy and length per benchmark and on average
    html = report.read_text()
    line = next(l for l in html.splitlines() if l.strip().startswith("var workflow_desc = "))
    description = json.loads(line.strip().removeprefix("var workflow_desc = ").removesuffix(";"))
    rows = {row["arm"]: row for row in summary_of(demo)["table"]}
    assert "Headline results: demo" in description
    for arm in ("base", "original", "retro_search", "retro vs original"):
        assert f">{arm}</th>" in description, arm
    # arith, the task the tiny model learnt, has its own row: the mean over benchmarks it mostly
    # fails would hide the effect
    for column in ("arith/acc", "average/acc"):
        assert f">{rows['retro_search'][column]:.1f} ± " in description, column


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (.ci/run "
                    "installs it)")
def test_report_front_page_shows_the_headline_table_in_a_browser(demo, report, tmp_path):
    # Rendered by a headless browser: the page's scripts build the front page from the report's
    # data; the rendered DOM must show each arm's accuracy on arith and on average.
    def chromium(*args):
        return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                               "--window-size=1600,1000", "--virtual-time-budget=10000", *args,
                               report.as_uri()], capture_output=True, text=True, timeout=180)

    dom = chromium("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-3000:]
    rows = {row["arm"]: row for row in summary_of(demo)["table"]}
    assert "Headline results: demo" in dom.stdout
    for arm in ("base", "original", "retro_search"):
        assert f">{arm}</th>" in dom.stdout, arm
        for column in ("arith/acc", "average/acc"):
            assert f">{rows[arm][column]:.1f} ± " in dom.stdout, (arm, column)
    shot = chromium(f"--screenshot={tmp_path / 'report.png'}")
    assert shot.returncode == 0, shot.stderr[-3000:]
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_experiment_index_shows_the_results_table(demo):
    index = json.loads((demo / "results/experiments/demo/index.json").read_text())
    summary = demo / next(s["dir"] for s in index["stages"] if s["role"] == "summary")
    table = (summary / "results.md").read_text()
    assert (demo / "results/experiments/demo/results.md").read_text() == table
    assert table.strip() in (demo / "results/experiments/demo/README.md").read_text()


def test_rerun_stages_give_byte_identical_artifacts(demo):
    # One job of each kind (the reasoner's training aside, the longest), rerun with the same
    # seeds: every artifact comes out with the same bytes; only manifests' times differ. Each
    # run forces the first job of a chain and asks for its last: Snakemake reruns the jobs in
    # between, and no other (a target further down would pull in the demo's other jobs through
    # the forced one). Downstream chains first, so that no chain starts on an input rerun
    # before it. Last in this file.
    chains = [("results/summary/*/manifest.json",),
              ("results/search/*/shard-0.manifest.json", "results/merge/*/manifest.json",
               "results/sft_data/retro_search-*/manifest.json",
               "results/sft/retro_search-*/manifest.json",
               "results/eval/retro_search-*/shard-0.manifest.json"),
              ("results/sample/*/shard-0.manifest.json", "results/prepare/*/manifest.json",
               "results/shard/*/shard-0.manifest.json"),
              ("results/task/*/manifest.json",),
              ("results/tiny_model/*/manifest.json",)]
    for chain in chains:
        targets = [_first(demo, pattern) for pattern in chain]
        before = {t: json.loads((demo / t).read_text()) for t in targets}
        done = run([str(SNAKEMAKE), "--cores", "2", str(targets[-1]),
                    "--forcerun", str(targets[0])], demo)
        out = done.stdout + done.stderr
        assert job_counts(out)["total"] == len(chain), (chain, out[-2000:])
        for target in targets:
            after = json.loads((demo / target).read_text())
            assert after["started"] >= before[target]["ended"], target  # it did run again
            assert after["outputs"] == before[target]["outputs"], target
