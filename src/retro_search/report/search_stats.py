"""Statistics of one Retro-Search run: what the search changed and how its rollouts fared.

`merge_stats(revised_rows, rollout_rows)` is a pure function over the two outputs of
`retro-search search` (or their concatenation by `retro-search merge`):

- revised rows: `TraceRecord` dicts with an extra key "search" holding `SearchOutcome.stats()`
  (trace_id, status, original_correct, tokens_before/after, steps_before/after,
  thoughts_before/after, boundaries_visited, rollouts_tried/accepted/truncated);
- rollout rows: `Rollout` dicts (trace_id, boundary, visit, accepted, truncated, correct, steps,
  step_tokens, continuation_tokens, ...), one per rollout.

Units: tokens are the revision model's tokens (as counted by the search); steps and thoughts as in
`retro_search.segmentation`. Lengths, steps and thoughts are reported over the traces whose original
answer was correct (the only ones the search revises; the others pass through unchanged and would
dilute the change). Rates are fractions in [0, 1]; relative changes are percentages.
`search_stats_markdown(stats)` renders the result for a report.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["STATUSES", "merge_stats", "search_stats_markdown"]

STATUSES = ("revised", "unchanged", "incorrect_original")


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    """sum, mean and median of a list (None for mean/median when it is empty)."""
    if not values:
        return {"sum": 0, "mean": None, "median": None}
    return {"sum": sum(values), "mean": statistics.fmean(values),
            "median": float(statistics.median(values))}


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def relative_change_pct(before: float | None, after: float | None) -> float | None:
    """(after - before) / before in percent; None when before is 0 or missing."""
    if not before or after is None:
        return None
    return 100.0 * (after - before) / before


def _search_of(row: Mapping[str, Any], number: int) -> Mapping[str, Any]:
    search = row.get("search")
    if not isinstance(search, Mapping):
        raise ValueError(f"revised row {number} (id={row.get('id')!r}) has no 'search' statistics; "
                         "pass the output of `retro-search search` or `retro-search merge`")
    return search


def _length_block(searches: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    before = [s["tokens_before"] for s in searches]
    after = [s["tokens_after"] for s in searches]
    out = {"traces": len(searches), "before": _summary(before), "after": _summary(after)}
    out["relative_change_pct"] = relative_change_pct(out["before"]["sum"] if before else None,
                                                     out["after"]["sum"] if after else None)
    return out


def merge_stats(revised_rows: Iterable[Mapping[str, Any]],
                rollout_rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Statistics of a search (see the module docstring for the inputs).

    Returns a JSON-ready dict:
      traces                      number of revised rows
      by_status                   {revised, unchanged, incorrect_original: count}
      tokens                      over traces whose original was correct: traces, before/after
                                  {sum, mean, median}, relative_change_pct (of the sums)
      steps, thoughts             {before_mean, after_mean, relative_change_pct}, same traces
      rollouts                    tried / accepted / truncated (from the traces' search stats),
                                  acceptance_rate (accepted / tried), truncation_rate
                                  (truncated / tried), generated_tokens (from the log),
                                  log_rows (rollout rows given)
      per_boundary                [{boundary, tried, accepted, truncated, rate}] by boundary
                                  number (1-based, in the trace as it was when visited), from the log
      per_source                  [{source_model, source_dataset, traces, revised, searched,
                                  tokens_before, tokens_after, relative_change_pct}]
      warnings                    inconsistencies found (e.g. the log and the traces disagree)
    """
    rows = list(revised_rows)
    log = list(rollout_rows)
    searches = [_search_of(row, number) for number, row in enumerate(rows, 1)]

    by_status = dict.fromkeys(STATUSES, 0)
    for search in searches:
        by_status[search["status"]] = by_status.get(search["status"], 0) + 1
    correct = [s for s in searches if s.get("original_correct")]

    stats: dict[str, Any] = {"traces": len(rows), "by_status": by_status,
                             "tokens": _length_block(correct)}
    for unit in ("steps", "thoughts"):
        before = _mean([s[f"{unit}_before"] for s in correct])
        after = _mean([s[f"{unit}_after"] for s in correct])
        stats[unit] = {"before_mean": before, "after_mean": after,
                       "relative_change_pct": relative_change_pct(before, after)}

    tried = sum(s["rollouts_tried"] for s in searches)
    accepted = sum(s["rollouts_accepted"] for s in searches)
    truncated = sum(s["rollouts_truncated"] for s in searches)
    stats["rollouts"] = {
        "tried": tried, "accepted": accepted, "truncated": truncated,
        "acceptance_rate": _rate(accepted, tried), "truncation_rate": _rate(truncated, tried),
        "generated_tokens": sum(int(r.get("step_tokens", 0)) + int(r.get("continuation_tokens", 0))
                                for r in log),
        "log_rows": len(log),
    }

    per_boundary: dict[int, dict[str, int]] = defaultdict(lambda: {"tried": 0, "accepted": 0,
                                                                   "truncated": 0})
    for number, rollout in enumerate(log, 1):
        if "boundary" not in rollout:
            raise ValueError(f"rollout row {number} (trace_id={rollout.get('trace_id')!r}) has no "
                             "'boundary'; pass the rollout log written by `retro-search search`")
        cell = per_boundary[int(rollout["boundary"])]
        cell["tried"] += 1
        cell["accepted"] += bool(rollout.get("accepted"))
        cell["truncated"] += bool(rollout.get("truncated"))
    stats["per_boundary"] = [{"boundary": b, **cell, "rate": _rate(cell["accepted"], cell["tried"])}
                             for b, cell in sorted(per_boundary.items())]

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row, search in zip(rows, searches):
        groups[(row.get("source_model", ""), row.get("source_dataset", ""))].append(search)
    stats["per_source"] = []
    for (model, dataset), group in sorted(groups.items()):
        lengths = _length_block([s for s in group if s.get("original_correct")])
        stats["per_source"].append({
            "source_model": model, "source_dataset": dataset, "traces": len(group),
            "revised": sum(s["status"] == "revised" for s in group),
            "searched": lengths["traces"],
            "tokens_before": lengths["before"]["sum"], "tokens_after": lengths["after"]["sum"],
            "relative_change_pct": lengths["relative_change_pct"]})

    warnings = []
    if log and (len(log), sum(bool(r.get("accepted")) for r in log)) != (tried, accepted):
        warnings.append(f"the rollout log has {len(log)} rollouts ({sum(bool(r.get('accepted')) for r in log)} "
                        f"accepted) but the traces' search stats count {tried} ({accepted} accepted); "
                        "were the logs of all shards passed?")
    if not log and tried:
        warnings.append(f"no rollout log rows but the traces count {tried} rollouts: "
                        "per-boundary statistics are empty")
    stats["warnings"] = warnings
    return stats


