"""Answer grading: extract a model's final answer and check it against a reference.

- `extract_answer(text)`: the last `\\boxed{}` (or a fallback phrase) in a solution.
- `normalize_reference(value)`: a benchmark/trace reference answer -> gold string.
- `grade(gold, response)`: one item, in-process, with math-verify (whose own extraction reads the
  solution's end when `extract_answer` finds nothing; the order of attempts is in its docstring).
- `Grader`: many items in worker processes with a hard per-item timeout.
"""

from retro_search.grading.extract import extract_answer
from retro_search.grading.pool import Grader
from retro_search.grading.verify import Grade, grade, normalize_reference

__all__ = ["Grade", "Grader", "extract_answer", "grade", "normalize_reference"]
