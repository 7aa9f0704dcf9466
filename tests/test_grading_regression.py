r"""Regression set of grading pairs, in named families, both ways: must be equal / must differ.

The families follow the kinds of pairs in math-verify's own regression tests (its tests/test_all.py)
and what our benchmarks' golds look like; the pairs are our own. Most "equal" families hold pairs
whose prediction has no `\boxed{}` and no answer phrase: before the fallback to math-verify's own
extraction (`grade`, step 2) our grader extracted nothing from them. The "differ" families keep that
fallback and the currency/units/percent handling from turning into false positives.
"""

import pytest

from retro_search.grading import grade, normalize_reference

N = normalize_reference
# A long reasoning prefix: the answer must be found at the end of a long solution, and a number
# far before the end (beyond extract.TAIL_CHARS) must not be taken for the answer.
PROSE = "We check every case carefully and find nothing new in this step. " * 30

EQUAL = {
    "unboxed_plain": [
        ("-5", "-5"),
        ("12", "12"),
        ("0.4", ".4"),
        ("1000", "1000.0"),
        (r"\frac{10}{9}", r"\frac{10}{9}"),
        ("-10/9", r"-\frac{10}{9}"),
        ("3/4", "$3/4$"),
        ("x^2+1", "$x^2 + 1$"),
        (r"\sqrt{3}", r"$\sqrt3$"),
    ],
    "sentence_ending": [
        (r"x \geq 5", r"Therefore $x \geq 5$ is the solution."),
        ("12", "So there are 12 distinct sequences. I hope it is correct."),
        (r"\frac{2}{3}", "Therefore, the probability that Alice wins the game is 2/3."),
        ("(7, 6)", "So the ordered pair that solves the system is $(7, 6)$."),
        ("120", "Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct."),
        ("34", "Final Answer: The largest $n$ is 34."),
        ("9", r"Answer \[ 9 \]"),
        ("42", PROSE + "So the result is $42$."),
        ("72", "I think it is 72 but I am not sure"),  # math-verify reads the last number
    ],
    "thousands_separators": [
        ("7425000", "7,425,000"),
        ("1000", "1 000"),
        ("1000.99", "1,000.99"),
        ("14916", r"The smallest such number is $14{,}916$."),
        ("1000", r"\boxed{1{,}000}"),
        ("1000000", r"\boxed{1\,000\,000}"),
        (N("1,000"), r"\boxed{1000}"),
    ],
    "decimal_commas": [
        ("1000.99", "1000,99"),
        ("1.22", "1,22"),
        ("2.74", "Soucis : 2,74 $ a.."),
    ],
    "currency": [
        (r"\$18.90", r"\boxed{18.90}"),
        ("$18.90", r"\boxed{18.90}"),
        ("18.90 dollars", r"\boxed{18.90}"),
        (N(r"\$1,000"), r"\boxed{1000}"),
        ("-\\$5", r"\boxed{-5}"),
        ("18.9", r"The total is \$18.90."),
        ("18.9", "The total is $18.90."),
        ("1000.99", "$1,000.99"),
        ("1000.99", "the number is not 10 which is 1,000.99€"),
        ("5", r"\boxed{\text{\$}5}"),
        ("7.5", r"\boxed{7.50 \text{ dollars}}"),
        (r"\$12", r"\boxed{\$12.00}"),
    ],
    "units": [
        (r"5\text{ cm}", r"\boxed{5}"),
        ("5 cm", r"\boxed{5}"),
        ("5", r"The side is $5 \text{ cm}$."),
        ("30", r"The angle is $30^\circ$."),
        ("30 degrees", r"\boxed{30}"),
        ("12", r"\boxed{12 \text{ inches}}"),
        ("1000.99", "so the number is 10 which is 1,000.99m²"),
        (r"\frac{1}{3}", r"$\frac{1}{3} \text{meters}$"),
    ],
    "percent": [
        (r"28\%", "28 percent"),
        (r"28\%", "28 %"),
        (r"28\%", "$28$ percent"),
        (r"28\%", "28"),
        (r"50\%", r"\boxed{50}"),
        (r"50\%", "The share is 50%."),
    ],
    "intervals": [
        ("[0, 1)", "$[0,1)$"),
        (r"(-\infty, 2]", r"The solution set is $(-\infty, 2]$."),
        (r"x \geq 5", r"\boxed{[5, \infty)}"),
        ("[-2, 7]", r"Hence $x \in [-2,7]$."),
    ],
    "relations": [
        (r"x \geq 5", r"\boxed{x\ge5}"),
        ("x < 3", r"We find that $x \lt 3$."),
        (r"x \leq 2", "Thus $x <= 2$ is our answer."),
        (r"x \neq 5", "The solution is $x != 5$"),
        (r"x \leq 5", r"$5 \geq x$"),
        ("x < 1", "$-x > -1$"),
        ("11", "$x=11$"),
        ("k=1", "$1$"),
        ("x = 5", r"\boxed{5}"),
    ],
    "sets": [
        (r"\{1, 2, 3\}", r"The set is $\{3, 2, 1\}$."),
        (r"\{2,3,5\}", r"\boxed{\{5, 3, 2\}}"),
        (r"\{1, 2\}", r"\boxed{1, 2}"),
    ],
    "matrices": [
        (r"\begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix}",
         r"The identity matrix is $ \begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} $."),
        (r"\begin{bmatrix}0 & 0 \\ 0 & 0\end{bmatrix}",
         r"Here is a zero matrix: $ \begin{pmatrix}0 & 0 \\0 & 0\end{pmatrix} $"),
        (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
         r"\boxed{\begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}}"),
        (r"\begin{pmatrix} 3 \\ -1 \end{pmatrix}",
         r"So $\mathbf{v} = \begin{pmatrix} 3 \\ -1 \end{pmatrix}$."),
    ],
    "fractions": [
        (r"\frac{1}{3}", "$ 1/3 $"),
        (r"\frac{1}{3}", r"$\dfrac{1}{3}$"),
        ("1/3", r"$\frac13$"),
        (r"\frac{1}{2}", r"\boxed{\frac{2}{4}}"),
        (r"\frac{3}{4}", "The ratio is 0.75."),
    ],
    "choice_letters": [
        (r"\text{(C)}", r"\boxed{C}"),
        ("C", "The answer is (C)."),
        (r"\text{E}", "$E$"),
        ("B", r"**Answer:** $\textbf{(B)}$"),
    ],
}

