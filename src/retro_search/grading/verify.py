"""Reference normalisation and answer equivalence for one item, in-process.

`normalize_reference` turns the reference answer of any supported benchmark into a gold string;
`grade` extracts a model's answer and decides equivalence with math-verify. Grading many items, with
hard per-item timeouts, is `retro_search.grading.pool.Grader`'s job; this module is what its worker
processes import (it is the forkserver preload), so it imports math_verify/sympy at import time.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from retro_search.grading.extract import (answer_tail, extract_answer, last_boxed,
                                          may_hold_answer, strip_math_delimiters)

__all__ = ["Grade", "grade", "grade_extracted", "grade_response", "grade_tail",
           "normalize_reference", "precheck", "DEFAULT_TIMEOUT_S"]

# math-verify's own per-call limit (seconds; it uses signal.alarm, so whole seconds only).
DEFAULT_TIMEOUT_S = 5


@dataclass(frozen=True)
class Grade:
    """Outcome of grading one response.

    correct: the extracted answer is equivalent to the gold answer.
    extracted: what `extract_answer` found in the response, or else the text math-verify's own
        extraction matched at the response's end (see `grade`); None when neither found anything
        (or a worker timed out while math-verify was still looking).
    error: None, "no_answer", "timeout", or a short "ExceptionType: message" from parsing/verifying
        (the comparison then fell back to string matching; `correct` reflects that fallback).
        Never a match (`correct` is False): "unparseable gold: <why>" (a gold that cannot be
        complete LaTeX, e.g. "\\frac{"; `extracted` is then None unless the caller extracted),
        "unparseable answer: <why>" (an extracted answer cut off, e.g. "10^{") and
        "invalid response: <type>, not a string" (a dict, list, number, bytes or None given as
        the response); `grade`'s docstring says what each check looks at.
    """

    correct: bool
    extracted: str | None
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# Reference normalisation

# "0,111" is no thousands separator (a decimal comma, or a list): it must not become 111.
_THOUSANDS_RE = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?")
# OlympiadBench multi-answers inside one string: "$69$,$84$", "$2^{-2 / 3}$, $8$".
_DOLLAR_LIST_RE = re.compile(r"\$[^$]+\$(?:\s*,\s*\$[^$]+\$)+")


def _normalize_text(s: str) -> str:
    s = s.strip()
    if "####" in s:
        # What follows the first "####", stripped (a regex `####\s*(.+?)\s*$` did the same in
        # time quadratic in a run of blanks).
        s = s.split("####", 1)[1].strip()
    elif _has_box(s):
        # Minerva: the reference is a full solution; its last box is the answer.
        s = last_boxed(s) or ""
    s = s.strip()
    # "$(-\infty, 0) \cup\{1\}$." (OlympiadBench): the period is sentence punctuation, not math.
    if s.endswith("$.") or s.endswith("$,"):
        s = s[:-1]
    if _DOLLAR_LIST_RE.fullmatch(s):
        s = ", ".join(part.strip() for part in re.findall(r"\$([^$]+)\$", s))
    s = strip_math_delimiters(s)
    if s.isdigit():
        s = s.lstrip("0") or "0"  # AIME "025"; only pure digit strings, never "0.5"
    elif _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return s.strip()


def _has_box(s: str) -> bool:
    return "\\boxed" in s or "\\fbox" in s


def normalize_reference(value: Any) -> str:
    """Turn a benchmark or trace reference answer into a gold string for `grade`.

    - int -> its digits; float -> "27" for 27.0 (AMC), otherwise Python's shortest repr ("6.17").
    - list/tuple (OlympiadBench `final_answer`) -> items normalised and joined with ", ".
    - str, stripped, then the first that applies:
      GSM8K rationale "... #### 72" -> "72"; a solution containing `\\boxed` (Minerva) -> its last
      boxed content. Then: one `$...$` (or `$$..$$`, `\\(..\\)`, `\\[..\\]`) around everything is
      removed (GaoKao), "$a$,$b$" -> "a, b", a trailing "." after a closing "$" is dropped;
      pure digit strings lose leading zeros ("025" -> "25", AIME); thousands separators are
      removed from plain numbers only ("1,000" -> "1000", but "1,2" and "0,111" stay).
      Currency and units stay: `grade` drops them from both sides.
    Raises ValueError for None, empty strings/lists, NaN/inf, and values of other types.
    """
    if value is None:
        raise ValueError("reference answer is None")
    if isinstance(value, bool):
        raise ValueError(f"reference answer is a bool ({value!r}); expected a number or string")
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f):
            raise ValueError(f"reference answer is not a finite number: {value!r}")
        return str(int(f)) if f.is_integer() else repr(f)
    if isinstance(value, (list, tuple)):
        parts = [normalize_reference(v) for v in value]
        if not parts:
            raise ValueError("reference answer is an empty list")
        return ", ".join(parts)
    if isinstance(value, str):
        s = _normalize_text(value)
        if not s:
            raise ValueError(f"reference answer is empty after normalisation: {value!r}")
        return s
    raise ValueError(f"unsupported reference answer type {type(value).__name__}: {value!r}")


# ---------------------------------------------------------------------------------------------
# Equivalence

_SPACING_RE = re.compile(r"\\left(?![A-Za-z])|\\right(?![A-Za-z])|\\[!,;:](?![A-Za-z])|\s+")
# `\{x \mid -2 \le x < 1\}` (GaoKao): math-verify reads the braces as a one-element set, but it can
# compare the bare condition with an interval, so the set-builder wrapper is dropped.
# One way to split the text (the condition is everything up to the final `\}`, stripped after):
# the form with blanks around a lazy condition, `\s*(.+?)\s*\\\}`, backtracked in time cubic in
# a run of blanks when there was no closing `\}` (5 s for 2,000 blanks in a model's answer).
_SET_BUILDER_RE = re.compile(r"\\\{\s*([A-Za-z])\s*(?:\||\\mid|:)(.*)\\\}", re.DOTALL)
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
# Words only, no LaTeX and no digits: "yes", "Monday", "Quadrant I".
_PLAIN_TEXT_RE = re.compile(r"[A-Za-z][A-Za-z' \-]*")
_WORD_RE = re.compile(r"[A-Za-z]{3,}")
_SCIENTIFIC_RE = re.compile(r"(-?\d+(?:\.\d*)?)[eE]([+-]?\d+)")
# Currency around a number: "\$18.90", "$18.90" (one `$`, no formula), "\text{\$}5", "€5",
# "18.90 dollars", "5 \text{ USD}". math-verify drops `\$` only inside a formula and does not
# know "dollars" as a unit, so golds like these never matched the plain number a model boxes.
_NUMBER = r"-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_CURRENCY_SIGN = r"(?:\\\$|\$|\\text\s*\{\s*\\\$\s*\}|[€£¥₹]|US\\?\$|USD)"
_CURRENCY_WORD = r"(?:dollars?|cents?|euros?|pounds?|yuan|rupees?|USD|EUR)"
_CURRENCY_RES = (
    re.compile(rf"(-?)\s*{_CURRENCY_SIGN}\s*({_NUMBER})"),
    re.compile(rf"({_NUMBER})\s*(?:{_CURRENCY_SIGN}|\\(?:text|mathrm)\s*\{{\s*~?\s*"
               rf"{_CURRENCY_WORD}\s*\}}|{_CURRENCY_WORD}\b)"),
)


def _canonical(s: str) -> str:
    """Cheap canonical form for the exact-match shortcut: spacing and sizing commands removed."""
    s = strip_math_delimiters(s.strip())
    s = _SPACING_RE.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return s.rstrip(".")


def _text_key(s: str) -> str:
    """Case-insensitive key for plain-text answers: `\\text{(C)}`, "(C)", "c" -> "c"."""
    s = strip_math_delimiters(s.strip())
    for _ in range(3):  # nested \text{\textbf{..}}
        s = _TEXT_CMD_RE.sub(r"\1", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip().lower()
    m = re.fullmatch(r"\(\s*([a-z])\s*\)", s)
    return m.group(1) if m else s


def _unset_builder(s: str) -> str:
    m = _SET_BUILDER_RE.fullmatch(s.strip())
    if m:
        condition = m.group(2).strip()
        if condition and m.group(1) in condition:
            return condition
    return s


def _is_plain_text(s: str) -> bool:
    """Words, not math: unwrapped, math-verify reads "Monday" as the product M*o*n*d*a*y (equal to
    "Dynamo"). One or two letters ("A", "mn") stay math: choice letters already work and "mn" is
    more likely a product than a word, except "no"."""
    s = s.strip()
    return bool(_PLAIN_TEXT_RE.fullmatch(s)) and (bool(_WORD_RE.search(s)) or s.lower() == "no")


def _scientific_to_latex(s: str) -> str:
    """Scientific notation "4.5e33" -> "4.5\\times10^{33}" (Minerva golds, repr of tiny floats):
    LaTeX parsing reads the e as Euler's number."""
    m = _SCIENTIFIC_RE.fullmatch(s.strip())
    return f"{m.group(1)}\\times10^{{{int(m.group(2))}}}" if m else s


