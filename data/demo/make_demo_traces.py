"""Write `traces.jsonl`: 40 synthetic math problems with R1-style reasoning traces.

The data is synthetic and written by this project (no model produced it): problems are drawn from
templates with a fixed seed, answers are computed here in Python, and each trace is assembled from
hand-written step templates. Running this script regenerates `traces.jsonl` byte for byte:

    python data/demo/make_demo_traces.py            # writes data/demo/traces.jsonl
    python data/demo/make_demo_traces.py OUT.jsonl  # writes elsewhere

Layout (the `r1_response` preset): {"id", "problem", "answer", "response"}, where `response` is
"<think>\\n" + reasoning + "\\n</think>\\n\\n" + solution with a final `\\boxed{...}`.

What a trace looks like, so that Retro-Search has something to do on CPU:
- steps are short (one or two sentences) and separated by blank lines;
- 3 to 8 thoughts, each after the first opened by a transition word ("Wait,", "Alternatively,",
  "Hmm,", "Let me double-check", "But wait", "Hold on", "Let me verify");
- realistic detours: a wrong first path corrected by a "Wait," thought, an alternative method that
  confirms the answer, and redundant re-verifications after the answer is already clear;
- 4 of the 40 traces (10%) keep their slip and end with a wrong answer; nothing in the record says
  which (the grader finds out).
"""

from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

SEED = 20250405
NUM_TRACES = 40
NUM_WRONG = 4
OUTPUT = Path(__file__).with_name("traces.jsonl")
MIN_CHARS = 650  # reasoning characters below which a correct trace gets one more re-check


