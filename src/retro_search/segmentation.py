"""Split a reasoning trace into steps and thoughts (ALGORITHM.md, "Vocabulary").

- A *step* is a chunk of the reasoning separated by a blank line ("\\n\\n"); empty chunks are dropped.
- A step whose text starts with a *transition keyword* (case-insensitive, after leading whitespace
  and markdown such as `**`, `#`, `>`, `-`, not followed by a word character) opens a new
  *thought*; `keyword_regex` is that rule, shared with the ban in `engines.banned_words`.
- A *thought* is a maximal run of steps that begins at the start of the trace or at such a step.
- *Boundary* i (1-based) lies between thought i and thought i + 1; m thoughts have m - 1 boundaries.

Everything here counts steps and characters, never tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

STEP_SEPARATOR = "\n\n"

# [choice] ALGORITHM.md's default list; the paper names only "alternatively" and "wait".
DEFAULT_KEYWORDS: tuple[str, ...] = (
    "Alternatively",
    "Wait",
    "But wait",
    "Hmm",
    "Hold on",
    "On second thought",
    "Another approach",
    "Let me try another",
    "Let me double-check",
    "Let me verify",
    "Let me check",
)

# Markdown that may precede the first word of a step: bold/italic markers, headings, quotes, bullets.
_LEADING_MARKUP = r"[\s*_#>\-]*"
KEYWORD_FLAGS = re.IGNORECASE


def keyword_regex(keywords: Sequence[str]) -> str:
    """The one matching rule for transition keywords, as regex source (compile with
    `KEYWORD_FLAGS`): any keyword, case-insensitive, not followed by a word character ("Wait,"
    and "WAIT" match; "Waiting" and "Hmmm" do not). Longest first, so "But wait" wins over a
    shorter overlapping keyword. Segmentation anchors it at the start of a step; the ban
    (`engines.banned_words`) looks for it at every word start of a token."""
    if not keywords:
        return r"(?!x)x"  # matches nothing: no keyword, one thought
    alternatives = "|".join(re.escape(k.strip()) for k in sorted(keywords, key=len, reverse=True))
    return rf"(?:{alternatives})(?!\w)"


@lru_cache(maxsize=32)
def _keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(rf"^{_LEADING_MARKUP}{keyword_regex(keywords)}", KEYWORD_FLAGS)


def split_steps(reasoning: str) -> list[str]:
    """The steps of a reasoning text, in order. Newlines around a step are removed; other
    whitespace is kept so that `join_steps(split_steps(t))` reproduces the text up to blank lines."""
    steps = []
    for chunk in reasoning.split(STEP_SEPARATOR):
        chunk = chunk.strip("\n")
        if chunk.strip():
            steps.append(chunk)
    return steps


def join_steps(steps: Sequence[str]) -> str:
    return STEP_SEPARATOR.join(steps)


def opens_thought(step: str, keywords: Sequence[str] = DEFAULT_KEYWORDS) -> bool:
    """Whether `step` starts with a transition keyword, i.e. opens a new thought."""
    return bool(_keyword_pattern(tuple(keywords)).match(step))


@dataclass(frozen=True)
class Segmentation:
    """Steps of a trace and where each thought starts.

    `thought_starts[j]` is the index in `steps` of the first step of thought j + 1 (so it always
    begins with 0). Boundary i (1-based) sits right before step `thought_starts[i]`.
    """

    steps: tuple[str, ...]
    thought_starts: tuple[int, ...]

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def num_thoughts(self) -> int:
        return len(self.thought_starts)

    @property
    def num_boundaries(self) -> int:
        return max(self.num_thoughts - 1, 0)

    def thoughts(self) -> list[tuple[str, ...]]:
        ends = list(self.thought_starts[1:]) + [len(self.steps)]
        return [self.steps[s:e] for s, e in zip(self.thought_starts, ends)]

    def prefix_length(self, boundary: int) -> int:
        """Number of steps before boundary `boundary` (1-based): all steps of thoughts 1..boundary."""
        if not 1 <= boundary <= self.num_boundaries:
            raise IndexError(f"boundary {boundary} outside 1..{self.num_boundaries}")
        return self.thought_starts[boundary]


def segment_steps(steps: Sequence[str], keywords: Sequence[str] = DEFAULT_KEYWORDS) -> Segmentation:
    starts = [0] if steps else []
    pattern = _keyword_pattern(tuple(keywords))
    starts += [i for i in range(1, len(steps)) if pattern.match(steps[i])]
    return Segmentation(steps=tuple(steps), thought_starts=tuple(starts))


def segment(reasoning: str, keywords: Sequence[str] = DEFAULT_KEYWORDS) -> Segmentation:
    """Segment a reasoning text (markers already removed) into steps and thoughts."""
    return segment_steps(split_steps(reasoning), keywords)
