"""The evaluation stage: a real benchmark file through a scripted engine (exact grades and
metrics), and `retro-search eval` end to end with the tiny model: one call over several
benchmarks, sharding, merging, and resuming a killed call."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retro_search.cli import main
from retro_search.evaluation.benchmarks import load_problems
from retro_search.evaluation.config import EvalSettings, load_eval_config
from retro_search.evaluation.generate import (COLUMNS, BenchmarkShard, build_requests,
                                              evaluate_benchmark, evaluate_benchmarks, grade_rows,
                                              prompt_renderer, split_solution)
from retro_search.evaluation.metrics import summarize_benchmark
from retro_search.evaluation.outputs import EvalProgress
from retro_search.grading import Grader
from retro_search.prompts import PromptFormat
from scripted_engine import ScriptedEngine

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "benchmarks"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared benchmark data not present")

METRIC_KEYS = {"benchmark", "model", "tokenizer", "n", "n_problems", "n_generations",
               "accuracy", "accuracy_stderr", "pass@1", "maj@1", "mean_tokens", "median_tokens",
               "mean_tokens_correct", "mean_tokens_incorrect", "truncation_rate",
               "no_answer_rate"}


def tiny_cpu_stage(tmp_path: Path, limit: int, ks: str = "[1, 4, 8]") -> Path:
    """A stage config: the first `limit` AMC problems (n = 2), 8 tokens, the tiny model on CPU."""
    stage = tmp_path / "stage.yaml"
    stage.write_text(f"eval:\n  data_dir: {DATA}\n  limit: {limit}\n  max_tokens: 8\n  ks: {ks}\n"
                     "  grading_processes: 0\n  n_samples_per_benchmark: {amc23: 2}\n"
                     "engine:\n  name: transformers\n  batch_size: 8\n  device: cpu\n")
    return stage


def same_outputs(a: Path, b: Path) -> None:
    """Two folders of one benchmark's outputs hold the same generations and metrics."""
    import pandas as pd

    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
    pd.testing.assert_frame_equal(pd.read_parquet(a / "generations.parquet"),
                                  pd.read_parquet(b / "generations.parquet"))


def fake_format() -> PromptFormat:
    return PromptFormat(render_question=lambda q: f"<|User|>{q}<|Assistant|>", count_tokens=len)


@needs_data
def test_scripted_responses_on_a_real_benchmark_grade_and_score_as_expected():
    problems = load_problems("aime24", DATA, limit=6)
    gold = {p.id: p.gold for p in problems}
    index = {p.id: i for i, p in enumerate(problems)}

    def policy(request):
        _, pid, sample = request.request_id.split("/")
        g, i, s = gold[pid], index[pid], int(sample)
        right = f"Let me think.\n</think>\n\nThe answer is \\boxed{{{g}}}"
        wrong = f"Let me think.\n</think>\n\nThe answer is \\boxed{{{int(g) + 1}}}"
        return [
            (right, "stop", None),                                        # 0: both right
            (right if s == 0 else wrong, "stop", None),                   # 1: right, wrong
            ("Let me think about this for a long", "length", None),       # 2: cut, no answer
            ("Let me think.\n</think>\n\nI do not know.", "stop", None),   # 3: no answer
            (f"maybe \\boxed{{{g}}}\n</think>\n\n\\boxed{{999}}", "stop", None),  # 4: solution wrong
            (f"so \\boxed{{{g}}} but wait, let me", "length", None),       # 5: cut, box in reasoning
        ][i]

    engine = ScriptedEngine(policy)
    settings = EvalSettings(n_samples_per_benchmark={"aime24": 2}, ks=[1, 2], chunk_size=5,
                            max_tokens=100)
    render = prompt_renderer(fake_format().head, settings.user_template)
    with Grader(processes=0) as grader:
        rows = evaluate_benchmark("aime24", problems, engine, settings, render, grader,
                                  model="scripted", progress=False)

    assert engine.calls == 3  # 12 requests in chunks of 5
    assert [(r["problem_id"], r["sample"]) for r in rows] == \
           [(p.id, s) for p in problems for s in range(2)]
    assert [r["correct"] for r in rows] == [True, True, True, False, False, False,
                                            False, False, False, False, True, True]
    assert [r["extracted"] for r in rows[:4]] == [gold[problems[0].id]] * 2 + \
           [gold[problems[1].id], str(int(gold[problems[1].id]) + 1)]
    assert rows[4]["extracted"] is None and rows[6]["grade_error"] == "no_answer"
    assert rows[8]["extracted"] == "999"  # only the text after </think> is graded
    assert [r["reasoning_closed"] for r in rows[::2]] == [True, True, False, True, True, False]
    assert all(set(r) == set(COLUMNS) for r in rows)

    request = engine.requests[0]
    assert request.prompt.startswith("<|User|>" + problems[0].question)
    assert request.prompt.endswith("\\boxed{}.<|Assistant|><think>\n")
    assert request.max_tokens == 100 and request.temperature == 0.6 and request.top_p == 0.95
    assert engine.requests[0].seed != engine.requests[1].seed

    m = summarize_benchmark(rows, settings.ks_for(2))
    assert m["n_problems"] == 6 and m["n_samples"] == 2
    assert m["accuracy"] == pytest.approx(2.5 / 6)      # per problem 1, .5, 0, 0, 0, 1
    assert m["pass@2"] == pytest.approx(3 / 6)
    assert m["maj@2"] == pytest.approx(3 / 6)           # problem 1: tie, the first (right) wins
    assert m["truncation_rate"] == pytest.approx(4 / 12)
    assert m["no_answer_rate"] == pytest.approx(4 / 12)


