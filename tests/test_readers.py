"""Trace readers: raw layouts -> TraceRecord, loading, quarantine, and the normalised JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from retro_search.formats import PRESETS, FieldMap, resolve_format
from retro_search.artifacts import read_records, write_records
from retro_search.readers import load_traces, normalise_record, split_response
from retro_search.records import RecordError, TraceRecord

# The shared data folder sits beside the repository root (CI clones the repo next to ../shared).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRACES = SHARED_DATA / "traces"
AIME_TRACES = TRACES / "skythought_sky-t1-math-correct-5k-32b_ckpt140_aime24.jsonl"
needs_shared_data = pytest.mark.skipif(not TRACES.is_dir(), reason=f"{TRACES} is absent")

R1_TEXT = "<think>\nLet me add.\n\nWait, 2 + 2 = 4.\n</think>\n\nThe answer is \\boxed{4}."
OT_TEXT = ("<|begin_of_thought|>\n\nSo 2 + 2.\n\nAlternatively, count.\n\n<|end_of_thought|>\n\n"
           "<|begin_of_solution|>\n\n\\boxed{4}\n\n<|end_of_solution|>")
SIMPLE = FieldMap(question="q", answer="a", response="r", id="id")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private datasets cache, so tests neither read nor fill the user's."""
    return tmp_path_factory.mktemp("hf-cache")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def simple_row(i: int, **changes) -> dict:
    return {"id": f"t{i}", "q": f"What is {i} + {i}?", "a": str(2 * i), "r": R1_TEXT} | changes


def normalise(raw, fmap=SIMPLE, position=0):
    return normalise_record(raw, fmap, position=position, source_dataset="unit")


# ----------------------------------------------------------------------------- layouts

def test_r1_chat_messages_give_question_reasoning_and_solution():
    raw = {"answer": "4", "messages": [{"role": "user", "content": " What is 2 + 2? "},
                                       {"role": "assistant", "content": R1_TEXT}]}
    record = normalise(raw, "r1")
    assert record.question == "What is 2 + 2?"
    assert record.reasoning == "Let me add.\n\nWait, 2 + 2 = 4."
    assert record.solution == "The answer is \\boxed{4}."
    assert record.reference_answer == "4"


def test_r1_single_string_response_is_split_at_the_markers():
    raw = {"problem": "What is 2 + 2?", "answer": "4", "response": R1_TEXT}
    record = normalise(raw, "r1_response")
    assert (record.reasoning, record.solution) == ("Let me add.\n\nWait, 2 + 2 = 4.",
                                                   "The answer is \\boxed{4}.")


def test_r1_without_opener_takes_everything_before_the_closer_as_reasoning():
    # The opener was part of the prompt, as in the Thought Anchors traces.
    reasoning, solution = split_response("Okay, so 2 + 2.\n\nHmm, 4.\n</think>\n\\boxed{4}")
    assert reasoning == "Okay, so 2 + 2.\n\nHmm, 4."
    assert solution == "\\boxed{4}"


def test_openthoughts_conversation_list_uses_the_user_turn_and_strips_solution_markers():
    raw = {"system": "Think first.", "ground_truth_solution": "So $\\boxed{4}$.",
           "conversations": [{"from": "user", "value": "What is 2 + 2?"},
                             {"from": "assistant", "value": OT_TEXT}]}
    record = normalise(raw, "openthoughts")
    assert record.question == "What is 2 + 2?"
    assert record.reasoning == "So 2 + 2.\n\nAlternatively, count."
    assert record.solution == "\\boxed{4}"
    assert record.reference_answer == "So $\\boxed{4}$."
    assert record.source_model == "deepseek-ai/DeepSeek-R1"


