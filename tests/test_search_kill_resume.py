"""`retro-search search` on real traces with the tiny model, SIGKILLed midway and restarted.

Token-for-token equality of a resumed and an uninterrupted run is the transformers engine's
guarantee (its sampling is batch-invariant). vLLM gives it only with VLLM_BATCH_INVARIANT=1 on
GPU; elsewhere a resumed vLLM search may differ in the last bits (see engines/vllm_engine.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from retro_search.readers import load_traces
from retro_search.artifacts import write_records
from retro_search.segmentation import segment

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
THOUGHT_ANCHORS = SHARED / "traces" / "thought_anchors_r1_distill_math.jsonl"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not THOUGHT_ANCHORS.exists(), reason="shared data not present")]


ENGINES = {"transformers": ["engine.name=transformers", "engine.num_threads=1"],
           "vllm": ["engine.name=vllm"]}


def search_command(shard, out, model, engine="transformers"):
    return [sys.executable, "-m", "retro_search.cli", "search", "--input", str(shard),
            "--output", str(out), "--no-progress", f"model.path={model}", "search.max_tokens=24",
            "search.max_step_tokens=12", "search.rollouts=2", "grading.processes=1",
            *ENGINES[engine]]


def run_to_end(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    # The summary is the last JSON line: vLLM's engine processes may log after it as they exit.
    return json.loads(next(line for line in reversed(done.stderr.splitlines())
                           if line.startswith("{")))


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """Real traces whose searches take different numbers of waves: correct ones with 2..9
    boundaries, plus two with a wrong original answer (passed through)."""
    records = load_traces(THOUGHT_ANCHORS, format="thought_anchors").records
    correct = [r for r in records if r.metadata["is_correct"]]
    chosen = sorted((r for r in correct if 2 <= segment(r.reasoning).num_boundaries <= 9),
                    key=lambda r: segment(r.reasoning).num_boundaries)[:5]
    wrong = [r for r in records if not r.metadata["is_correct"]][:2]
    assert len(chosen) == 5
    path = tmp_path_factory.mktemp("shard") / "shard.jsonl"
    write_records(chosen + wrong, path)
    return path


@pytest.fixture(scope="module")
def uninterrupted(shard, tiny_model_dir, tmp_path_factory):
    """The uninterrupted run of an engine, made once for all its kill points."""
    runs = {}

    def run(engine):
        if engine not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-{engine}") / "revised.jsonl"
            summary = run_to_end(search_command(shard, out, tiny_model_dir, engine))
            assert summary["traces"] == 7 and summary["incorrect_original"] == 2
            assert summary["rollouts"] > 0
            runs[engine] = out
        return runs[engine]
    return run


# (engine, lines in the progress file when the kill comes): the two passed-through traces are
# written before any generation, so 3 is one searched trace and 5 is three of five.
@pytest.mark.parametrize("engine,kill_at", [("transformers", 3), ("transformers", 5),
                                            ("vllm", 3)])
def test_killed_search_resumes_without_redoing_traces_and_equals_an_uninterrupted_run(
        shard, tiny_model_dir, uninterrupted, tmp_path, engine, kill_at):
    reference = uninterrupted(engine)
    out = tmp_path / "killed" / "revised.jsonl"
    cmd = search_command(shard, out, tiny_model_dir, engine)
    # Its own process group, killed whole as SLURM kills a preempted job: vLLM's engine processes
    # outlive a parent killed alone (and would hold their memory until the machine reboots).
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
    # Kill once `kill_at` traces are in the progress file, and before the run ends.
    deadline = time.time() + 300
    lines = 0
    while time.time() < deadline and proc.poll() is None:
        progress = list(out.parent.glob(".revised.jsonl.progress-*.jsonl"))
        lines = len(progress[0].read_text().splitlines()) if progress else 0
        if lines >= kill_at:
            break
        time.sleep(0.01)  # vLLM searches the 5 traces within half a second
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave a declared output"

    resumed = run_to_end(cmd)
    assert kill_at <= resumed["resumed"] < 7
    assert_same_outputs(out, reference)

    # Killed once more, after it finished: Snakemake, killed before it saw the job end, deletes
    # the outputs and runs it again. The progress outlives the run, so nothing is generated.
    # Resuming is the search's, not the engine's: one engine shows it (a vLLM start is about 30 s).
    if engine != "transformers" or kill_at != 3:
        return
    assert list(out.parent.glob(".revised.jsonl.progress-*")), "the progress stays until merged"
    out.unlink()
    out.with_suffix(".rollouts.jsonl").unlink()
    again = run_to_end(cmd)
    assert again["resumed"] == 7 and again["requests"] == 0
    assert_same_outputs(out, reference)


def assert_same_outputs(out, reference):
    assert out.read_bytes() == reference.read_bytes()
    assert out.with_suffix(".rollouts.jsonl").read_bytes() == \
        reference.with_suffix(".rollouts.jsonl").read_bytes()