def _without_currency(s: str) -> str:
    """A number with a currency sign or word -> the number ("\\$1,000" -> "1,000"); other text as
    is. Only where the whole string is that one amount: "$x$ dollars" or "2 \\$ + 3 \\$" stay."""
    t = s.strip()
    if t.count("$") - t.count("\\$") > 1:
        return s  # a formula in `$...$`, not a currency sign
    m = _CURRENCY_RES[0].fullmatch(t)
    if m:
        number = m.group(1) + m.group(2)
    else:
        m = _CURRENCY_RES[1].fullmatch(t)
        if not m:
            return s
        number = m.group(1)
    return number.replace(",", "") if _THOUSANDS_RE.fullmatch(number) else number


def _is_sympy(parsed: list) -> bool:
    return any(not isinstance(p, str) for p in parsed)


def _parse_gold(gold: str, timeout: int | None) -> list:
    gold = _without_currency(gold)
    if "$" in gold or _has_box(gold):
        return parse(gold, parsing_timeout=timeout, raise_on_error=True)
    if _is_plain_text(gold):
        return parse(f"$\\text{{{gold.strip()}}}$", parsing_timeout=timeout, raise_on_error=True)
    gold = _scientific_to_latex(_unset_builder(gold))
    return parse(f"${gold}$", parsing_timeout=timeout, raise_on_error=True)


