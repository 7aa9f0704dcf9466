"""The data types of Retro-Search: its settings, its audit log and its per-trace result.

`SearchConfig` (settings), `Rollout` (one rollout, the audit log entry), `SearchOutcome` (the
result of one trace) and `Grade`/`GradeFn` (the grader the search is given). They live apart from
the search loop in `search` because config loading and the scheduler need the types but not the
loop. Units are those of `search`: `*_tokens` are tokens of the revision model's
tokenizer, `steps` and `thoughts` are counted as in `segmentation`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Protocol

from retro_search.runtime import MAX_FAILED_SHARE, REQUEST_TIMEOUT_S, RETRIES, EngineCallSettings
from retro_search.segmentation import DEFAULT_KEYWORDS


class Grade(Protocol):
    correct: bool
    extracted: str | None


GradeFn = Callable[[str, str], Grade]
"""grade(reference_answer, solution_text) -> Grade: is the solution's final answer correct?"""


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the search. Defaults are ALGORITHM.md's [choice]s."""

    rollouts: int = 1                 # R: rollouts per boundary
    gamma: float = 0.9                # discount per step in V = gamma^N * R, 0 < gamma < 1
    max_tokens: int = 32768           # budget of one rollout (first step + continuation + solution)
    max_step_tokens: int = 1024       # budget of the constrained first step x_r
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    max_boundaries: int | None = None      # partial revision: visit at most this many boundaries
    boundary_fraction: float | None = None  # partial revision: visit this share of them
    drop_incorrect: bool = False      # leave traces with a wrong original answer out of the output
    # How the job puts up with a faulty engine (runtime keys: `runtime.EngineCallSettings`).
    retries: int = RETRIES                          # tries of a failed request after the first
    request_timeout_s: float | None = REQUEST_TIMEOUT_S  # per request; null: 600 s + 0.5 s/token
    max_failed_share: float = MAX_FAILED_SHARE      # more traces failed: the shard fails

    def __post_init__(self):
        if self.rollouts < 1:
            raise ValueError(f"search.rollouts must be >= 1, got {self.rollouts}")
        if not 0 < self.gamma < 1:
            # gamma = 1 gives every correct rollout the original's value: nothing is ever accepted.
            raise ValueError(f"search.gamma must be strictly between 0 and 1, got {self.gamma}")
        for key in ("max_tokens", "max_step_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"search.{key} must be >= 1 (tokens), got {getattr(self, key)}")
        if self.temperature < 0:  # checked here, not when a request is made after the model loads
            raise ValueError(f"search.temperature must be >= 0 (0 is greedy), "
                             f"got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"search.top_p must be in (0, 1], got {self.top_p}")
        if self.boundary_fraction is not None and not 0 < self.boundary_fraction <= 1:
            raise ValueError(f"search.boundary_fraction must be in (0, 1], got {self.boundary_fraction}")
        if self.max_boundaries is not None and self.max_boundaries < 0:
            raise ValueError(f"search.max_boundaries must be >= 0, got {self.max_boundaries}")
        if isinstance(self.keywords, str):  # a string would be searched letter by letter
            raise ValueError(f"search.keywords must be a list, e.g. "
                             f"search.keywords=[{self.keywords}]")
        if not self.keywords or not all(isinstance(k, str) and k.strip() for k in self.keywords):
            raise ValueError("search.keywords must be a non-empty list of non-blank words, e.g. "
                             f"search.keywords=[Wait,Alternatively], got {list(self.keywords)}")
        object.__setattr__(self, "keywords", tuple(self.keywords))
        EngineCallSettings.of(self, "search")


@dataclass
class Rollout:
    """One rollout from one boundary: the audit log entry.

    A rollout ends in one of three ways: closed (its reasoning closer was written and the solution
    graded), `truncated_length` (it reached its token budget, including the case where no budget
    was left to ask for), or `unclosed` (it ended without writing the closer). Only a closed,
    correct rollout has a value; the other two are never accepted.
    """

    trace_id: str
    boundary: int            # boundary number in the trace as it was when visited (1-based)
    visit: int               # how many boundaries this trace had visited before (0-based)
    rollout: int             # r in 0..R-1
    prefix_steps: int        # steps kept before the boundary
    rest_steps: int          # steps the current trace had after the prefix (what it competes with)
    step_text: str           # x_r, the constrained first step (blank attempts included)
    continuation: str        # y_r, reasoning rest + closer + solution as generated
    step_tokens: int
    continuation_tokens: int
    steps: int               # N: steps after the prefix until the end of the reasoning
    answer: str | None
    correct: bool
    truncated_length: bool = False
    unclosed: bool = False
    log_value: float | None = None   # N * log(gamma) when correct, None when the value is 0
    accepted: bool = False
    seeds: tuple[int, int | None] = (0, None)

    @property
    def tokens(self) -> int:
        return self.step_tokens + self.continuation_tokens

    @property
    def truncated(self) -> bool:
        return self.truncated_length or self.unclosed

    @property
    def value(self) -> float:
        """V = gamma^N * R (may underflow to 0 on long traces; compare `log_value` instead)."""
        return 0.0 if self.log_value is None else math.exp(self.log_value)


Status = Literal["revised", "unchanged", "incorrect_original", "skipped", "engine_error"]


@dataclass
class SearchOutcome:
    """The result of searching one trace. `reasoning`/`solution` are the revised ones (equal to the
    original when nothing was accepted, the original answer was wrong or the trace was skipped).

    Lengths: `reasoning_tokens_*` count the reasoning alone (the paper's length), `response_tokens_*`
    the whole response (reasoning, closer, solution), both before and after the search.
    `skip_reason` says why the trace (status "skipped") or its later boundaries were not searched,
    or, with status "engine_error", which request the engine failed and why (the trace as it came).
    """

    trace_id: str
    status: Status
    original_correct: bool
    original_answer: str | None
    reasoning: str
    solution: str
    reasoning_tokens_before: int
    reasoning_tokens_after: int
    response_tokens_before: int
    response_tokens_after: int
    steps_before: int
    steps_after: int
    thoughts_before: int
    thoughts_after: int
    boundaries_visited: int
    rollouts_tried: int
    rollouts_accepted: int
    rollouts_truncated_length: int
    rollouts_unclosed: int
    skip_reason: str | None = None
    log: list[Rollout] = field(default_factory=list)

    def stats(self) -> dict:
        """Everything but the texts and the log: one row of search statistics."""
        row = asdict(self)
        for name in ("reasoning", "solution", "log"):
            row.pop(name)
        return row
