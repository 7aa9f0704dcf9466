"""Math benchmarks as small declarative entries, and a loader that turns one into problems.

A benchmark is read from a local copy when a `data_dir` is given (`data_dir / local_file`, the
files of `shared/data/benchmarks`), otherwise from the Hugging Face hub with
`datasets.load_dataset(hub_id, hub_config, split=split)`. Every problem comes out as
`Problem(id, question, gold)` with the gold answer normalised by
`retro_search.grading.normalize_reference`, so the quirks of each file are handled in one place:

- aime24: answers are zero-padded strings ("025" -> "25");
- aime25 (QwQ copy): the prompt ends with the instruction suffix, which is stripped (the evaluation
  adds its own instruction through `eval.user_template`);
- amc23: answers are floats (27.0 -> "27");
- olympiadbench: `final_answer` is a list (joined with ", ");
- gsm8k: the answer is a rationale ending in "#### N" (-> "N", thousands separators removed);
- minerva_math: there is no answer field; the gold is the last `\\boxed{}` of the solution;
- gaokao2023en: answers are wrapped in `$...$`; two records (167 and 192 of the local copy) have
  an empty answer field and their answer at the end of the question ("...answers: $\\frac{3}{10}$",
  "...Answer: A"): it is taken from there and cut from the question (`answer_in_question`).

The hub ids are the usual public copies; they were NOT checked from here (no network). Where a hub
copy's field names differ from the local file's, `hub_overrides` lists the differences.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from retro_search.grading.extract import last_boxed
from retro_search.grading.verify import normalize_reference

__all__ = ["BENCHMARKS", "MATH_BENCHMARKS", "Benchmark", "Problem", "get_benchmark", "load_problems",
           "problems_from_records", "INSTRUCTION_SUFFIX"]

# The instruction the QwQ AIME 2025 file appends to every problem (also our default user template).
INSTRUCTION_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Problem:
    """One benchmark problem: a stable id (string), the bare question, the normalised gold."""

    id: str
    question: str
    gold: str


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives and how to read a record.

    name: registry key and the `benchmark` column of the outputs.
    hub_id, hub_config, split: arguments of `datasets.load_dataset` for the hub copy.
    local_file: file name of the local copy inside a data_dir (.jsonl, .json or .parquet).
    question_field, answer_field: the record fields holding the question and the reference.
    prompt_template: this benchmark's user-turn template ("{question}" is replaced), or None to use
        the evaluation's `user_template`.
    id_field: the field holding a record's id, or None to use the 0-based record index.
    answer_from_solution: the answer field is a full solution; the gold is its last `\\boxed{}`.
    strip_suffix: removed from the end of the question when present.
    answer_in_question: a regex with a group `answer`, searched in the question when the answer
        field is empty; its match gives the answer and is cut from the question.
    hub_overrides: (field name, value) pairs replacing the above when reading the hub copy.
    """

    name: str
    hub_id: str
    hub_config: str | None
    split: str
    local_file: str
    question_field: str
    answer_field: str
    prompt_template: str | None = None
    id_field: str | None = None
    answer_from_solution: bool = False
    strip_suffix: str | None = None
    answer_in_question: str | None = None
    hub_overrides: tuple[tuple[str, Any], ...] = ()

    def for_hub(self) -> "Benchmark":
        """This entry with the hub copy's field names."""
        return dataclasses.replace(self, **dict(self.hub_overrides)) if self.hub_overrides else self


# Hub ids: the usual public copies, unverified here (no network in this environment).
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("math500", hub_id="HuggingFaceH4/MATH-500", hub_config=None, split="test",
              local_file="math500.jsonl", question_field="problem", answer_field="answer",
              id_field="unique_id"),
    Benchmark("aime24", hub_id="HuggingFaceH4/aime_2024", hub_config=None, split="train",
              local_file="aime24.jsonl", question_field="problem", answer_field="answer",
              id_field="id"),
    Benchmark("aime25", hub_id="math-ai/aime25", hub_config=None, split="test",
              local_file="aime25.jsonl", question_field="prompt", answer_field="answer",
              id_field=None, strip_suffix=INSTRUCTION_SUFFIX,
              hub_overrides=(("question_field", "problem"), ("id_field", "id"))),
    Benchmark("amc23", hub_id="math-ai/amc23", hub_config=None, split="test",
              local_file="amc23.jsonl", question_field="question", answer_field="answer",
              id_field="id"),
    Benchmark("olympiadbench", hub_id="Hothan/OlympiadBench", hub_config="OE_TO_maths_en_COMP",
              split="train", local_file="olympiadbench.jsonl", question_field="question",
              answer_field="final_answer", id_field="id"),
    Benchmark("gsm8k", hub_id="openai/gsm8k", hub_config="main", split="test",
              local_file="gsm8k.jsonl", question_field="question", answer_field="answer",
              id_field="idx", hub_overrides=(("id_field", None),)),
    Benchmark("minerva_math", hub_id="math-ai/minervamath", hub_config=None, split="test",
              local_file="minerva_math.jsonl", question_field="problem", answer_field="solution",
              id_field="idx", answer_from_solution=True,
              hub_overrides=(("question_field", "question"), ("answer_field", "answer"),
                             ("id_field", None), ("answer_from_solution", False))),
    Benchmark("gaokao2023en", hub_id="MARIO-Math-Reasoning/Gaokao2023-Math-En", hub_config=None,
              split="train", local_file="gaokao2023en.jsonl", question_field="question",
              answer_field="answer", id_field=None,
              answer_in_question=r"(?i)\s*answers?:\s*(?P<answer>[^\n]+?)\s*$"),
    # The demo's miniature task (retro_search.miniature): held-out sums of three one-digit
    # numbers, written by the pipeline's task stage (`heldout.jsonl`); on no hub.
    Benchmark("arith", hub_id="", hub_config=None, split="heldout", local_file="heldout.jsonl",
              question_field="question", answer_field="answer", id_field="id"),
)}


