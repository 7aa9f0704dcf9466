"""The report stage: search statistics, the results table, the figures, and the merge / summarize
commands, on small hand-made inputs whose numbers are worked out by hand in the comments."""

import json
import math
import re
from pathlib import Path

import pytest

from retro_search.cli import main
from retro_search.report.search_stats import merge_stats, search_stats_markdown
from retro_search.report.tables import (RELATIVE_ROW, metrics_from_eval, results_table,
                                        to_markdown, write_csv)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- hand-made inputs

def search_row(trace_id, source, status, correct, tokens, steps, thoughts, tried, accepted,
               truncated_length, unclosed=0):
    """A revised row as `retro-search search` writes it: a TraceRecord dict plus "search".
    `tokens` are reasoning tokens; the response adds a 20-token solution, 40 after a revision
    (an accepted rollout brings its own solution)."""
    solution_after = 40 if status == "revised" else 20
    return {"id": trace_id, "question": "q", "reference_answer": "1", "reasoning": "r",
            "solution": "\\boxed{1}", "source_model": source[0], "source_dataset": source[1],
            "metadata": {},
            "search": {"trace_id": trace_id, "status": status, "original_correct": correct,
                       "original_answer": "1" if correct else "2",
                       "reasoning_tokens_before": tokens[0], "reasoning_tokens_after": tokens[1],
                       "response_tokens_before": tokens[0] + 20,
                       "response_tokens_after": tokens[1] + solution_after,
                       "steps_before": steps[0], "steps_after": steps[1],
                       "thoughts_before": thoughts[0], "thoughts_after": thoughts[1],
                       "boundaries_visited": tried, "rollouts_tried": tried,
                       "rollouts_accepted": accepted,
                       "rollouts_truncated_length": truncated_length,
                       "rollouts_unclosed": unclosed, "skip_reason": None}}


def rollout(trace_id, boundary, accepted=False, truncated=False, unclosed=False):
    return {"trace_id": trace_id, "boundary": boundary, "visit": boundary - 1, "rollout": 0,
            "prefix_steps": 3, "rest_steps": 5, "step_text": "s", "continuation": "c",
            "step_tokens": 5, "continuation_tokens": 20, "steps": 3, "answer": "1",
            "correct": not (truncated or unclosed), "truncated_length": truncated,
            "unclosed": unclosed, "log_value": None, "accepted": accepted,
            "seeds": [1, 2]}


M1, M2 = ("model-a", "set-a"), ("model-b", "set-b")
REVISED = [
    search_row("t1", M1, "revised", True, (100, 60), (10, 6), (4, 2), 3, 1, 0),
    search_row("t2", M1, "unchanged", True, (200, 200), (20, 20), (5, 5), 4, 0, 1, 1),
    search_row("t3", M2, "revised", True, (300, 150), (30, 12), (6, 3), 2, 2, 0),
    search_row("t4", M2, "incorrect_original", False, (500, 500), (40, 40), (8, 8), 0, 0, 0),
]
ROLLOUTS = [
    rollout("t1", 1), rollout("t1", 2, accepted=True), rollout("t1", 3),
    rollout("t2", 1), rollout("t2", 2, truncated=True), rollout("t2", 3, unclosed=True),
    rollout("t2", 4),
    rollout("t3", 1, accepted=True), rollout("t3", 2, accepted=True),
]

# Three arms on two benchmarks. Averages: base 35.0% / 6500 tokens, original 45.0% / 7500,
# retro_search 49.5% / 5500. Retro vs original: aime24 +5 points / -30%, math500 +4 / -20%,
# average +4.5 points / (5500 - 7500) / 7500 = -26.67% (the change of the averages).
METRICS = [
    {"arm": "base", "benchmark": "aime24", "accuracy": 0.10, "accuracy_se": 0.05, "mean_tokens": 9000},
    {"arm": "base", "benchmark": "math500", "accuracy": 0.60, "accuracy_se": 0.02, "mean_tokens": 4000},
    {"arm": "original", "benchmark": "aime24", "accuracy": 0.20, "accuracy_se": 0.06, "mean_tokens": 10000},
    {"arm": "original", "benchmark": "math500", "accuracy": 0.70, "accuracy_se": 0.02, "mean_tokens": 5000},
    {"arm": "retro_search", "benchmark": "aime24", "accuracy": 0.25, "accuracy_se": 0.06, "mean_tokens": 7000},
    {"arm": "retro_search", "benchmark": "math500", "accuracy": 0.74, "accuracy_se": 0.02, "mean_tokens": 4000},
]


