"""The report's figures, as PNG files (matplotlib, Agg backend: no display needed).

Each function draws one figure, writes it atomically to `path` and returns the path:

- `plot_accuracy_vs_length(metrics, path)`: accuracy (%) against mean response length (tokens), one
  marker and colour per arm with error bars of one standard error, one label per benchmark placed
  where it overlaps no other label (a thin line to its point when it had to move away), arrows
  from the original-trace arm to the Retro-Search arm per benchmark (up-left is better: more
  accurate and shorter); the legend sits beside the axes.
- `plot_trace_lengths(revised_rows, path)`: histograms of reasoning lengths in tokens before and after
  Retro-Search, over the traces whose original answer was correct, medians marked.
- `plot_boundary_acceptance(per_boundary, path)`: acceptance rate of rollouts by boundary number,
  with the number of rollouts tried written on each bar; boundaries are grouped into ranges when
  there are more than `max_bars` of them.

Inputs are the same structures the tables and `merge_stats` use: metric dicts with arm,
benchmark, accuracy (0-1), accuracy_se (0-1, optional) and mean_tokens; revised rows with a
"search" key; and
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

__all__ = ["accuracy_vs_length_figure", "plot_accuracy_vs_length", "plot_trace_lengths", "plot_boundary_acceptance"]

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


# Where a benchmark label may go, tried in order until one overlaps nothing: directions (the
# first, up and to the right, reads as the point's caption), then farther out.
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_RADII_PT = (6, 12, 20, 30, 42, 56, 72, 90, 110, 135)
_LEADER_FROM_PT = 15  # a label farther than this from its point gets a line to it


def _overlap(a, b) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


def text_box(note, renderer):
    """The box of an annotation's text alone (its own extent also covers its leader line)."""
    from matplotlib.text import Text

    note.update_positions(renderer)  # where its offset puts the text (else known at draw time)
    return Text.get_window_extent(note, renderer).frozen()


