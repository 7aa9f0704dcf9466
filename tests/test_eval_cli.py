"""The evaluation stage: a real benchmark file through a scripted engine (exact grades and
metrics), and `retro-search eval` end to end with the tiny model."""

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
from retro_search.evaluation.generate import (COLUMNS, build_requests, evaluate_benchmark,
                                              grade_rows, prompt_renderer, split_solution)
from retro_search.evaluation.metrics import summarize_benchmark
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
    for needle in ("generations.parquet", "metrics.json", "--model", "--benchmark", "KEY=VALUE",
                   "eval.limit"):
        assert needle in text


@needs_data
@pytest.mark.slow
def test_eval_command_end_to_end_with_the_tiny_model(tiny_model_dir, tmp_path):
    import pandas as pd

    stage = tiny_cpu_stage(tmp_path, limit=3)
    out = tmp_path / "eval"
    code = main(["eval", "--model", tiny_model_dir, "--benchmark", "amc23", "--output-dir",
                 str(out), "--config", str(stage), "--no-progress", "eval.ks=[1,2,8]"])
    assert code == 0

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
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


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
                 "--inputs", *(str(tmp_path / f"shard-{i}/generations.parquet") for i in range(2)),
                 "--metrics", *(str(tmp_path / f"shard-{i}/metrics.json") for i in range(2)),
                 "--generations", str(tmp_path / "merged.parquet"),
                 "--output", str(tmp_path / "merged.json")]) == 0

    whole = json.loads((tmp_path / "whole/metrics.json").read_text())
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged.pop("num_shards") == 2 and "shard" not in merged
    whole.pop("num_shards"), whole.pop("shard")
    assert merged == whole  # same seeds per problem and sample, so the same generations
    key = ["problem_id", "sample"]
    a = pd.read_parquet(tmp_path / "whole/generations.parquet").sort_values(key, ignore_index=True)
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
    assert recorded["hub_models"] == [{"id": "retro-search-test/tiny", "revision": sha}]
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