def num(x: int | Fraction) -> str:
    """A number as a short exact string: 66, 59.4, -3, or \\frac{7}{3} when it does not terminate."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    for places in range(1, 5):
        scaled = x * 10**places
        if scaled.denominator == 1:
            sign = "-" if x < 0 else ""
            digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
            return f"{sign}{digits[:-places]}.{digits[-places:]}"
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st, ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def signed(n: int) -> str:
    """ "+ 7" or "- 7": a term after another one."""
    return f"+ {n}" if n >= 0 else f"- {-n}"


@dataclass
class Draft:
    """One problem with the pieces its trace is assembled from (each a list of steps)."""

    problem: str
    answer: str
    asked: str                 # what the question asks for, e.g. "the 20th term"
    method: str                # one clause for the solution summary
    intro: list[str]           # restating the problem (first thought)
    solve: list[str]           # the direct solution, ending with the answer
    slip: list[str]            # a wrong first path (first thought), ending with `wrong`
    wrong: str                 # the answer the slip leads to
    correction: list[str]      # "Wait, ..." and the fix, ending with the answer
    alternative: list[str]     # "Alternatively, ..." another method, same answer
    check: list[str]           # "Let me double-check ..." substitution or inverse check
    musing: list[str]          # "Hmm, ..." a doubt about the reading; never states an answer
    slip_check: list[str]      # "Let me double-check ..." that repeats the slip (wrong traces)
    final_calc: str            # the last computation, e.g. "12 + 7 = 19"
    plausible_slip: bool = True  # False when the slip's result is absurd (no wrong trace from it)
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- problem templates

def arithmetic(rng: random.Random) -> Draft:
    a, b = rng.randint(13, 49), rng.choice([n for n in range(12, 30) if n % 10])
    d = rng.randint(3, 9)
    c, e = d * rng.randint(11, 30), rng.randint(5, 40)
    tens, ones = b // 10 * 10, b % 10
    q, ab = c // d, a * b
    ans = ab - q + e
    wrong_ones = a * ones + 10  # a carry added twice
    wrong = ab + 10 - q + e
    expr = f"{a} \\times {b} - {c} \\div {d} + {e}"
    return Draft(
        problem=f"Compute ${expr}$.", answer=num(ans), asked="the value of the expression",
        method="Doing the multiplication and division first, then adding and subtracting from left to right",
        intro=[f"Okay, so I need to compute {expr}.",
               "Multiplication and division come before addition and subtraction."],
        solve=[f"First, {a} \\times {tens} = {a * tens} and {a} \\times {ones} = {a * ones}, so {a} \\times {b} = {ab}.",
               f"Next, {c} \\div {d} = {q}.",
               f"Then {ab} - {q} = {ab - q}.",
               f"Finally {ab - q} + {e} = {ans}."],
        slip=[f"First, {a} \\times {tens} = {a * tens} and {a} \\times {ones} = {wrong_ones}, so the product is {ab + 10}.",
              f"Next, {c} \\div {d} = {q}, and {ab + 10} - {q} + {e} = {wrong}."],
        wrong=num(wrong),
        correction=[f"Wait, {a} \\times {ones} is {a * ones}, not {wrong_ones}. I added a carry twice.",
                    f"So {a} \\times {b} = {a * tens} + {a * ones} = {ab}.",
                    f"Then {ab} - {q} = {ab - q}, and {ab - q} + {e} = {ans}."],
        alternative=[f"Alternatively, multiply the other way round: {b} \\times {a} = {b} \\times {a // 10 * 10} + {b} \\times {a % 10} = {b * (a // 10 * 10)} + {b * (a % 10)} = {ab}.",
                     f"Same product, so the value is {ab} - {q} + {e} = {ans}."],
        check=[f"Let me double-check the division: {d} \\times {q} = {c}. Right.",
               f"And going backwards, {ans} - {e} + {q} = {ab}, which is the product. Consistent."],
        musing=["Hmm, does it matter whether I subtract before adding here?",
                "No, subtraction and addition have the same precedence and go left to right."],
        slip_check=[f"Let me double-check the partial products: {a} \\times {tens} = {a * tens}, {a} \\times {ones} = {wrong_ones}.",
                    f"Sum {ab + 10}, minus {q} plus {e} gives {wrong}. Yes."],
        final_calc=f"{ab - q} + {e} = {ans}")


def linear_equation(rng: random.Random) -> Draft:
    a = rng.randint(3, 9)
    c = rng.randint(1, a - 1)
    x = rng.choice([n for n in range(-6, 16) if n])
    b = rng.choice([n for n in range(-20, 21) if n])
    d = (a - c) * x + b
    k = a - c
    wrong = Fraction(d + b, k)
    eq = f"{a}x {signed(b)} = {c}x {signed(d)}"
    return Draft(
        problem=f"Solve for $x$: ${eq}$.", answer=num(x), asked="the value of x",
        method="Collecting the x terms on one side and the constants on the other",
        intro=[f"Okay, let's solve {eq}.",
               "I want all the x terms on the left and the constants on the right."],
        solve=[f"Subtract {c}x from both sides: {k}x {signed(b)} = {d}.",
               f"Subtract {b} from both sides: {k}x = {d} - ({b}) = {d - b}.",
               f"Divide by {k}: x = {d - b}/{k} = {x}."],
        slip=[f"Subtract {c}x from both sides: {k}x {signed(b)} = {d}.",
              f"Moving {b} across gives {k}x = {d + b}, so x = {num(wrong)}."],
        wrong=num(wrong),
        correction=[f"Wait, moving {b} to the other side flips its sign. It should be {d} - ({b}) = {d - b}, not {d + b}.",
                    f"So {k}x = {d - b} and x = {x}."],
        alternative=[f"Alternatively, move the x terms to the right instead: {b} - ({d}) = {c}x - {a}x, so {b - d} = {-k}x.",
                     f"Dividing by {-k} gives x = {x} again."],
        check=[f"Let me double-check by substituting x = {x}: the left side is {a}({x}) {signed(b)} = {a * x + b}.",
               f"The right side is {c}({x}) {signed(d)} = {c * x + d}. Both equal {a * x + b}, so it works."],
        musing=["Hmm, could this equation have no solution or infinitely many?",
                f"That only happens when the x coefficients match, and {a} is not {c}, so there is exactly one solution."],
        slip_check=[f"Let me double-check: {k}x = {d + b}, and dividing by {k} gives {num(wrong)}.",
                    "The division is right. Yes."],
        final_calc=f"{d - b} \\div {k} = {x}")


def percentage(rng: random.Random) -> Draft:
    while True:
        price = rng.choice([40, 60, 80, 120, 150, 200, 250, 320])
        p1, p2 = rng.choice([10, 15, 20, 25, 30, 40]), rng.choice([5, 8, 10, 12])
        disc = Fraction(price * p1, 100)
        sale = price - disc
        tax = sale * Fraction(p2, 100)
        final = sale + tax
        if (final * 100).denominator == 1:
            break
    wrong = price * Fraction(100 - p1 + p2, 100)
    m1, m2 = Fraction(100 - p1, 100), Fraction(100 + p2, 100)
    return Draft(
        problem=(f"A jacket costs ${price}. It is discounted by {p1}%, and then a {p2}% sales tax is "
                 "added to the discounted price. What is the final price in dollars?"),
        answer=num(final), asked="the final price in dollars",
        method="Applying the discount first and then the tax on the discounted price",
        intro=[f"Okay, the jacket starts at ${price}, gets {p1}% off, and then {p2}% tax on the reduced price."],
        solve=[f"The discount is {p1}% of {price}, which is {num(disc)}.",
               f"So the sale price is {price} - {num(disc)} = {num(sale)}.",
               f"The tax is {p2}% of {num(sale)}, which is {num(tax)}.",
               f"The final price is {num(sale)} + {num(tax)} = {num(final)}."],
        slip=[f"The discount takes off {p1}% and the tax adds {p2}%, so the net change is -{p1 - p2}%.",
              f"That gives {price} \\times {num(Fraction(100 - p1 + p2, 100))} = {num(wrong)}."],
        wrong=num(wrong),
        correction=[f"Wait, the tax is charged on the discounted price, not on ${price}, so I can't just add the percentages.",
                    f"The sale price is {price} - {num(disc)} = {num(sale)}.",
                    f"The tax on that is {num(tax)}, so the final price is {num(final)}."],
        alternative=[f"Alternatively, use multipliers: {price} \\times {num(m1)} \\times {num(m2)}.",
                     f"{price} \\times {num(m1)} = {num(sale)}, and {num(sale)} \\times {num(m2)} = {num(final)}. Same."],
        check=[f"Let me double-check the tax: {num(sale)} \\times {p2} = {num(sale * p2)}, and dividing by 100 gives {num(tax)}.",
               f"So the total is {num(final)} dollars."],
        musing=["Hmm, would it matter if the tax were applied before the discount?",
                "Multiplying by the two factors commutes, so the order would not change the final price."],
        slip_check=[f"Let me double-check: {p1}% off and {p2}% on is {p1 - p2}% off overall.",
                    f"{p1 - p2}% of {price} is {num(price - wrong)}, and {price} - {num(price - wrong)} = {num(wrong)}. Yes."],
        final_calc=f"{num(sale)} + {num(tax)} = {num(final)}")


def path_area(rng: random.Random) -> Draft:
    length, width = rng.randint(8, 30), rng.randint(5, 20)
    w = rng.choice([1, 2])
    outer_l, outer_w = length + 2 * w, width + 2 * w
    ans = outer_l * outer_w - length * width
    wrong = 2 * w * (length + width)
    return Draft(
        problem=(f"A rectangular garden is {length} m long and {width} m wide. A path {w} m wide runs "
                 "all the way around the outside of the garden. What is the area of the path in square meters?"),
        answer=num(ans), asked="the area of the path in square meters",
        method="Subtracting the garden's area from the area of the garden plus path",
        intro=[f"Okay, so the garden is {length} by {width}, and the path of width {w} surrounds it."],
        solve=[f"With the path, the outer rectangle is {length} + {2 * w} = {outer_l} by {width} + {2 * w} = {outer_w}.",
               f"Its area is {outer_l} \\times {outer_w} = {outer_l * outer_w}.",
               f"The garden itself is {length} \\times {width} = {length * width}.",
               f"So the path covers {outer_l * outer_w} - {length * width} = {ans} square meters."],
        slip=[f"The path is a strip of width {w} along each side: two strips of {length} \\times {w} and two of {width} \\times {w}.",
              f"That is {2 * length * w} + {2 * width * w} = {wrong} square meters."],
        wrong=num(wrong),
        correction=[f"Wait, the strips along the sides miss the four corner squares, each {w} \\times {w}.",
                    f"Adding them: {wrong} + 4 \\times {w * w} = {ans}."],
        alternative=[f"Alternatively, take the outer rectangle {outer_l} \\times {outer_w} = {outer_l * outer_w} and remove the garden, {length * width}.",
                     f"That leaves {ans}, the same."],
        check=[f"Let me double-check with strips: long sides {2 * length * w}, short sides {2 * width * w}, corners {4 * w * w}.",
               f"Total {2 * length * w + 2 * width * w + 4 * w * w} = {ans}. Good."],
        musing=["Hmm, does the path run inside or outside the garden?",
                "The problem says outside, so the garden keeps its full size."],
        slip_check=[f"Let me double-check: the long strips give {2 * length * w} and the short strips give {2 * width * w}.",
                    f"Together {wrong}. Yes."],
        final_calc=f"{outer_l * outer_w} - {length * width} = {ans}")


def triangle_area(rng: random.Random) -> Draft:
    base, height = rng.randint(4, 20), rng.randint(3, 18) * 2
    shift = rng.randint(1, base - 1)
    ans = Fraction(base * height, 2)
    verts = f"$(0, 0)$, $({base}, 0)$ and $({shift}, {height})$"
    return Draft(
        problem=f"What is the area of the triangle with vertices {verts}?",
        answer=num(ans), asked="the area of the triangle",
        method="Taking the side on the x-axis as the base and the third vertex's y-coordinate as the height",
        intro=[f"Okay, the triangle has vertices (0, 0), ({base}, 0) and ({shift}, {height}).",
               "Two of the vertices lie on the x-axis, which makes a natural base."],
        solve=[f"The base from (0, 0) to ({base}, 0) has length {base}.",
               f"The height is the distance from ({shift}, {height}) to the x-axis, which is {height}.",
               f"Area = (1/2) \\times {base} \\times {height} = {num(ans)}."],
        slip=[f"The base is {base} and the height is {height}.",
              f"So the area is {base} \\times {height} = {base * height}."],
        wrong=num(base * height),
        correction=["Wait, that is the area of the rectangle with that base and height. A triangle is half of it.",
                    f"So the area is {base * height} / 2 = {num(ans)}."],
        alternative=[f"Alternatively, use the shoelace formula: (1/2)|0 \\cdot 0 - {base} \\cdot 0 + {base} \\cdot {height} - {shift} \\cdot 0 + {shift} \\cdot 0 - 0 \\cdot {height}|.",
                     f"That is (1/2) \\times {base * height} = {num(ans)}."],
        check=[f"Let me double-check that the x-coordinate {shift} does not matter: moving the top vertex sideways keeps the height {height}.",
               f"So the area stays {num(ans)}."],
        musing=["Hmm, is the triangle degenerate?",
                "No, the third vertex is off the x-axis, so the three points are not collinear."],
        slip_check=[f"Let me double-check: base {base}, height {height}, and base times height is {base * height}.",
                    "Yes."],
        final_calc=f"{base * height} / 2 = {num(ans)}")


def arithmetic_sequence(rng: random.Random) -> Draft:
    t1, d, n = rng.randint(-5, 12), rng.randint(3, 9), rng.randint(15, 40)
    terms = ", ".join(str(t1 + i * d) for i in range(4))
    ans = t1 + (n - 1) * d
    wrong = t1 + n * d
    return Draft(
        problem=f"What is the {ordinal(n)} term of the arithmetic sequence ${terms}, \\ldots$?",
        answer=num(ans), asked=f"the {ordinal(n)} term",
        method=f"Using a_n = a_1 + (n - 1)d with a_1 = {t1} and d = {d}",
        intro=[f"Okay, the sequence is {terms}, and I need the {ordinal(n)} term."],
        solve=[f"The common difference is {t1 + d} - {t1} = {d}.",
               f"The nth term is a_1 + (n - 1)d, so a_{{{n}}} = {t1} + {n - 1} \\times {d}.",
               f"{n - 1} \\times {d} = {(n - 1) * d}, so the term is {t1} + {(n - 1) * d} = {ans}."],
        slip=[f"The common difference is {d}, so each term adds {d}.",
              f"After {n} steps, the term is {t1} + {n} \\times {d} = {wrong}."],
        wrong=num(wrong),
        correction=[f"Wait, the first term is already term 1, so reaching term {n} takes only {n - 1} steps.",
                    f"So it is {t1} + {n - 1} \\times {d} = {ans}."],
        alternative=[f"Alternatively, write the term as a_n = {d}n {signed(t1 - d)}.",
                     f"Then a_{{{n}}} = {d * n} {signed(t1 - d)} = {ans}."],
        check=[f"Let me double-check the formula on the second term: {t1} + 1 \\times {d} = {t1 + d}. Matches.",
               f"So the {ordinal(n)} term is {ans}."],
        musing=["Hmm, should the first term count as term 0 or term 1?",
                "The problem lists it first, so it is term 1."],
        slip_check=[f"Let me double-check: {n} \\times {d} = {n * d}, and {t1} + {n * d} = {wrong}.",
                    "Yes."],
        final_calc=f"{t1} + {(n - 1) * d} = {ans}")


def arithmetic_series(rng: random.Random) -> Draft:
    t1, d, n = rng.randint(1, 9), rng.randint(2, 6), rng.randint(12, 30)
    last = t1 + (n - 1) * d
    ans = n * (t1 + last) // 2 if n * (t1 + last) % 2 == 0 else Fraction(n * (t1 + last), 2)
    wrong_n = (last - t1) // d
    wrong = Fraction(wrong_n * (t1 + last), 2)
    return Draft(
        problem=f"Find the sum $ {t1} + {t1 + d} + {t1 + 2 * d} + \\cdots + {last} $.",
        answer=num(ans), asked="the sum",
        method="Counting the terms and multiplying their number by the average of the first and last term",
        intro=[f"Okay, this is an arithmetic series starting at {t1} with difference {d} and ending at {last}."],
        solve=[f"The number of terms is ({last} - {t1}) / {d} + 1 = {n}.",
               f"The average of the first and last terms is ({t1} + {last}) / 2 = {num(Fraction(t1 + last, 2))}.",
               f"So the sum is {n} \\times {num(Fraction(t1 + last, 2))} = {num(ans)}."],
        slip=[f"The number of terms is ({last} - {t1}) / {d} = {wrong_n}.",
              f"So the sum is {wrong_n} \\times ({t1} + {last}) / 2 = {num(wrong)}."],
        wrong=num(wrong),
        correction=[f"Wait, ({last} - {t1}) / {d} counts the gaps between terms, not the terms. There is one more term than gaps.",
                    f"So there are {n} terms and the sum is {n} \\times ({t1} + {last}) / 2 = {num(ans)}."],
        alternative=[f"Alternatively, pair the terms from both ends: each pair sums to {t1 + last}.",
                     f"There are {n} terms, so {n}/2 pairs, giving {num(Fraction(n, 2))} \\times {t1 + last} = {num(ans)}."],
        check=[f"Let me double-check the count: the kth term is {t1} + (k - 1){d}, and {t1} + {n - 1} \\times {d} = {last}, so k = {n}.",
               f"So the sum {num(ans)} stands."],
        musing=["Hmm, is the last term really part of the sequence, or does it overshoot?",
                f"{last} - {t1} = {last - t1} is a multiple of {d}, so it lands exactly on the sequence."],
        slip_check=[f"Let me double-check the count: ({last} - {t1}) / {d} = {wrong_n}.",
                    f"And {wrong_n} \\times {t1 + last} / 2 = {num(wrong)}. Yes."],
        final_calc=f"{n} \\times ({t1} + {last}) / 2 = {num(ans)}")


def combinations(rng: random.Random) -> Draft:
    n, k = rng.randint(6, 12), rng.choice([2, 3, 4])
    ans = math.comb(n, k)
    ordered = math.perm(n, k)
    product = " \\times ".join(str(n - i) for i in range(k))
    return Draft(
        problem=f"In how many ways can a committee of {k} be chosen from {n} students?",
        answer=num(ans), asked="the number of committees",
        method=f"Counting unordered selections, C({n}, {k})",
        intro=[f"Okay, I need to choose {k} students out of {n}, and a committee has no order."],
        solve=[f"The number of unordered choices is C({n}, {k}) = {n}! / ({k}! \\cdot {n - k}!).",
               f"That is ({product}) / {math.factorial(k)} = {ordered} / {math.factorial(k)} = {ans}."],
        slip=[f"For the first seat there are {n} choices, then {n - 1}, and so on.",
              f"So the count is {product} = {ordered}."],
        wrong=num(ordered),
        correction=[f"Wait, that counts ordered lists. The same committee appears in {k}! = {math.factorial(k)} different orders.",
                    f"So the number of committees is {ordered} / {math.factorial(k)} = {ans}."],
        alternative=[f"Alternatively, choose the {n - k} students who are left out: C({n}, {n - k}).",
                     f"By symmetry that is C({n}, {k}) = {ans} as well."],
        check=[f"Let me double-check with Pascal's rule: C({n}, {k}) = C({n - 1}, {k - 1}) + C({n - 1}, {k}) = {math.comb(n - 1, k - 1)} + {math.comb(n - 1, k)}.",
               f"That sums to {ans}. Good."],
        musing=["Hmm, do the committee members have roles, like chair and secretary?",
                "The problem does not mention roles, so order does not matter."],
        slip_check=[f"Let me double-check the product: {product} = {ordered}.",
                    "Yes, that is right."],
        final_calc=f"{ordered} / {math.factorial(k)} = {ans}")


def remainder(rng: random.Random) -> Draft:
    base, mod = rng.choice([(2, 5), (3, 7), (7, 5), (3, 10), (2, 7), (4, 9), (3, 5), (7, 10)])
    cycle = [pow(base, i, mod) for i in range(1, 13)]
    length = next(L for L in range(1, 13) if pow(base, L, mod) == 1)
    cycle = cycle[:length]
    k = rng.randint(25, 99)
    while cycle[k % length] == cycle[(k - 1) % length]:
        k += 1
    ans = pow(base, k, mod)
    wrong = cycle[k % length]
    listed = ", ".join(str(c) for c in cycle)
    return Draft(
        problem=f"What is the remainder when ${base}^{{{k}}}$ is divided by {mod}?",
        answer=num(ans), asked=f"the remainder of {base}^{k} modulo {mod}",
        method=f"Using that the powers of {base} modulo {mod} repeat with period {length}",
        intro=[f"Okay, {base}^{k} is huge, so I should look for a pattern in the powers of {base} modulo {mod}."],
        solve=[f"The powers {base}^1, {base}^2, ... leave remainders {listed}, and then {base}^{length} leaves 1 again.",
               f"So the remainders repeat every {length} powers.",
               f"{k} = {length} \\times {k // length} + {k % length}, so {base}^{k} leaves the same remainder as {base}^{k % length if k % length else length}.",
               f"That remainder is {ans}."],
        slip=[f"The remainders of {base}^1, {base}^2, ... are {listed}, repeating every {length}.",
              f"{k} mod {length} = {k % length}, so I take entry number {k % length + 1} of the list, which is {wrong}."],
        wrong=num(wrong),
        correction=[f"Wait, the list starts at {base}^1, so {base}^{k} corresponds to entry {(k - 1) % length + 1}, not {k % length + 1}.",
                    f"That entry is {ans}."],
        alternative=[f"Alternatively, reduce directly: {base}^{length} leaves 1, so {base}^{k} = ({base}^{length})^{{{k // length}}} \\cdot {base}^{k % length}.",
                     f"That leaves 1 \\cdot {pow(base, k % length, mod)}, so the remainder is {ans}."],
        check=[f"Let me double-check with a small case: {base}^{length + 1} should leave the same remainder as {base}^1 = {base % mod}.",
               f"{base}^{length + 1} = {base ** (length + 1)}, and {base ** (length + 1)} mod {mod} = {pow(base, length + 1, mod)}. It matches, so the answer is {ans}."],
        musing=["Hmm, is a remainder always between 0 and the divisor minus one?",
                "Yes, so every entry of the cycle is a valid remainder."],
        slip_check=[f"Let me double-check: {k} = {length} \\times {k // length} + {k % length}, and entry {k % length + 1} is {wrong}.",
                    "Yes."],
        final_calc=f"{base}^{k} \\equiv {ans} \\pmod{{{mod}}}")


def speed(rng: random.Random) -> Draft:
    v, hours, t2 = rng.randint(40, 90), rng.randint(2, 5), rng.randint(3, 8)
    t1 = Fraction(2 * hours + 1, 2)
    dist = v * t1
    ans = v * t2
    wrong_v = dist / hours
    wrong = wrong_v * t2
    return Draft(
        problem=(f"A train travels {num(dist)} km in {num(t1)} hours at a constant speed. "
                 f"How many kilometers does it travel in {t2} hours at the same speed?"),
        answer=num(ans), asked=f"the distance in {t2} hours",
        method="Finding the speed first and multiplying by the new time",
        intro=[f"Okay, {num(dist)} km in {num(t1)} hours, constant speed, and I want the distance for {t2} hours."],
        solve=[f"The speed is {num(dist)} / {num(t1)} = {v} km per hour.",
               f"In {t2} hours the train covers {v} \\times {t2} = {ans} km."],
        slip=[f"The speed is {num(dist)} divided by {hours}, which is {num(wrong_v)} km per hour.",
              f"In {t2} hours that is {num(wrong)} km."],
        wrong=num(wrong),
        correction=[f"Wait, the time is {num(t1)} hours, not {hours}. I dropped the half hour.",
                    f"The speed is {num(dist)} / {num(t1)} = {v} km per hour, so in {t2} hours it goes {ans} km."],
        alternative=[f"Alternatively, use a proportion: distance / time is fixed, so d = {num(dist)} \\times {t2} / {num(t1)}.",
                     f"{num(dist)} \\times {t2} = {num(dist * t2)}, and divided by {num(t1)} that is {ans}."],
        check=[f"Let me double-check the speed: {v} \\times {num(t1)} = {num(dist)}. Right.",
               f"So {ans} km."],
        musing=["Hmm, should I worry about the units?",
                "Both times are in hours and the distance is in km, so the units are consistent."],
        slip_check=[f"Let me double-check: {num(dist)} / {hours} = {num(wrong_v)}, and times {t2} is {num(wrong)}.",
                    "Yes."],
        final_calc=f"{v} \\times {t2} = {ans}")


def ages(rng: random.Random) -> Draft:
    while True:
        r, s = rng.choice([(3, 2), (4, 2), (4, 3), (5, 3), (5, 2)])
        bob = rng.randint(3, 15)
        years = Fraction(bob * (r - s), s - 1)
        if years.denominator == 1 and 2 <= years <= 30:
            y = int(years)
            break
    alice = r * bob
    return Draft(
        problem=(f"Alice is {r} times as old as Bob. In {y} years, Alice will be {s} times as old as Bob. "
                 "How old is Alice now?"),
        answer=num(alice), asked="Alice's age now",
        method="Writing Bob's age as b and solving one linear equation",
        intro=[f"Okay, let Bob be b years old now, so Alice is {r}b."],
        solve=[f"In {y} years Alice is {r}b + {y} and Bob is b + {y}.",
               f"So {r}b + {y} = {s}(b + {y}) = {s}b + {s * y}.",
               f"Then {r - s}b = {s * y - y}, so b = {bob}.",
               f"Alice is {r} \\times {bob} = {alice}."],
        slip=[f"In {y} years Alice is {r}b + {y}, and that should be {s} times Bob's age b.",
              f"So {r}b + {y} = {s}b, which gives {r - s}b = -{y}, so b = {num(Fraction(-y, r - s))}."],
        wrong=num(Fraction(-y, r - s)), plausible_slip=False,
        correction=[f"Wait, a negative age makes no sense. Bob also gets {y} years older, so the right side is {s}(b + {y}).",
                    f"Then {r}b + {y} = {s}b + {s * y}, so {r - s}b = {s * y - y} and b = {bob}.",
                    f"Alice is {r} \\times {bob} = {alice}."],
        alternative=[f"Alternatively, the age difference never changes: now it is {r}b - b = {r - 1}b, later it is {s}(b + {y}) - (b + {y}) = {s - 1}(b + {y}).",
                     f"So {r - 1}b = {s - 1}b + {(s - 1) * y}, b = {bob}, and Alice is {alice}."],
        check=[f"Let me double-check: now Alice {alice}, Bob {bob}, and {alice} = {r} \\times {bob}.",
               f"In {y} years: Alice {alice + y}, Bob {bob + y}, and {s} \\times {bob + y} = {s * (bob + y)}. It works."],
        musing=["Hmm, the question asks for Alice, not Bob.",
                "So I must not stop at b."],
        slip_check=[], final_calc=f"{r} \\times {bob} = {alice}")


def inclusion_exclusion(rng: random.Random) -> Draft:
    p, q = rng.choice([(3, 5), (2, 7), (4, 6), (3, 7), (5, 7), (4, 10), (6, 9)])
    n = rng.randint(60, 300)
    lcm = math.lcm(p, q)
    np_, nq, nb = n // p, n // q, n // lcm
    ans = np_ + nq - nb
    return Draft(
        problem=f"How many integers from 1 to {n} are divisible by {p} or by {q}?",
        answer=num(ans), asked="how many integers qualify",
        method="Inclusion-exclusion: multiples of each number, minus the common multiples counted twice",
        intro=[f"Okay, I need the count of numbers up to {n} divisible by {p} or {q}."],
        solve=[f"Multiples of {p}: floor({n}/{p}) = {np_}.",
               f"Multiples of {q}: floor({n}/{q}) = {nq}.",
               f"Numbers divisible by both are the multiples of lcm({p}, {q}) = {lcm}: floor({n}/{lcm}) = {nb}.",
               f"By inclusion-exclusion, {np_} + {nq} - {nb} = {ans}."],
        slip=[f"Multiples of {p}: {np_}. Multiples of {q}: {nq}.",
              f"So there are {np_} + {nq} = {np_ + nq} such numbers."],
        wrong=num(np_ + nq),
        correction=[f"Wait, numbers divisible by both {p} and {q} were counted twice. Those are the multiples of {lcm}.",
                    f"There are {nb} of them, so the count is {np_ + nq} - {nb} = {ans}."],
        alternative=[f"Alternatively, count the complement: numbers divisible by neither {p} nor {q}.",
                     f"That is {n} - {np_} - {nq} + {nb} = {n - ans}, so the answer is {n} - {n - ans} = {ans}."],
        check=[f"Let me double-check the overlap: lcm({p}, {q}) = {lcm}, and {lcm} \\times {nb} = {lcm * nb} \\le {n} < {lcm * (nb + 1)}.",
               f"So {nb} is right, and the total is {ans}."],
        musing=[f"Hmm, are {p} and {q} coprime? That decides whether the overlap is multiples of {p * q} or something smaller.",
                f"The overlap is governed by their least common multiple, {lcm}."],
        slip_check=[f"Let me double-check: {n}/{p} rounds down to {np_} and {n}/{q} to {nq}.",
                    f"Their sum is {np_ + nq}. Yes."],
        final_calc=f"{np_} + {nq} - {nb} = {ans}")


def buses(rng: random.Random) -> Draft:
    p, q = rng.choice([(12, 18), (8, 12), (10, 15), (6, 16), (9, 12), (14, 21), (15, 20)])
    lcm = math.lcm(p, q)
    g = math.gcd(p, q)
    return Draft(
        problem=(f"Bus A leaves the station every {p} minutes and bus B every {q} minutes. Both leave "
                 "together at 8:00. After how many minutes will they next leave together?"),
        answer=num(lcm), asked="the number of minutes until they next leave together",
        method=f"Taking the least common multiple of {p} and {q}",
        intro=[f"Okay, bus A departs at multiples of {p} minutes, bus B at multiples of {q}."],
        solve=[f"They leave together at common multiples of {p} and {q}; the first one is the lcm.",
               f"gcd({p}, {q}) = {g}, so lcm = {p} \\times {q} / {g} = {p * q} / {g} = {lcm}."],
        slip=[f"They coincide when both cycles finish at the same time, which is {p} \\times {q} minutes.",
              f"That is {p * q} minutes."],
        wrong=num(p * q),
        correction=[f"Wait, {p * q} is a common multiple but not necessarily the least. {p} and {q} share the factor {g}.",
                    f"The least common multiple is {p * q} / {g} = {lcm}."],
        alternative=[f"Alternatively, list bus A's times: {', '.join(str(p * i) for i in range(1, lcm // p + 1))}.",
                     f"The first of these divisible by {q} is {lcm}."],
        check=[f"Let me double-check: {lcm} / {p} = {lcm // p} and {lcm} / {q} = {lcm // q}, both whole.",
               f"And no smaller number works because {lcm // p} and {lcm // q} share no factor. So {lcm}."],
        musing=["Hmm, does 8:00 itself count as the next time?",
                "No, the question wants the next departure after 8:00."],
        slip_check=[f"Let me double-check: {p} \\times {q} = {p * q}.",
                    "Yes, the arithmetic is right."],
        final_calc=f"{p * q} / {g} = {lcm}")


def geometric_sequence(rng: random.Random) -> Draft:
    t1, r, n = rng.randint(1, 5), rng.choice([2, 3]), rng.randint(5, 9)
    ans = t1 * r ** (n - 1)
    wrong = t1 * r**n
    terms = ", ".join(str(t1 * r**i) for i in range(4))
    return Draft(
        problem=f"What is the {ordinal(n)} term of the geometric sequence ${terms}, \\ldots$?",
        answer=num(ans), asked=f"the {ordinal(n)} term",
        method=f"Using a_n = a_1 r^(n - 1) with a_1 = {t1} and r = {r}",
        intro=[f"Okay, the sequence {terms} multiplies by the same ratio each time."],
        solve=[f"The ratio is {t1 * r} / {t1} = {r}.",
               f"The nth term is {t1} \\times {r}^{{n-1}}, so the {ordinal(n)} term is {t1} \\times {r}^{n - 1}.",
               f"{r}^{n - 1} = {r ** (n - 1)}, and {t1} \\times {r ** (n - 1)} = {ans}."],
        slip=[f"The ratio is {r}, so the {ordinal(n)} term is {t1} \\times {r}^{n}.",
              f"{r}^{n} = {r ** n}, so the term is {wrong}."],
        wrong=num(wrong),
        correction=[f"Wait, the first term has exponent 0, so the {ordinal(n)} term has exponent {n - 1}, not {n}.",
                    f"So it is {t1} \\times {r ** (n - 1)} = {ans}."],
        alternative=[f"Alternatively, keep multiplying: {', '.join(str(t1 * r**i) for i in range(n))}.",
                     f"The {ordinal(n)} entry is {ans}."],
        check=[f"Let me double-check the formula on the third term: {t1} \\times {r}^2 = {t1 * r * r}. Matches.",
               f"So the answer is {ans}."],
        musing=["Hmm, could this be an arithmetic sequence instead?",
                f"The differences {t1 * r - t1} and {t1 * r * r - t1 * r} are not equal, so no."],
        slip_check=[f"Let me double-check: {r}^{n} = {r ** n}, times {t1} is {wrong}.",
                    "Yes."],
        final_calc=f"{t1} \\times {r ** (n - 1)} = {ans}")


def missing_number(rng: random.Random) -> Draft:
    k, mean = rng.randint(4, 7), rng.randint(12, 40)
    given = [rng.randint(mean - 10, mean + 12) for _ in range(k - 1)]
    total = k * mean
    if total - sum(given) <= 0:
        given[0] -= sum(given) - total + rng.randint(3, 9)
    ans = total - sum(given)
    listed = ", ".join(map(str, given))
    wrong_sum = sum(given) + 10
    return Draft(
        problem=f"The average of {k} numbers is {mean}. {k - 1} of them are {listed}. What is the remaining number?",
        answer=num(ans), asked="the remaining number",
        method="Multiplying the average by the count to get the total and subtracting the known numbers",
        intro=[f"Okay, {k} numbers with average {mean}, and I know {k - 1} of them."],
        solve=[f"The total of all {k} numbers is {k} \\times {mean} = {total}.",
               f"The known ones add up to {' + '.join(map(str, given))} = {sum(given)}.",
               f"So the missing number is {total} - {sum(given)} = {ans}."],
        slip=[f"The total is {k} \\times {mean} = {total}.",
              f"The known numbers add up to {wrong_sum}, so the missing one is {total} - {wrong_sum} = {total - wrong_sum}."],
        wrong=num(total - wrong_sum),
        correction=[f"Wait, let me add the known numbers again: {' + '.join(map(str, given))} = {sum(given)}, not {wrong_sum}.",
                    f"So the missing number is {total} - {sum(given)} = {ans}."],
        alternative=[f"Alternatively, use deviations from the mean: {', '.join(signed(g - mean).replace(' ', '') for g in given)}.",
                     f"They sum to {sum(given) - k * mean + mean}, so the missing number is {mean} - ({sum(given) - k * mean + mean}) = {ans}."],
        check=[f"Let me double-check: {sum(given)} + {ans} = {total}, and {total} / {k} = {mean}.",
               "That is the stated average."],
        musing=["Hmm, could the missing number be negative?",
                "Nothing forbids it, but the arithmetic decides, so I just compute it."],
        slip_check=[f"Let me double-check the total: {k} \\times {mean} = {total}. Right.",
                    f"And {total} - {wrong_sum} = {total - wrong_sum}. Yes."],
        final_calc=f"{total} - {sum(given)} = {ans}")


TEMPLATES = (arithmetic, linear_equation, percentage, path_area, triangle_area, arithmetic_sequence,
             arithmetic_series, combinations, remainder, speed, ages, inclusion_exclusion, buses,
             geometric_sequence, missing_number)


# ----------------------------------------------------------------------------- trace assembly

def redundant(draft: Draft, answer: str) -> list[str]:
    """An over-thinking thought: re-checks what is already settled."""
    return [f"But wait, did I answer exactly what was asked? The problem wants {draft.asked}.",
            f"That is {answer}, which I already found. So the answer is {answer}."]


def hold_on(draft: Draft, answer: str) -> list[str]:
    return [f"Hold on, is {answer} in the form the problem expects?",
            "It is a single number with nothing left to simplify, so yes."]


def verify_again(draft: Draft, answer: str) -> list[str]:
    return [f"Let me verify the last computation once more: {draft.final_calc}.",
            f"Yes, {answer}."]


def plan(draft: Draft) -> str:
    return f"My plan: {draft.method[0].lower()}{draft.method[1:]}."


def close(thoughts: list[list[str]], answer: str) -> list[list[str]]:
    """End the last thought with the answer unless its last step already states it."""
    if not thoughts[-1][-1].rstrip(".").endswith(answer):
        thoughts[-1] = thoughts[-1] + [f"So the final answer is {answer}."]
    return thoughts


def correct_trace(draft: Draft, rng: random.Random) -> list[list[str]]:
    """Thoughts of a trace that reaches the right answer, with 3 to 8 thoughts."""
    thoughts: list[list[str]] = []
    if rng.random() < 0.65:  # a wrong first path, corrected by a "Wait," thought
        thoughts.append(draft.intro + draft.slip)
        thoughts.append(draft.correction + ["That makes more sense."])
    else:
        thoughts.append(draft.intro + [plan(draft)] + draft.solve)
    extras = [draft.alternative, draft.check, draft.musing,
              redundant(draft, draft.answer), hold_on(draft, draft.answer),
              verify_again(draft, draft.answer)]
    wanted = rng.randint(max(3, len(thoughts) + 1), 8) - len(thoughts)
    chosen = sorted(rng.sample(range(len(extras)), wanted))
    if rng.random() < 0.3:  # sometimes the doubt comes before the checks
        rng.shuffle(chosen)
    thoughts += [extras[i] for i in chosen]
    unused = [extras[i] for i in range(len(extras)) if i not in chosen]
    while _chars(thoughts) < MIN_CHARS and unused and len(thoughts) < 8:
        thoughts.append(unused.pop(0))  # keep every trace long enough to have something to cut
    return close(thoughts, draft.answer)


def _chars(thoughts: list[list[str]]) -> int:
    return sum(len(step) + 2 for thought in thoughts for step in thought)


def wrong_trace(draft: Draft, rng: random.Random) -> list[list[str]]:
    """Thoughts of a trace that keeps its slip and ends with the wrong answer."""
    thoughts = [draft.intro + [plan(draft)] + draft.slip, draft.musing, draft.slip_check]
    if rng.random() < 0.5:
        thoughts.append(redundant(draft, draft.wrong))
    return close(thoughts, draft.wrong)


def response(draft: Draft, thoughts: list[list[str]], final: str) -> str:
    reasoning = "\n\n".join(step for thought in thoughts for step in thought)
    solution = (f"{draft.method}, we find that {draft.asked} is {final}.\n\n"
                f"**Final Answer**\n\\[\n\\boxed{{{final}}}\n\\]")
    return f"<think>\n{reasoning}\n</think>\n\n{solution}"


def build_records(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    kinds: list = []
    while len(kinds) < NUM_TRACES:  # every template before any repeats, order shuffled per round
        round_ = list(TEMPLATES)
        rng.shuffle(round_)
        kinds += round_
    drafts = [kind(rng) for kind in kinds[:NUM_TRACES]]
    candidates = [i for i, d in enumerate(drafts) if d.plausible_slip and d.wrong != d.answer]
    wrong_ids = set(rng.sample(candidates, NUM_WRONG))
    records = []
    for i, draft in enumerate(drafts):
        if i in wrong_ids:
            thoughts, final = wrong_trace(draft, rng), draft.wrong
        else:
            thoughts, final = correct_trace(draft, rng), draft.answer
        steps = sum(len(thought) for thought in thoughts)
        assert 3 <= len(thoughts) <= 8 and 8 <= steps <= 30, (i, len(thoughts), steps)
        records.append({"id": f"demo-{i + 1:03d}", "problem": draft.problem,
                        "answer": draft.answer, "response": response(draft, thoughts, final)})
    return records


def main(argv: list[str]) -> int:
    output = Path(argv[0]) if argv else OUTPUT
    records = build_records()
    with open(output, "w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} traces -> {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
