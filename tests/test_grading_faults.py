"""Adversarial grading inputs: extraction stays linear in the text length, every grading step
(extraction included) runs under the Grader's per-item timeout, and a malformed gold, a truncated
answer or a response that is not a string is a grading error, never a match.

No test here times the grader's speed: each asserts its outcome, and where time matters it is
bounded by the Grader's own per-item timeout (an item that took longer would come back as
"timeout", and the call as a whole cannot exceed one timeout per item), or by a generous ratio
between the times of n and 4n characters measured in one test. Tests marked "a guard" pass
before and after the fix (behaviour that must not change); every other test failed or hung
(minutes) on the code before it.
"""

import time

import pytest

from retro_search.grading import Grade, Grader, extract_answer, grade, normalize_reference
from retro_search.grading.extract import answer_tail, last_boxed
from retro_search.grading.verify import grade_extracted

TIMEOUT = 3.0


def unclosed_boxes(n: int, answer: str = "42") -> str:
    """A complete box, then `n` boxes that never close (a generation stuck repeating `\\boxed{`)."""
    return "\\boxed{" + answer + "} " + "\\boxed{" * n


# 420,011 characters on one line: one complete box, then 60,000 unclosed ones.
LINE_420KB = unclosed_boxes(60_000)
# A 416 KB line of unclosed fractions inside unclosed boxes: nested braces that never close.
NESTED_416KB = "\\boxed{7} " + "\\boxed{\\frac{1}{" * 26_000


@pytest.fixture(scope="module")
def grader():
    with Grader(processes=2, timeout=TIMEOUT) as g:
        g.grade_many([("1", r"\boxed{1}"), ("2", r"\boxed{2}")])  # workers up before any timing
        yield g


# --- extraction: linear and bounded -----------------------------------------------------------

def test_20k_unclosed_boxes_give_the_last_complete_box():
    assert extract_answer(unclosed_boxes(20_000)) == "42"
    assert last_boxed("\\boxed{" * 20_000) is None
    assert extract_answer("\\boxed{" * 20_000) is None
    assert answer_tail("\\boxed{" * 20_000) is None  # a box was attempted: no math-verify fallback


def test_420kb_line_gives_the_last_complete_box():
    assert len(LINE_420KB) > 420_000 and "\n" not in LINE_420KB
    assert extract_answer(LINE_420KB) == "42"
    assert extract_answer(NESTED_416KB) == "7"


