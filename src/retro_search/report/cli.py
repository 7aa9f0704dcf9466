"""`retro-search merge`, `summarize` and `compare`: the report's commands.

- merge: concatenate the revised shards and rollout logs of one search, and write its statistics.
- summarize: the results table (CSV, Markdown), the search statistics page, three figures and a
  summary.json, from the eval stage's metrics files and the merged search outputs.
- compare: one table across finished experiments (read-only).

The work is `retro_search.stages.merge` and `retro_search.stages.summarize`; pandas and
matplotlib are imported inside them, so `retro-search --help` stays instant.
"""

from __future__ import annotations

import argparse

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
                           error), BENCH/len (mean response tokens), BENCH/problems,
                           BENCH/samples (per problem) and BENCH/trunc (responses truncated at
                           the token limit, %) per benchmark, and their average; then relative
                           rows "ARM vs base" (when the base arm is there) and "retro vs
                           original": accuracy difference in points (with its standard error),
                           length change in %
  results.md               the same table in Markdown (accuracy as "acc ± se", length), under a
                           line with the share of traces revised and the mean reasoning length
                           before and after Retro-Search; below it n (problems x samples) and
                           the truncation rate per benchmark and arm
  results.html             a self-contained web page: that line, the averages per arm, then the
                           Markdown's tables (what `snakemake --report` shows inline)
  search_stats.md          the search statistics (from --search-stats, or computed from
                           --revised and --rollouts when it is not given)
  search_stats.html        the same as a self-contained web page
  accuracy_vs_length.png   accuracy (± 1 standard error) vs mean length per arm and benchmark,
                           arrows original -> retro
  trace_lengths.png        reasoning lengths before / after Retro-Search
  boundary_acceptance.png  acceptance rate of rollouts by boundary number
  summary.json             the metrics read, the table, and the search statistics
A metrics file is the eval stage's metrics.json (retro_search.artifacts.read_eval_metrics): it
needs "benchmark", "accuracy" (a fraction), "accuracy_stderr" (null for a single problem) and
"mean_tokens"; "n_problems", "n_samples" and "truncation_rate" fill n and truncation where
present; other names are not guessed."""

SUMMARIZE_EPILOG = """\
Example (two arms, two benchmarks):
  retro-search summarize \\
      --metrics eval/original/aime24/metrics.json eval/original/math500/metrics.json \\
                eval/retro/aime24/metrics.json eval/retro/math500/metrics.json \\
      --arms original original retro_search retro_search \\
      --search-stats merge/stats.json --revised merge/revised.jsonl \\
      --rollouts merge/rollouts.jsonl --output-dir results/summary/demo"""


COMPARE_DESCRIPTION = """\
Print one table across experiments: a row per experiment and arm (then its relative rows, such as
"retro vs original"), with the config values that differ between the experiments as columns (the
swept keys, read from each experiment's config.yaml), then accuracy ± standard error and mean
response length per benchmark and their average (from each experiment's summary.json, at full
precision). Each EXPERIMENT is an experiment folder (results/experiments/NAME, holding
index.json), a folder holding several (results/experiments), or a glob of them
('results/experiments/demo_search.rollouts=*'). Read-only: no manifest is written."""

COMPARE_EPILOG = """\
Examples:
  retro-search compare results/experiments/demo results/experiments/demo_search.rollouts=2
  retro-search compare 'results/experiments/demo_*' --format csv --output sweep.csv
  retro-search compare results/experiments"""


# --- handlers --------------------------------------------------------------------------------

def cmd_merge(args: argparse.Namespace) -> int:
    from retro_search.stages import merge

    return merge.run(args.inputs, args.rollouts, args.output, args.rollout_log,
                     args.stats).report(args.command)


def cmd_summarize(args: argparse.Namespace) -> int:
    from retro_search.stages import summarize

    result = summarize.run(args.metrics, args.arms, args.output_dir,
                           search_stats=args.search_stats, revised=args.revised,
                           rollouts=args.rollouts, title=args.title,
                           original_arm=args.original_arm, retro_arm=args.retro_arm)
    return result.report(args.command)


def cmd_compare(args: argparse.Namespace) -> int:
    import sys

    from retro_search.artifacts import write_text
    from retro_search.report import compare

    experiments = [compare.read_experiment(f) for f in compare.experiment_folders(args.experiments)]
    for experiment in experiments:
        if experiment.config is None:
            print(f"retro-search compare: warning: {experiment.folder} has no config.yaml (made "
                  "before experiment folders held one; rerun the workflow to write it): its "
                  "swept values show as n/a", file=sys.stderr)
    table = compare.comparison_table(experiments)
    text = compare.to_csv(table) if args.format == "csv" else compare.to_markdown(table)
    if args.output:
        write_text(args.output, text)
        print(f"{len(experiments)} experiments -> {args.output}", file=sys.stderr)
    else:
        print(text, end="")
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

    p = sub.add_parser("compare", help="one table across experiments: swept values, accuracy and "
                                       "length per arm and benchmark",
                       description=COMPARE_DESCRIPTION, epilog=COMPARE_EPILOG,
                       formatter_class=formatter)
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT",
                   help="experiment folder, folder of experiment folders, or a glob")
    p.add_argument("--format", choices=("markdown", "csv"), default="markdown",
                   help="markdown (default: acc ± se, rounded) or csv (full precision, value and "
                        "standard error in separate columns)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="write the table to FILE instead of printing it")
    p.set_defaults(func=cmd_compare)
