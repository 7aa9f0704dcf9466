"""The workflow's conventions, checked without running it: `snakemake --lint` and `snakefmt --check`
are clean, the demo plans one eval job per model and shard, and the SLURM profile gives every job
its SLURM resources (GPU for search, eval and SFT)."""

import re
import subprocess

import pytest
import yaml

from workflow_helpers import (BIN, REPO, SNAKEMAKE, job_counts, slurm_profile_without_conda,
                              workflow_env, write_profile)

pytestmark = pytest.mark.skipif(not SNAKEMAKE.exists(), reason="snakemake not installed")


def run(cmd, cwd=REPO):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=workflow_env())


def test_snakemake_lint_is_clean():
    done = run([str(SNAKEMAKE), "--lint"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Congratulations, your workflow is in a good condition!" in done.stdout + done.stderr


def test_snakefmt_check_is_clean():
    done = run([str(BIN / "snakefmt"), "--check", "."])
    assert done.returncode == 0, done.stdout + done.stderr


def test_slurm_profile_deploys_conda_envs():
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["software-deployment-method"] == "conda"
    for env in ("core", "train", "vllm"):
        assert (REPO / "envs" / f"{env}.yaml").exists()


def test_demo_plans_one_eval_job_per_arm_and_shard_and_merges_only_sharded_benchmarks(
        make_checkout):
    done = run([str(SNAKEMAKE), "-n", "-p", "--cores", "2"], cwd=make_checkout())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = job_counts(done.stdout)
    # 3 arms; arith in 2 shards, the 8 real benchmark slices in 1: each arm's engine starts twice
    assert counts["eval"] == 3 * 2
    # only arith has shards to merge; a benchmark in one shard is read from its job's folder
    assert counts["eval_merge"] == 3 * 1
    shard_1 = [line for line in done.stdout.splitlines()
               if line.startswith("Shell command:") and " eval --" in line and "eval.shard=1" in line]
    assert len(shard_1) == 3  # one per arm


def job_resources(dry_run: str) -> dict[str, list[dict[str, str]]]:
    """rule name -> the `resources:` line of each of its jobs, parsed, from `snakemake -n`."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in dry_run.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            items = line.split("resources:", 1)[1].split(", ")
            jobs.setdefault(rule, []).append(dict(item.strip().split("=", 1) for item in items))
    return jobs


def test_slurm_dry_run_lists_every_job_with_its_slurm_resources(make_checkout, tmp_path):
    write_profile(tmp_path, slurm_profile_without_conda())
    done = run([str(SNAKEMAKE), "--profile", str(tmp_path), "-n"], cwd=make_checkout())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = job_resources(done.stdout)
    # The demo trains on the CPU (sft.gpus: 0) and asks for the small jobs of its `resources`.
    assert jobs["sft"]
    for resources in jobs["sft"]:
        assert resources["slurm_partition"] == "cpu" and int(resources["gpu"]) == 0, resources
        assert int(resources["mem_mb"]) == 8000 and int(resources["cpus_per_task"]) == 2
    assert "slurm_account" not in done.stdout  # the plugin takes the user's default account
    # The demo's engine runs on the CPU: its search and eval jobs ask for no GPU.
    for rule in ("retro_search", "eval"):
        assert jobs[rule], rule
        for resources in jobs[rule]:
            assert resources["slurm_partition"] == "cpu" and int(resources["gpu"]) == 0, (rule, resources)
    for rule in ("prepare", "shard", "merge", "sft_data", "summarize"):
        for resources in jobs[rule]:
            assert resources["slurm_partition"] == "cpu" and "gpu" not in resources, (rule, resources)
            assert int(resources["mem_mb"]) > 0 and int(resources["runtime"]) > 0


def test_slurm_jobs_of_a_tensor_parallel_preset_ask_for_its_gpus(tmp_path):
    write_profile(tmp_path / "profile", slurm_profile_without_conda())
    # Hub data and models only: nothing is read from the working directory, so it can be empty.
    done = run([str(SNAKEMAKE), "--profile", str(tmp_path / "profile"), "-n", "--snakefile",
                str(REPO / "Snakefile"), "-d", str(tmp_path / "work"),
                "--config", "experiment=weak_to_strong_r1_distill_32b"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = job_resources(done.stdout)
    assert len(jobs["retro_search"]) == 128  # pipeline.num_shards of the preset
    assert {r["gpu"] for r in jobs["retro_search"]} == {"4"}  # engine.tensor_parallel_size
    assert {r["slurm_partition"] for r in jobs["retro_search"] + jobs["eval"]} == {"gpu"}
    assert {r["gpu"] for r in jobs["eval"]} == {"4"} and {r["gpu"] for r in jobs["sft"]} == {"8"}
    assert {r["slurm_partition"] for r in jobs["sft"]} == {"gpu"}
    assert {r["mem_mb"] for r in jobs["sft"]} == {"512000"}  # resources.sft of the schema


def test_the_self_improvement_preset_samples_prepares_searches_trains_and_evaluates(tmp_path):
    write_profile(tmp_path / "profile", slurm_profile_without_conda())
    # Hub questions and models only: nothing is read from the working directory. (-p: the
    # workflow's own profile, which does not print commands, overrides the one given.)
    done = run([str(SNAKEMAKE), "--profile", str(tmp_path / "profile"), "-n", "-p", "--snakefile",
                str(REPO / "Snakefile"), "-d", str(tmp_path / "work"),
                "--config", "experiment=self_improve_r1_distill_7b"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    counts = job_counts(done.stdout)
    assert counts["sample"] == 16  # data.sample.num_shards
    assert counts["prepare"] == 1 and counts["shard"] == counts["retro_search"] == 64
    assert counts["merge"] == 1 and counts["sft_data"] == counts["sft"] == 2
    assert counts["eval"] == 3 * 4  # 3 arms; GSM8K in 4 shards
    jobs = job_resources(done.stdout)
    assert {(r["gpu"], r["slurm_partition"]) for r in jobs["sample"]} == {("1", "gpu")}
    prepare, = [line for line in done.stdout.splitlines()
                if line.startswith("Shell command:") and " prepare --" in line]
    assert prepare.count("/shard-") == 16 and "--upstream results/sample/" in prepare
    sample = next(line for line in done.stdout.splitlines()
                  if line.startswith("Shell command:") and " sample --" in line)
    assert "--shard" in sample and "--config results/sample/" in sample


@pytest.mark.parametrize("config, message", [
    (["overrides=search.gamma=1.5"], "search.gamma must be strictly between 0 and 1, got 1.5"),
    (["overrides=search.rollout=2"], "search.rollout: no such setting; did you mean search.rollouts?"),
    (["override=search.rollouts=2"], "--config override=...: not a setting of this workflow; did "
                                     "you mean overrides?"),
])
def test_a_bad_value_stops_the_dry_run_before_any_job(config, message):
    done = run([str(SNAKEMAKE), "-n", "--cores", "1", "--config", *config])
    assert done.returncode != 0 and message in done.stdout + done.stderr
    assert "Job stats" not in done.stdout


def test_snakemake_run_from_another_folder_names_the_data_it_cannot_find_there(tmp_path):
    # Relative data paths are read from the working directory: planned from another folder,
    # an experiment is refused in one line naming the key, the path and that folder, not
    # planned into that folder's results/ with the path taken for a hub dataset id.
    for experiment, key, path in (
            ("demo", "data.decontamination.data_dir", "data/benchmarks/math500.jsonl"),
            ("traces_demo", "data.source", "data/demo/traces.jsonl")):
        done = run([str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-n", "--cores", "1",
                    "--config", f"experiment={experiment}"], cwd=tmp_path)
        assert done.returncode != 0
        line, = [x for x in (done.stdout + done.stderr).splitlines() if "error" in x]
        assert line.startswith(f"retro-search: error: {key}: {path} does not exist in "
                               f"{tmp_path} (relative paths are read from the working"), line
    assert not (tmp_path / "results").exists()
