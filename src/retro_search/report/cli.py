"""`retro-search merge` and `retro-search summarize`: the report stage's commands.

- merge: concatenate the revised shards and rollout logs of one search, and write its statistics.
- summarize: the results table (CSV, Markdown), the search statistics page, three figures and a
  summary.json, from the eval stage's metrics files and the merged search outputs.

pandas and matplotlib are imported inside the commands, so `retro-search --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MERGE_DESCRIPTION = """\
Concatenate the revised shards of one Retro-Search run (in the order given) into one file, and
write its statistics. Every trace id must be unique across the shards; a repeated id is an error
that names both files. Optionally concatenate the shards' rollout logs too. Outputs are written
atomically.

STATS.json holds: traces by status (revised / unchanged / incorrect_original / skipped); reasoning
tokens (the paper's length) and whole-response tokens before and after (sum, mean, median,
relative change in %) and mean steps and thoughts, over the traces whose original answer was
correct; rollouts tried, accepted, truncated at their token budget, unclosed, and their rates;
acceptance per boundary number (from the rollout logs); counts and token change per
(source_model, source_dataset). Tokens are the revision model's."""

MERGE_EPILOG = """\
Example:
  retro-search merge --inputs results/search/0.jsonl results/search/1.jsonl \\
      --rollouts results/search/0.rollouts.jsonl results/search/1.rollouts.jsonl \\
      --output revised.jsonl --rollout-log rollouts.jsonl --stats stats.json"""

SUMMARIZE_DESCRIPTION = """\
Build an experiment's report from the eval stage's metrics files and the merged search outputs.
Writes into OUTPUT_DIR:
  results.csv              rows = arms, columns BENCH/acc (accuracy, %), BENCH/se (its standard
                           error) and BENCH/len (mean response tokens) per benchmark, and their
                           average; last row "retro vs original": accuracy difference in points
                           (with its standard error), length change in %
  results.md               the same table in Markdown (accuracy as "acc ± se"), under a line
                           with the share of traces revised and the mean reasoning length before
                           and after Retro-Search
  search_stats.md          the search statistics (from --search-stats, or computed from
                           --revised and --rollouts when it is not given)
  accuracy_vs_length.png   accuracy vs mean length per arm and benchmark, arrows original -> retro
  trace_lengths.png        reasoning lengths before / after Retro-Search
  boundary_acceptance.png  acceptance rate of rollouts by boundary number
  summary.json             the metrics read, the table, and the search statistics
A metrics file is the eval stage's metrics.json: it needs "benchmark", the accuracy as "accuracy"
or "pass@1" (a fraction), and "mean_tokens"; the standard error is read from "accuracy_se",
"accuracy_stderr", "pass@1_se" or "pass@1_stderr" when present."""

SUMMARIZE_EPILOG = """\
Example (two arms, two benchmarks):
  retro-search summarize \\
      --metrics eval/original/aime24/metrics.json eval/original/math500/metrics.json \\
                eval/retro/aime24/metrics.json eval/retro/math500/metrics.json \\
      --arms original original retro_search retro_search \\
      --search-stats merge/stats.json --revised merge/revised.jsonl \\
      --rollouts merge/rollouts.jsonl --output-dir results/summary/demo"""


# --- merge -----------------------------------------------------------------------------------

def cmd_merge(args: argparse.Namespace) -> int:
    from retro_search.artifacts import read_jsonl, write_json, write_jsonl
    from retro_search.report.search_stats import merge_stats

    revised, first_seen = [], {}
    for path in args.inputs:
        for number, row in enumerate(read_jsonl(path), 1):
            trace_id = row.get("id")
            if trace_id is None:
                raise ValueError(f"{path}: row {number} has no 'id'")
            if trace_id in first_seen:
                raise ValueError(f"{path}: row {number}: duplicate trace id {trace_id!r}, already "
                                 f"in {first_seen[trace_id]}; was a shard passed twice?")
            first_seen[trace_id] = f"{path} (row {number})"
            revised.append(row)
    rollouts = [row for path in args.rollouts for row in read_jsonl(path)]
    stats = merge_stats(revised, rollouts)
    stats["inputs"] = {"revised": list(args.inputs), "rollouts": list(args.rollouts)}

    write_jsonl(args.output, revised)
    if args.rollout_log:
        write_jsonl(args.rollout_log, rollouts)
    write_json(args.stats, stats)
    for warning in stats["warnings"]:
        print(f"retro-search merge: warning: {warning}", file=sys.stderr)
    print(json.dumps({"traces": stats["traces"], **stats["by_status"],
                      "rollouts": stats["rollouts"]["tried"],
                      "accepted": stats["rollouts"]["accepted"],
                      "reasoning_token_change_pct": stats["reasoning_tokens"]["relative_change_pct"],
                      "output": args.output, "stats": args.stats}), file=sys.stderr)
    return 0


# --- summarize -------------------------------------------------------------------------------

def _read_metrics(paths: list[str], arms: list[str]) -> list[dict]:
    from retro_search.artifacts import read_json
    from retro_search.report.tables import metrics_from_eval

    if len(paths) != len(arms):
        raise ValueError(f"--arms gives {len(arms)} labels for {len(paths)} --metrics files; "
                         "give one arm label per metrics file, in the same order")
    rows = []
    for path, arm in zip(paths, arms):
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of metrics")
        rows.append({**metrics_from_eval(data, arm, source=path), "metrics_file": path})
    return rows


