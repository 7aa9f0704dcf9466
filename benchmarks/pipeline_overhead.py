"""Pipeline overhead: Snakemake's dry run and no-op rerun for 1,000 search shards x 8 benchmarks.

    .venv/bin/python benchmarks/pipeline_overhead.py                 # defaults: traces_demo, 1000 shards
    .venv/bin/python benchmarks/pipeline_overhead.py --repeat 1 --profile

In a clean copy of the working tree (`git ls-files --cached --others --exclude-standard`, with
`shared` -> the shared data beside it, as tests/test_workflow.py makes it), times, each `--repeat`
times (the median is reported):

- dry_run_s: `snakemake -n --cores 2 --config experiment=traces_demo overrides="pipeline.num_shards=1000
  eval.benchmarks=[math500,aime24,...]"` (the 8 benchmarks) on the empty results/ tree (every
  job to do); `jobs` is the total of its 'Job stats' table (3 arms x 8 benchmarks = 24 eval_merge
  jobs, 1000 shard and 1000 retro_search jobs, ...);
- noop_rerun_s: the same `snakemake --cores 2` (no -n) once every output exists, is up to date
  and has its Snakemake metadata, so it has nothing to do; noop_dry_run_s: the same with -n.
  The outputs are made without running any job: every output path the dry run lists is created
  (a folder for the rules' directory() outputs), then `snakemake --touch --forceall` touches them
  in DAG order and records each job's metadata as a real run would; a dry run must then say
  "Nothing to be done";
- plan_s: `retro_search.pipeline.build_plan` alone, as workflow/rules/common.smk calls it, in a
  fresh interpreter (import of the package and Hydra included, interpreter start excluded), so a
  reader sees how much of the overhead is plan composition and how much is Snakemake's DAG.

The CPU time (user + sys) of each Snakemake call is reported beside its wall time: other work on
the machine inflates wall time. Target: dry_run_s and noop_rerun_s both under 10 s on this machine
(2 cores). `--profile` runs one dry run of each kind under cProfile (after the timed runs) and
prints the top entries plus the time of the parts that matter: Snakefile parsing, build_plan,
Stage.hash, DAG building, metadata reads, printing the jobs; full listings go to benchmarks/profiles/.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Figures  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))
from workflow_helpers import copy_checkout, job_counts  # noqa: E402  (the workflow tests' copy)

SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PROFILES = REPO / "benchmarks" / "profiles"
TARGET_S = 10.0
BENCHMARKS = "math500,aime24,aime25,amc23,olympiadbench,gsm8k,minerva_math,gaokao2023en"
NOTHING = "Nothing to be done"
# The touch executor sleeps 0.1 s per job before touching (2,000 jobs: 200 s); the jobs run in DAG
# order on a filesystem with ns mtimes, so setup runs it without the sleep.
TOUCH = ("import sys; import snakemake.executors.touch as t; t.Executor.SLEEPING_TIME = 0; "
         "from snakemake.cli import main; sys.argv[0] = 'snakemake'; main()")
# (label, file suffix, function) of pstats entries whose cumulative time the profile reports.
PROFILE_PARTS = [
    ("snakefile_parse", "snakemake/workflow.py", "include"),
    ("build_plan", "retro_search/pipeline.py", "build_plan"),
    ("stage_hash", "retro_search/pipeline.py", "hash"),
    ("dag_build", "snakemake/workflow.py", "_build_dag"),
    ("metadata_reads", "snakemake/persistence/__init__.py", "metadata"),
    ("conda_env_specs", "snakemake/dag.py", "update_conda_envs"),
    ("job_printing", "snakemake/executors/dryrun.py", "printjob"),
]


def run(cmd: list[str], cwd: Path, expect: str | None = None) -> tuple[str, float, float]:
    """(stdout + stderr, wall s, CPU s of the child) of one command; fails on a non-zero exit
    or when `expect` is not in its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = done.stdout + done.stderr
    if done.returncode != 0 or (expect and expect not in out):
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}"
                         f"{'' if expect is None else ', no ' + repr(expect)}):\n{out[-4000:]}")
    return out, wall, cpu