def write_rows(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def parse_markdown_table(text, which=0):
    """The Markdown table number `which` (0: the first) in `text` as {row label: {header: cell}}."""
    tables, previous = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            if not previous:
                tables.append([])
            tables[-1].append(line)
        previous = line.startswith("|")
    lines = tables[which]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, body = split[0], split[2:]
    return {cells[0]: dict(zip(header[1:], cells[1:])) for cells in body}


# ----------------------------------------------------------------------------- merge_stats

def test_merge_stats_counts_traces_by_status():
    stats = merge_stats(REVISED, ROLLOUTS)
    assert stats["traces"] == 4
    assert stats["by_status"] == {"revised": 2, "unchanged": 1, "incorrect_original": 1,
                                  "skipped": 0}


def test_merge_stats_lengths_cover_only_traces_with_a_correct_original():
    tokens = merge_stats(REVISED, ROLLOUTS)["reasoning_tokens"]
    assert tokens["traces"] == 3  # t4 (incorrect original, 500 tokens) is left out
    assert tokens["before"] == {"sum": 600, "mean": 200.0, "median": 200.0}
    assert tokens["after"]["sum"] == 410  # 60 + 200 + 150
    assert tokens["after"]["mean"] == pytest.approx(410 / 3)
    assert tokens["after"]["median"] == 150.0
    assert tokens["relative_change_pct"] == pytest.approx(100 * (410 - 600) / 600)  # -31.67%


def test_merge_stats_report_whole_responses_apart_from_the_reasoning():
    # The revised traces' solutions grew from 20 to 40 tokens: responses shrink less than the
    # reasoning (660 -> 510, against 600 -> 410).
    tokens = merge_stats(REVISED, ROLLOUTS)["response_tokens"]
    assert (tokens["before"]["sum"], tokens["after"]["sum"]) == (660, 510)
    assert tokens["relative_change_pct"] == pytest.approx(100 * (510 - 660) / 660)


def test_merge_stats_steps_and_thoughts_are_means_before_and_after():
    stats = merge_stats(REVISED, ROLLOUTS)
    assert stats["steps"]["before_mean"] == pytest.approx(20.0)       # (10 + 20 + 30) / 3
    assert stats["steps"]["after_mean"] == pytest.approx(38 / 3)      # (6 + 20 + 12) / 3
    assert stats["thoughts"]["before_mean"] == pytest.approx(5.0)     # (4 + 5 + 6) / 3
    assert stats["thoughts"]["after_mean"] == pytest.approx(10 / 3)   # (2 + 5 + 3) / 3


def test_merge_stats_acceptance_and_truncation_rates():
    rollouts = merge_stats(REVISED, ROLLOUTS)["rollouts"]
    assert (rollouts["tried"], rollouts["accepted"], rollouts["truncated_length"],
            rollouts["unclosed"]) == (9, 3, 1, 1)
    assert rollouts["acceptance_rate"] == pytest.approx(3 / 9)
    assert rollouts["truncated_length_rate"] == pytest.approx(1 / 9)
    assert rollouts["unclosed_rate"] == pytest.approx(1 / 9)
    assert rollouts["generated_tokens"] == 9 * 25
    assert rollouts["log_rows"] == 9


def test_merge_stats_per_boundary_acceptance():
    per_boundary = merge_stats(REVISED, ROLLOUTS)["per_boundary"]
    assert [(b["boundary"], b["tried"], b["accepted"], b["truncated_length"], b["unclosed"])
            for b in per_boundary] == [
        (1, 3, 1, 0, 0), (2, 3, 2, 1, 0), (3, 2, 0, 0, 1), (4, 1, 0, 0, 0)]
    assert [b["rate"] for b in per_boundary] == pytest.approx([1 / 3, 2 / 3, 0.0, 0.0])


def test_merge_stats_per_source_counts_and_token_change():
    per_source = merge_stats(REVISED, ROLLOUTS)["per_source"]
    assert [(s["source_model"], s["source_dataset"], s["traces"], s["revised"], s["searched"],
             s["reasoning_tokens_before"], s["reasoning_tokens_after"]) for s in per_source] == [
        ("model-a", "set-a", 2, 1, 2, 300, 260), ("model-b", "set-b", 2, 1, 1, 300, 150)]
    assert [s["relative_change_pct"] for s in per_source] == pytest.approx([-40 / 3, -50.0])


def test_merge_stats_warns_when_the_log_disagrees_with_the_traces():
    assert merge_stats(REVISED, ROLLOUTS)["warnings"] == []
    assert "rollout log has 8" in merge_stats(REVISED, ROLLOUTS[:-1])["warnings"][0]


def test_merge_stats_of_nothing_has_no_means():
    stats = merge_stats([], [])
    assert stats["traces"] == 0
    assert stats["reasoning_tokens"]["before"]["mean"] is None
    assert stats["reasoning_tokens"]["relative_change_pct"] is None
    assert stats["rollouts"]["acceptance_rate"] is None
    assert stats["per_boundary"] == []


def test_merge_stats_names_a_row_without_search_stats():
    with pytest.raises(ValueError, match=r"row 2 \(id='t2'\).*'search'"):
        merge_stats([REVISED[0], {"id": "t2"}], [])


def test_search_stats_markdown_shows_the_headline_numbers():
    text = search_stats_markdown(merge_stats(REVISED, ROLLOUTS))
    assert "4 traces: 2 revised, 1 unchanged, 1 with an incorrect original" in text
    lengths = parse_markdown_table(text)
    assert lengths["reasoning tokens, total"] == {"before": "600", "after": "410",
                                                  "change": "-31.7%"}
    assert lengths["response tokens, total"] == {"before": "660", "after": "510",
                                                 "change": "-22.7%"}
    assert "33.3%" in text  # acceptance rate
    assert "| 1 (11.1%) | 1 (11.1%) |" in text  # truncated at the budget, unclosed


# ----------------------------------------------------------------------------- the table

def test_results_table_has_one_row_per_arm_then_the_relative_rows():
    table = results_table(METRICS)
    assert list(table.index) == ["base", "original", "retro_search", "original vs base",
                                 "retro_search vs base", RELATIVE_ROW]
    per_bench = ["acc", "se", "len", "problems", "samples", "trunc"]
    assert list(table.columns) == [*(f"aime24/{s}" for s in per_bench),
                                   *(f"math500/{s}" for s in per_bench),
                                   "average/acc", "average/se", "average/len", "average/trunc"]


def test_standard_errors_are_in_points_averaged_as_independent_and_combined_in_the_difference():
    table = results_table(METRICS)
    assert table.loc["base", "aime24/se"] == pytest.approx(5.0)
    assert table.loc["base", "average/se"] == pytest.approx((5.0 ** 2 + 2.0 ** 2) ** 0.5 / 2)
    assert table.loc[RELATIVE_ROW, "aime24/se"] == pytest.approx((6.0 ** 2 + 6.0 ** 2) ** 0.5)
    no_se = results_table([{**m, "accuracy_se": None} for m in METRICS])
    assert math.isnan(no_se.loc["base", "aime24/se"]) and math.isnan(no_se.loc["base", "average/se"])


def test_results_table_gives_accuracy_in_percent_and_length_in_tokens():
    table = results_table(METRICS)
    assert table.loc["retro_search", "aime24/acc"] == pytest.approx(25.0)
    assert table.loc["retro_search", "aime24/len"] == pytest.approx(7000)


def test_results_table_average_is_the_mean_over_benchmarks():
    table = results_table(METRICS)
    assert table.loc["base", "average/acc"] == pytest.approx(35.0)
    assert table.loc["original", "average/len"] == pytest.approx(7500)
    assert table.loc["retro_search", "average/acc"] == pytest.approx(49.5)
    assert table.loc["retro_search", "average/len"] == pytest.approx(5500)


def test_relative_row_gives_accuracy_points_and_length_percent():
    row = results_table(METRICS).loc[RELATIVE_ROW]
    assert row["aime24/acc"] == pytest.approx(5.0)
    assert row["aime24/len"] == pytest.approx(-30.0)
    assert row["math500/acc"] == pytest.approx(4.0)
    assert row["math500/len"] == pytest.approx(-20.0)
    assert row["average/acc"] == pytest.approx(4.5)
    assert row["average/len"] == pytest.approx(-200 / 7.5)  # -26.67%, not the mean of -30 and -20


def test_results_table_follows_the_given_arm_order():
    table = results_table(METRICS, arms=["retro_search", "original", "base"])
    assert list(table.index) == ["retro_search", "original", "base", "retro_search vs base",
                                 "original vs base", RELATIVE_ROW]


def test_results_table_without_the_original_arm_is_relative_to_base_only():
    table = results_table([m for m in METRICS if m["arm"] != "original"])
    assert list(table.index) == ["base", "retro_search", "retro_search vs base"]


def test_an_arm_missing_a_benchmark_gets_no_average():
    table = results_table(METRICS[:-1])  # retro_search lacks math500
    assert math.isnan(table.loc["retro_search", "average/acc"])
    assert table.loc["original", "average/acc"] == pytest.approx(45.0)


def test_results_table_rejects_two_results_for_one_arm_and_benchmark():
    with pytest.raises(ValueError, match="'base' has two results for benchmark 'aime24'"):
        results_table(METRICS + [METRICS[0]])


def test_metrics_from_eval_reads_the_eval_stage_names_and_guesses_no_others():
    row = metrics_from_eval({"benchmark": "b", "accuracy": 0.5, "accuracy_stderr": 0.1,
                             "mean_tokens": 10, "n_problems": 30, "n_samples": 4,
                             "truncation_rate": 0.25}, "x")
    assert row == {"arm": "x", "benchmark": "b", "accuracy": 0.5, "accuracy_se": 0.1,
                   "mean_tokens": 10.0, "problems": 30, "samples": 4, "truncation_rate": 0.25}
    uneven = metrics_from_eval({"benchmark": "b", "accuracy": 0.5, "mean_tokens": 10,
                                "n_problems": 3, "n_samples": [1, 2]}, "x")
    assert (uneven["problems"], uneven["samples"], uneven["truncation_rate"]) == (3, None, None)
    # another tool's names are not taken for ours
    with pytest.raises(ValueError, match=r"no \['accuracy'\]"):
        metrics_from_eval({"benchmark": "b", "pass@1": 0.25, "mean_tokens": 8}, "x")


def test_a_metrics_file_without_a_key_of_the_eval_schema_is_refused_by_name(tmp_path):
    from retro_search.artifacts import read_eval_metrics

    path = tmp_path / "metrics.json"
    path.write_text('{"benchmark": "b", "accuracy": "high", "mean_tokens": 3}')
    with pytest.raises(ValueError, match=r"metrics.json: 'accuracy' is 'high', expected a float"):
        read_eval_metrics(path)
    path.write_text('{"benchmark": "b", "accuracy": 0.5}')
    with pytest.raises(ValueError, match=r"metrics.json: no 'mean_tokens'"):
        read_eval_metrics(path)


def test_metrics_from_eval_names_the_file_and_the_missing_value():
    with pytest.raises(ValueError, match=r"m\.json: no \[.accuracy.\]"):
        metrics_from_eval({"benchmark": "b", "mean_tokens": 1}, "x", source="m.json")


def test_markdown_table_parses_back_to_the_same_numbers():
    table = results_table(METRICS)
    parsed = parse_markdown_table(to_markdown(table))
    assert list(parsed) == ["base", "original", "retro_search", "original vs base",
                            "retro_search vs base", RELATIVE_ROW]
    assert parsed["retro_search"]["aime24 acc"] == "25.0 ± 6.0"
    assert parsed["retro_search"]["aime24 len"] == "7000"
    assert parsed["retro_search"]["average acc"] == "49.5 ± 3.2"
    assert parsed[RELATIVE_ROW]["average acc"] == "+4.5 ± 4.5"
    assert parsed[RELATIVE_ROW]["average len"] == "-26.7%"
    for arm in ("base", "original", "retro_search"):
        for column in table.columns:
            if not column.endswith(("/acc", "/len")):
                continue
            cell = parsed[arm][column.replace("/", " ")]
            value, _, se = cell.partition(" ± ")
            assert float(value) == pytest.approx(table.loc[arm, column], abs=0.5)
            if se:
                assert float(se) == pytest.approx(table.loc[arm, column.replace("/acc", "/se")],
                                                  abs=0.05)


def test_csv_keeps_full_precision(tmp_path):
    import pandas as pd

    path = write_csv(results_table(METRICS), tmp_path / "results.csv")
    back = pd.read_csv(path, index_col="arm")
    assert back.loc[RELATIVE_ROW, "average/len"] == pytest.approx(-200 / 7.5, rel=1e-12)
    assert back.loc["retro_search", "math500/acc"] == pytest.approx(74.0)


# ----------------------------------------------------------------------------- figures

def assert_png(path, min_bytes=8_000):
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes


def test_accuracy_vs_length_plot_writes_a_png(tmp_path):
    from retro_search.report.plots import plot_accuracy_vs_length

    path = plot_accuracy_vs_length(METRICS, tmp_path / "acc.png")
    assert path == tmp_path / "acc.png"
    assert_png(path)


def test_trace_length_plot_writes_a_png(tmp_path):
    from retro_search.report.plots import plot_trace_lengths

    assert_png(plot_trace_lengths(REVISED, tmp_path / "lengths.png"))


def test_boundary_acceptance_plot_writes_a_png(tmp_path):
    from retro_search.report.plots import plot_boundary_acceptance

    per_boundary = merge_stats(REVISED, ROLLOUTS)["per_boundary"]
    assert_png(plot_boundary_acceptance(per_boundary, tmp_path / "boundaries.png"))


def test_boundary_acceptance_groups_many_boundaries_into_ranges(tmp_path):
    from retro_search.report.plots import _grouped

    per_boundary = [{"boundary": b, "tried": 2, "accepted": b % 2} for b in range(1, 101)]
    bars = _grouped(per_boundary, max_bars=30)
    assert bars[0] == ("1-4", 8, 2)
    assert len(bars) == 25 and sum(t for _, t, _ in bars) == 200


def test_plots_of_empty_inputs_still_write_a_png(tmp_path):
    from retro_search.report.plots import (plot_accuracy_vs_length, plot_boundary_acceptance,
                                           plot_trace_lengths)

    for path in (plot_accuracy_vs_length([], tmp_path / "a.png"),
                 plot_trace_lengths([], tmp_path / "b.png"),
                 plot_boundary_acceptance([], tmp_path / "c.png")):
        assert_png(path, min_bytes=1_000)


# ----------------------------------------------------------------------------- merge command

@pytest.mark.parametrize("command", ["merge", "summarize"])
def test_report_commands_explain_themselves(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: retro-search " + command in capsys.readouterr().out


def test_merge_concatenates_shards_in_order_and_writes_stats(tmp_path):
    shard0 = write_rows(tmp_path / "0.jsonl", REVISED[2:])
    shard1 = write_rows(tmp_path / "1.jsonl", REVISED[:2])
    log0 = write_rows(tmp_path / "0.rollouts.jsonl", ROLLOUTS[7:])
    log1 = write_rows(tmp_path / "1.rollouts.jsonl", ROLLOUTS[:7])
    out = tmp_path / "merged"
    assert main(["merge", "--inputs", shard0, shard1, "--rollouts", log0, log1,
                 "--output", str(out / "revised.jsonl"), "--stats", str(out / "stats.json"),
                 "--rollout-log", str(out / "rollouts.jsonl")]) == 0
    assert [r["id"] for r in read_rows(out / "revised.jsonl")] == ["t3", "t4", "t1", "t2"]
    assert len(read_rows(out / "rollouts.jsonl")) == 9
    stats = json.loads((out / "stats.json").read_text())
    assert stats["by_status"] == {"revised": 2, "unchanged": 1, "incorrect_original": 1,
                                  "skipped": 0}
    assert stats["rollouts"]["acceptance_rate"] == pytest.approx(1 / 3)
    assert stats["inputs"]["revised"] == [shard0, shard1]


def test_merge_rejects_a_duplicate_id_naming_the_file(tmp_path, capsys):
    shard0 = write_rows(tmp_path / "0.jsonl", REVISED[:2])
    shard1 = write_rows(tmp_path / "1.jsonl", [REVISED[2], REVISED[1]])
    output = tmp_path / "revised.jsonl"
    assert main(["merge", "--inputs", shard0, shard1, "--output", str(output),
                 "--stats", str(tmp_path / "stats.json")]) == 2
    err = capsys.readouterr().err
    assert "1.jsonl: row 2: duplicate trace id 't2'" in err and "0.jsonl (row 2)" in err
    assert not output.exists()


# ----------------------------------------------------------------------------- summarize command

def eval_metrics_files(folder):
    """metrics.json files shaped like the eval stage's (pass@1 / accuracy_stderr names)."""
    paths, arms = [], []
    for m in METRICS:
        path = Path(folder) / m["arm"] / m["benchmark"] / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"benchmark": m["benchmark"], "model": "student",
                                    "accuracy": m["accuracy"], "accuracy_stderr": m["accuracy_se"],
                                    "pass@1": m["accuracy"], "mean_tokens": m["mean_tokens"],
                                    "n_problems": 30}))
        paths.append(str(path))
        arms.append(m["arm"])
    return paths, arms