def test_several_benchmarks_share_engine_calls_and_each_is_handed_back_when_complete():
    from retro_search.evaluation.benchmarks import Problem

    def shard(name, count):
        return BenchmarkShard(name, [Problem(str(i), f"{name} q{i}", "1") for i in range(count)],
                              prompt_renderer(fake_format().head, "{question}"))

    engine = ScriptedEngine(lambda request: ("</think>\n\n\\boxed{1}", "stop", None))
    settings = EvalSettings(n_samples_per_benchmark={"aime24": 2}, chunk_size=4)
    shards = [shard("aime24", 3), shard("math500", 3)]  # 6 + 3 requests: chunks of 4, 4, 1
    calls_when_handed_back = []
    with Grader(processes=0) as grader:
        for done, rows in evaluate_benchmarks(shards, engine, settings, grader, progress=False):
            calls_when_handed_back.append((done.benchmark, engine.calls, len(rows)))
            assert {r["benchmark"] for r in rows} == {done.benchmark}
            assert all(r["correct"] for r in rows)
    # aime24 ends in the second call, which also carries math500's first requests
    assert calls_when_handed_back == [("aime24", 2, 6), ("math500", 3, 3)]
    assert [r.request_id for r in engine.requests[4:8]] == \
        ["aime24/2/0", "aime24/2/1", "math500/0/0", "math500/1/0"]


def test_split_solution_takes_the_text_after_the_closer():
    assert split_solution("a\n</think>\n\nb \\boxed{1}") == ("\n\nb \\boxed{1}", True)
    assert split_solution("no closer \\boxed{2}") == ("no closer \\boxed{2}", False)


def test_unfinished_reasoning_is_not_graded_on_its_last_number_but_a_box_in_it_counts():
    rows = [{"gold": "4", "response": r} for r in (
        "2 + 2 = 4",                                  # cut off mid-reasoning: no answer
        "2 + 2 = 4\n</think>\n\nSo 2 + 2 = 4",        # a closed solution's plain answer counts
        "so it is \\boxed{4}",                        # a box in unfinished reasoning counts
    )]
    with Grader(processes=0) as grader:
        graded = grade_rows(rows, grader)
    assert [r["correct"] for r in graded] == [False, True, True]
    assert graded[0]["grade_error"] == "no_answer"


