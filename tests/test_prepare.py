"""The prepare stage on sampled responses (`retro_search.stages.prepare.run`): grades them, keeps
the correct ones, at most `data.max_correct_per_question` per question (lowest sample index
first), and lists every removed response with its reason."""

import json
from pathlib import Path

import pytest

from retro_search.engines.base import GenerationRequest, GenerationResult
from retro_search.stages.prepare import check_data_section, keep_per_question, outputs_in, run
from retro_search.questions import Question
from retro_search.artifacts import read_records
from retro_search.sampling import PlannedSample, sample_row


def sample(qid, index, position, text, gold="4"):
    question = Question(qid, f"What is question {qid}?", gold, position)
    planned = PlannedSample(question, index, GenerationRequest(f"{qid}/{index}", "p", 64, seed=0))
    return sample_row(planned, GenerationResult(f"{qid}/{index}", text, 10, "stop"),
                      sampler="tiny", think_open="<think>\n")


RIGHT, WRONG = "Add them.\n</think>\n\n\\boxed{4}", "Guess.\n</think>\n\n\\boxed{5}"


def write_shards(tmp_path, *shards):
    paths = []
    for i, rows in enumerate(shards):
        path = tmp_path / f"shard-{i}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


def config(**data):
    return {"data": {"label": "toy", "source": None, "sample": {"questions": "q.jsonl"},
                     "drop_incorrect": True, **data},
            "grading": {"processes": 0, "timeout": 10.0},
            "decontamination": {"enabled": False}}


@pytest.fixture
def shards(tmp_path):
    # question a: samples 0 wrong, 1 and 2 right (across both shards); b: 0 right, 1 unclosed;
    # c: never right
    return write_shards(tmp_path,
                        [sample("a", 2, 0, RIGHT), sample("b", 0, 1, RIGHT),
                         sample("c", 0, 2, WRONG)],
                        [sample("a", 0, 0, WRONG), sample("a", 1, 0, RIGHT),
                         sample("b", 1, 1, "Still thinking")])


def removed_by_id(out: Path) -> dict[str, str]:
    return {r["id"]: r["reason"] for r in map(json.loads, (out / "removed.jsonl").open())}


def test_one_correct_sample_per_question_keeps_the_lowest_index(shards, tmp_path):
    out = tmp_path / "prepare"
    out.mkdir()
    stats = run(config(max_correct_per_question=1), outputs_in(out), shards, progress=False).summary
    assert [r.id for r in read_records(out / "traces.jsonl")] == ["a/1", "b/0"]
    removed = removed_by_id(out)
    assert removed["a/2"] == ("question already has 1 kept trace(s) "
                              "(data.max_correct_per_question=1)")
    assert removed["a/0"].startswith("incorrect original answer")
    assert removed["b/1"].startswith("unclosed: the reasoning never closed")
    assert set(removed) == {"a/0", "a/2", "b/1", "c/0"}
    assert stats["removed"] == {"unclosed": 1, "incorrect": 2, "over_max_per_question": 1}
    assert stats["read"] == 6 and stats["loaded"] == 5 and stats["kept"] == 2
    assert stats["questions_kept"] == 2
    assert json.loads((out / "stats.json").read_text())["removed"] == stats["removed"]


@pytest.mark.parametrize("cap, kept", [(None, ["a/1", "a/2", "b/0"]), (2, ["a/1", "a/2", "b/0"]),
                                       (1, ["a/1", "b/0"])])
def test_max_correct_per_question_keeps_that_many_or_all(shards, tmp_path, cap, kept):
    out = tmp_path / "prepare"
    out.mkdir()
    run(config(max_correct_per_question=cap), outputs_in(out), shards, progress=False)
    assert [r.id for r in read_records(out / "traces.jsonl")] == kept


def test_kept_samples_carry_their_question_sample_and_sampler(shards, tmp_path):
    out = tmp_path / "prepare"
    out.mkdir()
    kept = tmp_path / ".shard-0.jsonl.progress-0123456789ab.jsonl"  # what the sample job kept
    kept.write_text("{}\n")
    run(config(), outputs_in(out), shards, progress=False)
    assert not kept.exists(), "prepare drops the sample jobs' progress once it has read them"
    record = read_records(out / "traces.jsonl")[0]
    assert record.reasoning == "Add them." and record.solution == "\\boxed{4}"
    assert record.source_model == "tiny" and record.source_dataset == "toy"
    assert record.metadata["question_id"] == "a" and record.metadata["sample"] == 1
    assert record.metadata["original_correct"] is True


def test_traces_from_a_file_are_capped_per_question_text():
    from retro_search.records import TraceRecord

    records = [TraceRecord(str(i), q, "1", "r", "s") for i, q in enumerate("xyx")]
    kept, removed = keep_per_question(records, 1)
    assert [r.id for r in kept] == ["0", "1"] and [r["id"] for r in removed] == ["2"]


def test_a_data_section_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of data.source .* and data.sample"):
        check_data_section({"source": "t.jsonl", "sample": {"questions": "q.jsonl"}})
    with pytest.raises(ValueError, match="exactly one of data.source"):
        check_data_section({"source": None, "sample": None})
    with pytest.raises(ValueError, match="max_correct_per_question must be at least 1 or null"):
        check_data_section({"source": "t.jsonl", "max_correct_per_question": 0})


def test_prepare_of_sampled_data_without_the_sample_files_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="--samples"):
        run(config(), outputs_in(tmp_path), [], progress=False)