def _parse_pred(pred: str, timeout: int | None) -> list:
    pred = _without_currency(pred.strip().rstrip(".,;").strip())
    if _is_plain_text(pred):
        parsed = parse(f"$\\text{{{pred}}}$", parsing_timeout=timeout, raise_on_error=True)
        if parsed:
            return parsed
    pred = _scientific_to_latex(_unset_builder(pred))
    # Re-boxing gives math-verify the form it is tuned for (the model wrote it in a box).
    parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout, raise_on_error=True)
    if not _is_sympy(parsed):
        retry = parse(f"${pred}$", parsing_timeout=timeout, raise_on_error=True)
        if _is_sympy(retry):
            return retry
    return parsed


def _summary(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 200 else text[:197] + "..."


def _math_equal(gold: str, pred: str | list, timeout: int | None) -> tuple[bool, str | None]:
    """math-verify equivalence, gold first; `pred` is an extracted answer, or what math-verify's
    `parse` already made of one. Returns (equal, error summary or None)."""
    try:
        gold_parsed = _parse_gold(gold, timeout)
        pred_parsed = pred if isinstance(pred, list) else _parse_pred(pred, timeout)
    except TimeoutException:
        return False, "timeout"
    except Exception as exc:  # noqa: BLE001 - grading must not raise on model text
        return False, _summary(exc)
    if not gold_parsed or not pred_parsed:
        return False, None
    try:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout,
                           raise_on_error=True)), None
    except TimeoutException:
        return False, "timeout"
    except Exception as exc:  # noqa: BLE001
        # raise_on_error=True stops at the first failing (gold, pred) pairing; the lenient pass
        # still tries the other pairings of the parse results.
        error = _summary(exc)
    try:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout)), error
    except Exception:  # noqa: BLE001
        return False, error