def test_summarize_writes_tables_figures_and_summary(tmp_path):
    metrics, arms = eval_metrics_files(tmp_path / "eval")
    revised = write_rows(tmp_path / "revised.jsonl", REVISED)
    rollouts = write_rows(tmp_path / "rollouts.jsonl", ROLLOUTS)
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(merge_stats(REVISED, ROLLOUTS)))
    out = tmp_path / "summary"
    assert main(["summarize", "--metrics", *metrics, "--arms", *arms, "--search-stats", str(stats),
                 "--revised", revised, "--rollouts", rollouts, "--output-dir", str(out)]) == 0

    for name in ("accuracy_vs_length.png", "trace_lengths.png", "boundary_acceptance.png"):
        assert_png(out / name)
    table = parse_markdown_table((out / "results.md").read_text())
    assert table[RELATIVE_ROW]["aime24 acc"] == "+5.0 ± 8.5"
    assert table[RELATIVE_ROW]["math500 len"] == "-20.0%"
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == ("arm,aime24/acc,aime24/se,aime24/len,aime24/problems,aime24/samples,"
                            "aime24/trunc,math500/acc,math500/se,math500/len,math500/problems,"
                            "math500/samples,math500/trunc,average/acc,average/se,average/len,"
                            "average/trunc")
    assert (out / "results.md").read_text().startswith(
        "Retro-Search revised 2 of 3 traces (66.7%); mean reasoning length 200.0 -> 136.7 tokens "
        "of the revision model (-31.7%).")
    assert [line.split(",")[0] for line in csv_lines[1:]] == [
        "base", "original", "retro_search", "original vs base", "retro_search vs base",
        RELATIVE_ROW]
    assert "| reasoning tokens, total | 600 | 410 | -31.7% |" in (out / "search_stats.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arms"] == ["base", "original", "retro_search"]
    assert summary["benchmarks"] == ["aime24", "math500"]
    assert summary["table"][2]["average/acc"] == pytest.approx(49.5)
    assert summary["search"]["by_status"]["revised"] == 2
    assert summary["search_headline"]["revised_share"] == pytest.approx(2 / 3)


