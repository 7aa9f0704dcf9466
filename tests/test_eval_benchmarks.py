"""Benchmark registry and loader: the local copies in shared/data/benchmarks, their quirks, errors,
and the hub path (with datasets.load_dataset replaced; nothing is downloaded)."""

import json
from pathlib import Path

import pytest

from retro_search.evaluation.benchmarks import (BENCHMARKS, INSTRUCTION_SUFFIX, MATH_BENCHMARKS,
                                                get_benchmark, load_problems)
from retro_search.grading import grade
from retro_search.grading.extract import last_boxed

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared benchmark data not present")

COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "olympiadbench": 675,
          "gsm8k": 1319, "minerva_math": 272, "gaokao2023en": 385}


def raw(name):
    return [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()]


def test_registry_has_the_eight_benchmarks_and_the_miniature_task():
    assert set(MATH_BENCHMARKS) == set(COUNTS) and set(BENCHMARKS) == {*COUNTS, "arith"}
    for name in MATH_BENCHMARKS:
        bench = BENCHMARKS[name]
        assert bench.name == name and bench.local_file == f"{name}.jsonl" and bench.hub_id


def test_a_benchmark_without_a_hub_copy_asks_for_its_folder():
    with pytest.raises(ValueError, match=r"arith: has no hub copy; give its folder \(eval.data_dirs.arith"):
        load_problems("arith")


@needs_data
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_every_benchmark_loads_locally_with_the_right_count(name):
    problems = load_problems(name, DATA)
    assert len(problems) == COUNTS[name]
    assert all(p.gold.strip() and p.question.strip() for p in problems)
    assert len({p.id for p in problems}) == len(problems)


@needs_data
def test_limit_takes_the_first_problems():
    assert [p.id for p in load_problems("math500", DATA, limit=3)] == \
           [r["unique_id"] for r in raw("math500")[:3]]


@needs_data
def test_aime24_zero_padded_gold_grades_equal_to_the_number():
    problems = {p.id: p for p in load_problems("aime24", DATA)}
    padded = [r for r in raw("aime24") if str(r["answer"]).startswith("0")]
    assert padded, "expected zero-padded answers in aime24"
    record = next(r for r in padded if r["answer"] == "025")
    gold = problems[str(record["id"])].gold
    assert gold == "25"
    assert grade(gold, "so the answer is \\boxed{25}").correct


@needs_data
def test_aime25_instruction_suffix_is_stripped():
    problems = load_problems("aime25", DATA)
    assert all(r["prompt"].endswith(INSTRUCTION_SUFFIX) for r in raw("aime25"))
    assert not any("Please reason step by step" in p.question for p in problems)
    assert problems[0].question.startswith("Find the sum of all integer bases")
    assert problems[0].question.endswith("$97_b.$")
    assert problems[0].gold == "70"


@needs_data
def test_amc23_float_answers_become_integers():
    assert load_problems("amc23", DATA, limit=1)[0].gold == "27"


@needs_data
def test_minerva_gold_is_the_boxed_part_of_the_solution():
    records = raw("minerva_math")
    for problem, record in zip(load_problems("minerva_math", DATA, limit=20), records):
        boxed = last_boxed(record["solution"])
        assert problem.gold == boxed.strip().strip("$").strip()
        assert "\\boxed" not in problem.gold


@needs_data
def test_olympiadbench_answer_lists_are_joined():
    problems = {p.id: p for p in load_problems("olympiadbench", DATA)}
    multi = next(r for r in raw("olympiadbench") if r["final_answer"] == ["$69$,$84$"])
    assert problems[str(multi["id"])].gold == "69, 84"
    single = next(r for r in raw("olympiadbench") if r["final_answer"] == ["2"])
    assert problems[str(single["id"])].gold == "2"


@needs_data
def test_gsm8k_gold_is_the_number_after_the_hashes():
    first = load_problems("gsm8k", DATA, limit=1)[0]
    assert raw("gsm8k")[0]["answer"].rstrip().endswith("#### 18")
    assert first.gold == "18" and first.id == "0"


@needs_data
def test_gaokao_dollars_are_removed_and_ids_are_indices():
    problems = load_problems("gaokao2023en", DATA, limit=2)
    assert [p.id for p in problems] == ["0", "1"]
    assert not problems[0].gold.startswith("$")


@needs_data
def test_gaokao_empty_answers_are_taken_from_the_question():
    problems = load_problems("gaokao2023en", DATA)
    assert raw("gaokao2023en")[167]["answer"] == ""
    assert problems[167].gold == "\\frac{3}{10}"
    assert problems[167].question.endswith("at least one saddle point.")
    assert problems[192].gold == "A" and not problems[192].question.endswith("Answer: A")


def test_a_bad_record_names_benchmark_record_and_field(tmp_path):
    rows = [{"id": 1, "problem": "What is 1+1?", "answer": "2"},
            {"id": 2, "problem": "What is 2+2?", "answer": ""}]
    (tmp_path / "aime24.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError) as info:
        load_problems("aime24", tmp_path)
    message = str(info.value)
    assert "aime24" in message and "record 1" in message and "'2'" in message
    assert "'answer'" in message


def test_a_missing_field_is_named(tmp_path):
    (tmp_path / "gsm8k.jsonl").write_text(json.dumps({"question": "q", "idx": 0}) + "\n")
    with pytest.raises(ValueError, match=r"gsm8k: record 0 has no field 'answer'"):
        load_problems("gsm8k", tmp_path)


def test_minerva_solution_without_box_is_an_error(tmp_path):
    (tmp_path / "minerva_math.jsonl").write_text(
        json.dumps({"problem": "q", "solution": "no box here", "idx": 7}) + "\n")
    with pytest.raises(ValueError, match=r"minerva_math: record 0 \(id='7'\), field 'solution'"):
        load_problems("minerva_math", tmp_path)


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(ValueError, match="math500"):
        get_benchmark("mmlu")


def test_without_data_dir_the_hub_copy_is_read_with_its_field_names(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None):
        calls.append((path, name, split, revision))
        return [{"problem": "Find x.", "answer": 7, "id": "I-1"},
                {"problem": "Find y." + INSTRUCTION_SUFFIX, "answer": "012", "id": "I-2"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    problems = load_problems("aime25")
    bench = BENCHMARKS["aime25"]
    assert calls == [(bench.hub_id, bench.hub_config, bench.split, None)]
    load_problems("aime25", revision="0123abc")  # a pinned commit reaches the hub call
    assert calls[-1] == (bench.hub_id, bench.hub_config, bench.split, "0123abc")
    assert [(p.id, p.question, p.gold) for p in problems] == [("I-1", "Find x.", "7"),
                                                               ("I-2", "Find y.", "12")]