def _best_time(fn, text: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("make, n", [
    (lambda n: unclosed_boxes(n), 10_000),
    (lambda n: "\\boxed{5} " + "\\boxed $" * n, 50_000),  # space form whose argument is missing
    (lambda n: "\\boxed{5} " + "\\boxed{\\frac{1}{" * n, 5_000),
], ids=["unclosed-boxes", "space-form-without-argument", "unclosed-fractions"])
def test_extraction_time_grows_linearly(make, n):
    # 4x the text may cost about 4x the time; a quadratic extraction costs 16x. The bound (12x)
    # leaves room for a loaded machine; both sizes are timed in this test, best of 3.
    small, large = make(n), make(4 * n)
    assert extract_answer(small) == extract_answer(large) is not None
    ratio = _best_time(extract_answer, large) / max(_best_time(extract_answer, small), 1e-4)
    assert ratio < 12, ratio


@pytest.mark.parametrize("text, expected", [
    ("The answer is " + "$" * 400_000, "$"),  # `$$` `$` `$$`: the first math span, as before
    ("The answer is " + "\\(" * 200_000, None),
    ("answer is " * 42_000, None),
    ("final " * 70_000 + "answer", None),
    (("final" + " " * 1_000) * 400, None),
    ("The answer is " + "{" * 400_000, None),
    ("Answer: $" + "x" * 400_000, None),
    ("####" * 100_000, None),
    ("The answer is 5. " * 40_000 + "The answer is 6.", "6"),
], ids=["dollars", "parens", "answer-is", "final", "final-spaces", "open-braces",
        "unclosed-dollar", "hashes", "last-phrase-wins"])
def test_fallback_phrases_on_adversarial_text(text, expected):
    # A guard: these were already linear (measured: < 0.1 s each on 400 KB) and must stay so.
    assert extract_answer(text) == expected


SET_BUILDER_ANSWER = "\\{x | " + " " * 8_000 + "x > 1"  # `\{x | ... x > 1`, never closed


def test_set_builder_answer_with_a_long_blank_run_is_bounded_in_process():
    # Our set-builder rewrite's regex backtracked cubically on an unclosed `\{x | ...` with a long
    # run of blanks, before math-verify (and so outside its SIGALRM limit): 2,000 blanks took 5 s,
    # 8,000 many minutes. Now the only slow part is math-verify's own LaTeX normalisation, which
    # its limit (1 s here) stops.
    assert grade_extracted("5", SET_BUILDER_ANSWER, timeout=1) == Grade(
        False, SET_BUILDER_ANSWER, "timeout")


# --- every step under the item's timeout ------------------------------------------------------

def test_grader_grades_adversarial_responses_within_the_item_timeout(grader):
    batch = [("42", unclosed_boxes(20_000)), ("42", LINE_420KB), ("7", NESTED_416KB),
             ("5", "\\boxed{5} " + "\\boxed $" * 60_000),
             ("5", "\\boxed{" + SET_BUILDER_ANSWER + "}"),
             ("9", r"\boxed{\frac{18}{2}}")]
    started = time.monotonic()
    results = grader.grade_many(batch)
    elapsed = time.monotonic() - started
    assert [r.correct for r in results] == [True, True, True, True, False, True], results
    assert [r.extracted for r in results[:4]] == ["42", "42", "7", "5"]
    # math-verify spins on the blank run: the item is cut at its deadline and says what it found.
    assert results[4] == Grade(False, SET_BUILDER_ANSWER, "timeout")
    # Whatever an item costs, the Grader returns it within its timeout: a hang is impossible.
    assert elapsed < len(batch) * TIMEOUT, elapsed


def test_extraction_runs_in_the_worker_not_the_parent(grader, monkeypatch):
    # Extraction that fails in this (the parent) process only: the workers come from the
    # forkserver and keep the real one. The answers still come back, so the parent did not
    # extract, and the item's deadline covers extraction like the rest of the grading.
    from retro_search.grading import extract, pool, verify

    def fail(*_args, **_kwargs):
        raise AssertionError("extraction ran in the parent process")

    for module in (extract, pool, verify):
        for name in ("extract_answer", "answer_tail", "last_boxed"):
            monkeypatch.setattr(module, name, fail, raising=False)
    pairs = [("42", unclosed_boxes(1_000)), ("-5", "so it is -5"), ("3", "The answer is 3.")]
    assert grader.grade_many(pairs) == [Grade(True, "42"), Grade(True, "-5"), Grade(True, "3")]


# --- false positives --------------------------------------------------------------------------

MALFORMED_GOLDS = ["\\frac{", "\\frac{1}{", "x^", "10^{", "x=", "\\frac", "\\sqrt{}", "}5{",
                   "\\frac{1}{}", "\\boxed{}", "\\boxed{5", "5\\"]


@pytest.mark.parametrize("gold", MALFORMED_GOLDS)
def test_malformed_gold_is_an_error_never_a_match(gold, grader):
    responses = [f"The answer is {gold}", f"The answer is {gold}.", f"Answer: {gold}",
                 "\\boxed{" + gold + "}", "\\boxed{10}", "The answer is 10."]
    for response in responses:
        result = grade(gold, response)
        assert result.correct is False, (response, result)
        assert result.error.startswith("unparseable gold: "), (response, result)
    assert grader.grade_many([(gold, r) for r in responses]) == [grade(gold, r) for r in responses]


@pytest.mark.parametrize("response", [{"answer": "\\boxed{25}"}, {"answer": 25}, ["25"],
                                      ("25",), 25, 25.0, b"\\boxed{25}", None, True],
                         ids=["dict-box", "dict-number", "list", "tuple", "int", "float",
                              "bytes", "None", "bool"])
def test_response_that_is_not_a_string_is_an_error(response, grader):
    expected = Grade(False, None, f"invalid response: {type(response).__name__}, not a string")
    assert grade("25", response) == expected
    assert grader.grade_many([("25", response), ("25", r"\boxed{25}")]) == [expected,
                                                                            Grade(True, "25")]


@pytest.mark.parametrize("gold, response", [
    ("10", "The answer is 10^{"),
    ("10", "The answer is 10^"),
    (r"\frac{1}{2}", r"The answer is \frac{1}{2"),
    ("5", "Answer: 5 ="),
], ids=["open-superscript", "bare-superscript", "unclosed-fraction", "dangling-relation"])
def test_truncated_answer_is_an_error_never_a_match(gold, response, grader):
    # A generation cut off inside its answer: math-verify reads "10^{" as 10 and "\frac{1}{2" as
    # 1/2. An unclosed box is already no answer; an unclosed answer after a phrase is none either.
    result = grade(gold, response)
    assert result.correct is False, result
    assert result.error.startswith("unparseable answer: "), result
    assert grader.grade(gold, response) == result


@pytest.mark.parametrize("gold, response", [
    (normalize_reference(25), r"\boxed{25}"),
    (normalize_reference("025"), "The answer is 25."),
    ("b > a > c", r"\boxed{b > a > c}"),            # GaoKao: math-verify cannot parse either
    ("E_{1},E_{2}", r"\boxed{E_{1},E_{2}}"),        # Minerva
    (r"\$32,\!348", r"\boxed{\$32,\!348}"),          # MATH-500
    (r"30^\circ", r"\boxed{30^\circ}"),
    (r"\{1, 2\}", r"\boxed{\{1,2\}}"),
    ("5", "The answer is 5}"),                      # a stray closer is not a truncation
], ids=["int-gold", "aime-gold", "gaokao", "minerva", "math500-thin-space", "degrees", "set",
        "stray-closer"])
def test_golds_and_answers_that_worked_keep_working(gold, response):
    # A guard (passes before and after): well-formed golds that math-verify cannot parse still
    # match themselves, and numbers normalised by normalize_reference still grade.
    assert grade(gold, response).correct


def test_empty_response_is_no_answer_and_empty_gold_a_caller_error(grader):
    # A guard (passes before and after): what was right for these stays so.
    assert grade("5", "") == grader.grade("5", "") == Grade(False, None, "no_answer")
    with pytest.raises(ValueError, match="gold"):
        grade("", r"\boxed{5}")
    with pytest.raises(ValueError, match="gold"):
        grader.grade(None, r"\boxed{5}")
