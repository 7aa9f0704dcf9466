"""The benchmark scripts still run and report what they claim, on tiny settings (the figures
themselves are benchmarks/README.md's business, not a test's)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "benchmarks"

pytestmark = pytest.mark.slow


def result_of(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, done.stdout[-2000:]
    return json.loads(lines[0][len("RESULT "):])


def test_search_throughput_arms_agree(tiny_model_dir):
    result = result_of("search_throughput.py", "--model-dir", tiny_model_dir, "--limit", "3",
                       "--max-tokens", "24", "--max-step-tokens", "8", "--max-boundaries", "1",
                       "--repeat", "1")
    figures = result["figures"]
    assert figures["identical"] is True
    assert figures["naive_rollouts"] == figures["scheduler_rollouts"] > 0
    assert figures["naive_mean_rows_per_forward"] == 1
    assert figures["scheduler_forward_passes"] < figures["naive_forward_passes"]


# Two real R1 traces, two boundaries each: the requests of a trace share prefixes.
SMALL_SEARCH = ("--limit", "2", "--max-tokens", "24", "--max-step-tokens", "8",
                "--max-boundaries", "2")


def test_transformers_path_of_the_gpu_script_runs_on_cpu(tiny_model_dir):
    result = result_of("vllm_throughput.py", "--engine", "transformers", "--device", "cpu",
                       "--model", tiny_model_dir, "--traces", str(REPO / "data/demo/traces.jsonl"),
                       "--format", "r1_response", "--limit", "2", "--max-tokens", "24",
                       "--max-step-tokens", "8", "--max-boundaries", "1", "--threads", "1",
                       "--arms", "scheduler,flat,naive")
    figures = result["figures"]
    assert figures["scheduler_generated_tokens"] > 0 and figures["ratio_scheduler_over_flat"] > 0
    assert figures["naive_requests"] == figures["scheduler_requests"] == figures["flat_requests"]
    assert figures["identical"] is True and figures["ratio_scheduler_over_naive"] > 0


def test_vllm_on_cpu_runs_every_arm_and_counts_prefix_cache_hits(tiny_model_dir):
    result = result_of("vllm_throughput.py", "--engine", "vllm", "--model", tiny_model_dir,
                       "--arms", "scheduler,flat,naive", *SMALL_SEARCH)
    figures = result["figures"]
    assert figures["scheduler_requests"] == figures["naive_requests"] == figures["flat_requests"]
    assert figures["ratio_scheduler_over_naive"] > 0 and figures["ratio_scheduler_over_flat"] > 0
    # The cache is emptied between arms, so the naive arm finds only its own prefixes again.
    assert figures["scheduler_prefix_cache_hit_rate"] > figures["flat_prefix_cache_hit_rate"]
    assert 0 < figures["naive_prefix_cache_hit_rate"] < 1
    assert result["notes"]["device"]["vllm"]


def test_model_generate_baseline_runs_the_search_and_builds_its_model_offline(tmp_path):
    args = ("vllm_throughput.py", "--engine", "generate", "--device", "cpu", "--threads", "1",
            "--model-size", "tiny", "--model-train-steps", "2", "--model-cache", str(tmp_path))
    first = result_of(*args, "--arms", "scheduler,naive", *SMALL_SEARCH)
    figures = first["figures"]
    # One request at a time with its own seed: waves and the naive loop give the same searches.
    assert figures["identical"] is True and figures["scheduler_generated_tokens"] > 0
    assert first["notes"]["model"]["train_steps"] == 2 and figures["model_parameters"] > 0
    # A second run finds the model the first one built.
    again = result_of(*args, "--arms", "scheduler", *SMALL_SEARCH, "--limit", "1")
    assert again["settings"]["model"] == first["settings"]["model"]
    assert [p.name for p in tmp_path.iterdir()] == [Path(first["settings"]["model"]).name]


def test_model_generate_baseline_keeps_the_engine_contract(trained_tiny_model_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from generate_engine import GenerateEngine

    from retro_search.engines.base import GenerationRequest

    engine = GenerateEngine(trained_tiny_model_dir, device="cpu", num_threads=1)
    head = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is $2 + 3 \\times 4$?"}], tokenize=False,
        add_generation_prompt=True)
    requests = [GenerationRequest(f"r{i}", head, 48, seed=i, stop=("\n\n",),
                                  banned_words=("Wait", "Hmm")) for i in range(4)]
    results = engine.generate(requests)
    assert engine.generate(requests[::-1])[::-1] == results  # independent of the batch
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    for r in results:
        assert "\n\n" not in r.text and "wait" not in r.text.lower()
        assert 0 < r.num_tokens <= 48
        assert (r.finish_reason, r.stop_string) in {("stop", "\n\n"), ("stop", None),
                                                    ("length", None)}
    assert any(r.stop_string == "\n\n" for r in results)


@pytest.mark.skipif(not DATA.is_dir(), reason="shared benchmark data not present")
def test_grading_benchmark_grades_math500_right_and_survives_the_hung_item():
    result = result_of("grading_throughput.py", "--n-synthetic", "40", "--n-normal", "20",
                       "--math500-repeats", "1", "--processes", "2", "--timeout", "2")
    figures = result["figures"]
    assert figures["math500_all_correct"] is True and figures["math500_items"] == 500
    assert figures["synthetic_agree_with_labels"] == 1
    assert figures["pathological_timed_out_items"] == 1
    assert figures["pathological_rest_match_serial"] is True


def test_grading_agreement_counts_agreement_and_names_the_disagreements(tmp_path):
    pairs = [{"gold": "-5", "prediction": "-5", "expected": True},
             {"gold": 28, "prediction": "$0.28$", "expected": False},
             {"gold": "4", "prediction": "so \\boxed{4}", "expected": True},
             {"gold": "4", "prediction": "so \\boxed{5}", "expected": True, "family": "wrong"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    result = result_of("grading_agreement.py", str(path), "--processes", "1")
    figures = result["figures"]
    assert figures["pairs"] == 4 and figures["pairs_boxed"] == 2
    assert figures["ours_agree_all"] == "3/4" and figures["ours_false_negatives"] == 1
    assert [d["family"] for d in result["notes"]["ours_disagreements"]] == ["wrong"]


def test_miniature_learning_curve_trains_and_samples_each_checkpoint():
    result = result_of("miniature_learning_curve.py", "--steps", "4", "--eval-every", "2",
                       "--batch", "8", "--heldout", "4", "--temperatures", "0,1.0",
                       "--threads", "1")
    figures = result["figures"]
    assert figures["parameters"] == 941_952 and figures["train_rows"] == 1600
    curve = result["notes"]["curve"]
    assert [(r["step"], r["temperature"]) for r in curve] == [(2, 0.0), (2, 1.0), (4, 0.0), (4, 1.0)]
    for row in curve:
        assert 0 <= row["accuracy"] <= 1 and row["mean_tokens"] > 0
    assert figures["final_accuracy_greedy"] == curve[2]["accuracy"]