def test_separate_reasoning_and_solution_fields_are_taken_as_they_are():
    raw = {"problem": "What is 2 + 2?", "deepseek_reasoning": " 2 + 2 = 4 ",
           "deepseek_solution": "\\boxed{4}", "ground_truth_solution": "4", "domain": "math",
           "source": "unit"}
    record = normalise(raw, "openthoughts_metadata")
    assert (record.reasoning, record.solution) == ("2 + 2 = 4", "\\boxed{4}")
    assert record.metadata["domain"] == "math"


def test_dotted_paths_reach_nested_objects_and_list_items():
    fmap = FieldMap(question="problem.text", answer="gold.answers.1", response="samples.0.text",
                    id="meta.uid", metadata=("flag=samples.0.ok",))
    raw = {"problem": {"text": "What is 2 + 2?"}, "gold": {"answers": ["four", "4"]},
           "samples": [{"text": R1_TEXT, "ok": True}], "meta": {"uid": "x-1"}}
    record = normalise(raw, fmap)
    assert (record.id, record.reference_answer, record.metadata["flag"]) == ("x-1", "4", True)


def test_a_mapping_format_overrides_fields_of_a_preset():
    fmap = resolve_format({"preset": "openthoughts", "answer": "answer", "metadata": ["system"]})
    assert fmap.answer == "answer" and fmap.metadata == ("system",)
    assert fmap.messages == PRESETS["openthoughts"].messages


def test_field_map_rejects_two_trace_sources():
    with pytest.raises(ValueError, match="exactly one trace source"):
        FieldMap(question="q", answer="a", response="r", messages="m")


def test_field_map_rejects_a_missing_question_without_messages():
    with pytest.raises(ValueError, match="question"):
        FieldMap(question=None, answer="a", response="r")


# ----------------------------------------------------------------------------- ids and answers

def test_default_id_is_source_dataset_and_position():
    record = normalise(simple_row(1), FieldMap(question="q", answer="a", response="r"), position=7)
    assert record.id == "unit:7"


def test_integer_ids_become_strings_and_tuple_ids_are_joined():
    assert normalise(simple_row(1, id=12)).id == "12"
    fmap = FieldMap(question="q", answer="a", response="r", id=("model", "id"))
    assert normalise(simple_row(1, model="m"), fmap).id == "m/t1"


def test_float_id_is_rejected_naming_the_field():
    with pytest.raises(RecordError, match="field 'id'.*non-empty string or an integer"):
        normalise(simple_row(1, id=1.5))


def test_numeric_and_list_answers_are_stored_as_text_with_the_raw_value_kept():
    for raw_answer, text in ((27.0, "27.0"), (204, "204"), (["2", "3"], '["2", "3"]')):
        record = normalise(simple_row(1, a=raw_answer))
        assert record.reference_answer == text
        assert record.metadata["raw_answer"] == raw_answer


def test_json_numbers_keep_the_text_the_file_writes(tmp_path, cache):
    path = tmp_path / "numbers.jsonl"
    path.write_text("".join(f'{{"id": "t{i}", "q": "Q?", "a": {a}, "r": "<think>x</think>y"}}\n'
                            for i, a in enumerate(["3.10", "1e3", "-0", '[2.50, "x"]'])))
    report = load_traces(path, format=SIMPLE, cache_dir=cache)
    assert [r.reference_answer for r in report.records] == ["3.10", "1e3", "-0", '[2.50, "x"]']
    assert [r.metadata["raw_answer"] for r in report.records] == [3.1, 1000.0, 0, [2.5, "x"]]


def test_an_object_answer_is_rejected_naming_the_field():
    with pytest.raises(RecordError, match=r"field 'a': expected an answer .*got an object"):
        normalise(simple_row(1, a={"value": 4}))


@pytest.mark.parametrize("answer, reason", [("\\frac{", r"1 '\{' never closed"),
                                            ("\\boxed{}", "empty after normalisation"),
                                            ("x}", r"a '\}' closes no '\{'")])
def test_a_reference_the_grader_cannot_read_is_rejected(answer, reason):
    with pytest.raises(RecordError, match=f"field 'a': the reference answer cannot be graded: "
                                          f".*{reason}"):
        normalise(simple_row(1, a=answer))


