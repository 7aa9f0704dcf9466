"""The SLURM profile on a real SLURM cluster: the CPU stages of the traces_demo experiment (prepare,
two shards) go through sbatch, finish, and their manifests name their SLURM jobs.

Needs a running cluster with a `cpu` partition (`.ci/run` starts one with
tests/slurm/start_cluster.sh); skipped otherwise. The GPU stages are not run: the one-node test
cluster has no GPUs.
"""

import json
import re
import shutil
import subprocess

import pytest

from workflow_helpers import (REPO, SNAKEMAKE, slurm_profile_without_conda, workflow_env,
                              write_profile)


def cluster_partitions() -> set[str]:
    if not shutil.which("sinfo"):
        return set()
    done = subprocess.run(["sinfo", "-h", "-o", "%R %t"], capture_output=True, text=True)
    if done.returncode != 0:
        return set()
    return {line.split()[0] for line in done.stdout.splitlines()
            if line.split()[1:] and line.split()[1] in ("idle", "mix")}


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif("cpu" not in cluster_partitions(),
                       reason="no SLURM cluster with an idle `cpu` partition "
                              "(tests/slurm/start_cluster.sh starts one)"),
    pytest.mark.skipif(not (REPO.parent / "shared" / "data").exists(),
                       reason="shared data not present"),
]


def test_cpu_stages_run_as_slurm_jobs_and_record_their_job_ids(make_checkout, tmp_path):
    checkout = make_checkout()
    # The shipped profile, adapted to the test cluster only where it must be: no conda (not
    # installable here), job states from squeue (no accounting database), small memory requests
    # (prepare's through the experiment's resources) and short waits.
    profile = slurm_profile_without_conda()
    profile["default-resources"]["mem_mb"] = 1000
    profile.update({"slurm-status-command": "squeue", "latency-wait": 5,
                    "slurm-init-seconds-before-status-checks": 2})
    write_profile(tmp_path, profile)
    env = workflow_env()
    # The traces_demo experiment: its prepare stage reads shipped traces (the demo's would need
    # the reasoner trained and sampled first, minutes of work that prove nothing more here).
    snakemake = [str(SNAKEMAKE), "--profile", str(tmp_path), "--config", "experiment=traces_demo",
                 "overrides=resources.prepare.mem_mb=2000 resources.prepare.cpus=1"]

    planned = subprocess.run([*snakemake, "-n"], cwd=checkout, capture_output=True, text=True,
                             env=env, timeout=300)
    # The CPU demo asks for no GPU anywhere (SFT included) and for the experiment's small jobs.
    assert set(re.findall(r"\bgpu=(\d+)", planned.stdout)) == {"0"}, planned.stdout[-3000:]
    assert max(map(int, re.findall(r"\bmem_mb=(\d+)", planned.stdout))) <= 8000
    assert "slurm_partition=gpu" not in planned.stdout
    shards = sorted(set(re.findall(r"results/shard/[^ ,]+/shard-\d+\.jsonl", planned.stdout)))
    assert len(shards) == 2, planned.stdout[-2000:]
    # SIGINT on timeout: the plugin then cancels its jobs instead of polling forever.
    done = subprocess.run(["timeout", "-s", "INT", "600", *snakemake, "--", *shards], cwd=checkout,
                          capture_output=True, text=True, env=env, timeout=700)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", done.stdout + done.stderr)
    assert len(submitted) == 3  # prepare and two shards; the tiny stage_config jobs run locally

    for shard in shards:
        assert (checkout / shard).stat().st_size > 0
        manifest = json.loads((checkout / shard.replace(".jsonl", ".manifest.json")).read_text())
        assert manifest["slurm_job_id"] in submitted
    prepare = json.loads(next(checkout.glob("results/prepare/*/manifest.json")).read_text())
    assert prepare["slurm_job_id"] in submitted
