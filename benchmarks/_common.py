"""Helpers shared by the benchmark scripts: paths, the output protocol, trace loading.

Output protocol of every script: one line per figure as it is measured ("name: value unit"), and
at the end ONE line "RESULT {json}" holding every figure, the settings and the machine, so a
driver can `grep '^RESULT '` and parse the rest as JSON.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
# The data shared between checkouts lives beside the repository root (ENVIRONMENT.md).
SHARED = REPO.parent / "shared"
DEMO_TRACES = REPO / "data" / "demo" / "traces.jsonl"
FALLBACK_TRACES = SHARED / "data" / "traces" / "thought_anchors_r1_distill_math.jsonl"

if str(SRC) not in sys.path:  # runnable from a checkout without `pip install -e .`
    sys.path.insert(0, str(SRC))


class Figures:
    """Collects figures, prints each as it comes, and prints the RESULT line at the end."""

    def __init__(self, benchmark: str, settings: dict):
        self.data: dict = {"benchmark": benchmark, "settings": settings, "machine": machine(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "figures": {}}

    def add(self, name: str, value, unit: str = "") -> None:
        self.data["figures"][name] = value
        shown = f"{value:.4g}" if isinstance(value, float) else value
        if isinstance(value, bool):
            shown = str(value).lower()
        print(f"{name}: {shown}{(' ' + unit) if unit else ''}", flush=True)

    def note(self, key: str, value) -> None:
        """Something that is not a figure (a path, a diagnosis): kept in RESULT under `notes`."""
        self.data.setdefault("notes", {})[key] = value

    def result(self) -> None:
        print("RESULT " + json.dumps(self.data, sort_keys=True, default=str), flush=True)


def machine() -> dict:
    info = {"host": platform.node(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
        info["mem_gib"] = round(kb / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def default_traces() -> tuple[Path, str]:
    """The demo traces, or the real R1 traces when the demo set is not there."""
    if DEMO_TRACES.exists():
        return DEMO_TRACES, "r1_response"
    return FALLBACK_TRACES, "thought_anchors"


def load_bench_traces(path: str | Path, fmt: str, limit: int | None, correct_only: bool = False):
    """Traces of a file, shortest reasoning first when `correct_only` (the fallback set is long),
    at most `limit` of them."""
    from retro_search.grading import grade, normalize_reference
    from retro_search.readers import load_traces

    records = load_traces(str(path), format=fmt).records
    if correct_only:
        records = [r for r in records
                   if grade(normalize_reference(r.reference_answer), r.solution).correct]
        records.sort(key=lambda r: len(r.reasoning))
    return records[:limit] if limit else records


def add_search_args(p, *, traces: Path, fmt: str, max_tokens: int, max_step_tokens: int,
                    seed_help: str = "search seed") -> None:
    """The options `search_kwargs` reads, plus the trace file, its reader preset and --limit."""
    p.add_argument("--traces", default=str(traces), help="trace file (default: %(default)s)")
    p.add_argument("--format", default=fmt, help="reader preset (default: %(default)s)")
    p.add_argument("--limit", type=int, default=40, help="traces to search (default: %(default)s)")
    p.add_argument("--rollouts", type=int, default=1, help="R per boundary (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=max_tokens,
                   help="rollout budget (default: %(default)s)")
    p.add_argument("--max-step-tokens", type=int, default=max_step_tokens,
                   help="first-step budget (default: %(default)s)")
    p.add_argument("--max-boundaries", type=int, default=4,
                   help="boundaries visited per trace, 0 = all (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)


def search_kwargs(args, prompt) -> dict:
    """The keyword arguments of `run_shard` / `TraceSearch` both search benchmarks pass: the
    SearchConfig from the script's --rollouts, --max-tokens, --max-step-tokens, --seed and
    --max-boundaries (0 = all), the prompt format's head, token counter and closer, the grader."""
    from retro_search.grading import grade, normalize_reference
    from retro_search.search_types import SearchConfig

    config = SearchConfig(rollouts=args.rollouts, max_tokens=args.max_tokens,
                          max_step_tokens=args.max_step_tokens, seed=args.seed,
                          max_boundaries=args.max_boundaries or None)
    return dict(prompt_head=prompt.head, config=config,
                grade=lambda gold, solution: grade(normalize_reference(gold), solution),
                count_tokens=prompt.count_tokens, think_close=prompt.think_close)