def test_summarize_writes_html_pages_of_the_table_and_the_search_statistics(tmp_path):
    # what `snakemake --report` shows inline: self-contained pages, the same numbers as the Markdown
    from retro_search.report.html import HEADLINE_END, HEADLINE_START

    metrics, arms = eval_metrics_files(tmp_path / "eval")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(merge_stats(REVISED, ROLLOUTS)))
    out = tmp_path / "summary"
    assert main(["summarize", "--metrics", *metrics, "--arms", *arms, "--search-stats", str(stats),
                 "--output-dir", str(out)]) == 0
    results = (out / "results.html").read_text()
    headline = results.split(HEADLINE_START)[1].split(HEADLINE_END)[0]
    # averages: retro_search 49.5% ± sqrt(6^2 + 2^2) / 2 = 3.2; vs original (the same se) +4.5 ±
    # 3.2 * sqrt(2) = 4.5 points, (5500 - 7500) / 7500 = -26.7% in length
    # a row per benchmark and the average, a column per arm and relative row
    rows = {row[0]: row[1:] for row in re.findall(r"<tr>(.*?)</tr>", headline)
            for row in [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]}
    assert rows["benchmark"] == ["base", "original", "retro_search", "retro vs original", "n"]
    assert rows["average of 2"][2] == "49.5 ± 3.2 / 5500"
    assert rows["average of 2"][3] == "+4.5 ± 4.5 / -26.7%"
    assert rows["aime24"][3] == "+5.0 ± 8.5 / -30.0%"  # each benchmark's effect, not only the mean
    assert "Retro-Search revised 2 of 3 traces" in headline
    assert ">+5.0 ± 8.5</td>" in results.split(HEADLINE_END)[1]  # the full table follows
    search = (out / "search_stats.html").read_text()
    assert ">reasoning tokens, total</td><td style=\"text-align: right\">600</td>" in search
    for page in (results, search):
        assert page.startswith("<!DOCTYPE html>") and "<style>" in page
        assert "<script" not in page and "src=" not in page and "href=" not in page