def timed(fig: Figures, name: str, cmd: list[str], cwd: Path, repeat: int, expect=None) -> str:
    walls, cpus = [], []
    for _ in range(repeat):
        out, wall, cpu = run(cmd, cwd, expect)
        walls.append(wall)
        cpus.append(cpu)
    fig.add(f"{name}_s", round(statistics.median(walls), 3), "s")
    fig.add(f"{name}_cpu_s", round(statistics.median(cpus), 3), "s")
    fig.note(f"{name}_runs_s", [round(w, 3) for w in walls])
    return out


def directory_outputs(rules: str) -> dict[str, set[int]]:
    """rule name -> positions of its directory() outputs, from snakefmt-formatted rule source
    (one output per line at 8 spaces; deeper lines continue an entry). Positions, not path
    patterns: a pattern such as shard-{i} also matches its sibling file shard-0.manifest.json."""
    found = {}
    for match in re.finditer(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", rules, re.M | re.S):
        entries, in_output = [], False
        for line in match.group(2).splitlines():
            if re.match(r" {4}\w+:", line):
                in_output = line.strip() == "output:"
            elif in_output and re.match(r" {8}[^ #]", line):
                entries.append(line)
        found[match.group(1)] = {i for i, line in enumerate(entries) if "directory(" in line}
    return found


def materialise(workdir: Path, dry_run_output: str, touch_cmd: list[str]) -> int:
    """Every output the dry run lists made to exist, in DAG order and with its metadata, without
    running a job. Returns the number of paths created."""
    sources = [workdir / "Snakefile", *workdir.glob("workflow/**/*.smk")]
    folders = directory_outputs("".join(path.read_text() for path in sources))
    outputs, rule = {}, None
    for line in dry_run_output.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            rule = match.group(1)
        elif match := re.match(r"^\s+output: (.+)$", line):
            for i, out in enumerate(match.group(1).split(", ")):
                outputs[out] = i in folders.get(rule, set())
    for out, is_folder in outputs.items():
        path = workdir / out
        if is_folder:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    run(touch_cmd, workdir)
    return len(outputs)


def time_plan(workdir: Path, experiment: str, overrides: list[str], repeat: int) -> dict:
    """build_plan in a fresh interpreter per repeat: cold (imports included), then warm."""
    code = ("import json, sys, time; sys.path.insert(0, 'src'); start = time.perf_counter(); "
            "from retro_search.pipeline import build_plan; "
            "args = ('config', [sys.argv[1]], json.loads(sys.argv[2])); plan = build_plan(*args); "
            "cold = time.perf_counter() - start; start = time.perf_counter(); build_plan(*args); "
            "print(json.dumps({'cold': cold, 'warm': time.perf_counter() - start, "
            "'stages': len(plan.by_dir)}))")
    runs = [json.loads(run([sys.executable, "-c", code, experiment, json.dumps(overrides)],
                           workdir)[0].strip().splitlines()[-1]) for _ in range(repeat)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def profile(label: str, cmd: list[str], workdir: Path, top: int) -> dict:
    """`cmd` (a snakemake call) once under cProfile; the top entries go to benchmarks/profiles/."""
    prof = workdir / f"{label}.prof"
    _, wall, _ = run([sys.executable, "-m", "cProfile", "-o", str(prof), str(SNAKEMAKE), *cmd[1:]],
                     workdir)
    stats = pstats.Stats(str(prof))
    parts = {}
    for name, suffix, func in PROFILE_PARTS:
        parts[name] = round(sum(ct for (file, _line, fn), (_cc, _nc, _tt, ct, _callers)
                                in stats.stats.items() if file.endswith(suffix) and fn == func), 2)
    PROFILES.mkdir(parents=True, exist_ok=True)
    out = PROFILES / f"pipeline_overhead-{label}.txt"
    with open(out, "w") as fh:
        fh.write(f"# {shlex.join(cmd)}\n# {wall:.2f} s under cProfile; cumulative s: {parts}\n")
        stats.stream = fh
        fh.write("\n## by cumulative time\n")
        stats.sort_stats("cumulative").print_stats(top)
        fh.write("## by own time\n")
        stats.sort_stats("tottime").print_stats(top)
    print(f"profile_{label}: {wall:.2f} s under cProfile; "
          + ", ".join(f"{k} {v} s" for k, v in parts.items()) + f" -> {out.relative_to(REPO)}")
    stats.stream = sys.stdout  # own time: the cumulative top is the call chain down to the DAG
    stats.sort_stats("tottime").print_stats(top)
    return {"file": str(out.relative_to(REPO)), "wall_s": round(wall, 2), "parts_s": parts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Prints one line per figure and a final RESULT {json} line.")
    p.add_argument("--experiment", default="traces_demo", help="experiment (default: %(default)s)")
    p.add_argument("--shards", type=int, default=1000,
                   help="pipeline.num_shards (default: %(default)s)")
    p.add_argument("--benchmarks", default=BENCHMARKS, help="eval.benchmarks, comma-separated")
    p.add_argument("--cores", default="2", help="snakemake --cores (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3,
                   help="timed runs of each (default: %(default)s)")
    p.add_argument("--profile", action="store_true",
                   help="add one cProfile run of each dry run; writes benchmarks/profiles/")
    p.add_argument("--profile-top", type=int, default=20,
                   help="entries printed (default: %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the temp copy (its path is printed)")
    args = p.parse_args(argv)
    if not SNAKEMAKE.exists():
        p.error(f"snakemake not found beside {sys.executable}")

    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    overrides = [f"pipeline.num_shards={args.shards}", f"eval.benchmarks=[{','.join(benchmarks)}]"]
    base = [str(SNAKEMAKE), "--cores", args.cores, "--config",
            f"experiment={args.experiment}", f"overrides={' '.join(overrides)}"]
    dry = base[:1] + ["-n"] + base[1:]
    touch = [sys.executable, "-c", TOUCH, "--touch", "--forceall", *base[1:]]
    fig = Figures("pipeline_overhead", {**vars(args), "command": shlex.join(dry)})
    print("command: " + shlex.join(dry), flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="rs-bench-pipeline-"))
    workdir = copy_checkout(tmp)

    out = timed(fig, "dry_run", dry, workdir, args.repeat)
    counts = job_counts(out)
    fig.add("jobs", counts.get("total", 0))
    fig.note("job_stats", counts)
    if counts.get("retro_search") != args.shards or counts.get("eval_merge", 0) % len(benchmarks):
        raise SystemExit(f"unexpected jobs for {args.shards} shards x {len(benchmarks)} "
                         f"benchmarks: {counts}")

    start = time.perf_counter()
    fig.add("outputs_created", materialise(workdir, out, touch))
    fig.add("setup_touch_s", round(time.perf_counter() - start, 2), "s")
    timed(fig, "noop_dry_run", dry, workdir, args.repeat, expect=NOTHING)
    timed(fig, "noop_rerun", base, workdir, args.repeat, expect=NOTHING)

    plan = time_plan(workdir, args.experiment, overrides, args.repeat)
    fig.add("plan_s", round(plan["cold"], 3), "s")
    fig.add("plan_warm_s", round(plan["warm"], 3), "s")
    fig.add("plan_stages", plan["stages"])
    figures = fig.data["figures"]
    fig.add("plan_share_of_dry_run", round(figures["plan_s"] / figures["dry_run_s"], 3))
    fig.add("target_met", figures["dry_run_s"] < TARGET_S and figures["noop_rerun_s"] < TARGET_S)

    if args.profile:
        fig.note("profile_noop_dry_run", profile("noop_dry_run", dry, workdir, args.profile_top))
        shutil.rmtree(workdir / "results")
        shutil.rmtree(workdir / ".snakemake")
        fig.note("profile_dry_run", profile("dry_run", dry, workdir, args.profile_top))

    fig.result()
    if args.keep:
        print(f"kept: {workdir}", flush=True)
    else:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
