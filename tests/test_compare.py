"""`retro-search compare`: one table across experiment folders made by the package's own writers
(the summarize stage and the experiment index), the swept config values as columns."""

import json
from pathlib import Path

import pytest

from retro_search.cli import main

# accuracy of arm retro_search on arith per experiment; the other arms are fixed
SWEEP = {"demo": ({"rollouts": 1}, None, 0.90),
         "demo_search.rollouts=2": ({"rollouts": 2}, None, 0.92),
         "demo_search.rollouts=4": ({"rollouts": 4}, 50, 0.95)}


def make_experiment(name, search, limit, retro_accuracy):
    """results/summary/NAME-x (summarize.run) and results/experiments/NAME (its index, config)."""
    from retro_search.report.experiment_index import experiment_config, write_experiment_index
    from retro_search.stages import summarize

    metrics, arms = [], []
    for arm, accuracy, tokens in (("original", 0.90, 50.0), ("retro_search", retro_accuracy, 38.0)):
        path = Path("eval") / name / arm / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"benchmark": "arith", "accuracy": accuracy,
                                    "accuracy_stderr": 0.01, "mean_tokens": tokens,
                                    "n_problems": 400, "n_samples": 1,
                                    "truncation_rate": 0.0}))
        metrics.append(str(path))
        arms.append(arm)
    summary = Path("results/summary") / f"{name}-x"
    summarize.run(metrics, arms, summary)
    config = {"name": "demo", "search": {"gamma": 0.9, **search, "retries": 2},
              "eval": {"benchmarks": ["arith"], "limit": limit, "grading_processes": 2},
              "pipeline": {"arms": ["original", "retro_search"]}}
    index = {"experiment": name, "stages": [{"role": "summary", "kind": "summary",
                                             "id": summary.name, "dir": str(summary)}]}
    write_experiment_index(Path("results/experiments") / name, index, summary / "results.md",
                           config=experiment_config(config))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import os

    folder = tmp_path_factory.mktemp("compare")
    here = os.getcwd()
    os.chdir(folder)
    try:
        for name, values in SWEEP.items():
            make_experiment(name, *values)
    finally:
        os.chdir(here)
    return folder


def markdown_rows(text):
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return split[0], [dict(zip(split[0], cells)) for cells in split[2:]]


def files_under(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def test_a_parent_folder_compares_every_experiment_with_the_swept_keys_as_columns(sweep, capsys):
    before = files_under(sweep)
    assert main(["compare", str(sweep / "results/experiments")]) == 0
    header, rows = markdown_rows(capsys.readouterr().out)
    # only what differs: search.gamma, the runtime keys and the benchmarks are the same everywhere
    assert header[:4] == ["experiment", "search.rollouts", "eval.limit", "arm"]
    assert header[4:] == ["arith acc", "arith len", "average acc", "average len"]
    assert [(r["experiment"], r["search.rollouts"], r["eval.limit"], r["arm"]) for r in rows] == [
        (name, str(search["rollouts"]), "null" if limit is None else str(limit), arm)
        for name, (search, limit, _) in SWEEP.items()
        for arm in ("original", "retro_search", "retro vs original")]
    retro = {r["experiment"]: r for r in rows if r["arm"] == "retro_search"}
    assert retro["demo_search.rollouts=4"]["arith acc"] == "95.0 ± 1.0"
    assert retro["demo"]["arith len"] == "38"
    relative = {r["experiment"]: r for r in rows if r["arm"] == "retro vs original"}
    assert relative["demo_search.rollouts=2"]["arith acc"] == "+2.0 ± 1.4"
    assert relative["demo"]["arith len"] == "-24.0%"
    assert files_under(sweep) == before  # read-only: no manifest, no table written


def test_csv_to_a_file_keeps_values_and_standard_errors_apart(sweep, tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.chdir(sweep)
    output = tmp_path / "sweep.csv"
    assert main(["compare", "results/experiments/demo", "results/experiments/demo_search.rollouts=2",
                 "--format", "csv", "--output", str(output)]) == 0
    table = pd.read_csv(output)
    assert list(table.columns[:3]) == ["experiment", "search.rollouts", "arm"]  # limit: same
    assert {"arith/acc", "arith/se", "arith/len", "average/acc"} <= set(table.columns)
    row = table[(table["experiment"] == "demo_search.rollouts=2")
                & (table["arm"] == "retro_search")].iloc[0]
    assert row["arith/acc"] == pytest.approx(92.0) and row["arith/se"] == pytest.approx(1.0)
    assert row["search.rollouts"] == 2


def test_a_glob_selects_the_experiments(sweep, capsys, monkeypatch):
    monkeypatch.chdir(sweep)
    assert main(["compare", "results/experiments/demo_search.rollouts=*"]) == 0
    _, rows = markdown_rows(capsys.readouterr().out)
    assert {r["experiment"] for r in rows} == {"demo_search.rollouts=2", "demo_search.rollouts=4"}


def test_a_folder_that_is_not_an_experiment_is_refused_in_one_line(sweep, capsys):
    assert main(["compare", str(sweep / "results/experiments/demo"),
                 str(sweep / "results/summary")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("retro-search compare: error:")
    assert "results/summary is not an experiment folder" in err


def test_compare_explains_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: retro-search compare" in out and "swept" in out and "--format" in out