def test_request_seeds_depend_only_on_seed_benchmark_problem_and_sample():
    from retro_search.evaluation.benchmarks import Problem

    problems = [Problem(str(i), f"q{i}", "1") for i in range(4)]
    settings = EvalSettings()
    render = prompt_renderer(fake_format().head, settings.user_template)
    full = {(p.id, s): r.seed for p, s, r in build_requests("gsm8k", problems, 2, settings, render)}
    part = {(p.id, s): r.seed for p, s, r in build_requests("gsm8k", problems[2:], 2, settings, render)}
    assert all(full[key] == seed for key, seed in part.items())
    assert len(set(full.values())) == len(full)
    other = build_requests("math500", problems, 1, settings, render)
    assert other[0][2].seed != full[("0", 0)]


@pytest.mark.parametrize("name", ["default", "demo"])
def test_shipped_eval_configs_load(name):
    settings, engine = load_eval_config(ROOT / "config" / "eval" / f"{name}.yaml")
    assert len(settings.benchmarks) == 8 and engine == {"name": "transformers"}
    assert settings.samples_for("aime24") > settings.samples_for("math500") >= 1


def test_overrides_of_other_sections_are_rejected():
    with pytest.raises(ValueError, match="neither"):
        load_eval_config(None, ["search.rollouts=2"])


def test_eval_help_explains_inputs_outputs_and_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: retro-search eval" in text
    for needle in ("generations.parquet", "metrics.json", "--model", "--benchmarks",
                   "--benchmark NAME", "KEY=VALUE", "eval.limit", "eval.shard"):
        assert needle in text


@needs_data
@pytest.mark.slow
def test_eval_command_end_to_end_with_the_tiny_model(tiny_model_dir, tmp_path):
    import pandas as pd

    stage = tiny_cpu_stage(tmp_path, limit=3)
    code = main(["eval", "--model", tiny_model_dir, "--benchmark", "amc23", "--output-dir",
                 str(tmp_path / "eval"), "--config", str(stage), "--no-progress",
                 "eval.ks=[1,2,8]"])
    assert code == 0
    assert [p.name for p in (tmp_path / "eval").iterdir()] == ["amc23"]
    out = tmp_path / "eval" / "amc23"

    frame = pd.read_parquet(out / "generations.parquet")
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 6
    assert sorted(set(frame["problem_id"])) == ["0", "1", "2"]
    assert sorted(frame["sample"]) == [0, 0, 0, 1, 1, 1]
    assert set(frame["model"]) == {tiny_model_dir} and set(frame["benchmark"]) == {"amc23"}
    assert (frame["num_tokens"] <= 8).all() and (frame["num_tokens"] > 0).all()
    assert set(frame["finish_reason"]) <= {"stop", "length"}
    assert frame["gold"].tolist()[0] == "27"

    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["benchmark"] == "amc23" and metrics["n"] == 2 and metrics["n_problems"] == 3
    assert metrics["tokenizer"] == tiny_model_dir and metrics["n_generations"] == 6
    assert "pass@2" in metrics and "pass@8" not in metrics
    assert metrics["shard"] == 0 and metrics["num_shards"] == 1
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files
    # The progress folder holds the same files (hard links) until eval-merge reads the shard.
    saved, = (tmp_path / ".eval.progress").glob("amc23-*/metrics.json")
    assert saved.samefile(out / "metrics.json")


@needs_data
@pytest.mark.slow
def test_a_stage_config_names_the_model_once_and_a_bare_call_must_name_it(tiny_model_dir,
                                                                         tmp_path, capsys):
    stage = tiny_cpu_stage(tmp_path, limit=1)
    assert main(["eval", "--benchmark", "amc23", "--output-dir", str(tmp_path / "none"),
                 "--config", str(stage), "--no-progress"]) == 2
    assert "give --model M, or --config with a model_dir" in capsys.readouterr().err
    stage.write_text(stage.read_text() + f"model_dir: {tiny_model_dir}\n")
    assert main(["eval", "--benchmark", "amc23", "--output-dir", str(tmp_path / "eval"),
                 "--config", str(stage), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "amc23" / "metrics.json").read_text())
    assert metrics["model"] == tiny_model_dir


