"""extract_answer: boxes (last wins, nested braces, space form, fbox) and the fallback phrases;
answer_tail: what math-verify's own extraction reads when extract_answer finds nothing."""

import pytest

from retro_search.grading import extract_answer
from retro_search.grading.extract import TAIL_CHARS, answer_tail


def test_last_box_wins():
    assert extract_answer(r"First \boxed{5}, then on reflection \boxed{7}.") == "7"


def test_nested_braces_are_kept():
    assert extract_answer(r"so $\boxed{\frac{a}{b^{2}}}$") == r"\frac{a}{b^{2}}"


def test_escaped_set_braces_do_not_unbalance_the_box():
    assert extract_answer(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"


def test_fbox_counts_as_a_box():
    assert extract_answer(r"\fbox{12} done") == "12"


def test_space_form_box():
    assert extract_answer(r"Hence the answer is $\boxed 5$.") == "5"


def test_box_with_space_before_brace():
    assert extract_answer(r"\boxed {x+1}") == "x+1"


def test_unclosed_last_box_falls_back_to_previous_complete_box():
    # A generation cut off inside its final box.
    assert extract_answer(r"\boxed{3} ... final: \boxed{\frac{1}{") == "3"


def test_empty_box_is_not_an_answer():
    assert extract_answer(r"\boxed{}") is None


def test_box_in_reasoning_counts_when_solution_has_none():
    text = "<think>So it is \\boxed{42}.</think>\nThe result follows."
    assert extract_answer(text) == "42"


def test_box_beats_answer_phrase():
    assert extract_answer("\\boxed{4}\nThe answer is 5.") == "4"


def test_boxed_command_prefix_is_not_a_box():
    assert extract_answer(r"\boxedsomething{3}") is None


@pytest.mark.parametrize("text, expected", [
    ("Therefore, the final answer is $72$.", "72"),
    ("The final answer is: 3/4", "3/4"),
    ("So the answer is 6.17.", "6.17"),
    ("so the answer is \\(\\frac{1}{2}\\)", "\\frac{1}{2}"),
    ("Answer: 18", "18"),
    ("**Answer:** $x^2+1$", "x^2+1"),
    ("She has 72 left.\n#### 72", "72"),
], ids=["final-answer-is", "final-answer-is-colon", "answer-is-decimal", "answer-is-paren-math",
        "Answer-colon", "markdown-Answer", "gsm8k-hashes"])
def test_fallback_phrases(text, expected):
    assert extract_answer(text) == expected


def test_fallback_uses_last_occurrence_of_phrase():
    assert extract_answer("The answer is 3. Wait, no. The answer is 4.") == "4"


def test_final_answer_phrase_preferred_over_answer_colon():
    assert extract_answer("The final answer is 9.\nAnswer: see above") == "9"


def test_fallback_number_followed_by_words_gives_number():
    assert extract_answer("So the answer is 72 dollars.") == "72"


def test_fallback_rejects_overlong_value():
    assert extract_answer("The answer is " + "blah " * 100) is None


@pytest.mark.parametrize("text", ["", "I think it is 72 but I am not sure.", "Answer:"],
                         ids=["empty", "no-phrase", "phrase-without-value"])
def test_no_answer_gives_none(text):
    assert extract_answer(text) is None


@pytest.mark.parametrize("text", ["Final Answer: The largest $n$ is 34.",
                                  "Answer: Jane started growing Sphere 3 hours ago."],
                         ids=["words-around-formula", "words-around-number"])
def test_phrase_followed_by_a_sentence_is_no_value(text):
    assert extract_answer(text) is None
    assert answer_tail(text) == text


@pytest.mark.parametrize("text, expected", [
    ("Answer: Evelyn", "Evelyn"),
    ("Answer: $5 \\text{ cm}$", "5 \\text{ cm}"),
    ("The answer is 2 and 3.", "2 and 3"),
], ids=["word", "number-with-text-unit", "connective"])
def test_values_that_are_not_sentences_are_kept(text, expected):
    assert extract_answer(text) == expected


def test_tail_is_the_whole_of_a_short_solution():
    assert answer_tail("  So $x = -5$.\n") == "So $x = -5$."


def test_tail_is_bounded_and_starts_at_a_line():
    text = "x" * 5000 + "\nfirst line of the end\n" + "y" * (TAIL_CHARS - 200) + " so 42"
    tail = answer_tail(text)
    assert len(tail) <= TAIL_CHARS
    assert tail.endswith("so 42")
    assert tail.startswith("first line of the end\n")


def test_tail_cut_inside_a_formula_drops_the_orphan_dollar():
    text = "$" + "a" * (2 * TAIL_CHARS) + " = 3$ and " + "b" * 20 + " $y = 7$"
    assert answer_tail(text) == "and " + "b" * 20 + " $y = 7$"


@pytest.mark.parametrize("text", ["", "I give up.", r"\boxed{}", r"so \boxed{27",
                                  r"\boxed{} so 5"],
                         ids=["empty", "no-digit-no-latex", "empty-box", "unclosed-box",
                              "empty-box-then-number"])
def test_no_tail_when_math_verify_could_find_nothing_or_a_box_was_attempted(text):
    assert answer_tail(text) is None


@pytest.mark.parametrize("text", ["<think>so far x = 7 and then", "<|begin_of_thought|>x = 7"],
                         ids=["r1", "openthoughts"])
def test_no_tail_in_unfinished_reasoning(text):
    assert answer_tail(text) is None


@pytest.mark.parametrize("text", ["<think>x = 7</think>So it is 8.",
                                  "x = 7</think>So it is 8.",
                                  "<|begin_of_thought|>x = 7<|end_of_thought|>So it is 8."],
                         ids=["r1", "r1-without-opener", "openthoughts"])
def test_tail_is_read_after_the_reasoning(text):
    assert answer_tail(text) == "So it is 8."