# ---------------------------------------------------------------------------------------------
# Golds and answers that cannot be complete LaTeX

_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
# An empty argument: `\sqrt{}`, `\frac{1}{}`, `x^{}`.
_EMPTY_ARGUMENT = re.compile(r"(?:\\[A-Za-z]+|[}^_])\s*\{\s*\}")
# What cannot end a complete expression: an operator, relation, script or opening bracket, or a
# command that needs an operand after it. (`\circ`, `\pi`, `\infty`, Greek letters end golds.)
_DANGLING_END = re.compile(
    r"(?:[=+\-*/<>^_(\[]|\\(?:[dtc]?frac|sqrt|[dt]?binom|text|textbf|textit|mathrm|mathbf|mbox|"
    r"operatorname|boxed|fbox|left|right|overline|underline|hat|bar|vec|tilde|dot|ddot|cdot|"
    r"times|div|pm|mp|leq?|geq?|neq?|lt|gt|in|notin|subseteq|subset|supseteq|supset|cup|cap|"
    r"setminus|to|rightarrow|Rightarrow|implies|iff|approx|equiv|sim|mid|land|lor|wedge|vee))\Z")
# The longest ending `_DANGLING_END` can match: only this much of the text's end is searched.
_END_CHARS = 16


def _incomplete(s: str, *, stray_closer: bool) -> str | None:
    """Why `s` cannot be complete LaTeX, or None: an unclosed `{` (or, with stray_closer, a `}`
    that closes nothing), an empty argument, or a dangling end (a lone backslash, an operator or
    script, a command without its operand). Escaped braces (`\\{1\\}`) do not count. Linear in
    len(s); no parsing. Every gold of the shipped benchmarks passes, including the nine
    math-verify cannot parse ("b > a > c", "E_{1},E_{2}", "\\$32,\\!348", ...)."""
    depth = 0
    for m in _BRACE_TOKEN.finditer(s):
        token = m.group()
        if token == "{":
            depth += 1
        elif token == "}":
            if depth == 0 and stray_closer:
                return "a '}' that closes nothing"
            depth = max(depth - 1, 0)
    if depth:
        return "an unclosed '{'"
    m = _EMPTY_ARGUMENT.search(s)
    if m:
        return f"an empty argument {m.group()!r}"
    end = s.rstrip()
    trailing_backslashes = len(end) - len(end.rstrip("\\"))
    if trailing_backslashes % 2:
        return "a lone backslash at the end"
    offset = max(len(end) - _END_CHARS, 0)
    m = _DANGLING_END.search(end, offset)
    if m and not (m.group().startswith("\\") and _escaped_at(end, m.start())):
        return f"it ends with {m.group()!r}"
    return None


def _escaped_at(s: str, i: int) -> bool:
    """Whether `s[i]` is escaped: preceded by an odd run of backslashes."""
    j = i
    while j > 0 and s[j - 1] == "\\":
        j -= 1
    return (i - j) % 2 == 1


@functools.lru_cache(maxsize=4096)  # a batch repeats its golds (n samples per problem)
def _gold_problem(gold: str) -> str | None:
    """Why `gold` cannot be graded against (the text for "unparseable gold: ..."), or None."""
    if _has_box(gold) and last_boxed(gold) is None:
        return "no complete, non-empty \\boxed"
    return _incomplete(gold, stray_closer=True)


def _timeout_for_this_thread(timeout: int | None) -> int | None:
    # math-verify's timeouts use signal.alarm, which raises ValueError outside the main thread.
    if threading.current_thread() is not threading.main_thread():
        return None
    return timeout