def test_an_empty_file_in_a_folder_adds_nothing_in_quarantine_mode_and_is_listed(tmp_path,
                                                                                 cache):
    write_jsonl(tmp_path / "a.jsonl", [simple_row(0)])
    (tmp_path / "b.jsonl").write_text("\n  \n")
    report = load_traces(tmp_path, format=SIMPLE, on_bad_record="quarantine",
                         quarantine_path=tmp_path / "q.jsonl", cache_dir=cache)
    assert [r.id for r in report.records] == ["t0"] and report.empty == [str(tmp_path / "b.jsonl")]
    assert report.summary().endswith(f"no records in {tmp_path / 'b.jsonl'}")
    with pytest.raises(ValueError, match=r"b\.jsonl: no records"):
        load_traces(tmp_path, format=SIMPLE, cache_dir=cache)


def test_nan_answer_is_rejected_as_a_missing_value():
    with pytest.raises(RecordError, match="field 'a'.*missing value"):
        normalise(simple_row(1, a=float("nan")))


def test_bool_answer_is_rejected():
    with pytest.raises(RecordError, match="field 'a'.*bool"):
        normalise(simple_row(1, a=True))


# ----------------------------------------------------------------------------- bad records

def test_missing_question_names_position_id_and_field():
    row = simple_row(3)
    del row["q"]
    with pytest.raises(RecordError) as err:
        normalise(row, position=3)
    assert (err.value.position, err.value.record_id, err.value.field) == (3, "t3", "q")
    assert ("record #3, id='t3', field 'q': expected a string, got nothing: missing"
            in str(err.value))
    assert "fix FieldMap.question" in str(err.value)


def test_non_string_question_is_rejected():
    with pytest.raises(RecordError, match="field 'q': expected a string, got int"):
        normalise(simple_row(1, q=5))


def test_empty_question_is_rejected():
    with pytest.raises(RecordError, match="field 'q': empty string"):
        normalise(simple_row(1, q="  \n"))


def test_empty_reasoning_is_rejected():
    with pytest.raises(RecordError, match="field 'r': empty reasoning"):
        normalise(simple_row(1, r="<think>\n\n</think>\\boxed{4}"))


def test_unclosed_reasoning_is_rejected_as_truncated():
    with pytest.raises(RecordError, match=r"field 'r': reasoning never closed: no </think> "
                                          r"marker \(generation truncated\?\)"):
        normalise(simple_row(1, r="<think>\nWait, wait, wait"))


def test_text_without_any_marker_is_rejected():
    with pytest.raises(RecordError, match="reasoning never closed"):
        normalise(simple_row(1, r="just an answer: 4"))


def test_openthoughts_solution_that_never_closes_is_rejected():
    with pytest.raises(ValueError, match="solution never closed"):
        split_response(OT_TEXT.replace("<|end_of_solution|>", ""))


def test_mixed_marker_styles_are_rejected():
    with pytest.raises(ValueError, match="mixed marker styles"):
        split_response("<think>a</think><|begin_of_solution|>b<|end_of_solution|>"
                       "<|end_of_thought|>")


def test_text_before_the_opener_is_rejected():
    with pytest.raises(ValueError, match="unexpected text before <think>"):
        split_response("Sure!<think>a</think>b")


def test_chat_with_two_assistant_turns_is_rejected():
    raw = {"answer": "4", "messages": [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": R1_TEXT},
                                       {"role": "assistant", "content": R1_TEXT}]}
    with pytest.raises(RecordError, match="field 'messages': expected exactly one assistant turn"):
        normalise(raw, "r1")


def test_duplicate_ids_name_both_positions(tmp_path, cache):
    path = write_jsonl(tmp_path / "dup.jsonl", [simple_row(0), simple_row(1), simple_row(0)])
    with pytest.raises(RecordError, match=r"record #2, id='t0', field 'id': duplicate id: "
                                          r"record #0 has the same id"):
        load_traces(path, format=SIMPLE, cache_dir=cache)