DIFFER = {
    "no_answer": [
        ("72", "I give up."),
        ("27", r"\boxed{27"),  # a truncated box: no math-verify fallback on a boxed response
        ("5", r"The value is \boxed{} and so 5"),
        ("42", "The value 42 is a guess. " + PROSE),  # beyond the tail math-verify reads
    ],
    "thousands_separators": [
        ("1000", r"\boxed{1,001}"),
        ("12", r"\boxed{1,2}"),
        ("1000", "1,000,000"),
    ],
    "decimal_commas": [
        ("2.74", r"\boxed{2,74}"),  # inside a box a comma separates a list
        (N("0,111"), r"\boxed{111}"),
        ("1.22", "1,23"),
    ],
    "currency": [
        (r"\$0.28", r"\boxed{28}"),
        (r"\$18.90", r"\boxed{18.09}"),
        ("18.90 dollars", r"\boxed{1890}"),
        (r"\$5", r"\boxed{-5}"),
        ("18.9", r"The total is \$19.80."),
    ],
    "units": [
        ("5", r"\boxed{50 \text{ cm}}"),
        ("5 cm", "The side is $6 \\text{ cm}$."),
        ("30", r"The angle is $60^\circ$."),
    ],
    "percent": [
        ("0.28", "28"),
        ("0.28", r"\boxed{28}"),
        ("28", "28/100"),
        (r"\frac{28}{100}", "28"),
        (r"50\%", r"\boxed{5\%}"),
        ("0.5", r"\boxed{50\%}"),
    ],
    "intervals": [
        ("[0, 9)", "$[0,1)$"),
        ("(0, 9)", "$[0, 9)$"),
        ("[0, 1)", r"\boxed{[0,1]}"),
        (r"(-\infty, 2]", r"The solution set is $(-\infty, 2)$."),
    ],
    "relations": [
        (r"x \geq 5", r"\boxed{x > 5}"),
        (r"x \geq 5", "Therefore $x > 5$."),
        ("x < 3", r"$x \leq 3$"),
        ("x = 5", "$x = -5$"),
        (r"x \leq 5", r"$x \geq 5$"),
    ],
    "sets": [
        (r"\{1, 2, 3\}", r"The set is $\{1, 2\}$."),
        (r"\{1, 2\}", r"\boxed{\{1, 3\}}"),
    ],
    "matrices": [
        (r"\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}",
         r"\boxed{\begin{pmatrix} 1 & 2 \\ 4 & 3 \end{pmatrix}}"),
        (r"\begin{pmatrix}1 & 2 \\ 3 & 4\end{pmatrix}",
         r"The transpose is $\begin{pmatrix}1 & 3 \\ 2 & 4\end{pmatrix}$."),
    ],
    "fractions": [
        (r"\frac{1}{2}", "$2$"),
        ("1/2", "The ratio is 2/1."),
        (r"\frac{2}{3}", "Therefore the probability is 3/2."),
    ],
    "choice_letters": [
        ("C", "The answer is (D)."),
        (r"\text{(C)}", r"\boxed{D}"),
    ],
    "near_misses": [
        ("0.28", "$28$"),
        ("5", "-5"),
        ("-5", "5"),
        ("(1, 2)", "$[1, 2]$"),
        ("(1,2)", r"\boxed{[1,2]}"),
        ("(1, 2)", "So the point is $(2, 1)$."),
        ("25", "250"),
        ("1000", "The total is 100."),
        (r"\sqrt{2}", "$2$"),
        (r"2\pi", "$2$"),
    ],
}


def _params(families: dict) -> list:
    return [pytest.param(gold, response, id=f"{family}-{i}")
            for family, pairs in families.items() for i, (gold, response) in enumerate(pairs)]


@pytest.mark.parametrize("gold, response", _params(EQUAL))
def test_must_be_equal(gold, response):
    result = grade(gold, response)
    assert result.correct, result


@pytest.mark.parametrize("gold, response", _params(DIFFER))
def test_must_differ(gold, response):
    result = grade(gold, response)
    assert not result.correct, result


def test_every_family_is_tested_both_ways_where_it_can_be():
    assert len(_params(EQUAL)) + len(_params(DIFFER)) >= 80
    assert set(EQUAL) - {"unboxed_plain", "sentence_ending"} <= set(DIFFER)