def test_markdown_to_html_escapes_text_and_keeps_table_alignment():
    from retro_search.report.html import markdown_to_html

    text = "## A <b> & c\n\nline one\nline two\n\n| x | n |\n|---|---:|\n| <i> | 1 |\n\n- w\n"
    assert markdown_to_html(text) == (
        "<h2>A &lt;b&gt; &amp; c</h2>\n<p class=\"note\">line one line two</p>\n"
        '<table class="retro-search"><thead><tr><th style="text-align: left">x</th>'
        '<th style="text-align: right">n</th></tr></thead><tbody><tr>'
        '<td style="text-align: left">&lt;i&gt;</td><td style="text-align: right">1</td>'
        "</tr></tbody></table>\n<ul><li>w</li></ul>")


def test_summarize_computes_search_stats_from_the_logs_when_no_stats_file(tmp_path):
    metrics, arms = eval_metrics_files(tmp_path / "eval")
    out = tmp_path / "summary"
    assert main(["summarize", "--metrics", *metrics, "--arms", *arms,
                 "--revised", write_rows(tmp_path / "revised.jsonl", REVISED),
                 "--rollouts", write_rows(tmp_path / "rollouts.jsonl", ROLLOUTS),
                 "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"]["rollouts"]["tried"] == 9
    assert (out / "boundary_acceptance.png").exists()


def test_summarize_needs_one_arm_per_metrics_file(tmp_path, capsys):
    metrics, arms = eval_metrics_files(tmp_path / "eval")
    assert main(["summarize", "--metrics", *metrics, "--arms", *arms[:-1],
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert "--arms gives 5 labels for 6 --metrics files" in capsys.readouterr().err


# ----------------------------------------------------------------------------- relative rows, n, truncation

def test_each_arm_is_also_shown_relative_to_the_base_model():
    table = results_table(METRICS)
    retro = table.loc["retro_search vs base"]
    assert retro["aime24/acc"] == pytest.approx(15.0)                    # 25 - 10
    assert retro["aime24/se"] == pytest.approx(math.hypot(6.0, 5.0))
    assert retro["aime24/len"] == pytest.approx(100 * (7000 - 9000) / 9000)
    assert table.loc["original vs base", "average/len"] == pytest.approx(100 * 1000 / 6500)
    parsed = parse_markdown_table(to_markdown(table))
    assert parsed["retro_search vs base"]["aime24 acc"] == "+15.0 ± 7.8"
    assert parsed["retro_search vs base"]["aime24 len"] == "-22.2%"


def test_a_preset_without_base_is_relative_to_the_original_traces_only():
    # the weak-to-strong preset compares only the two fine-tuned arms
    table = results_table([m for m in METRICS if m["arm"] != "base"])
    assert list(table.index) == ["original", "retro_search", RELATIVE_ROW]
    text = to_markdown(table)
    assert " vs base" not in text
    assert parse_markdown_table(text)[RELATIVE_ROW]["aime24 acc"] == "+5.0 ± 8.5"


SIZED = [{**m, "problems": 30 if m["benchmark"] == "aime24" else 500,
          "samples": 4 if m["benchmark"] == "aime24" else 1,
          "truncation_rate": {"base": 0.2, "original": 0.1, "retro_search": 0.05}[m["arm"]]
          if m["benchmark"] == "aime24" else 0.0} for m in METRICS]


def test_the_table_gives_n_and_truncation_per_benchmark_in_their_own_columns():
    table = results_table(SIZED)
    assert table.loc["original", "aime24/problems"] == 30
    assert table.loc["original", "aime24/samples"] == 4
    assert table.loc["original", "aime24/trunc"] == pytest.approx(10.0)
    assert table.loc["base", "average/trunc"] == pytest.approx(10.0)      # (20 + 0) / 2
    assert math.isnan(table.loc[RELATIVE_ROW, "aime24/problems"])


def test_markdown_lists_n_as_problems_x_samples_and_truncation_per_arm():
    sizes = parse_markdown_table(to_markdown(results_table(SIZED)), which=1)
    assert sizes["aime24"] == {"n (problems x samples)": "30 x 4", "base truncated": "20.0%",
                               "original truncated": "10.0%",
                               "retro_search truncated": "5.0%"}
    assert sizes["math500"]["n (problems x samples)"] == "500 x 1"
    unknown = parse_markdown_table(to_markdown(results_table(METRICS)), which=1)
    assert unknown["aime24"]["n (problems x samples)"] == "n/a"


def test_markdown_names_each_arms_n_when_the_arms_differ():
    rows = [dict(m, problems=29) if m["arm"] == "base" else m for m in SIZED]
    sizes = parse_markdown_table(to_markdown(results_table(rows)), which=1)
    assert sizes["aime24"]["n (problems x samples)"] == \
        "base 29 x 4, original 30 x 4, retro_search 30 x 4"


def test_csv_keeps_value_and_stderr_in_separate_numeric_columns(tmp_path):
    import pandas as pd

    back = pd.read_csv(write_csv(results_table(SIZED), tmp_path / "r.csv"), index_col="arm")
    assert back.loc["retro_search", "aime24/acc"] == pytest.approx(25.0)
    assert back.loc["retro_search", "aime24/se"] == pytest.approx(6.0)
    assert back.loc["retro_search", "aime24/trunc"] == pytest.approx(5.0)
    assert back.loc["retro_search", "math500/problems"] == 500
    assert all(pd.api.types.is_float_dtype(back[c]) for c in back.columns)


# ----------------------------------------------------------------------------- accuracy vs length

CROWDED = [  # the demo's shape: one benchmark learnt, eight at 0% with similar lengths
    {"arm": arm, "benchmark": bench, "accuracy": 0.97 if bench == "arith" else 0.0,
     "accuracy_se": 0.008 if bench == "arith" else 0.0,
     "mean_tokens": (62 if bench == "arith" else 150 + 3 * i) * scale}
    for arm, scale in (("base", 1.0), ("original", 0.8), ("retro_search", 0.6))
    for i, bench in enumerate(["arith", "aime24", "aime25", "amc23", "gpqa", "math500",
                               "minerva", "olympiad", "gsm8k"])]


@pytest.mark.parametrize("metrics", [METRICS, CROWDED], ids=["spread", "crowded"])
def test_accuracy_vs_length_labels_do_not_overlap(metrics):
    import matplotlib.pyplot as plt

    from retro_search.report.plots import accuracy_vs_length_figure, text_box

    fig, ax, labels = accuracy_vs_length_figure(metrics)
    try:
        renderer = fig.canvas.get_renderer()
        assert sorted(label.get_text() for label in labels) == \
            sorted({m["benchmark"] for m in metrics})  # one label per benchmark
        boxes = [text_box(label, renderer) for label in labels]
        frame = ax.get_window_extent(renderer)
        for i, box in enumerate(boxes):
            assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
            for other in boxes[i + 1:]:
                assert not box.overlaps(other), (labels[i].get_text(), box, other)
    finally:
        plt.close(fig)


def test_accuracy_vs_length_draws_one_standard_error_bars():
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from retro_search.report.plots import accuracy_vs_length_figure

    fig, ax, _ = accuracy_vs_length_figure(METRICS)
    try:
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 3  # one per arm
        heights = sorted(round(float(seg[1][1] - seg[0][1]), 6)
                         for c in bars for seg in c.lines[2][0].get_segments())
        # +- 1 standard error in points: 2 * se for every (arm, benchmark)
        assert heights == sorted(round(200 * m["accuracy_se"], 6) for m in METRICS)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- experiment README

def test_experiment_readme_links_plots_search_statistics_and_config(tmp_path, monkeypatch):
    import re

    import yaml

    from retro_search.report.experiment_index import experiment_config, write_experiment_index
    from retro_search.stages import summarize

    monkeypatch.chdir(tmp_path)
    metrics, arms = eval_metrics_files("eval")
    summary = Path("results/summary/demo-0123456789")
    summarize.run(metrics, arms, summary,
                  revised=write_rows(tmp_path / "revised.jsonl", REVISED),
                  rollouts=write_rows(tmp_path / "rollouts.jsonl", ROLLOUTS))
    config = {"name": "demo", "search": {"rollouts": 2, "retries": 2},
              "engine": {"name": "transformers", "batch_size": 8},
              "resources": {"eval": {"cpus": 2}}}
    index = {"experiment": "demo", "stages": [{"role": "summary", "kind": "summary",
                                               "id": summary.name, "dir": str(summary)}]}
    out = Path("results/experiments/demo")
    write_experiment_index(out, index, summary / "results.md", config=experiment_config(config))

    readme = (out / "README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    for name in ("accuracy_vs_length.png", "trace_lengths.png", "boundary_acceptance.png",
                 "search_stats.md", "search_stats.html", "results.csv", "results.html",
                 "config.yaml"):
        assert any(t.endswith(name) for t in targets), name
    for target in targets:
        assert (out / target).exists(), target
    assert "![Accuracy vs response length](" in readme  # shown, not only linked
    # the resolved config, runtime settings aside (they change no result)
    assert yaml.safe_load((out / "config.yaml").read_text()) == {
        "name": "demo", "search": {"rollouts": 2}, "engine": {"name": "transformers"}}


def test_the_front_page_table_without_an_original_arm_shows_each_relative_row():
    from retro_search.report.tables import by_benchmark_markdown

    metrics = [{"arm": arm, "benchmark": "arith", "accuracy": acc, "accuracy_se": 0.01,
                "mean_tokens": tokens, "problems": 400, "samples": 1}
               for arm, acc, tokens in (("base", 0.5, 100), ("retro_search", 0.6, 80))]
    rows = parse_markdown_table(by_benchmark_markdown(results_table(metrics)))
    assert rows["arith"] == {"n": "400 x 1", "base": "50.0 ± 1.0 / 100",
                             "retro_search": "60.0 ± 1.0 / 80",
                             "retro_search vs base": "+10.0 ± 1.4 / -20.0%"}
    assert rows["average of 1"]["retro_search vs base"] == "+10.0 ± 1.4 / -20.0%"