def test_error_mode_names_the_file_and_line_of_the_first_bad_record(tmp_path, cache):
    path = write_jsonl(tmp_path / "bad.jsonl", [simple_row(0), simple_row(1, r="<think>x")])
    with pytest.raises(RecordError, match=r"bad\.jsonl line 2, record #1, id='t1', field 'r'"):
        load_traces(path, format=SIMPLE, cache_dir=cache)


def test_quarantine_writes_bad_records_and_keeps_the_good_ones_around_them(tmp_path, cache):
    rows = [simple_row(0), simple_row(1, q=""), simple_row(2), simple_row(0), simple_row(4)]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    report = load_traces(path, format=SIMPLE, on_bad_record="quarantine",
                         quarantine_path=tmp_path / "q.jsonl", cache_dir=cache)
    assert [r.id for r in report.records] == ["t0", "t2", "t4"]
    lines = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    where = [(q["position"], q["id"], q["field"]) for q in lines]
    assert where == [(1, "t1", "q"), (3, "t0", "id")]
    assert lines[0]["record"] == rows[1]
    assert (report.total, report.quarantined) == (5, 2)


def test_quarantine_mode_needs_a_path(tmp_path):
    with pytest.raises(ValueError, match="quarantine_path"):
        load_traces(tmp_path / "x.jsonl", format=SIMPLE, on_bad_record="quarantine")


# ----------------------------------------------------------------------------- loading files

def test_jsonl_with_a_custom_field_map_loads_every_record(tmp_path, cache):
    path = write_jsonl(tmp_path / "mine.jsonl", [simple_row(i) for i in range(3)])
    report = load_traces(path, format=SIMPLE, cache_dir=cache)
    assert [r.id for r in report.records] == ["t0", "t1", "t2"]
    assert report.records[2].question == "What is 2 + 2?"
    assert report.records[0].source_dataset == "mine"


def test_parquet_with_a_custom_field_map_loads_nested_columns(tmp_path, cache):
    frame = pd.DataFrame({"prompt": ["What is 1 + 1?", "What is 2 + 2?"], "gold": [2.0, 4.5],
                          "chat": [[{"role": "assistant", "content": R1_TEXT}]] * 2})
    frame.to_parquet(tmp_path / "mine.parquet")
    fmap = FieldMap(question="prompt", answer="gold", messages="chat")
    report = load_traces(tmp_path / "mine.parquet", format=fmap, cache_dir=cache)
    assert [r.reference_answer for r in report.records] == ["2.0", "4.5"]
    assert report.records[1].reasoning == "Let me add.\n\nWait, 2 + 2 = 4."


def test_a_folder_loads_its_files_in_name_order_with_positions_across_files(tmp_path, cache):
    write_jsonl(tmp_path / "b.jsonl", [simple_row(2)])
    write_jsonl(tmp_path / "a.jsonl", [simple_row(0), simple_row(1)])
    fmap = FieldMap(question="q", answer="a", response="r")
    report = load_traces(tmp_path, format=fmap, source_dataset="set", cache_dir=cache)
    assert [r.id for r in report.records] == ["set:0", "set:1", "set:2"]
    assert report.records[2].question == "What is 2 + 2?"


def test_limit_caps_the_raw_records_read(tmp_path, cache):
    path = write_jsonl(tmp_path / "many.jsonl", [simple_row(i) for i in range(5)])
    report = load_traces(path, format=SIMPLE, limit=2, cache_dir=cache)
    assert (report.total, len(report.records)) == (2, 2)


def test_a_hub_id_goes_to_load_dataset_with_its_name_and_split(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs["split"], kwargs["streaming"]))
        return [simple_row(0), simple_row(1)]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    report = load_traces("org/traces", format=SIMPLE, name="cfg", split="test", limit=1)
    # A limit streams, so the first rows of a large hub dataset don't need the whole download.
    assert calls == [("org/traces", "cfg", "test", True)]
    assert (report.total, report.source_dataset) == (1, "org/traces:cfg:test")


