"""Evaluation metrics against values computed by hand."""

import math
from fractions import Fraction

import pytest

from retro_search.evaluation.metrics import (answer_key, majority_vote, mean_with_stderr,
                                             pass_at_k, summarize_benchmark)


def row(pid, sample, correct, extracted="x", tokens=10, finish="stop", error=None):
    return {"problem_id": pid, "sample": sample, "correct": correct, "extracted": extracted,
            "num_tokens": tokens, "finish_reason": finish, "grade_error": error}


@pytest.mark.parametrize("k, expected", [
    # 1 - C(3, k) / C(5, k) for n=5, c=2: C(5,k) = 5, 10, 10, 5, 1; C(3,k) = 3, 3, 1, 0, 0
    (1, 1 - Fraction(3, 5)),
    (2, 1 - Fraction(3, 10)),
    (3, 1 - Fraction(1, 10)),
    (4, 1 - Fraction(0, 5)),
    (5, 1 - Fraction(0, 1)),
])
def test_pass_at_k_matches_the_combinatorial_formula(k, expected):
    assert pass_at_k(5, 2, k) == pytest.approx(float(expected), abs=1e-12)
    assert pass_at_k(5, 2, k) == pytest.approx(1 - math.comb(3, k) / math.comb(5, k), abs=1e-12)


def test_pass_at_k_is_zero_without_correct_samples():
    assert [pass_at_k(6, 0, k) for k in range(1, 7)] == [0.0] * 6


def test_pass_at_k_is_one_when_all_samples_are_correct():
    assert [pass_at_k(6, 6, k) for k in range(1, 7)] == [1.0] * 6


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match="pass@6"):
        pass_at_k(5, 2, 6)


def test_pass_at_k_is_stable_for_large_n():
    # C(1000, 500) overflows floats; the product form does not.
    assert pass_at_k(1000, 10, 1) == pytest.approx(0.01)
    assert 0.99 < pass_at_k(1000, 10, 500) <= 1.0


def test_majority_vote_breaks_ties_by_first_occurrence():
    assert majority_vote(["1", "2", "2", "1"]) == 0          # 2-2 tie: "1" came first
    assert majority_vote(["1", "2", "2"]) == 1               # "2" wins outright
    assert majority_vote([None, "7", None, "$7$"]) == 1      # missing answers do not vote
    assert majority_vote([None, None]) is None


def test_answer_key_ignores_formatting_only():
    assert answer_key("$\\dfrac{1}{2}$") == answer_key("\\frac {1}{2}.") == "\\frac{1}{2}"
    assert answer_key("\\left( 1, 2 \\right)") == "(1,2)"
    assert answer_key("0.5") != answer_key("\\frac{1}{2}")
    assert answer_key(None) is None and answer_key("  ") is None


def test_maj_at_k_uses_the_first_k_samples_and_the_winners_grade():
    rows = [row("a", 0, False, "3"), row("a", 1, True, "4"), row("a", 2, True, "4"),
            row("a", 3, False, "3"),
            row("b", 3, True, "9"), row("b", 2, False, "8"), row("b", 1, False, "8"),
            row("b", 0, True, "9"),
            row("c", 0, False, "1"), row("c", 1, True, "2"), row("c", 2, True, "$2$"),
            row("c", 3, False, None)]
    out = summarize_benchmark(rows, ks=[1, 2, 4])
    # a: maj@1 "3" wrong; maj@2 tie 3/4 -> "3" (first) wrong; maj@4 tie 2-2 -> "3" wrong
    # b (sorted by sample: 9, 8, 8, 9): maj@1 "9" right; maj@2 tie -> "9" right; maj@4 tie -> "9"
    # c: maj@1 "1" wrong; maj@2 tie 1/2 -> "1" wrong; maj@4 "2" has two votes -> right
    assert out["maj@1"] == pytest.approx(1 / 3)
    assert out["maj@2"] == pytest.approx(1 / 3)
    assert out["maj@4"] == pytest.approx(2 / 3)


def test_accuracy_stderr_is_over_problems():
    rows = ([row("a", i, c) for i, c in enumerate([True, True, False, False])]     # 0.5
            + [row("b", i, True) for i in range(4)]                                # 1.0
            + [row("c", i, False) for i in range(4)])                              # 0.0
    out = summarize_benchmark(rows, ks=[1, 4])
    assert out["accuracy"] == pytest.approx(0.5)
    assert out["pass@1"] == pytest.approx(0.5)
    # per-problem accuracies 0.5, 1, 0: std (ddof=1) = sqrt((0 + .25 + .25) / 2) = 0.5
    assert out["accuracy_stderr"] == pytest.approx(0.5 / math.sqrt(3))
    # pass@4 with n=4: a (c=2) -> 1, b -> 1, c -> 0
    assert out["pass@4"] == pytest.approx(2 / 3)
    assert out["n_problems"] == 3 and out["n_generations"] == 12 and out["n_samples"] == 4


def test_stderr_is_none_for_one_problem():
    assert mean_with_stderr([0.25]) == (0.25, None)


def test_ks_above_n_are_dropped():
    out = summarize_benchmark([row("a", 0, True), row("a", 1, False)], ks=[1, 2, 4, 8])
    assert "pass@2" in out and "maj@2" in out
    assert "pass@4" not in out and "maj@8" not in out


def test_truncation_and_no_answer_rates():
    rows = [row("a", 0, False, None, finish="length"),
            row("b", 0, False, None, finish="stop", error="no_answer"),
            row("c", 0, True, "5"),
            row("d", 0, False, "6", finish="length", error="timeout")]
    out = summarize_benchmark(rows)
    assert out["truncation_rate"] == 0.5
    assert out["no_answer_rate"] == 0.5
    assert out["grade_error_rate"] == 0.25   # the timeout; "no_answer" is not a grading error


def test_token_means_are_split_by_correctness():
    rows = [row("a", 0, True, tokens=10), row("a", 1, False, tokens=40),
            row("b", 0, True, tokens=20), row("b", 1, False, tokens=100)]
    out = summarize_benchmark(rows)
    assert out["mean_tokens"] == pytest.approx(42.5)
    assert out["median_tokens"] == pytest.approx(30.0)
    assert out["mean_tokens_correct"] == pytest.approx(15.0)
    assert out["mean_tokens_incorrect"] == pytest.approx(70.0)
    none_correct = summarize_benchmark([row("a", 0, False, tokens=3)])
    assert none_correct["mean_tokens_correct"] is None


def test_duplicate_samples_are_an_error():
    with pytest.raises(ValueError, match="duplicate sample"):
        summarize_benchmark([row("a", 0, True), row("a", 0, False)])