def grade_extracted(gold: str, extracted: str | None, *, timeout: int | None = DEFAULT_TIMEOUT_S,
                    on_math_verify: Callable[[str], None] | None = None) -> Grade:
    """`grade` once step 1 (`extract_answer`) found `extracted` in the response: the gold and
    answer checks, then steps 3 and 4. `on_math_verify(extracted)` is called just before
    math-verify's work starts, when the exact-match shortcut did not settle the item (a pool
    worker tells the parent the answer then, so an item that times out still reports it)."""
    problem = _gold_problem(gold)
    if problem:
        return Grade(False, extracted, f"unparseable gold: {problem}")
    if extracted is None or not extracted.strip():
        return Grade(False, extracted, "no_answer")
    problem = _incomplete(extracted, stray_closer=False)
    if problem:
        return Grade(False, extracted, f"unparseable answer: {problem}")
    if _canonical(gold) == _canonical(extracted):
        return Grade(True, extracted)
    if on_math_verify is not None:
        on_math_verify(extracted)
    equal, error = _math_equal(gold, extracted, _timeout_for_this_thread(timeout))
    if not equal and error != "timeout" and _text_key(gold) == _text_key(extracted):
        equal = True
    return Grade(equal, extracted, error)


# What math-verify's extraction looks for in a solution's end: LaTeX (`$..$`, `\[..\]`, ...) and
# plain expressions ("-5", "1,000.99", "28 percent"), its defaults, as open-r1's evaluation reads
# model answers.
_TAIL_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())
# `\$18.90` in running text: math-verify's plain-number pattern allows "$18.90" but not the
# escaped sign, and inside a formula it drops the sign anyway.
_ESCAPED_DOLLAR_BEFORE_NUMBER = re.compile(r"\\\$(?=\s?[\d.])")


def grade_tail(gold: str, tail: str | None, *, timeout: int | None = DEFAULT_TIMEOUT_S) -> Grade:
    """`grade` once step 1 found nothing: step 2, math-verify's extraction on
    `tail = answer_tail(response)`, then steps 3 and 4."""
    problem = _gold_problem(gold)
    if problem:
        return Grade(False, None, f"unparseable gold: {problem}")
    if tail is None or not tail.strip():
        return Grade(False, None, "no_answer")
    timeout = _timeout_for_this_thread(timeout)
    try:
        pred = parse(_ESCAPED_DOLLAR_BEFORE_NUMBER.sub("", tail), list(_TAIL_EXTRACTION),
                     parsing_timeout=timeout, raise_on_error=True)
    except TimeoutException:
        return Grade(False, None, "timeout")
    except Exception as exc:  # noqa: BLE001 - grading must not raise on model text
        return Grade(False, None, _summary(exc))
    if not _is_sympy(pred):
        return Grade(False, None, "no_answer")
    # parse() returns [value, the text it matched]; that text is what the model "answered".
    matched = pred[-1] if len(pred) > 1 and isinstance(pred[-1], str) else str(pred[0])
    extracted = matched.strip().rstrip(".,;:").strip() or str(pred[0])
    if _canonical(gold) == _canonical(extracted):
        return Grade(True, extracted)
    equal, error = _math_equal(gold, pred, timeout)
    if not equal and error != "timeout" and _text_key(gold) == _text_key(extracted):
        equal = True
    return Grade(equal, extracted, error)


