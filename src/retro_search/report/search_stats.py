"""Statistics of one Retro-Search run: what the search changed and how its rollouts fared.

`merge_stats(revised_rows, rollout_rows)` is a pure function over the two outputs of
`retro-search search` (or their concatenation by `retro-search merge`):

- revised rows: `TraceRecord` dicts with an extra key "search" holding `SearchOutcome.stats()`
  (trace_id, status, original_correct, reasoning_tokens_before/after,
  response_tokens_before/after, steps_before/after, thoughts_before/after, boundaries_visited,
  rollouts_tried/accepted/truncated_length/unclosed);
- rollout rows: `Rollout` dicts (trace_id, boundary, visit, accepted, truncated_length, unclosed,
  correct, steps, step_tokens, continuation_tokens, ...), one per rollout.

Units: tokens are the revision model's tokens (as counted by the search). Reasoning tokens (the
text between the reasoning markers) are the paper's length and the headline; response tokens
(reasoning, closer and solution) are reported beside them, because an accepted rollout replaces
the solution too. Steps and thoughts as in `retro_search.segmentation`. Lengths, steps and thoughts are reported over the traces whose original
answer was correct (the only ones the search revises; the others pass through unchanged and would
dilute the change). Rates are fractions in [0, 1]; relative changes are percentages.
`search_stats_markdown(stats)` renders the result for a report.

Traces with status "engine_error" (the engine failed one of their requests; they are kept as they
came, the error in their search stats' `skip_reason`) are counted in `by_status` and listed in
`engine_errors`, and left out of the lengths, steps and thoughts like the traces that were not
searched: they were not searched to the end.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["STATUSES", "merge_stats", "search_headline", "search_stats_markdown"]

STATUSES = ("revised", "unchanged", "incorrect_original", "skipped")
ENGINE_ERROR = "engine_error"  # in by_status only when a trace has it
HIGH_SHARE = 0.5               # warn when at least this share of the rollouts is truncated


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


def _length_block(searches: Sequence[Mapping[str, Any]], unit: str = "reasoning") -> dict[str, Any]:
    before = [s[f"{unit}_tokens_before"] for s in searches]
    after = [s[f"{unit}_tokens_after"] for s in searches]
    out = {"traces": len(searches), "before": _summary(before), "after": _summary(after)}
    out["relative_change_pct"] = relative_change_pct(out["before"]["sum"] if before else None,
                                                     out["after"]["sum"] if after else None)
    return out


def merge_stats(revised_rows: Iterable[Mapping[str, Any]],
                rollout_rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Statistics of a search (see the module docstring for the inputs).

    Returns a JSON-ready dict:
      traces                      number of revised rows
      by_status                   {revised, unchanged, incorrect_original, skipped: count;
                                  engine_error too when a trace has it}
      engine_errors               {traces, examples: [{id, error}] (the first 5)}: traces whose
                                  search an engine fault ended (kept unchanged, not in lengths)
      reasoning_tokens            over traces whose original was correct: traces, before/after
                                  {sum, mean, median}, relative_change_pct (of the sums)
      response_tokens             the same for whole responses (reasoning + closer + solution)
      steps, thoughts             {before_mean, after_mean, relative_change_pct}, same traces
      rollouts                    tried / accepted / truncated_length (reached the token budget)
                                  / unclosed (ended without closing the reasoning), from the
                                  traces' search stats; acceptance_rate (accepted / tried),
                                  truncated_length_rate, unclosed_rate (of tried),
                                  generated_tokens (from the log), log_rows (rollout rows given)
      per_boundary                [{boundary, tried, accepted, truncated_length, unclosed, rate}]
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
    correct = [s for s in searches if s.get("original_correct") and s["status"] != ENGINE_ERROR]
    errors = [s for s in searches if s["status"] == ENGINE_ERROR]

    stats: dict[str, Any] = {"traces": len(rows), "by_status": by_status,
                             "engine_errors": {"traces": len(errors), "examples": [
                                 {"id": s.get("trace_id"), "error": s.get("skip_reason")}
                                 for s in errors[:5]]},
                             "reasoning_tokens": _length_block(correct, "reasoning"),
                             "response_tokens": _length_block(correct, "response")}
    for unit in ("steps", "thoughts"):
        before = _mean([s[f"{unit}_before"] for s in correct])
        after = _mean([s[f"{unit}_after"] for s in correct])
        stats[unit] = {"before_mean": before, "after_mean": after,
                       "relative_change_pct": relative_change_pct(before, after)}

    tried = sum(s["rollouts_tried"] for s in searches)
    accepted = sum(s["rollouts_accepted"] for s in searches)
    truncated_length = sum(s["rollouts_truncated_length"] for s in searches)
    unclosed = sum(s["rollouts_unclosed"] for s in searches)
    stats["rollouts"] = {
        "tried": tried, "accepted": accepted, "truncated_length": truncated_length,
        "unclosed": unclosed, "acceptance_rate": _rate(accepted, tried),
        "truncated_length_rate": _rate(truncated_length, tried),
        "unclosed_rate": _rate(unclosed, tried),
        "generated_tokens": sum(int(r.get("step_tokens", 0)) + int(r.get("continuation_tokens", 0))
                                for r in log),
        "log_rows": len(log),
    }

    per_boundary: dict[int, dict[str, int]] = defaultdict(
        lambda: {"tried": 0, "accepted": 0, "truncated_length": 0, "unclosed": 0})
    for number, rollout in enumerate(log, 1):
        if "boundary" not in rollout:
            raise ValueError(f"rollout row {number} (trace_id={rollout.get('trace_id')!r}) has no "
                             "'boundary'; pass the rollout log written by `retro-search search`")
        cell = per_boundary[int(rollout["boundary"])]
        cell["tried"] += 1
        cell["accepted"] += bool(rollout.get("accepted"))
        cell["truncated_length"] += bool(rollout.get("truncated_length"))
        cell["unclosed"] += bool(rollout.get("unclosed"))
    stats["per_boundary"] = [{"boundary": b, **cell, "rate": _rate(cell["accepted"], cell["tried"])}
                             for b, cell in sorted(per_boundary.items())]

    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row, search in zip(rows, searches):
        groups[(row.get("source_model", ""), row.get("source_dataset", ""))].append(search)
    stats["per_source"] = []
    for (model, dataset), group in sorted(groups.items()):
        lengths = _length_block([s for s in group if s.get("original_correct")
                                 and s["status"] != ENGINE_ERROR])
        stats["per_source"].append({
            "source_model": model, "source_dataset": dataset, "traces": len(group),
            "revised": sum(s["status"] == "revised" for s in group),
            "searched": lengths["traces"],
            "reasoning_tokens_before": lengths["before"]["sum"],
            "reasoning_tokens_after": lengths["after"]["sum"],
            "relative_change_pct": lengths["relative_change_pct"]})

    warnings = []
    if log and (len(log), sum(bool(r.get("accepted")) for r in log)) != (tried, accepted):
        warnings.append(f"the rollout log has {len(log)} rollouts ({sum(bool(r.get('accepted')) for r in log)} "
                        f"accepted) but the traces' search stats count {tried} ({accepted} accepted); "
                        "were the logs of all shards passed?")
    if not log and tried:
        warnings.append(f"no rollout log rows but the traces count {tried} rollouts: "
                        "per-boundary statistics are empty")
    if errors:
        first = errors[0]
        warnings.append(f"{len(errors)} of {len(rows)} traces ended in engine errors and are kept "
                        f"unchanged (status engine_error), e.g. {first.get('trace_id')!r}: "
                        f"{first.get('skip_reason')}")
    if tried and truncated_length >= HIGH_SHARE * tried:
        warnings.append(f"{truncated_length} of {tried} rollouts ({truncated_length / tried:.0%}) "
                        "reached their token budget and could never be accepted: search.max_tokens "
                        "or search.max_step_tokens is likely too small, or the engine's context "
                        "too short for the prompts")
    stats["warnings"] = warnings
    return stats


def search_headline(stats: Mapping[str, Any]) -> dict[str, Any]:
    """What the paper reports of a search: the share of searched traces (correct originals) that
    were revised, and their mean reasoning length in tokens before and after, with its change."""
    reasoning = stats["reasoning_tokens"]
    searched = reasoning["traces"]
    revised = stats["by_status"].get("revised", 0)
    return {"searched": searched, "revised": revised, "revised_share": _rate(revised, searched),
            "reasoning_tokens_before": reasoning["before"]["mean"],
            "reasoning_tokens_after": reasoning["after"]["mean"],
            "reasoning_change_pct": reasoning["relative_change_pct"]}


def headline_markdown(headline: Mapping[str, Any]) -> str:
    """One sentence for the top of the results table."""
    return (f"Retro-Search revised {headline['revised']} of {headline['searched']} traces "
            f"({_pct(headline['revised_share'])}); mean reasoning length "
            f"{_fmt(headline['reasoning_tokens_before'])} -> "
            f"{_fmt(headline['reasoning_tokens_after'])} tokens of the revision model "
            f"({_signed_pct(headline['reasoning_change_pct'])}).")


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
    reasoning, response = stats["reasoning_tokens"], stats["response_tokens"]
    rollouts, status = stats["rollouts"], stats["by_status"]
    skipped = status.get("skipped", 0)
    failed = status.get(ENGINE_ERROR, 0)
    lines = ["# Retro-Search statistics", "",
             f"{stats['traces']} traces: {status.get('revised', 0)} revised, "
             f"{status.get('unchanged', 0)} unchanged, "
             f"{status.get('incorrect_original', 0)} with an incorrect original answer "
             "(passed through, not searched)"
             + (f", {skipped} skipped (an empty reasoning, or a prompt longer than the engine's "
                "context)" if skipped else "")
             + (f", {failed} kept unchanged after an engine error (not in the lengths below)"
                if failed else "")
             + ".", "",
             f"## Lengths ({reasoning['traces']} traces with a correct original; tokens of the "
             "revision model's tokenizer)", "",
             "Reasoning tokens are the text between the reasoning markers (the paper's length); "
             "response tokens add the closer and the solution, which an accepted rollout also "
             "replaces.", ""]
    lines += _table(["", "before", "after", "change"], [
        ["reasoning tokens, total", _fmt(reasoning["before"]["sum"]),
         _fmt(reasoning["after"]["sum"]), _signed_pct(reasoning["relative_change_pct"])],
        ["reasoning tokens, mean", _fmt(reasoning["before"]["mean"]),
         _fmt(reasoning["after"]["mean"]), ""],
        ["reasoning tokens, median", _fmt(reasoning["before"]["median"]),
         _fmt(reasoning["after"]["median"]), ""],
        ["response tokens, total", _fmt(response["before"]["sum"]),
         _fmt(response["after"]["sum"]), _signed_pct(response["relative_change_pct"])],
        ["steps, mean", _fmt(stats["steps"]["before_mean"]), _fmt(stats["steps"]["after_mean"]),
         _signed_pct(stats["steps"]["relative_change_pct"])],
        ["thoughts, mean", _fmt(stats["thoughts"]["before_mean"]),
         _fmt(stats["thoughts"]["after_mean"]), _signed_pct(stats["thoughts"]["relative_change_pct"])],
    ])
    lines += ["", "## Rollouts", "",
              "Truncated: reached the token budget; unclosed: ended without closing the "
              "reasoning. Neither is ever accepted.", ""]
    lines += _table(["tried", "accepted", "acceptance rate", "truncated", "unclosed",
                     "generated tokens"],
                    [[_fmt(rollouts["tried"]), _fmt(rollouts["accepted"]),
                      _pct(rollouts["acceptance_rate"]),
                      f"{_fmt(rollouts['truncated_length'])} ({_pct(rollouts['truncated_length_rate'])})",
                      f"{_fmt(rollouts['unclosed'])} ({_pct(rollouts['unclosed_rate'])})",
                      _fmt(rollouts["generated_tokens"])]])
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
        lines += _table(["source model", "source dataset", "traces", "revised",
                         "reasoning tokens before", "reasoning tokens after", "change"],
                        [[s["source_model"] or "-", s["source_dataset"] or "-", _fmt(s["traces"]),
                          _fmt(s["revised"]), _fmt(s["reasoning_tokens_before"]),
                          _fmt(s["reasoning_tokens_after"]),
                          _signed_pct(s["relative_change_pct"])] for s in stats["per_source"]],
                        text_columns=2)
    if stats.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in stats["warnings"]]
    return "\n".join(lines) + "\n"