# ----------------------------------------------------------------------------- Markdown

def _fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{suffix}"
    return f"{value:,}{suffix}"


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}%"


def _signed_pct(change: float | None) -> str:
    return "n/a" if change is None else f"{change:+.1f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], text_columns: int = 1) -> list[str]:
    """Markdown table lines; the first `text_columns` columns are left-aligned, the rest right."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def search_stats_markdown(stats: Mapping[str, Any], *, max_boundaries: int = 20) -> str:
    """A Markdown page of `merge_stats` output: overview, lengths, rollouts, the first
    `max_boundaries` boundaries, and the per-source breakdown."""
    tokens, rollouts = stats["tokens"], stats["rollouts"]
    status = stats["by_status"]
    lines = ["# Retro-Search statistics", "",
             f"{stats['traces']} traces: {status.get('revised', 0)} revised, "
             f"{status.get('unchanged', 0)} unchanged, "
             f"{status.get('incorrect_original', 0)} with an incorrect original answer "
             "(passed through, not searched).", "",
             f"## Lengths ({tokens['traces']} traces with a correct original; tokens of the "
             "revision model's tokenizer)", ""]
    lines += _table(["", "before", "after", "change"], [
        ["tokens, total", _fmt(tokens["before"]["sum"]), _fmt(tokens["after"]["sum"]),
         _signed_pct(tokens["relative_change_pct"])],
        ["tokens, mean", _fmt(tokens["before"]["mean"]), _fmt(tokens["after"]["mean"]), ""],
        ["tokens, median", _fmt(tokens["before"]["median"]), _fmt(tokens["after"]["median"]), ""],
        ["steps, mean", _fmt(stats["steps"]["before_mean"]), _fmt(stats["steps"]["after_mean"]),
         _signed_pct(stats["steps"]["relative_change_pct"])],
        ["thoughts, mean", _fmt(stats["thoughts"]["before_mean"]),
         _fmt(stats["thoughts"]["after_mean"]), _signed_pct(stats["thoughts"]["relative_change_pct"])],
    ])
    lines += ["", "## Rollouts", ""]
    lines += _table(["tried", "accepted", "acceptance rate", "truncated", "truncation rate",
                     "generated tokens"],
                    [[_fmt(rollouts["tried"]), _fmt(rollouts["accepted"]),
                      _pct(rollouts["acceptance_rate"]), _fmt(rollouts["truncated"]),
                      _pct(rollouts["truncation_rate"]), _fmt(rollouts["generated_tokens"])]])
    per_boundary = stats["per_boundary"]
    if per_boundary:
        shown = per_boundary[:max_boundaries]
        lines += ["", "## Acceptance by boundary number", ""]
        lines += _table(["boundary", "tried", "accepted", "rate"],
                        [[str(b["boundary"]), _fmt(b["tried"]), _fmt(b["accepted"]), _pct(b["rate"])]
                         for b in shown])
        if len(per_boundary) > len(shown):
            lines += ["", f"({len(per_boundary) - len(shown)} later boundaries not shown; "
                          "see stats.json.)"]
    if stats["per_source"]:
        lines += ["", "## By source", ""]
        lines += _table(["source model", "source dataset", "traces", "revised", "tokens before",
                         "tokens after", "change"],
                        [[s["source_model"] or "-", s["source_dataset"] or "-", _fmt(s["traces"]),
                          _fmt(s["revised"]), _fmt(s["tokens_before"]), _fmt(s["tokens_after"]),
                          _signed_pct(s["relative_change_pct"])] for s in stats["per_source"]],
                        text_columns=2)
    if stats.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in stats["warnings"]]
    return "\n".join(lines) + "\n"