def grade(gold: str, response: str) -> Grade:
    """Grade one model response against a normalised gold answer, in this process.

    Attempts, in order:
    1. Our extraction, `extract_answer`: the last complete `\\boxed{}`, else the answer after a
       phrase such as "The final answer is" (pure string work).
    2. Only when 1 found nothing, the response has no `\\boxed` at all and does not end inside
       an opened `<think>`: math-verify's own extraction (`parse` with its LaTeX and
       plain-expression patterns, as open-r1 evaluates) on the last 1,000 characters of the part
       after the reasoning (`answer_tail`): "-5", "Therefore $x \\geq 5$ is the solution.",
       "1,000.99€", "28 percent". It reads thousands separators, decimal commas ("2,74") and
       percent its own way; `Grade.extracted` is then the text it matched.
    3. With the answer found: an exact match after removing whitespace, `\\left`/`\\right`,
       `\\!`-style spacing and a trailing "."; then math-verify's `verify(gold, pred)` (gold parsed
       from "$gold$", plain-word golds as "$\\text{gold}$", an answer from 1 re-boxed; set-builder
       `\\{x | cond\\}` compared as `cond`, "4.5e33" as `4.5\\times10^{33}`).
    4. A case-insensitive comparison of the text with `\\text{}` wrappers and "(C)" parentheses
       removed.
    On both sides, before 3: a currency sign or word around a whole number is dropped ("\\$18.90",
    "18.90 dollars", "€5" -> the number). Units (`\\text{ cm}`, "cm", `^\\circ`, "degrees") and
    percent follow math-verify: units are dropped; "50\\%" equals 50 (and 50\\%) but not 0.5, and
    0.28 never equals 28. A decimal comma is read only by step 2 in running text ("2,74 $" is
    2.74); in a box or a gold a comma separates items (`\\boxed{2,74}` is not 2.74).

    Never a match, whatever the response (`precheck`, then `grade_extracted`):
    - a gold that cannot be complete LaTeX: "unparseable gold: <why>", for a `{` never closed or a
      `}` closing nothing (escaped `\\{ \\}` aside), an empty argument (`\\sqrt{}`), a lone
      backslash, an operator, script or opening bracket at the end ("x^", "x="), a command
      without its operand at the end (`\\frac`, `\\le`), or a box with no complete, non-empty
      content (`\\boxed{}`). Structural only: well-formed golds that math-verify cannot parse
      ("b > a > c") still match by steps 3 and 4, as before.
    - a response that is not a str (dict, list, number, bytes, None): "invalid response: <type>,
      not a string". Callers pass model text as it came; a JSON object is not an answer.
    - an answer found by step 1 that was cut off, by the same checks as golds but for a stray
      `}` ("The answer is 10^{", "\\frac{1}{2"): "unparseable answer: <why>" (math-verify
      would read these as 10 and 1/2).

    math-verify's own timeouts (5 s per parse/verify call) apply only in the main thread; in other
    threads they are disabled (signal.alarm cannot work there) and nothing bounds the time: use
    `Grader` for hard limits. Our string work (step 1, `answer_tail`, the checks) has no time
    limit here but is linear in the response's length (0.08 s for a 420 KB line of unclosed
    boxes; `benchmarks/grading_extraction.py`).
    Never raises for bad model text: failures give Grade(False, extracted, error) with error
    "no_answer", "timeout", one of the three above or an exception summary. Raises ValueError
    only for a gold that is not a non-empty str (a caller error, as `Grader` does).
    """
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"gold must be a non-empty normalised string, got {gold!r}")
    return grade_response(gold, response)


def precheck(gold: str, response: Any) -> Grade | None:
    """The Grade of an item settled without extraction or math-verify, or None: a gold that cannot
    be graded against ("unparseable gold: ..."), a response that is not a str ("invalid response:
    ..."), or a response with nothing either extraction step could start from ("no_answer").
    Linear in the lengths, no parsing: a grading pool runs it in the parent process."""
    problem = _gold_problem(gold)
    if problem:
        return Grade(False, None, f"unparseable gold: {problem}")
    if not isinstance(response, str):
        return Grade(False, None, f"invalid response: {type(response).__name__}, not a string")
    if not may_hold_answer(response):
        return Grade(False, None, "no_answer")
    return None


def grade_response(gold: str, response: Any, *,
                   on_math_verify: Callable[[str], None] | None = None) -> Grade:
    """`grade` without its check of the gold's type: `precheck`, step 1 (`extract_answer`), then
    `grade_extracted`, or step 2 and on (`grade_tail`). What a pool worker runs for one item, all
    of it under the item's deadline; `on_math_verify` as in `grade_extracted`."""
    settled = precheck(gold, response)
    if settled is not None:
        return settled
    try:
        extracted = extract_answer(response)
        tail = None if extracted is not None else answer_tail(response)
    except Exception as exc:  # noqa: BLE001
        return Grade(False, None, _summary(exc))
    if extracted is not None:
        return grade_extracted(gold, extracted, on_math_verify=on_math_verify)
    return grade_tail(gold, tail)
