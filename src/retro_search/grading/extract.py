"""Find the final answer in a model's solution text.

Pure string work (no sympy), linear in the length of the text: every scan reads each character a
bounded number of times, whatever the text holds (thousands of unclosed `\\boxed{`, long runs of
`$` or `\\(`, a phrase repeated on a 400 KB line). A grading pool still runs it in its workers,
under the per-item timeout, like the rest of the grading (`pool.Grader`).
When `extract_answer` finds nothing, `answer_tail` picks the part of the solution that math-verify's
own extraction then reads (`verify.grade_tail`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator

__all__ = ["TAIL_CHARS", "answer_tail", "extract_answer", "last_boxed", "may_hold_answer",
           "strip_math_delimiters"]

# `\boxed` and `\fbox` both mark answers (MATH solutions use both). The look-ahead keeps
# `\boxedfoo` (another command) from matching.
_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ASCII_LETTERS = frozenset(string.ascii_letters)
# What a brace scan looks at: a backslash and the character it escapes, or a brace.
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)
_BLANKS = re.compile(r"[ \t]*")
_SPACE_ARGUMENT = re.compile(r"[^\s$]+")

# Fallback phrases, tried in this order; within one phrase the LAST occurrence wins, because
# reasoning traces restate candidate answers before the final one.
_FALLBACKS = (
    re.compile(r"final\s+answer\s+is\s*:?", re.IGNORECASE),
    re.compile(r"answer\s+is\s*:?", re.IGNORECASE),
    re.compile(r"answer\s*:", re.IGNORECASE),
    re.compile(r"####"),
)

_MATH_SPANS = (
    re.compile(r"^\$\$(.+?)\$\$", re.DOTALL),
    re.compile(r"^\$(.+?)\$", re.DOTALL),
    re.compile(r"^\\\((.+?)\\\)", re.DOTALL),
    re.compile(r"^\\\[(.+?)\\\]", re.DOTALL),
)

# "72 dollars", "15 apples": a number followed by plain words. Math-verify would read the words as a
# product of symbols, so the fallback keeps only the number.
_NUMBER_THEN_WORDS = re.compile(r"^(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s+[A-Za-z][A-Za-z ]*$")

_MAX_FALLBACK_CHARS = 300

# A phrase followed by a sentence rather than a value ("Answer: The largest $n$ is 34"). Re-boxed,
# that sentence reads as a product of letters; math-verify's own extraction finds the 34 in it.
_MATH_SPAN_OR_COMMAND = re.compile(r"\$[^$]*\$|\\\(.*?\\\)|\\[A-Za-z]+(?:\s*\{[^{}]*\})?")
_CONNECTIVES = {"and", "or"}

# math-verify's own extraction reads at most this many characters from the end of a solution: the
# final answer sits there, and the bound keeps a 30,000-character trace from costing 30 times the
# regex and sympy work of a short one (and from crossing the pipe to a pool worker whole).
TAIL_CHARS = 1000
# Something math-verify could extract: a digit (its expression patterns), or a LaTeX opener
# (`$`, `\(`, `\[`, and its bare `[...]` pattern).
_EXTRACTABLE = re.compile(r"[\d$\[]|\\\(")
# Where either extraction step can start: a box command, a fallback phrase (each holds "answer" or
# "####"), or what `_EXTRACTABLE` looks for in the tail.
_ANSWER_CUE = re.compile(r"\\(?:boxed|fbox)|answer|####|[\d$\[]|\\\(", re.IGNORECASE)
# Reasoning markers (R1, OpenThoughts). Unfinished reasoning has no final part to read: its last
# number is whatever the model was computing when it stopped.
_THINK_MARKERS = (("<think>", "</think>"), ("<|begin_of_thought|>", "<|end_of_thought|>"))


def _braced(text: str, start: int, stop: int | None = None) -> tuple[str, int] | None:
    """Content of the brace group opening at `text[start] == "{"`, and the index after it.

    Escaped characters (`\\{`, `\\}`, `\\\\`) are skipped so set braces do not unbalance the group.
    None when the group does not close before `stop` (default: the end of the text; a truncated
    generation). The scan visits only backslash pairs and braces (`_BRACE_TOKEN`), in C.
    """
    depth = 0
    for m in _BRACE_TOKEN.finditer(text, start, len(text) if stop is None else stop):
        token = m.group()
        if token == "{":
            depth += 1
        elif token == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:m.start()], m.end()
    return None


def _box_commands_reversed(text: str) -> Iterator[int]:
    """The end of each `\\boxed`/`\\fbox` command that `_BOX_RE` matches, last one first, found
    with `str.rfind` (no two occurrences overlap: each starts with the only backslash in it)."""
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    while boxed >= 0 or fbox >= 0:
        if boxed > fbox:
            end = boxed + len("\\boxed")
            boxed = text.rfind("\\boxed", 0, boxed)
        else:
            end = fbox + len("\\fbox")
            fbox = text.rfind("\\fbox", 0, fbox)
        if end < len(text) and text[end] in _ASCII_LETTERS:
            continue  # `\boxedfoo`: another command
        yield end


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty `\\boxed`/`\\fbox` in `text` (stripped), or None.

    An unclosed or empty last box is skipped in favour of the previous complete one.

    Linear in len(text): boxes are tried from the last one back, and the scan for the group of an
    earlier box stops at the opening brace of the nearest later box found unclosed. That is exact:
    both braces follow a command name or blanks, so both scans see the same characters escaped from
    there on, and a group still open when it reaches that later brace stays open to the end (the
    later group never comes back to its own opening depth). Without the bound, n unclosed boxes
    cost n scans to the end of the text (20,000 of them took minutes).
    """
    n = len(text)
    stop = n
    for end in _box_commands_reversed(text):
        i = _BLANKS.match(text, end).end()
        if i >= n:
            continue
        if text[i] == "{":
            group = _braced(text, i, stop)
            if group is None:
                stop = i
                continue
            content = group[0]
        elif i == end:
            continue  # `\boxedx` never happens; a letter here would be another command name
        else:
            # Space form, `\boxed 5`: the argument runs to the next whitespace or math delimiter.
            arg = _SPACE_ARGUMENT.match(text, i)
            content = arg.group() if arg else None
        if content is not None and content.strip():
            return content.strip()
    return None


