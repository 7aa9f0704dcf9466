"""Snakemake itself SIGKILLed while a search job runs (a closed terminal, a login node's session
ending): the job goes on without it and finishes. Snakemake never saw it end, so the next run
takes it as incomplete, deletes its outputs and runs it again (the profile's `rerun-incomplete`);
the rerun writes the same outputs from the job's progress without generating anything.

The traces_demo experiment up to one search shard, on the transformers engine."""

import json
import os
import signal
import subprocess
import time

import pytest

from workflow_helpers import SNAKEMAKE, workflow_env

pytestmark = pytest.mark.slow

# One shard of 12 traces: the merge then needs no second search job.
OVERRIDES = ["engine=transformers_cpu", "pipeline.num_shards=1", "data.limit=12",
             "tiny_model.train_steps=0"]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def summary(log: str) -> dict:
    return json.loads(next(line for line in reversed(log.splitlines()) if line.startswith("{")))


def test_a_job_that_finished_after_snakemake_was_killed_is_not_redone(make_checkout):
    from retro_search.pipeline import build_plan

    checkout = make_checkout()
    demo, = build_plan(checkout / "config", ["traces_demo"], OVERRIDES).experiments
    search = demo.stages["search"]
    target = checkout / search.path("shard-0.jsonl")
    snakemake = [str(SNAKEMAKE), "--cores", "1", "--config", "experiment=traces_demo",
                 "overrides=" + " ".join(OVERRIDES), "--", search.path("shard-0.jsonl")]
    env = workflow_env()

    # Its own process group, so that the job it starts can be watched after it is gone.
    first = subprocess.Popen(snakemake, cwd=checkout, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None:
        progress = list(target.parent.glob(".shard-0.jsonl.progress-*.jsonl"))
        if progress and progress[0].read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert first.poll() is None, "Snakemake ended before the search job had started"
    first.send_signal(signal.SIGKILL)  # Snakemake alone: its job goes on
    first.wait()
    while group_alive(first.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not group_alive(first.pid), "the orphaned search job did not end"
    finished = {p.name: p.read_bytes() for p in (target, target.with_suffix(".rollouts.jsonl"))}
    orphan = summary((checkout / search.path("logs/shard-0.log")).read_text())
    assert orphan["traces"] > 0 and orphan["requests"] > 0

    # Snakemake's lock stays after a kill (README: "What happens when ...").
    unlock = subprocess.run([*snakemake[:-2], "--unlock"], cwd=checkout, capture_output=True,
                            text=True, env=env, timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    again = subprocess.run(snakemake, cwd=checkout, capture_output=True, text=True, env=env,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "localrule retro_search:" in again.stderr  # Snakemake did take it as unfinished
    rerun = summary((checkout / search.path("logs/shard-0.log")).read_text())
    assert rerun["resumed"] == rerun["traces"] == orphan["traces"]
    assert rerun["requests"] == 0, "a finished search job was redone"
    assert {p.name: p.read_bytes()
            for p in (target, target.with_suffix(".rollouts.jsonl"))} == finished

    # Once the merge has read the shards, their progress goes.
    merged = subprocess.run([*snakemake[:-1], demo.stages["merge"].path("manifest.json")],
                            cwd=checkout, capture_output=True, text=True, env=env, timeout=600)
    assert merged.returncode == 0, merged.stdout[-3000:] + merged.stderr[-3000:]
    assert not list(target.parent.glob(".shard-*.progress-*"))
