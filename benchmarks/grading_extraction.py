"""Answer extraction on adversarial responses: thousands of unclosed boxes, one 420 KB line.

    .venv/bin/python benchmarks/grading_extraction.py            # a few seconds after the fix
    .venv/bin/python benchmarks/grading_extraction.py --repeats 5 --limit-s 600

What a grader runs on one response before any parsing: `extract_answer`, then `answer_tail` when
that finds nothing (`grading.extract`; in a `Grader` this runs in the worker, under the item's
timeout). Each case is timed in a child process (best of `--repeats`) so that a case slower than
`--limit-s` is reported as such instead of holding the run (the quadratic extraction took minutes
on these inputs); its figure is then null and `<case>_over_limit` true.

Cases:
- `unclosed_{5000,10000,20000}`: "\\boxed{" repeated n times (a generation stuck in a loop);
  nothing to extract, and no math-verify fallback since a box was attempted.
- `line_420kb`: one complete `\\boxed{42}` then 60,000 unclosed boxes, 420,011 characters on one
  line; the answer is 42.
- `nested_416kb`: `\\boxed{7}` then 26,000 `\\boxed{\\frac{1}{` (nested groups that never close).
- `space_form_480kb`: `\\boxed{5}` then 60,000 `\\boxed $` (a space-form box with no argument).
- `dollars_420kb`, `parens_420kb`, `answer_is_420kb`: the fallback phrases on long runs of `$`,
  `\\(` and "answer is " (these were linear already).
Each case also checks the extracted value (`<case>_value_ok`). `unclosed_20000_over_5000` is the
time ratio for 4x the text: about 4 when linear, 16 when quadratic.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Figures  # noqa: E402

CASES = {
    "unclosed_5000": ("\\boxed{" * 5_000, None),
    "unclosed_10000": ("\\boxed{" * 10_000, None),
    "unclosed_20000": ("\\boxed{" * 20_000, None),
    "line_420kb": ("\\boxed{42} " + "\\boxed{" * 60_000, "42"),
    "nested_416kb": ("\\boxed{7} " + "\\boxed{\\frac{1}{" * 26_000, "7"),
    "space_form_480kb": ("\\boxed{5} " + "\\boxed $" * 60_000, "5"),
    "dollars_420kb": ("The answer is " + "$" * 420_000, "$"),
    "parens_420kb": ("The answer is " + "\\(" * 210_000, "\\(" * 500),  # tail for math-verify
    "answer_is_420kb": ("answer is " * 42_000, None),
}


def _extract(text: str):
    from retro_search.grading.extract import answer_tail, extract_answer

    answer = extract_answer(text)
    return answer if answer is not None else answer_tail(text)


def _time_case(name: str, repeats: int, conn) -> None:
    text, _ = CASES[name]
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = _extract(text)
        best = min(best, time.perf_counter() - start)
    conn.send((best, value))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Prints one line per figure and a final RESULT {json} line.")
    d = " (default: %(default)s)"
    p.add_argument("--repeats", type=int, default=3, help="timed passes per case, best kept" + d)
    p.add_argument("--limit-s", type=float, default=300.0,
                   help="seconds a case may take before it is reported as over the limit" + d)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated cases" + d)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        p.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")

    fig = Figures("grading_extraction", dict(vars(args)))
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    seconds: dict[str, float | None] = {}
    for name in names:
        text, expected = CASES[name]
        parent, child = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_time_case, args=(name, args.repeats, child))
        proc.start()
        child.close()
        if parent.poll(args.limit_s):
            best, value = parent.recv()
            seconds[name] = best
            fig.add(f"{name}_s", round(best, 4), "s")
            fig.add(f"{name}_ns_per_char", round(1e9 * best / len(text), 1), "ns")
            fig.add(f"{name}_value_ok", value == expected)
        else:
            seconds[name] = None
            fig.add(f"{name}_s", None, f"s (over the {args.limit_s:g} s limit)")
            fig.add(f"{name}_over_limit", True)
        proc.kill()
        proc.join()
        fig.note(f"{name}_chars", len(text))
    small, large = seconds.get("unclosed_5000"), seconds.get("unclosed_20000")
    if small and large:
        fig.add("unclosed_20000_over_5000", round(large / small, 2), "x")
    fig.result()
    return 0


if __name__ == "__main__":
    sys.exit(main())