def strip_math_delimiters(s: str) -> str:
    """Remove one pair of `$..$`, `$$..$$`, `\\(..\\)` or `\\[..\\]` wrapping the whole string."""
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            inner = s[len(left):-len(right)]
            if "$" not in inner:
                return inner.strip()
    return s


def _fallback_value(rest: str) -> str | None:
    """Answer text that follows a fallback phrase: its first math span, else its first sentence."""
    rest = rest.lstrip(" \t*:_").lstrip()
    if not rest:
        return None
    for span in _MATH_SPANS:
        m = span.match(rest)
        if m:
            value = m.group(1).strip()
            return value or None
    line = rest.split("\n", 1)[0]
    # A sentence ends at a period followed by a space (not the point in "6.17").
    line = re.split(r"\.(?:\s|$)", line, maxsplit=1)[0]
    value = line.strip().strip("*_").strip().rstrip(".,;").strip()
    if not value or len(value) > _MAX_FALLBACK_CHARS:
        return None
    value = strip_math_delimiters(value)
    m = _NUMBER_THEN_WORDS.match(value)
    if m:
        return m.group(1)
    if _is_prose(value):
        return None
    return value or None


def _is_prose(value: str) -> bool:
    """Words around math: two or more words (besides "and"/"or") outside formulas and LaTeX
    commands, and a digit or a formula. "Evelyn" and "5 \\text{ cm}" are values; "The largest $n$
    is 34" is not."""
    if not re.search(r"\d|\$|\\\(", value):
        return False
    bare = _MATH_SPAN_OR_COMMAND.sub(" ", value)
    words = [w for w in re.findall(r"[A-Za-z]{2,}", bare) if w.lower() not in _CONNECTIVES]
    return len(words) >= 2


def extract_answer(text: str) -> str | None:
    """The final answer in a model's solution text, or None when there is none.

    1. The content of the LAST complete `\\boxed{...}` / `\\fbox{...}` (also the space form
       `\\boxed 5`), braces balanced, nested braces kept: `\\boxed{\\frac{a}{b}}` -> `\\frac{a}{b}`.
       Boxes inside the reasoning count too; the last one wins.
    Only when there is no usable box, these phrasings are tried in order, each at its LAST
    occurrence in the text:
    2. "final answer is X"  (also "final answer is: X")
    3. "answer is X"
    4. "Answer: X"          (also "**Answer:** X")
    5. "#### X"             (GSM8K style)
    X is the first `$...$` / `\\(...\\)` / `\\[...\\]` span right after the phrase if there is one,
    otherwise the rest of that line up to the end of the sentence (a `.` followed by a space),
    without markdown emphasis or trailing punctuation. A number followed only by words ("72
    dollars") gives the number. A sentence of words around math ("The largest $n$ is 34": two or
    more words besides "and"/"or", and a digit or formula) and values longer than 300 characters
    are rejected, and the next phrase is tried.
    None when nothing is found; `answer_tail` then gives what math-verify's own extraction reads.
    """
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for phrase in _FALLBACKS:
        matches = list(phrase.finditer(text))
        if matches:
            value = _fallback_value(text[matches[-1].end():])
            if value is not None:
                return value
    return None


def answer_tail(text: str) -> str | None:
    """The end of a solution in which `extract_answer` found nothing, for math-verify's extraction.

    The solution part is read: the text after the last reasoning closer (`</think>`,
    `<|end_of_thought|>`) when there is one. Of that, the last TAIL_CHARS (1,000) characters; when
    that cuts the text, the tail starts after the first line break in its first half, if any, and
    after its first `$` when it holds an odd number of unescaped `$` (an inline formula cut in two
    would pair every later `$` wrongly).
    None, without parsing anything: when the text has a `\\boxed`/`\\fbox` (all of them empty or
    unclosed: a truncated answer is no answer), opens its reasoning (`<think>`,
    `<|begin_of_thought|>`) and never closes it, or the tail holds no digit and no `$`, `\\(` or
    `[` (nothing math-verify could extract).
    """
    if not text or _BOX_RE.search(text):
        return None
    for opener, closer in _THINK_MARKERS:
        end = text.rfind(closer)
        if end >= 0:
            text = text[end + len(closer):]
        elif opener in text:
            return None
    tail = text[-TAIL_CHARS:]
    if len(text) > TAIL_CHARS:
        newline = tail.find("\n", 0, TAIL_CHARS // 2)
        if newline >= 0:
            tail = tail[newline + 1:]
        if len(re.findall(r"(?<!\\)\$", tail)) % 2:
            tail = tail[re.search(r"(?<!\\)\$", tail).end():]
    tail = tail.strip()
    return tail if _EXTRACTABLE.search(tail) else None


def may_hold_answer(text: str) -> bool:
    """False only where `extract_answer(text)` and `answer_tail(text)` are both certainly None:
    the text holds no box command, no fallback phrase and nothing math-verify could extract
    ("I give up.", ""). One regex search, so a grading pool settles such responses without
    sending them to a worker."""
    return bool(text) and _ANSWER_CUE.search(text) is not None
