"""Evaluation metrics: pure functions over graded generations (no model, no grading).

Definitions (per benchmark; a "row" is one generation, a problem has n rows, samples 0..n-1):

- accuracy / pass@1: the mean over problems of each problem's fraction of correct samples
  (c / n), i.e. pass@1 averaged over n samples. Its standard error is taken over problems:
  std(per-problem accuracy, ddof=1) / sqrt(#problems). It measures how much the score would move
  with another draw of problems (and, partly, of samples); it is None with a single problem.
- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): per problem the
  unbiased estimate 1 - C(n-c, k) / C(n, k) of "at least one of k samples is correct", computed in
  the stable product form 1 - prod_{i=n-c+1..n} (1 - k / i); averaged over problems. Needs k <= n.
- maj@k: per problem, a majority vote over the extracted answers of its first k samples (by sample
  index); samples without an answer do not vote; answers are compared by a normalised string
  (`answer_key`: math delimiters, whitespace, `\\left`/`\\right`, `\\!`-style spacing and a
  trailing period removed, `\\dfrac`/`\\tfrac` -> `\\frac`), so "1/2" and "0.5" are different
  votes; ties go to the answer whose first vote came first. The problem counts as correct when the
  winning answer's first occurrence was graded correct. Averaged over problems.
- mean_tokens / median_tokens: response length in tokens (the engine's count of generated tokens,
  in the evaluated model's tokenizer), over the rows that were generated (not those of failed
  generations, finish_reason "error"); mean_tokens_correct / mean_tokens_incorrect: the same
  over correct / incorrect ones (None when there are none).
- truncation_rate: fraction of rows with finish_reason "length" (hit max_tokens).
- no_answer_rate: fraction of rows with no extracted answer.
- grade_error_rate: fraction of rows whose grading reported an error other than "no_answer"
  (a timeout, or a math-verify parse failure that fell back to string comparison); failed
  generations are not counted here.
- n_errors: rows of generations the engine failed to produce (finish_reason "error"; they count
  as incorrect everywhere above); errors: the most frequent of their messages (the rows'
  `error`), with counts.
- n_empty: generated rows whose response is empty (or only whitespace).
- n_truncated: rows with finish_reason "length".
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Sequence

from retro_search.grading.extract import strip_math_delimiters

ERROR = "error"  # finish_reason of a generation the engine failed to produce (`generate.ERROR`)
MAX_ERRORS_SHOWN = 5

__all__ = ["answer_key", "majority_vote", "pass_at_k", "mean_with_stderr", "summarize_benchmark",
           "group_by_problem"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), as 1 - prod_{i=n-c+1}^{n} (1 - k/i). Raises ValueError for k > n."""
    if n < 1 or k < 1:
        raise ValueError(f"pass@k needs n >= 1 and k >= 1, got n={n}, k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0  # every k-subset contains a correct sample
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


_SPACING_RE = re.compile(r"\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\[!,;:](?![A-Za-z])|\s+")


def answer_key(answer: str | None) -> str | None:
    """The normalised string by which maj@k compares answers (None/empty -> None)."""
    if answer is None:
        return None
    s = strip_math_delimiters(str(answer).strip())
    s = _SPACING_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")
    return s or None


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the winning sample: the first occurrence of the most frequent `answer_key`; ties
    go to the key that occurred first. None when no sample has an answer."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, answer in enumerate(answers):
        key = answer_key(answer)
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return None
    best = max(counts, key=lambda key: (counts[key], -first[key]))
    return first[best]


def mean_with_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error std(ddof=1)/sqrt(len); stderr is None for fewer than 2 values."""
    if not values:
        raise ValueError("no values")
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, statistics.stdev(values) / math.sqrt(len(values))


def group_by_problem(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows per problem id (first-seen problem order), each list sorted by sample index."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[str(row["problem_id"])].append(row)
    for pid, items in groups.items():
        items.sort(key=lambda r: r["sample"])
        samples = [r["sample"] for r in items]
        if len(set(samples)) != len(samples):
            raise ValueError(f"problem {pid!r}: duplicate sample indices {samples}")
    return dict(groups)


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def summarize_benchmark(rows: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1,)
                        ) -> dict[str, Any]:
    """The metric dict of one benchmark's graded rows (see the module docstring).

    Each row needs: problem_id, sample, correct (bool), extracted (str or None), num_tokens,
    finish_reason. pass@k and maj@k are reported for every k in `ks` with k <= n, where n is the
    smallest number of samples of any problem (pass@1 and maj@1 always).
    Keys: n_problems, n_generations, n_samples, accuracy, accuracy_stderr, pass@k..., maj@k...,
    mean_tokens, median_tokens, mean_tokens_correct, mean_tokens_incorrect, truncation_rate,
    no_answer_rate, grade_error_rate, n_errors, errors, n_empty, n_truncated.
    """
    if not rows:
        raise ValueError("no rows to summarise")
    groups = group_by_problem(rows)
    n_min = min(len(items) for items in groups.values())
    n_max = max(len(items) for items in groups.values())
    usable = sorted({1, *(k for k in ks if 1 <= k <= n_min)})

    per_problem_acc = [sum(bool(r["correct"]) for r in items) / len(items)
                       for items in groups.values()]
    accuracy, stderr = mean_with_stderr(per_problem_acc)
    out: dict[str, Any] = {
        "n_problems": len(groups),
        "n_generations": len(rows),
        "n_samples": n_min if n_min == n_max else [n_min, n_max],
        "accuracy": accuracy,
        "accuracy_stderr": stderr,
    }
    for k in usable:
        out[f"pass@{k}"] = _mean([pass_at_k(len(items), sum(bool(r["correct"]) for r in items), k)
                                  for items in groups.values()])
    for k in usable:
        hits = []
        for items in groups.values():
            first_k = items[:k]
            winner = majority_vote([r["extracted"] for r in first_k])
            hits.append(1.0 if winner is not None and first_k[winner]["correct"] else 0.0)
        out[f"maj@{k}"] = _mean(hits)

    generated = [r for r in rows if r["finish_reason"] != ERROR]
    tokens = [int(r["num_tokens"]) for r in generated]
    out["mean_tokens"] = _mean(tokens)
    out["median_tokens"] = float(statistics.median(tokens)) if tokens else None
    out["mean_tokens_correct"] = _mean([int(r["num_tokens"]) for r in generated if r["correct"]])
    out["mean_tokens_incorrect"] = _mean([int(r["num_tokens"]) for r in generated
                                          if not r["correct"]])
    out["truncation_rate"] = sum(r["finish_reason"] == "length" for r in rows) / len(rows)
    out["no_answer_rate"] = sum(answer_key(r["extracted"]) is None for r in rows) / len(rows)
    out["grade_error_rate"] = sum(
        bool(r.get("grade_error")) and r.get("grade_error") != "no_answer" for r in generated
    ) / len(rows)
    failed = [r for r in rows if r["finish_reason"] == ERROR]
    messages = Counter(str(r.get("error") or "unknown") for r in failed)
    out["n_errors"] = len(failed)
    out["errors"] = dict(sorted(messages.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_ERRORS_SHOWN])
    out["n_empty"] = sum(not str(r.get("response") or "").strip() for r in generated
                         if "response" in r)
    out["n_truncated"] = sum(r["finish_reason"] == "length" for r in rows)
    return out