def test_one_call_over_several_benchmarks_writes_what_separate_calls_write(tiny_model_dir,
                                                                          tmp_path):
    stage = tiny_cpu_stage(tmp_path, limit=3)
    common = ["--model", tiny_model_dir, "--config", str(stage), "--no-progress"]
    benchmarks = ["amc23", "math500", "gsm8k"]
    # chunks of 4 requests: amc23's last ones and math500's first ones go to the engine together
    assert main(["eval", *common, "eval.chunk_size=4", "--benchmarks", *benchmarks,
                 "--output-dir", str(tmp_path / "together")]) == 0
    for name in benchmarks:
        assert main(["eval", *common, "--benchmark", name,
                     "--output-dir", str(tmp_path / name)]) == 0

    assert sorted(p.name for p in (tmp_path / "together").iterdir()) == sorted(benchmarks)
    for name in benchmarks:  # same seeds per problem and sample, so the same generations
        same_outputs(tmp_path / "together" / name, tmp_path / name / name)


@needs_data
@pytest.mark.slow
def test_shard_i_covers_shard_i_of_each_benchmark_with_more_than_i_shards(tiny_model_dir,
                                                                          tmp_path, capsys):
    import pandas as pd

    # eval.benchmarks from the config: amc23 in 1 shard, math500 in 2, gsm8k in 3
    common = ["eval", "--model", tiny_model_dir, "--config", str(tiny_cpu_stage(tmp_path, 4)),
              "--no-progress", "eval.benchmarks=[amc23,math500,gsm8k]",
              "eval.num_shards_per_benchmark.math500=2", "eval.num_shards_per_benchmark.gsm8k=3"]
    out = tmp_path / "shard-1"
    assert main(["--manifest", str(tmp_path / "shard-1.manifest.json"), *common,
                 "eval.shard=1", "--output-dir", str(out)]) == 0
    assert "amc23: 1 shard(s), none is shard 1: skipped" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["gsm8k", "math500"]
    for name, shards in (("math500", 2), ("gsm8k", 3)):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert (metrics["shard"], metrics["num_shards"]) == (1, shards)
        frame = pd.read_parquet(out / name / "generations.parquet")
        first_four = load_problems(name, DATA, limit=4)
        assert frame["problem_id"].tolist() == [p.id for p in first_four[1::shards]]
    manifest = json.loads((tmp_path / "shard-1.manifest.json").read_text())
    assert {str(Path(o["path"]).relative_to(out)) for o in manifest["outputs"]} == {
        "gsm8k/generations.parquet", "gsm8k/metrics.json",
        "math500/generations.parquet", "math500/metrics.json"}

    assert main([*common, "eval.shard=3", "--output-dir", str(tmp_path / "shard-3")]) == 2
    assert "none of ['amc23', 'math500', 'gsm8k'] has that shard" in capsys.readouterr().err


