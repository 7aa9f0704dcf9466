"""The sample stage: questions in, the model's own responses out (`retro_search.sampling`,
`retro-search sample`), on the tiny model with the transformers engine on the CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retro_search.cli import main
from retro_search.engines.base import GenerationResult
from retro_search.questions import load_questions
from retro_search.sampling import (SampleSettings, plan_requests, read_samples, sample_row,
                                   sample_seed, sample_settings)
from retro_search.search import derive_seed

QUESTIONS = [
    {"id": "q1", "problem": "What is 2 + 2?", "answer": "4"},
    {"id": "q2", "problem": "Find $x$ if $3x + 5 = 20$.", "answer": "5"},
    {"id": "q3", "problem": "How many sides does a hexagon have?", "answer": 6},
    {"id": "q4", "problem": "What is $7 \\times 8$?", "answer": "56"},
]


def write_rows(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture
def questions_file(tmp_path):
    return write_rows(tmp_path / "questions.jsonl", QUESTIONS)


# --- settings and requests (no model) ---------------------------------------------------------

def test_settings_errors_name_the_key():
    with pytest.raises(ValueError, match=r"data\.sample\.n must be an integer of at least 1"):
        sample_settings({"questions": "q.jsonl", "n": 0}, "data.sample")
    with pytest.raises(ValueError, match=r"data\.sample: unknown setting\(s\) \['samples'\]"):
        sample_settings({"questions": "q.jsonl", "samples": 2}, "data.sample")
    with pytest.raises(ValueError, match=r"data\.sample\.questions is required"):
        sample_settings({"n": 2}, "data.sample")
    with pytest.raises(ValueError, match=r"data\.sample\.format: unknown question format"):
        sample_settings({"questions": "q.jsonl", "format": "nonsense"}, "data.sample")
    with pytest.raises(ValueError, match=r"data\.sample\.model\.think_close"):
        sample_settings({"questions": "q.jsonl", "model": {"path": "m", "think_close": "</end>"}},
                        "data.sample")


def test_n_requests_per_question_with_seeds_from_the_question_id_and_sample_index(
        questions_file):
    questions = load_questions(questions_file, format={"preset": "problem_answer", "id": "id"}
                               ).records
    settings = SampleSettings(questions=questions_file, n=3, seed=7, max_tokens=50)
    planned, skipped = plan_requests(questions, settings, lambda q: f"<Q>{q}<think>\n")
    assert not skipped and len(planned) == 4 * 3
    assert [p.request.request_id for p in planned[:3]] == ["q1/0", "q1/1", "q1/2"]
    assert planned[4].request.prompt == "<Q>Find $x$ if $3x + 5 = 20$.<think>\n"
    for item in planned:
        assert item.request.seed == derive_seed("sample", 7, item.question.id, item.sample)
        assert item.request.max_tokens == 50
    # a question's seeds do not depend on the other questions of the shard
    alone, _ = plan_requests(questions[2:3], settings, lambda q: q)
    assert [p.request.seed for p in alone] == [p.request.seed for p in planned[6:9]]
    assert sample_seed(7, "q3", 0) != sample_seed(8, "q3", 0)


def test_a_question_whose_prompt_fills_the_context_is_skipped_with_its_reason(questions_file):
    questions = load_questions(questions_file, format="problem_answer").records
    planned, skipped = plan_requests(questions, SampleSettings(questions="x", max_tokens=100),
                                     lambda q: q, count_tokens=len, context_length=25)
    assert [q.question for q, _ in skipped] == ["Find $x$ if $3x + 5 = 20$.",
                                               "How many sides does a hexagon have?"]
    assert skipped[0][1] == "the prompt has 26 tokens, the engine's context holds 25"
    assert [p.request.max_tokens for p in planned] == [25 - 14, 25 - 21]


def test_shards_partition_the_questions_by_position(questions_file):
    shards = [load_questions(questions_file, format={"preset": "problem_answer", "id": "id"},
                             num_shards=3, shard=i).records for i in range(3)]
    assert [[q.id for q in s] for s in shards] == [["q1", "q4"], ["q2"], ["q3"]]
    assert [q.position for q in shards[0]] == [0, 3]


def test_bad_question_records_are_named_or_quarantined(tmp_path):
    from retro_search.grading import normalize_reference

    bad = write_rows(tmp_path / "q.jsonl", [QUESTIONS[0], {"id": "q9", "problem": "Why?"},
                                            {"id": "q8", "problem": "Hm?", "answer": "\\boxed{}"}])
    with pytest.raises(ValueError, match=r"record #1, id='q9', field 'answer': expected a string"):
        load_questions(bad, format={"preset": "problem_answer", "id": "id"})
    report = load_questions(bad, format={"preset": "problem_answer", "id": "id"},
                            on_bad_record="quarantine", quarantine_path=tmp_path / "bad.jsonl",
                            check_answer=normalize_reference)
    assert [q.id for q in report.records] == ["q1"] and report.quarantined == 2
    quarantined = read_rows(tmp_path / "bad.jsonl")
    assert [r["id"] for r in quarantined] == ["q9", "q8"]
    assert quarantined[1]["reason"].startswith("the reference answer cannot be graded")


def _row(qid, sample, position, response, finish="stop"):
    from retro_search.questions import Question
    from retro_search.sampling import PlannedSample
    from retro_search.engines.base import GenerationRequest

    question = Question(qid, f"question {qid}", "4", position)
    planned = PlannedSample(question, sample, GenerationRequest(f"{qid}/{sample}", "p", 10, seed=1))
    return sample_row(planned, GenerationResult(f"{qid}/{sample}", response, 9, finish),
                      sampler="m", think_open="<think>\n")


def test_samples_read_back_in_question_order_with_unclosed_and_malformed_ones_dropped(tmp_path):
    shard_0 = write_rows(tmp_path / "s0.jsonl", [
        _row("a", 0, 0, "2 + 2 = 4.\n</think>\n\n\\boxed{4}"),
        _row("a", 1, 0, "2 + 2 is"),
        _row("c", 0, 2, "x</think>y</think>z")])
    shard_1 = write_rows(tmp_path / "s1.jsonl", [_row("b", 1, 1, "b1</think>\\boxed{4}"),
                                                 _row("b", 0, 1, "b0</think>\\boxed{3}")])
    records, dropped, reasons, read = read_samples([shard_0, shard_1], "math-train")
    assert read == 5
    assert [r.id for r in records] == ["a/0", "b/0", "b/1"]
    assert records[0].reasoning == "2 + 2 = 4." and records[0].solution == "\\boxed{4}"
    assert records[0].metadata["question_id"] == "a" and records[0].source_model == "m"
    assert records[0].source_dataset == "math-train"
    assert dict(reasons) == {"unclosed": 1, "malformed": 1}
    assert dropped[0]["id"] == "a/1" and dropped[0]["reason"].startswith("unclosed")
    assert "finish_reason stop after 9 tokens" in dropped[0]["reason"]
    assert dropped[1]["id"] == "c/0" and "appears 2 times" in dropped[1]["reason"]


# --- the command on the tiny model ------------------------------------------------------------

def sample_args(questions, out, model, *extra):
    return ["sample", "--questions", questions, "--output", str(out), "--no-progress",
            f"model.path={model}", "sample.format={preset: problem_answer, id: id}",
            "sample.n=2", "sample.max_tokens=12", "engine.name=transformers",
            "engine.num_threads=1", *extra]


def summary_of(err: str) -> dict:
    return json.loads(err.strip().splitlines()[-1])


def test_sample_writes_n_responses_per_question_in_the_samples_layout(
        questions_file, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    assert main(sample_args(questions_file, out, tiny_model_dir)) == 0
    summary = summary_of(capsys.readouterr().err)
    assert summary["questions"] == 4 and summary["samples"] == 8 and summary["resumed"] == 0
    rows = read_rows(out)
    assert summary["truncated_length"] == sum(r["finish_reason"] == "length" for r in rows)
    assert [r["id"] for r in rows] == [f"q{i}/{k}" for i in range(1, 5) for k in range(2)]
    for row in rows:
        assert row["response"].startswith("<think>\n") and row["model"] == tiny_model_dir
        assert row["seed"] == sample_seed(0, row["question_id"], row["sample"])
        assert row["num_tokens"] <= 12
    assert rows[4]["answer"] == "6" and rows[4]["question_metadata"] == {"raw_answer": 6}
    assert (tmp_path / "samples.quarantine.jsonl").read_text() == ""
    progress, = tmp_path.glob(".samples.jsonl.progress-*")  # kept until prepare reads the shard
    assert len(progress.read_text().splitlines()) == 8


def test_sample_writes_the_same_file_twice_and_a_shard_the_same_rows(
        questions_file, tiny_model_dir, tmp_path, capsys):
    first, second, shard = (tmp_path / name for name in ("a.jsonl", "b.jsonl", "c.jsonl"))
    assert main(sample_args(questions_file, first, tiny_model_dir)) == 0
    assert main(sample_args(questions_file, second, tiny_model_dir)) == 0
    assert first.read_bytes() == second.read_bytes()
    assert main(sample_args(questions_file, shard, tiny_model_dir, "sample.num_shards=2",
                            "--shard", "1")) == 0
    by_id = {r["id"]: r for r in read_rows(first)}
    rows = read_rows(shard)
    assert [r["question_id"] for r in rows] == ["q2", "q2", "q4", "q4"]
    assert all(r == by_id[r["id"]] for r in rows)  # a sample does not depend on its shard


def test_sample_names_a_bad_question_record_before_loading_the_model(tmp_path, capsys):
    questions = write_rows(tmp_path / "q.jsonl", [QUESTIONS[0], {"id": "q7", "problem": "Hm?",
                                                                 "answer": None}])
    code = main(sample_args(questions, tmp_path / "out.jsonl", tmp_path / "no-model",
                            "sample.on_bad_record=error"))
    err = capsys.readouterr().err
    assert code == 2
    assert "id='q7'" in err and "field 'answer'" in err and "null" in err


class Killed(BaseException):
    """A job killed midway: not an engine fault the sampler retries (those are Exceptions)."""


class CrashingEngine:
    """The transformers engine, failing its call number `crash_at` (a job killed midway); a
    class setting, so the run that dies and the run that resumes have the same config."""

    crash_at: int | None = None

    def __init__(self, **kwargs):
        from retro_search.engines.transformers_engine import TransformersEngine

        self.engine, self.calls = TransformersEngine(**kwargs), 0
        self.max_model_len = self.engine.max_model_len

    def generate(self, requests):
        self.calls += 1
        if self.calls == self.crash_at:
            raise Killed("killed")
        return self.engine.generate(requests)


def test_a_run_that_died_midway_resumes_from_its_progress_and_equals_an_uninterrupted_one(
        questions_file, tiny_model_dir, tmp_path, capsys, monkeypatch):
    reference, out = tmp_path / "reference.jsonl", tmp_path / "out.jsonl"
    assert main(sample_args(questions_file, reference, tiny_model_dir)) == 0
    crashing = [f"engine.name={__name__}:CrashingEngine", "--chunk-size", "3"]
    monkeypatch.setattr(CrashingEngine, "crash_at", 3)
    with pytest.raises(Killed, match="killed"):
        main(sample_args(questions_file, out, tiny_model_dir, *crashing))
    assert not out.exists(), "a failed run leaves no declared output"
    progress, = tmp_path.glob(".out.jsonl.progress-*.jsonl")
    assert len(progress.read_text().splitlines()) == 6  # two chunks of 3 were saved
    capsys.readouterr()
    monkeypatch.setattr(CrashingEngine, "crash_at", None)
    assert main(sample_args(questions_file, out, tiny_model_dir, *crashing)) == 0
    assert summary_of(capsys.readouterr().err)["resumed"] == 6
    assert out.read_bytes() == reference.read_bytes()

    # Killed after it finished: Snakemake deletes the output and runs it again; nothing is
    # generated again.
    out.unlink()
    monkeypatch.setattr(CrashingEngine, "crash_at", 1)  # any generation would raise
    assert main(sample_args(questions_file, out, tiny_model_dir, *crashing)) == 0
    assert summary_of(capsys.readouterr().err)["resumed"] == 8
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.slow
def test_a_killed_sample_process_resumes_and_equals_an_uninterrupted_run(
        questions_file, tiny_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "retro_search.cli",
           *sample_args(questions_file, "OUT", tiny_model_dir, "sample.max_tokens=64",
                        "sample.n=4", "--chunk-size", "2")]
    reference = tmp_path / "reference" / "samples.jsonl"
    done = subprocess.run([reference if a == "OUT" else a for a in cmd], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    out = tmp_path / "killed" / "samples.jsonl"
    cmd = [str(out) if a == "OUT" else a for a in cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    deadline, lines = time.time() + 300, 0
    while time.time() < deadline and proc.poll() is None:
        progress = list(out.parent.glob(".samples.jsonl.progress-*.jsonl"))
        lines = len(progress[0].read_text().splitlines()) if progress else 0
        if lines >= 4:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, as SLURM kills a preempted job
    proc.wait()
    assert not out.exists(), "a killed run must not leave a declared output"

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 4 <= summary_of(done.stderr)["resumed"] < 16
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.slow
def test_sample_runs_on_vllms_cpu_build(questions_file, trained_tiny_model_dir, tmp_path, capsys):
    from retro_search.engines import vllm_unavailable

    if vllm_unavailable():
        pytest.skip(vllm_unavailable())
    out = tmp_path / "samples.jsonl"
    args = sample_args(questions_file, out, trained_tiny_model_dir, "sample.max_tokens=48")
    assert main([a for a in args if not a.startswith("engine.")] + ["engine.name=vllm"]) == 0
    summary = summary_of(capsys.readouterr().err)
    assert summary["samples"] == 8 and summary["generated_tokens"] > 0
    rows = read_rows(out)
    assert [r["id"] for r in rows] == [f"q{i}/{k}" for i in range(1, 5) for k in range(2)]
    assert any("</think>" in r["response"] for r in rows)  # the fitted model closes its reasoning


@pytest.mark.slow
def test_the_sample_and_prepare_rules_run_for_a_demo_that_samples_its_traces(make_checkout):
    from workflow_helpers import SNAKEMAKE, workflow_env

    from retro_search.pipeline import build_plan

    if not SNAKEMAKE.exists():
        pytest.skip("snakemake not installed")
    overrides = ["data.source=null", "data.sample={questions: data/demo/traces.jsonl, format: "
                 "{preset: r1_response, id: id}, n: 2, max_tokens: 16, num_shards: 2}",
                 "engine=transformers_cpu", "tiny_model.train_steps=0"]
    checkout = make_checkout()
    demo, = build_plan(checkout / "config", ["traces_demo"], overrides).experiments
    prepare, sample = demo.stages["prepare"], demo.stages["sample"]
    # one Snakemake config value; the override with spaces quoted for the Snakefile's shlex.split
    config = "overrides=" + " ".join(f'"{o}"' if " " in o else o for o in overrides)
    done = subprocess.run([str(SNAKEMAKE), "--cores", "2", "--config", "experiment=traces_demo",
                           config, "--",
                           prepare.path("traces.jsonl")], cwd=checkout, capture_output=True,
                          text=True, timeout=900, env=workflow_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shards = [read_rows(checkout / sample.path(f"shard-{i}.jsonl")) for i in range(2)]
    assert [len(rows) for rows in shards] == [40, 40]  # 20 questions x 2 samples each
    manifest = json.loads((checkout / sample.path("shard-0.manifest.json")).read_text())
    assert manifest["engine"]["name"] == "transformers"
    assert manifest["upstream"][0]["id"] == f"tiny_model/{demo.stages['tiny_model'].id}"
    stats = json.loads((checkout / prepare.path("stats.json")).read_text())
    assert stats["read"] == 80 and sum(stats["removed"].values()) + stats["kept"] == 80
    prepared = json.loads((checkout / prepare.path("manifest.json")).read_text())
    assert prepared["upstream"][0]["id"] == f"sample/{sample.id}"
