"""The summarize stage: the eval stage's metrics files and the merged search outputs -> an
experiment's results table (CSV, Markdown, HTML), search statistics page (Markdown, HTML),
figures and summary.json (`retro-search summarize`). The HTML pages are what
`snakemake --report` shows inline.

The search statistics come from merge's stats file when given; otherwise they are computed from
the revised traces and rollout log, so a report can be rebuilt from the logs alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from retro_search.stages import StageResult

UNITS = {"acc": "accuracy, pass@1 averaged over samples, %",
         "se": "standard error of acc, points",
         "len": "mean response tokens (evaluated model's tokenizer)",
         "problems": "problems evaluated", "samples": "samples per problem",
         "trunc": "responses that hit the token limit, %",
         "relative_row": "rows 'A vs B': accuracy difference in points; length change in %",
         "search_tokens": "revision model's tokenizer"}


def _read_metrics(paths: Sequence[str | Path], arms: Sequence[str]) -> list[dict]:
    """One metrics row per file, labelled with its arm (`arms[i]` for `paths[i]`)."""
    from retro_search.artifacts import read_eval_metrics
    from retro_search.report.tables import metrics_from_eval

    if len(paths) != len(arms):
        raise ValueError(f"--arms gives {len(arms)} labels for {len(paths)} --metrics files; "
                         "give one arm label per metrics file, in the same order")
    rows = []
    for path, arm in zip(map(str, paths), arms):
        data = read_eval_metrics(path)
        rows.append({**metrics_from_eval(data, arm, source=path), "metrics_file": path})
    return rows


def run(metrics_paths: Sequence[str | Path], arms: Sequence[str], output_dir: str | Path, *,
        search_stats: str | Path | None = None, revised: str | Path | None = None,
        rollouts: str | Path | None = None, title: str | None = None,
        original_arm: str = "original", retro_arm: str = "retro_search") -> StageResult:
    """Write the report of one experiment into `output_dir`: the table of `metrics_paths`
    (one per arm and benchmark, labelled by `arms`), and, when `search_stats` or `revised` is
    given, the search statistics page and figures. The search statistics are read from
    `search_stats`, else computed from `revised` and `rollouts`."""
    from retro_search.artifacts import json_safe, read_json, read_jsonl, write_json, write_text
    from retro_search.report import html, plots
    from retro_search.report.search_stats import (headline_markdown, merge_stats,
                                                  search_headline, search_stats_markdown)
    from retro_search.report.tables import (BASE_ARM, by_benchmark_markdown, results_table,
                                            to_markdown, write_csv, write_markdown)

    metrics = _read_metrics(metrics_paths, arms)
    revised_rows = list(read_jsonl(revised)) if revised else []
    if search_stats:
        stats = read_json(search_stats)
    elif revised:
        rollout_rows = list(read_jsonl(rollouts)) if rollouts else []
        stats = json_safe(merge_stats(revised_rows, rollout_rows))
    else:
        stats = None

    out = Path(output_dir)
    table = results_table(metrics, original_arm=original_arm, retro_arm=retro_arm)
    headline = search_headline(stats) if stats is not None else None
    caption = "\n\n".join(filter(None, [title, headline and headline_markdown(headline)]))
    written = {"results_csv": write_csv(table, out / "results.csv"),
               "results_md": write_markdown(table, out / "results.md", caption=caption or None),
               "results_html": write_text(out / "results.html", html.results_page(
                   by_benchmark_markdown(table, caption=caption or None), to_markdown(table),
                   title=f"Results: {title}" if title else "Results")),
               "accuracy_vs_length": plots.plot_accuracy_vs_length(
                   metrics, out / "accuracy_vs_length.png", original_arm=original_arm,
                   retro_arm=retro_arm)}
    if stats is not None:
        stats_markdown = search_stats_markdown(stats)
        written["search_stats_md"] = write_text(out / "search_stats.md", stats_markdown)
        # the Markdown page's own "# Retro-Search statistics" heading becomes the page title
        written["search_stats_html"] = write_text(out / "search_stats.html", html.page(
            "Retro-Search statistics", html.markdown_to_html(stats_markdown.split("\n", 1)[1])))
        written["boundary_acceptance"] = plots.plot_boundary_acceptance(
            stats.get("per_boundary", []), out / "boundary_acceptance.png")
    if revised:
        written["trace_lengths"] = plots.plot_trace_lengths(revised_rows,
                                                            out / "trace_lengths.png")

    summary = {
        "arms": list(dict.fromkeys(arms)),
        "benchmarks": list(dict.fromkeys(m["benchmark"] for m in metrics)),
        "base_arm": BASE_ARM, "original_arm": original_arm, "retro_arm": retro_arm,
        "units": UNITS,
        "metrics": metrics,
        "table": [{"arm": arm, **row} for arm, row in table.to_dict(orient="index").items()],
        "search": stats,
        "search_headline": headline,
        "files": {name: str(path) for name, path in written.items()},
    }
    summary_path = write_json(out / "summary.json", summary)
    return StageResult(
        outputs={**{name: Path(path) for name, path in written.items()}, "summary": summary_path},
        summary={"output_dir": str(out), "files": sorted(p.name for p in written.values())})