@needs_data
@pytest.mark.slow
def test_a_killed_call_resumes_at_its_first_unsaved_benchmark(tiny_model_dir, tmp_path,
                                                              monkeypatch):
    import retro_search.engines as engines

    load_engine = engines.load_engine
    generated: list[str] = []

    class Killed(BaseException):  # a kill, not an engine fault (those are retried and recorded)
        pass

    def engine_that(before_generate):
        def load(name, **kwargs):
            engine = load_engine(name, **kwargs)
            generate = engine.generate

            def watched(requests):
                before_generate(requests)
                return generate(requests)

            engine.generate = watched
            return engine

        return load

    def die_at_math500(requests):
        if any(r.request_id.startswith("math500/") for r in requests):
            raise Killed

    def record(requests):
        generated.extend(r.request_id for r in requests)

    out = tmp_path / "out"
    call = ["eval", "--model", tiny_model_dir, "--config", str(tiny_cpu_stage(tmp_path, 2)),
            "--no-progress", "eval.chunk_size=1", "--benchmarks", "amc23", "math500",
            "--output-dir", str(out)]
    monkeypatch.setattr(engines, "load_engine", engine_that(die_at_math500))
    with pytest.raises(Killed):
        main(call)
    assert not out.exists()  # nothing is promoted before every benchmark is done
    saved = [p.name.split("-")[0] for p in (tmp_path / ".out.progress").iterdir() if p.is_dir()]
    assert saved == ["amc23"]

    monkeypatch.setattr(engines, "load_engine", engine_that(record))
    assert main(call) == 0
    assert generated and all(r.startswith("math500/") for r in generated)  # amc23 was skipped

    # Killed after it finished: Snakemake deletes the outputs and runs it again; nothing is
    # generated again (no engine is even loaded), and the files are the same.
    finished = {name: (out / name / "generations.parquet").read_bytes()
                for name in ("amc23", "math500")}
    shutil.rmtree(out)
    generated.clear()
    monkeypatch.setattr(engines, "load_engine", None)
    assert main(call) == 0
    assert {name: (out / name / "generations.parquet").read_bytes()
            for name in ("amc23", "math500")} == finished

    monkeypatch.setattr(engines, "load_engine", load_engine)
    assert main([*call[:-1], str(tmp_path / "uninterrupted")]) == 0
    for name in ("amc23", "math500"):
        same_outputs(out / name, tmp_path / "uninterrupted" / name)


def test_progress_entries_are_keyed_by_the_settings_the_prompt_and_the_problems(tmp_path):
    from retro_search.evaluation.benchmarks import Problem

    problems = [Problem("0", "q0", "1")]
    shard = BenchmarkShard("aime24", problems, lambda q: f"<U>{q}<A>")
    progress = EvalProgress(tmp_path / "out", {"model": "m", "eval": {"seed": 0}})
    others = [
        EvalProgress(tmp_path / "out", {"model": "m", "eval": {"seed": 1}}).entry(shard),
        progress.entry(BenchmarkShard("aime24", problems, lambda q: f"<S><U>{q}<A>")),
        progress.entry(BenchmarkShard("aime24", [Problem("0", "q0", "2")], shard.render_prompt)),
        progress.entry(BenchmarkShard("aime25", problems, shard.render_prompt)),
    ]
    assert progress.entry(shard).parent == tmp_path / ".out.progress"
    assert progress.entry(shard).name.startswith("aime24-")
    assert len({progress.entry(shard), *others}) == 5


def test_promote_links_every_saved_benchmark_into_the_output_dir(tmp_path):
    from retro_search.evaluation.benchmarks import Problem

    row = {c: None for c in COLUMNS} | {"benchmark": "aime24", "problem_id": "0", "sample": 0,
                                        "seed": 1, "num_tokens": 3, "correct": True}
    shards = [BenchmarkShard(name, [Problem("0", "q", "1")], str) for name in ("aime24", "gsm8k")]
    progress = EvalProgress(tmp_path / "out", {"model": "m"})
    progress.save(shards[0], [row], {"benchmark": "aime24"})
    assert progress.finished(shards[0]) and not progress.finished(shards[1])
    with pytest.raises(FileNotFoundError, match="gsm8k"):
        progress.promote(shards)
    progress.save(shards[1], [row | {"benchmark": "gsm8k"}], {"benchmark": "gsm8k"})
    written = progress.promote(shards)
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in written) == [
        "aime24/generations.parquet", "aime24/metrics.json",
        "gsm8k/generations.parquet", "gsm8k/metrics.json"]
    assert json.loads((tmp_path / "out/gsm8k/metrics.json").read_text()) == {"benchmark": "gsm8k"}
    assert progress.finished(shards[0]) and progress.finished(shards[1])  # kept for a rerun
    assert progress.promote(shards) == written  # ... which links them again

    from retro_search.artifacts import drop_progress

    assert drop_progress(tmp_path / "out") == [progress.dir]
    assert not progress.dir.exists() and (tmp_path / "out/gsm8k/metrics.json").is_file()


