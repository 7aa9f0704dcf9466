"""The report stage: search statistics, the results table and the figures.

- `search_stats.merge_stats(revised_rows, rollout_rows)`: statistics of one search (pure).
- `tables.results_table(metrics)`: accuracy / length per arm and benchmark, averages, and the
  "retro vs original" row; `write_csv`, `to_markdown`, `write_markdown`.
- `plots`: accuracy vs length, trace lengths before/after, acceptance by boundary (PNG).
- `experiment_index.write_experiment_index`: an experiment's index.json, README.md and results.md.
- `cli`: the `retro-search merge` and `retro-search summarize` subcommands.

Names are imported lazily: the CLI imports this package to build its parser, and pandas and
matplotlib should load only when a command runs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "merge_stats": "search_stats", "search_stats_markdown": "search_stats",
    "results_table": "tables", "metrics_from_eval": "tables", "to_markdown": "tables",
    "write_csv": "tables", "write_markdown": "tables",
    "plot_accuracy_vs_length": "plots", "plot_trace_lengths": "plots",
    "plot_boundary_acceptance": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
