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


def test_transformers_path_of_the_gpu_script_runs_on_cpu(tiny_model_dir):
    result = result_of("vllm_throughput.py", "--engine", "transformers", "--device", "cpu",
                       "--model", tiny_model_dir, "--traces", str(REPO / "data/demo/traces.jsonl"),
                       "--format", "r1_response", "--limit", "2", "--max-tokens", "24",
                       "--max-step-tokens", "8", "--max-boundaries", "1", "--threads", "1")
    figures = result["figures"]
    assert figures["scheduler_generated_tokens"] > 0 and figures["ratio_scheduler_over_flat"] > 0


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
