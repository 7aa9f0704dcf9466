"""The report's figures, as PNG files (matplotlib, Agg backend: no display needed).

Each function draws one figure, writes it atomically to `path` and returns the path:

- `plot_accuracy_vs_length(metrics, path)`: accuracy (%) against mean response length (tokens), one
  marker and colour per arm, each point labelled with its benchmark, arrows from the original-trace
  arm to the Retro-Search arm per benchmark (up-left is better: more accurate and shorter).
- `plot_trace_lengths(revised_rows, path)`: histograms of reasoning lengths in tokens before and after
  Retro-Search, over the traces whose original answer was correct, medians marked.
- `plot_boundary_acceptance(per_boundary, path)`: acceptance rate of rollouts by boundary number,
  with the number of rollouts tried written on each bar; boundaries are grouped into ranges when
  there are more than `max_bars` of them.

Inputs are the same structures the tables and `merge_stats` use: metric dicts with arm,
benchmark, accuracy (0-1) and mean_tokens; revised rows with a "search" key; and
`merge_stats(...)["per_boundary"]`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402

from matplotlib.ticker import MaxNLocator  # noqa: E402

from retro_search.artifacts import atomic_path  # noqa: E402
from retro_search.report.tables import ORIGINAL_ARM, RETRO_ARM  # noqa: E402

__all__ = ["plot_accuracy_vs_length", "plot_trace_lengths", "plot_boundary_acceptance"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
_DPI = 150


def _save(fig, path: str | Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=12,
            color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_accuracy_vs_length(metrics: Iterable[Mapping[str, Any]], path: str | Path, *,
                            arms: Sequence[str] | None = None, original_arm: str = ORIGINAL_ARM,
                            retro_arm: str = RETRO_ARM, title: str | None = None) -> Path:
    """Scatter of accuracy (%) vs mean response length (tokens) per arm and benchmark."""
    rows = list(metrics)
    order = list(dict.fromkeys([*(arms or []), *(r["arm"] for r in rows)]))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if not rows:
        _no_data(ax, "no evaluation metrics")
    points = {(r["arm"], r["benchmark"]): (float(r["mean_tokens"]), 100.0 * float(r["accuracy"]))
              for r in rows}
    for i, arm in enumerate(order):
        mine = [(bench, xy) for (a, bench), xy in points.items() if a == arm]
        if not mine:
            continue
        ax.scatter([xy[0] for _, xy in mine], [xy[1] for _, xy in mine], s=70, zorder=3,
                   marker=_MARKERS[i % len(_MARKERS)], color=_COLOURS[i % len(_COLOURS)],
                   edgecolor="black", linewidth=0.6, label=arm)
        for bench, (x, y) in mine:
            if arm == retro_arm or (retro_arm, bench) not in points:  # one label per benchmark
                ax.annotate(bench, (x, y), xytext=(6, 5), textcoords="offset points", fontsize=8,
                            color="#333333")
    for (arm, bench), (x, y) in points.items():
        if arm == original_arm and (retro_arm, bench) in points:
            ax.annotate("", xy=points[(retro_arm, bench)], xytext=(x, y), zorder=2,
                        arrowprops={"arrowstyle": "->", "color": "#777777", "lw": 1.2,
                                    "shrinkA": 6, "shrinkB": 6})
    if rows:
        ax.margins(x=0.1, y=0.08)  # room for the benchmark labels
        # Accuracy is a percentage: keep 0 in view and a readable scale when every point is ~0.
        top = max(max(y for _, y in points.values()) * 1.15, 10.0)
        ax.set_ylim(-0.04 * top, top)
        ax.set_xlabel("mean response length (tokens)")
        ax.set_ylabel("accuracy, pass@1 (%)")
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if any(a == original_arm for a, _ in points) and any(a == retro_arm for a, _ in points):
            from matplotlib.lines import Line2D
            handles.append(Line2D([], [], color="#777777", marker=r"$\rightarrow$", linestyle="",
                                  markersize=14))
            labels.append(f"{original_arm} \u2192 {retro_arm}")
        ax.legend(handles, labels, title="arm", loc="best", fontsize=9)
    ax.set_title(title or "Accuracy vs response length (up and left is better)")
    return _save(fig, path)


def _lengths(revised_rows: Iterable[Mapping[str, Any]]) -> tuple[list[int], list[int]]:
    before, after = [], []
    for row in revised_rows:
        search = row.get("search") or {}
        if search.get("original_correct"):
            before.append(int(search["reasoning_tokens_before"]))
            after.append(int(search["reasoning_tokens_after"]))
    return before, after


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def plot_trace_lengths(revised_rows: Iterable[Mapping[str, Any]], path: str | Path, *,
                       bins: int | None = None, title: str | None = None) -> Path:
    """Histograms of reasoning tokens per trace (the paper's length: the solution is left out)
    before and after Retro-Search (traces with a correct original only), with dashed lines at the medians. `bins` defaults to about 2 * sqrt(traces),
    between 5 and 30."""
    before, after = _lengths(revised_rows)
    if bins is None:
        bins = min(30, max(5, 2 * math.ceil(math.sqrt(len(before)))))
    fig, ax = plt.subplots(figsize=(8, 5))
    if not before:
        _no_data(ax, "no traces with a correct original answer")
    else:
        low, high = min(before + after), max(before + after)
        edges = [low + (high - low) * i / bins for i in range(bins + 1)] if high > low else bins
        for values, label, colour in ((before, "original", _COLOURS[1]),
                                      (after, "after Retro-Search", _COLOURS[2])):
            median = _median(values)
            ax.hist(values, bins=edges, alpha=0.55, color=colour, edgecolor="white",
                    label=f"{label} (median {median:,.0f})")
            ax.axvline(median, color=colour, linestyle="--", linewidth=1.5)
        total_b, total_a = sum(before), sum(after)
        change = 100.0 * (total_a - total_b) / total_b if total_b else math.nan
        ax.set_xlabel("reasoning length (tokens of the revision model)")
        ax.set_ylabel("traces")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # headroom so the legend does not hide bars
        ax.legend(loc="upper right", fontsize=9,
                  title=f"{len(before)} traces, total length {change:+.1f}%")
        ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title or "Reasoning lengths before and after Retro-Search")
    return _save(fig, path)


def _grouped(per_boundary: Sequence[Mapping[str, Any]], max_bars: int
             ) -> list[tuple[str, int, int]]:
    """(label, tried, accepted) per bar: one per boundary number, or per range of numbers."""
    if not per_boundary:
        return []
    last = max(int(b["boundary"]) for b in per_boundary)
    width = max(1, math.ceil(last / max_bars))
    bars: dict[int, list[int]] = {}
    for b in per_boundary:
        start = (int(b["boundary"]) - 1) // width * width + 1
        cell = bars.setdefault(start, [0, 0])
        cell[0] += int(b["tried"])
        cell[1] += int(b["accepted"])
    return [(str(s) if width == 1 else f"{s}-{s + width - 1}", t, a)
            for s, (t, a) in sorted(bars.items())]


def plot_boundary_acceptance(per_boundary: Sequence[Mapping[str, Any]], path: str | Path, *,
                             max_bars: int = 30, title: str | None = None) -> Path:
    """Bar chart: share of rollouts accepted (%) by boundary number; the count of rollouts tried
    is written above each bar."""
    bars = _grouped(per_boundary, max_bars)
    fig, ax = plt.subplots(figsize=(max(6.0, min(14.0, 0.45 * len(bars) + 3)), 4.8))
    if not bars:
        _no_data(ax, "no rollouts")
    else:
        rates = [100.0 * a / t if t else 0.0 for _, t, a in bars]
        positions = range(len(bars))
        drawn = ax.bar(positions, rates, color=_COLOURS[0], edgecolor="black", linewidth=0.5)
        crowded = len(bars) > 12  # horizontal count labels would overlap their neighbours
        ax.bar_label(drawn, labels=[f"n={t}" for _, t, _ in bars], padding=2, fontsize=8,
                     rotation=90 if crowded else 0)
        ax.set_xticks(list(positions), [label for label, _, _ in bars],
                      rotation=45 if crowded else 0, fontsize=9)
        ax.set_xlabel("boundary number (thought switch visited, 1 = first)")
        ax.set_ylabel("rollouts accepted (%)")
        ax.set_ylim(0, max(10.0, max(rates) * (1.35 if crowded else 1.18)))
        ax.grid(True, axis="y", alpha=0.3)
        tried, accepted = sum(t for _, t, _ in bars), sum(a for _, _, a in bars)
        ax.text(0.99, 0.97, f"{accepted} of {tried} rollouts accepted", ha="right", va="top",
                transform=ax.transAxes, fontsize=9)
    ax.set_title(title or "Acceptance of Retro-Search rollouts by boundary")
    return _save(fig, path)