def _place_labels(ax, labels: Sequence[tuple[str, float, float]], obstacles: list) -> list:
    """Annotate each (text, x, y) at the first offset (in points) whose text box overlaps no
    other label, marker or error bar and stays inside the axes; where none is free, at the least
    crowded one. Needs the axes limits fixed. Returns the annotations."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = []
    for text, x, y in labels:
        note = ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points", fontsize=8,
                           color="#333333", zorder=4)
        best = None
        for radius in _RADII_PT:
            for dx, dy in _DIRECTIONS:
                note.set_position((dx * radius, dy * radius))
                note.set_ha({1: "left", -1: "right", 0: "center"}[dx])
                note.set_va({1: "bottom", -1: "top", 0: "center"}[dy])
                box = text_box(note, renderer)
                outside = box.width * box.height - _overlap(box, frame)
                crowding = sum(_overlap(box, other) for other in obstacles) + 10 * outside
                if best is None or crowding < best[0]:
                    best = (crowding, (dx * radius, dy * radius), note.get_ha(), note.get_va())
                if crowding == 0:
                    break
            if best[0] == 0:
                break
        _, offset, ha, va = best
        note.remove()  # the probe; the label is made once, with its leader when it needs one
        leader = ({"arrowstyle": "-", "color": "#999999", "lw": 0.6, "shrinkA": 1, "shrinkB": 4}
                  if math.hypot(*offset) > _LEADER_FROM_PT else None)
        note = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=8,
                           color="#333333", ha=ha, va=va, zorder=4, arrowprops=leader)
        obstacles.append(text_box(note, renderer))
        placed.append(note)
    return placed


def accuracy_vs_length_figure(metrics: Iterable[Mapping[str, Any]], *,
                              arms: Sequence[str] | None = None,
                              original_arm: str = ORIGINAL_ARM, retro_arm: str = RETRO_ARM,
                              title: str | None = None):
    """The figure of `plot_accuracy_vs_length`, not saved: (figure, axes, benchmark labels)."""
    from matplotlib.transforms import Bbox

    rows = list(metrics)
    order = list(dict.fromkeys([*(arms or []), *(r["arm"] for r in rows)]))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    if not rows:
        _no_data(ax, "no evaluation metrics")
    points = {(r["arm"], r["benchmark"]): (float(r["mean_tokens"]), 100.0 * float(r["accuracy"]))
              for r in rows}
    errors = {(r["arm"], r["benchmark"]): 100.0 * float(r.get("accuracy_se") or 0.0)
              for r in rows}
    for i, arm in enumerate(order):
        mine = [(pair, xy) for pair, xy in points.items() if pair[0] == arm]
        if not mine:
            continue
        colour = _COLOURS[i % len(_COLOURS)]
        ax.errorbar([xy[0] for _, xy in mine], [xy[1] for _, xy in mine],
                    yerr=[errors[pair] for pair, _ in mine], fmt="none", ecolor=colour,
                    elinewidth=1.0, capsize=3, zorder=2.5)
        ax.scatter([xy[0] for _, xy in mine], [xy[1] for _, xy in mine], s=70, zorder=3,
                   marker=_MARKERS[i % len(_MARKERS)], color=colour,
                   edgecolor="black", linewidth=0.6, label=arm)
    for (arm, bench), (x, y) in points.items():
        if arm == original_arm and (retro_arm, bench) in points:
            ax.annotate("", xy=points[(retro_arm, bench)], xytext=(x, y), zorder=2,
                        arrowprops={"arrowstyle": "->", "color": "#777777", "lw": 1.2,
                                    "shrinkA": 6, "shrinkB": 6})
    labels = []
    if rows:
        ax.margins(x=0.12, y=0.08)  # room for the benchmark labels
        # Accuracy is a percentage: keep 0 in view and a readable scale when every point is ~0.
        top = max(max(y + errors[pair] for pair, (_, y) in points.items()) * 1.15, 10.0)
        ax.set_ylim(-0.04 * top, top)
        ax.set_xlim(ax.get_xlim())  # fixed: labels are placed in display coordinates
        ax.set_xlabel("mean response length (tokens)")
        ax.set_ylabel("accuracy, pass@1 (%), bars: \u00b1 1 standard error")
        ax.grid(True, alpha=0.3)
        handles, legend_labels = ax.get_legend_handles_labels()
        if any(a == original_arm for a, _ in points) and any(a == retro_arm for a, _ in points):
            from matplotlib.lines import Line2D
            handles.append(Line2D([], [], color="#777777", marker=r"$\rightarrow$", linestyle="",
                                  markersize=14))
            legend_labels.append(f"{original_arm} \u2192 {retro_arm}")
        # Beside the axes, so that it covers no point and no label.
        ax.legend(handles, legend_labels, title="arm", loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), fontsize=9, borderaxespad=0)

        renderer = fig.canvas.get_renderer()
        to_display = ax.transData.transform
        marker_px = renderer.points_to_pixels(5)  # about the markers' radius (s=70)
        obstacles = []
        for pair, (x, y) in points.items():
            cx, cy = to_display((x, y))
            obstacles.append(Bbox([[cx - marker_px, cy - marker_px],
                                   [cx + marker_px, cy + marker_px]]))
            if errors[pair]:
                (_, low), (_, high) = to_display([(x, y - errors[pair]), (x, y + errors[pair])])
                obstacles.append(Bbox([[cx - 2, low], [cx + 2, high]]))
        # One label per benchmark, at the Retro-Search arm's point where there is one.
        anchor: dict[str, tuple[float, float]] = {}
        for arm in order:
            for (a, bench), xy in points.items():
                if a == arm and (bench not in anchor or arm == retro_arm):
                    anchor[bench] = xy
        labels = _place_labels(ax, sorted(((b, x, y) for b, (x, y) in anchor.items()),
                                          key=lambda item: (item[2], item[1])), obstacles)
    ax.set_title(title or "Accuracy vs response length (up and left is better)")
    return fig, ax, labels


def plot_accuracy_vs_length(metrics: Iterable[Mapping[str, Any]], path: str | Path, *,
                            arms: Sequence[str] | None = None, original_arm: str = ORIGINAL_ARM,
                            retro_arm: str = RETRO_ARM, title: str | None = None) -> Path:
    """Scatter of accuracy (%) vs mean response length (tokens) per arm and benchmark, with
    error bars of one standard error (`accuracy_se`, 0-1, where the metrics have it) and one
    label per benchmark placed where it overlaps no other label, marker or error bar."""
    fig, _, _ = accuracy_vs_length_figure(metrics, arms=arms, original_arm=original_arm,
                                          retro_arm=retro_arm, title=title)
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
