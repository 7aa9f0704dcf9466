"""Grading agreement: our `Grader` and plain math-verify against labelled (gold, prediction) pairs.

    .venv/bin/python benchmarks/grading_agreement.py PAIRS.jsonl [--processes 2] [--show 50]

PAIRS.jsonl holds one object per line: `gold` (a reference answer, any form `normalize_reference`
accepts), `prediction` (a model's response text), `expected` (bool or 0/1: must they be judged
equivalent?) and optionally `family` (a label, used to group the disagreements).

Two graders are measured on the same pairs, and each is reported overall and split by whether the
prediction contains a `\\boxed`/`\\fbox`:
- ours: `normalize_reference(gold)` then `Grader.grade_many`, exactly as `retro-search grade` does;
- math-verify: `verify(parse(gold), parse(prediction))` with the library's defaults, in this
  process (main thread, so its own 5 s limits apply).
Agreement is the share of pairs whose verdict equals `expected`. Disagreements of our grader are
printed (up to --show), false positives (expected False, graded True) first.

--grading-module imports `Grader` and `normalize_reference` from another module, e.g. a copy of an
earlier version of `retro_search.grading` put on PYTHONPATH, to measure before/after on one set.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Figures  # noqa: E402


def read_pairs(path: str) -> list[dict]:
    """The pairs of a jsonl file; raises ValueError naming the line for a malformed one."""
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for field in ("gold", "prediction", "expected"):
                if field not in row:
                    raise ValueError(f"{path}: line {number} has no field {field!r}")
            row["expected"] = bool(row["expected"])
            row.setdefault("family", "")
            pairs.append(row)
    return pairs


def is_boxed(prediction: str) -> bool:
    return "\\boxed" in prediction or "\\fbox" in prediction


def ours(pairs: list[dict], module: str, processes: int, timeout: float) -> list[tuple[bool, str]]:
    """(verdict, what was extracted or why not) per pair, through `module`'s Grader."""
    grading = importlib.import_module(module)
    golds, index = [], []
    out: list[tuple[bool, str]] = [(False, "")] * len(pairs)
    for i, row in enumerate(pairs):
        try:
            golds.append((grading.normalize_reference(row["gold"]), str(row["prediction"])))
            index.append(i)
        except ValueError as err:  # an unusable gold is a disagreement, not a crash
            out[i] = (False, f"gold rejected: {err}")
    with grading.Grader(processes=processes, timeout=timeout) as grader:
        for i, g in zip(index, grader.grade_many(golds)):
            out[i] = (g.correct, f"extracted={g.extracted!r} error={g.error!r}")
    return out


def plain_math_verify(pairs: list[dict]) -> list[bool]:
    from math_verify import parse, verify

    verdicts = []
    for row in pairs:
        try:
            verdicts.append(bool(verify(parse(str(row["gold"])), parse(str(row["prediction"])))))
        except Exception:  # noqa: BLE001 - a crash is a "not equal" verdict, as in the library
            verdicts.append(False)
    return verdicts


def _agreement(fig: Figures, name: str, verdicts: list[bool], pairs: list[dict]) -> None:
    for split, keep in (("all", lambda r: True), ("boxed", lambda r: is_boxed(r["prediction"])),
                        ("unboxed", lambda r: not is_boxed(r["prediction"]))):
        chosen = [(v, r["expected"]) for v, r in zip(verdicts, pairs) if keep(r)]
        agree = sum(v == e for v, e in chosen)
        fig.add(f"{name}_agree_{split}", f"{agree}/{len(chosen)}")
    labelled = list(zip(verdicts, (r["expected"] for r in pairs)))
    fig.add(f"{name}_false_positives", sum(v and not e for v, e in labelled))
    fig.add(f"{name}_false_negatives", sum(e and not v for v, e in labelled))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Prints one line per figure and a final RESULT {json} line.")
    d = " (default: %(default)s)"
    p.add_argument("pairs", help="jsonl of {gold, prediction, expected[, family]}")
    p.add_argument("--processes", type=int, default=2, help="Grader processes" + d)
    p.add_argument("--timeout", type=float, default=10.0, help="Grader per-item timeout, s" + d)
    p.add_argument("--grading-module", default="retro_search.grading",
                   help="module providing Grader and normalize_reference" + d)
    p.add_argument("--show", type=int, default=50, help="disagreements of ours to print" + d)
    args = p.parse_args(argv)

    pairs = read_pairs(args.pairs)
    fig = Figures("grading_agreement", dict(vars(args)))
    fig.add("pairs", len(pairs))
    fig.add("pairs_boxed", sum(is_boxed(r["prediction"]) for r in pairs))
    fig.add("pairs_expected_equal", sum(r["expected"] for r in pairs))

    graded = ours(pairs, args.grading_module, args.processes, args.timeout)
    _agreement(fig, "ours", [v for v, _ in graded], pairs)
    _agreement(fig, "math_verify", plain_math_verify(pairs), pairs)

    wrong = [(r, why) for r, (v, why) in zip(pairs, graded) if v != r["expected"]]
    wrong.sort(key=lambda item: item[0]["expected"])  # false positives first
    for row, why in wrong[:args.show]:
        print(f"  disagrees: family={row['family']} expected={row['expected']} "
              f"gold={str(row['gold'])[:80]!r} prediction={row['prediction'][-120:]!r} {why}",
              flush=True)
    fig.note("ours_disagreements", [
        {"family": r["family"], "gold": str(r["gold"])[:200], "prediction": r["prediction"][-200:],
         "expected": r["expected"], "graded": why} for r, why in wrong])
    fig.result()
    return 0


if __name__ == "__main__":  # required: the Grader's workers re-import this module
    sys.exit(main())