@needs_data
@pytest.mark.slow
def test_sharded_eval_merged_equals_the_unsharded_eval(tiny_model_dir, tmp_path):
    import pandas as pd

    stage = tiny_cpu_stage(tmp_path, limit=5, ks="[1, 2]")
    common = ["--model", tiny_model_dir, "--benchmark", "amc23", "--config", str(stage),
              "--no-progress"]
    assert main(["eval", *common, "--output-dir", str(tmp_path / "whole")]) == 0
    for i in range(2):
        assert main(["eval", *common, "--output-dir", str(tmp_path / f"shard-{i}"),
                     "eval.num_shards=2", f"eval.shard={i}"]) == 0
    assert main(["eval-merge", "--config", str(stage),
                 "--inputs", *(str(tmp_path / f"shard-{i}/amc23/generations.parquet")
                               for i in range(2)),
                 "--metrics", *(str(tmp_path / f"shard-{i}/amc23/metrics.json") for i in range(2)),
                 "--generations", str(tmp_path / "merged.parquet"),
                 "--output", str(tmp_path / "merged.json")]) == 0
    # the shards' progress folders stay until eval-merge has read them
    assert (tmp_path / ".whole.progress").is_dir() and not list(tmp_path.glob(".shard-*"))

    whole = json.loads((tmp_path / "whole/amc23/metrics.json").read_text())
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged.pop("num_shards") == 2 and "shard" not in merged
    whole.pop("num_shards"), whole.pop("shard")
    assert merged == whole  # same seeds per problem and sample, so the same generations
    key = ["problem_id", "sample"]
    a = pd.read_parquet(tmp_path / "whole/amc23/generations.parquet").sort_values(
        key, ignore_index=True)
    b = pd.read_parquet(tmp_path / "merged.parquet").sort_values(key, ignore_index=True)
    pd.testing.assert_frame_equal(a, b)


@needs_data
@pytest.mark.slow
def test_eval_of_a_hub_model_records_its_id_and_cached_revision_in_the_manifest(tiny_model_dir,
                                                                               tmp_path):
    # A hub model as the Hugging Face cache holds it: refs/main names the snapshot's commit.
    sha = "0123456789abcdef0123456789abcdef01234567"
    hf_home = tmp_path / "hf"
    repo = hf_home / "hub" / "models--retro-search-test--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    out = tmp_path / "results" / "eval" / "tiny-hub"
    manifest = out / "manifest.json"
    # A fresh process, so huggingface_hub and transformers read this cache from the environment.
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "retro_search.cli", "--manifest", str(manifest), "eval",
         "--model", "retro-search-test/tiny", "--benchmark", "amc23", "--output-dir", str(out),
         "--config", str(tiny_cpu_stage(tmp_path, limit=1)), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    recorded = json.loads(manifest.read_text())
    [hub] = recorded["hub_models"]
    assert (hub["id"], hub["commit"]) == ("retro-search-test/tiny", sha)
    # the weights pinned by content (a copied snapshot: its files' sha256)
    weights = repo / "snapshots" / sha / "model.safetensors"
    assert hub["files"]["model.safetensors"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert not any("retro-search-test" in entry["path"] or str(hf_home) in entry["path"]
                   for entry in recorded["inputs"])
    assert {Path(e["path"]).name for e in recorded["outputs"]} == {"generations.parquet",
                                                                   "metrics.json"}


def test_eval_merge_with_a_missing_shard_is_an_error_naming_the_shards(tmp_path, capsys):
    metrics = tmp_path / "m.json"
    metrics.write_text(json.dumps({"benchmark": "amc23", "shard": 1, "num_shards": 2, "n": 1}))
    status = main(["eval-merge", "--inputs", str(tmp_path / "g.parquet"), "--metrics",
                   str(metrics), "--generations", str(tmp_path / "o.parquet"),
                   "--output", str(tmp_path / "o.json")])
    assert status == 2
    assert "expected shards 0..0 of 1, got [(1, 2)]" in capsys.readouterr().err