def test_a_missing_local_file_is_not_mistaken_for_a_hub_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_traces(tmp_path / "absent.jsonl", format=SIMPLE)


# ----------------------------------------------------------------------------- real traces

@needs_shared_data
def test_thought_anchors_gives_40_records_with_reasoning_and_a_boxed_solution(cache):
    report = load_traces(TRACES / "thought_anchors_r1_distill_math.jsonl",
                         format="thought_anchors", cache_dir=cache)
    assert len(report.records) == 40 and report.quarantined == 0
    assert all(r.reasoning and "\\boxed" in r.solution for r in report.records)
    assert all("</think>" not in r.reasoning + r.solution for r in report.records)
    assert len({r.id for r in report.records}) == 40


@needs_shared_data
def test_skythought_aime_in_error_mode_stops_at_the_first_truncated_trace(cache):
    with pytest.raises(RecordError) as err:
        load_traces(AIME_TRACES, format="skythought", cache_dir=cache)
    assert (err.value.position, err.value.field) == (1, "code.0")
    assert "reasoning never closed: no <|end_of_thought|> marker" in str(err.value)


@needs_shared_data
def test_skythought_aime_in_quarantine_mode_keeps_19_and_quarantines_11(tmp_path, cache):
    quarantine = tmp_path / "quarantine.jsonl"
    report = load_traces(AIME_TRACES, format="skythought", on_bad_record="quarantine",
                         quarantine_path=quarantine, cache_dir=cache)
    lines = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert (len(report.records), report.quarantined, len(lines), report.total) == (19, 11, 11, 30)
    assert all(q["field"] == "code.0" and "never closed" in q["reason"] for q in lines)
    assert report.summary().endswith(f"loaded 19 of 30 records; 11 quarantined -> {quarantine}")
    assert report.records[0].metadata["is_correct"] is True


@needs_shared_data
def test_skythought_amc_in_quarantine_mode_keeps_24_and_quarantines_16(tmp_path, cache):
    report = load_traces(TRACES / "skythought_sky-t1-math-correct-5k-14b_amc23.jsonl",
                         format="skythought", on_bad_record="quarantine",
                         quarantine_path=tmp_path / "q.jsonl", cache_dir=cache)
    assert (len(report.records), report.quarantined) == (24, 16)
    # `gt` is the string "27"; the float 27.0 in `answer` is the harness's parse, not used.
    assert report.records[0].reference_answer == "27"


# ----------------------------------------------------------------------------- normalised files

def sample_records() -> list[TraceRecord]:
    return [TraceRecord(id=f"t{i}", question="q?", reference_answer="4", reasoning="r\n\nWait, s",
                        solution="\\boxed{4}", source_model="m", source_dataset="d",
                        metadata={"raw_answer": 4.0, "tags": ["a", "é"]}) for i in range(3)]


def test_write_then_read_records_round_trips(tmp_path):
    write_records(sample_records(), tmp_path / "out" / "records.jsonl")
    assert read_records(tmp_path / "out" / "records.jsonl") == sample_records()


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "records.jsonl"
    write_records(sample_records()[:1], path)

    def broken():
        yield from sample_records()
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_records(broken(), path)
    assert read_records(path) == sample_records()[:1]
    assert [p.name for p in tmp_path.iterdir()] == ["records.jsonl"]


def test_unserialisable_metadata_names_the_record(tmp_path):
    record = sample_records()[0]
    record.metadata["when"] = object()
    with pytest.raises(RecordError, match="id='t0', field 'metadata'"):
        write_records([record], tmp_path / "records.jsonl")


def test_read_records_names_the_bad_line(tmp_path):
    path = tmp_path / "records.jsonl"
    write_records(sample_records(), path)
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(RecordError, match="records.jsonl line 4: not valid JSON"):
        read_records(path)