# The eight math benchmarks of ALGORITHM.md's "Evaluation" (the default of eval.benchmarks).
MATH_BENCHMARKS: tuple[str, ...] = tuple(name for name in BENCHMARKS if name != "arith")


def get_benchmark(benchmark: str | Benchmark) -> Benchmark:
    if isinstance(benchmark, Benchmark):
        return benchmark
    try:
        return BENCHMARKS[benchmark]
    except KeyError:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {sorted(BENCHMARKS)}") from None


def _read_local(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        return data
    from retro_search.artifacts import read_jsonl

    return list(read_jsonl(path))


def _read_hub(benchmark: Benchmark, revision: str | None = None) -> list[dict[str, Any]]:
    if not benchmark.hub_id:
        raise ValueError(f"{benchmark.name}: has no hub copy; give its folder "
                         f"(eval.data_dirs.{benchmark.name}, or eval.data_dir)")
    from datasets import load_dataset  # lazy: heavy, and only needed without a data_dir

    try:
        dataset = load_dataset(benchmark.hub_id, benchmark.hub_config, split=benchmark.split,
                               revision=revision)
    except Exception as err:  # noqa: BLE001 - offline, unknown id, ...: say which benchmark
        raise ValueError(f"{benchmark.name}: cannot load hub dataset {benchmark.hub_id!r} "
                         f"(config {benchmark.hub_config!r}, split {benchmark.split!r}): {err}. "
                         "Set eval.data_dir to a folder with local copies instead.") from err
    from retro_search.provenance import hub_dataset_read

    hub_dataset_read(benchmark.hub_id, revision)
    return [dict(row) for row in dataset]


def _field(benchmark: Benchmark, index: int, record: dict[str, Any], field: str) -> Any:
    if field not in record:
        raise ValueError(f"{benchmark.name}: record {index} has no field {field!r} "
                         f"(fields: {sorted(record)})")
    return record[field]


def problems_from_records(benchmark: Benchmark, records: Iterable[dict[str, Any]],
                          limit: int | None = None) -> list[Problem]:
    """Turn raw records into problems. Errors name the benchmark, the record (0-based index and
    id) and the field."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for index, record in enumerate(records):
        if limit is not None and len(problems) >= limit:
            break
        if not isinstance(record, dict):
            raise ValueError(f"{benchmark.name}: record {index} is not an object")
        if benchmark.id_field is None:
            pid = str(index)
        else:
            value = _field(benchmark, index, record, benchmark.id_field)
            if value is None or str(value).strip() == "":
                raise ValueError(f"{benchmark.name}: record {index}, field "
                                 f"{benchmark.id_field!r}: empty id")
            pid = str(value).strip()
        where = f"{benchmark.name}: record {index} (id={pid!r})"
        if pid in seen:
            raise ValueError(f"{where}, field {benchmark.id_field!r}: id already used by record "
                             f"{seen[pid]}")
        seen[pid] = index

        question = _field(benchmark, index, record, benchmark.question_field)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}, field {benchmark.question_field!r}: the question is "
                             f"empty or not a string ({question!r:.80})")
        question = question.strip()
        if benchmark.strip_suffix and question.endswith(benchmark.strip_suffix.strip()):
            question = question[:-len(benchmark.strip_suffix.strip())].rstrip()

        answer = _field(benchmark, index, record, benchmark.answer_field)
        if (benchmark.answer_in_question and (answer is None or str(answer).strip() == "")):
            m = re.search(benchmark.answer_in_question, question)
            if m:
                answer, question = m.group("answer"), question[:m.start()].rstrip()
        try:
            if benchmark.answer_from_solution:
                boxed = last_boxed(answer) if isinstance(answer, str) else None
                if boxed is None:
                    raise ValueError("the solution has no \\boxed{} answer")
                answer = boxed
            gold = normalize_reference(answer)
        except ValueError as err:
            raise ValueError(f"{where}, field {benchmark.answer_field!r}: {err}") from None
        problems.append(Problem(pid, question, gold))
    return problems


def load_problems(benchmark: str | Benchmark, data_dir: str | Path | None = None,
                  limit: int | None = None, revision: str | None = None) -> list[Problem]:
    """The problems of `benchmark` (a name or an entry), in file order, at most `limit` of them.

    With `data_dir`, from `data_dir / benchmark.local_file` (relative paths are relative to the
    current directory); without, from the hub (`hub_id`, `hub_config`, `split`, with
    `hub_overrides` applied) at `revision` (a commit; None: the latest). Raises ValueError naming the benchmark, record and field for a bad
    record, FileNotFoundError for a missing local file.
    """
    bench = get_benchmark(benchmark)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    if data_dir is not None:
        records: Sequence[dict[str, Any]] = _read_local(Path(data_dir) / bench.local_file)
    else:
        bench = bench.for_hub()
        records = _read_hub(bench, revision)
    return problems_from_records(bench, records, limit)