def cmd_summarize(args: argparse.Namespace) -> int:
    from retro_search.artifacts import json_safe, read_json, read_jsonl, write_json, write_text
    from retro_search.report import plots
    from retro_search.report.search_stats import (headline_markdown, merge_stats,
                                                  search_headline, search_stats_markdown)
    from retro_search.report.tables import results_table, write_csv, write_markdown

    metrics = _read_metrics(args.metrics, args.arms)
    revised = list(read_jsonl(args.revised)) if args.revised else []
    if args.search_stats:
        stats = read_json(args.search_stats)
    elif args.revised:
        rollouts = list(read_jsonl(args.rollouts)) if args.rollouts else []
        stats = json_safe(merge_stats(revised, rollouts))
    else:
        stats = None

    out = Path(args.output_dir)
    table = results_table(metrics, original_arm=args.original_arm, retro_arm=args.retro_arm)
    headline = search_headline(stats) if stats is not None else None
    caption = "\n\n".join(filter(None, [args.title, headline and headline_markdown(headline)]))
    written = {"results_csv": write_csv(table, out / "results.csv"),
               "results_md": write_markdown(table, out / "results.md", caption=caption or None),
               "accuracy_vs_length": plots.plot_accuracy_vs_length(
                   metrics, out / "accuracy_vs_length.png", original_arm=args.original_arm,
                   retro_arm=args.retro_arm)}
    if stats is not None:
        written["search_stats_md"] = write_text(out / "search_stats.md",
                                                search_stats_markdown(stats))
        written["boundary_acceptance"] = plots.plot_boundary_acceptance(
            stats.get("per_boundary", []), out / "boundary_acceptance.png")
    if args.revised:
        written["trace_lengths"] = plots.plot_trace_lengths(revised, out / "trace_lengths.png")

    summary = {
        "arms": list(dict.fromkeys(args.arms)),
        "benchmarks": list(dict.fromkeys(m["benchmark"] for m in metrics)),
        "original_arm": args.original_arm, "retro_arm": args.retro_arm,
        "units": {"acc": "accuracy, pass@1 averaged over samples, %",
                  "len": "mean response tokens (evaluated model's tokenizer)",
                  "relative_row": "accuracy difference in points; length change in %",
                  "search_tokens": "revision model's tokenizer"},
        "metrics": metrics,
        "table": [{"arm": arm, **row} for arm, row in table.to_dict(orient="index").items()],
        "search": stats,
        "search_headline": headline,
        "files": {name: str(path) for name, path in written.items()},
    }
    write_json(out / "summary.json", summary)
    print(json.dumps({"output_dir": str(out), "files": sorted(p.name for p in written.values())}),
          file=sys.stderr)
    return 0


# --- parser ----------------------------------------------------------------------------------

def register(sub) -> None:
    formatter = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("merge", help="concatenate revised shards and rollout logs; write search stats",
                       description=MERGE_DESCRIPTION, epilog=MERGE_EPILOG, formatter_class=formatter)
    p.add_argument("--inputs", nargs="+", required=True, metavar="SHARD",
                   help="revised shards (.jsonl) from `retro-search search`, concatenated in this order")
    p.add_argument("--rollouts", nargs="*", default=[], metavar="LOG",
                   help="the shards' rollout logs (.jsonl), for the per-boundary statistics")
    p.add_argument("--output", required=True, help="merged revised traces (.jsonl)")
    p.add_argument("--stats", required=True, help="search statistics (.json)")
    p.add_argument("--rollout-log", default=None,
                   help="merged rollout log (.jsonl); not written when omitted")
    p.set_defaults(func=cmd_merge, input_args=("inputs", "rollouts"),
                   output_args=("output", "stats", "rollout_log"))

    p = sub.add_parser("summarize", help="results table, search statistics and figures of an experiment",
                       description=SUMMARIZE_DESCRIPTION, epilog=SUMMARIZE_EPILOG,
                       formatter_class=formatter)
    p.add_argument("--metrics", nargs="+", required=True, metavar="METRICS_JSON",
                   help="eval metrics files, one per (arm, benchmark)")
    p.add_argument("--arms", nargs="+", required=True, metavar="ARM",
                   help="the arm of each metrics file, same order and count (e.g. base original "
                        "retro_search); table rows follow the order of first appearance")
    p.add_argument("--search-stats", default=None, metavar="STATS_JSON",
                   help="statistics written by `retro-search merge --stats`")
    p.add_argument("--revised", default=None, metavar="REVISED_JSONL",
                   help="merged revised traces, for the trace-length figure")
    p.add_argument("--rollouts", default=None, metavar="ROLLOUTS_JSONL",
                   help="merged rollout log; used to compute the statistics when --search-stats "
                        "is not given")
    p.add_argument("--output-dir", required=True, help="folder for the tables, figures and summary.json")
    p.add_argument("--original-arm", default="original",
                   help="arm fine-tuned on the original traces (default: original)")
    p.add_argument("--retro-arm", default="retro_search",
                   help="arm fine-tuned on the Retro-Searched traces (default: retro_search)")
    p.add_argument("--title", default=None, help="caption line above the Markdown table")
    p.set_defaults(func=cmd_summarize, input_args=("metrics", "search_stats", "revised", "rollouts"),
                   output_args=("output_dir",))
