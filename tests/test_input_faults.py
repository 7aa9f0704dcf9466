"""Malformed inputs through the real command line: the corpus in tests/faults/ (one fault per
file, see its README) under `normalize`, `segment`, `grade` and `prepare`.

Each bad line or record is either quarantined with its reason, file and line (quarantine mode),
or stops the command with one line naming the file, the line and the field, exit 2 (error mode,
and the commands that have no quarantine). Never a traceback, a crash, a hang, or a silent drop:
lines in = records out + lines quarantined.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from retro_search.cli import main

FAULTS = Path(__file__).parent / "faults"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def records_in(path: Path) -> int:
    """Non-blank lines: the raw records a JSON-lines file holds, good and bad."""
    return sum(1 for line in path.read_bytes().splitlines() if line.strip())


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def normalize(capsys, tmp_path, name, *extra, fmt="r1_response"):
    out = tmp_path / "records.jsonl"
    status = main(["normalize", str(FAULTS / name), str(out), "--format", fmt, *extra])
    return status, out, capsys.readouterr().err


# ----------------------------------------------------------------------------- raw traces

# (file, format, the bad line, the field named (None: the line itself), what the reason says)
BAD_RAW_LINES = [
    ("torn_line.jsonl", "r1_response", 2, None, "not valid JSON: Unterminated string"),
    ("truncated_last_line.jsonl", "r1_response", 3, None, "not valid JSON"),
    ("non_utf8.jsonl", "r1_response", 2, None, r"not UTF-8 text \(byte 0xff"),
    ("array_line.jsonl", "r1_response", 2, None, "a record must be an object, got list"),
    ("number_line.jsonl", "r1_response", 2, None, "a record must be an object, got int"),
    ("string_line.jsonl", "r1_response", 2, None, "a record must be an object, got str"),
    ("null_line.jsonl", "r1_response", 2, None, "a record must be an object, got NoneType"),
    ("two_objects_one_line.jsonl", "r1_response", 2, None, "not valid JSON: Extra data"),
    ("deep_answer_object.jsonl", "r1_response", 2, None, "nested more than 100 levels deep"),
    ("blank_lines_then_bad.jsonl", "r1_response", 4, "response",
     "expected a string, got nothing: missing, no key 'response'"),
    ("missing_answer.jsonl", "r1_response", 2, "answer",
     r"expected a string \(or a number or list\), got nothing: missing, no key 'answer'"),
    ("missing_problem.jsonl", "r1_response", 2, "problem",
     "expected a string, got nothing: missing, no key 'problem'"),
    ("missing_response.jsonl", "r1_response", 2, "response",
     "expected a string, got nothing: missing, no key 'response'"),
    ("problem_number.jsonl", "r1_response", 2, "problem", "expected a string, got int"),
    ("problem_object.jsonl", "r1_response", 2, "problem", "expected a string, got dict"),
    ("answer_bool.jsonl", "r1_response", 2, "answer", "got a bool"),
    ("answer_null.jsonl", "r1_response", 2, "answer", r"expected a string, got NoneType \(null\)"),
    ("answer_empty_list.jsonl", "r1_response", 2, "answer", "empty list"),
    ("nan_token.jsonl", "r1_response", 2, "answer", "got nan"),
    ("response_list.jsonl", "r1_response", 2, "response", "expected a string, got list"),
    ("response_number.jsonl", "r1_response", 2, "response", "expected a string, got int"),
    ("frac_reference.jsonl", "r1_response", 2, "answer", r"cannot be graded: 1 '\{' never closed"),
    ("empty_boxed_reference.jsonl", "r1_response", 2, "answer", "cannot be graded: .*empty"),
    ("blank_reference.jsonl", "r1_response", 2, "answer", "empty string"),
    ("empty_reasoning.jsonl", "r1_response", 2, "response", "empty reasoning"),
    ("unclosed_reasoning.jsonl", "r1_response", 2, "response", "reasoning never closed"),
    ("dict_answer_amid_good.jsonl", "r1_response", 5, "answer", "got an object"),
    ("ta_duplicate_ids.jsonl", "thought_anchors", 3, "id",
     r"duplicate id: record #0 has the same id \(.*ta_duplicate_ids.jsonl line 1\)"),
    ("ta_null_id.jsonl", "thought_anchors", 2, "problem_id", "an id must be a non-empty string"),
]


@pytest.mark.parametrize("name, fmt, line, field, reason", BAD_RAW_LINES,
                         ids=[case[0] for case in BAD_RAW_LINES])
def test_normalize_quarantines_the_bad_line_with_its_file_line_and_reason(
        capsys, tmp_path, name, fmt, line, field, reason):
    status, out, err = normalize(capsys, tmp_path, name, "--on-bad-record", "quarantine",
                                 fmt=fmt)
    assert status == 0, err
    quarantined = rows(tmp_path / "records.quarantine.jsonl")
    assert [q["line"] for q in quarantined] == [line]
    entry = quarantined[0]
    assert entry["source"] == f"{FAULTS / name} line {line}"
    assert entry["field"] == field
    assert re.search(reason, entry["reason"]), entry["reason"]
    # nothing silently dropped: every raw line is a record out or a quarantined one
    assert len(rows(out)) + len(quarantined) == records_in(FAULTS / name)
    assert "1 quarantined" in err


@pytest.mark.parametrize("name, fmt, line, field, reason", BAD_RAW_LINES,
                         ids=[case[0] for case in BAD_RAW_LINES])
def test_normalize_in_error_mode_stops_with_one_line_naming_file_line_and_field(
        capsys, tmp_path, name, fmt, line, field, reason):
    status, out, err = normalize(capsys, tmp_path, name, fmt=fmt)
    message = one_line(err)
    assert status == 2 and not out.exists()
    assert message.startswith("retro-search normalize: error: ")
    assert f"{FAULTS / name} line {line}, record #" in message
    if field is not None:
        assert f"field {field!r}" in message
    assert re.search(reason, message), message


def test_a_line_of_100k_open_brackets_is_quarantined_without_a_crash(tmp_path):
    # A subprocess: on main this line crashed `normalize` (exit 139) or recursed out.
    out = tmp_path / "records.jsonl"
    done = subprocess.run([sys.executable, "-m", "retro_search.cli", "normalize",
                           str(FAULTS / "deep_nesting.jsonl"), str(out), "--format",
                           "r1_response", "--on-bad-record", "quarantine"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (entry,) = rows(tmp_path / "records.quarantine.jsonl")
    assert entry["line"] == 2 and "nested more than 100 levels deep" in entry["reason"]
    assert len(rows(out)) == 2


@pytest.mark.parametrize("argv, where", [
    (["normalize", "deep_nesting.jsonl", "--format", "r1_response"], "deep_nesting.jsonl line 2"),
    (["segment", "deep_nesting.jsonl", "--format", "r1_response"], "deep_nesting.jsonl line 2"),
    (["segment", "records_deep_nesting.jsonl"], "records_deep_nesting.jsonl line 2"),
    (["grade", "grade_deep_nesting.jsonl", "--processes", "0"], "grade_deep_nesting.jsonl line 2"),
], ids=["normalize", "segment-raw", "segment-records", "grade"])
def test_a_too_deep_line_stops_each_command_with_one_line_not_a_crash(tmp_path, argv, where):
    command, name, *options = argv
    done = subprocess.run([sys.executable, "-m", "retro_search.cli", command,
                           str(FAULTS / name), str(tmp_path / "out.jsonl"), *options],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    message = one_line(done.stderr)
    assert where in message and "nested more than 100 levels deep" in message


@pytest.mark.parametrize("name", ["empty.jsonl", "whitespace_only.jsonl"])
def test_an_empty_file_is_an_error_naming_it_in_error_mode(capsys, tmp_path, name):
    status, out, err = normalize(capsys, tmp_path, name)
    assert status == 2 and not out.exists()
    assert f"{FAULTS / name}: no records (the file is empty" in one_line(err)


@pytest.mark.parametrize("name", ["empty.jsonl", "whitespace_only.jsonl"])
def test_an_empty_file_adds_nothing_in_quarantine_mode_and_is_named(capsys, tmp_path, name):
    status, out, err = normalize(capsys, tmp_path, name, "--on-bad-record", "quarantine")
    assert status == 0
    assert rows(out) == [] and rows(tmp_path / "records.quarantine.jsonl") == []
    assert "loaded 0 of 0 records; 0 quarantined" in err and f"no records in {FAULTS / name}" in err


@pytest.mark.parametrize("name", ["bom.jsonl", "crlf.jsonl"])
def test_a_byte_order_mark_and_crlf_line_ends_are_read_as_plain_lines(capsys, tmp_path, name):
    status, out, err = normalize(capsys, tmp_path, name)
    assert status == 0, err
    records = rows(out)
    assert [r["question"] for r in records] == [f"What is {i} + {i}?" for i in (1, 2, 3)]
    assert all(r["reasoning"] == "Add them.\n\nWait, 2 + 2 = 4." for r in records)


def test_a_line_of_one_megabyte_loads_whole(capsys, tmp_path):
    reasoning = "Wait, " + "x" * (1 << 20)
    source = tmp_path / "long_line.jsonl"
    source.write_text("".join(json.dumps({"problem": f"Q{i}", "answer": "4",
                                          "response": f"<think>{reasoning}</think>\\boxed{{4}}"})
                              + "\n" for i in range(2)))
    out = tmp_path / "records.jsonl"
    assert main(["normalize", str(source), str(out), "--format", "r1_response"]) == 0
    assert [len(r["reasoning"]) for r in rows(out)] == [len(reasoning)] * 2


# ----------------------------------------------------------------------------- answers as written

def test_a_dict_answer_is_quarantined_and_the_other_answers_keep_their_text(capsys, tmp_path):
    status, out, _ = normalize(capsys, tmp_path, "dict_answer_amid_good.jsonl",
                               "--on-bad-record", "quarantine")
    assert status == 0
    records = rows(out)
    # On main one dict answer made datasets re-type the column: 25, 3.1, 1000.0, 0, 7.
    assert [r["reference_answer"] for r in records] == ["025", "3.10", "1e3", "-0", "007"]
    assert [r["metadata"]["raw_answer"] for r in records] == ["025", "3.10", "1e3", "-0", "007"]
    (entry,) = rows(tmp_path / "records.quarantine.jsonl")
    assert (entry["line"], entry["field"], entry["record"]["answer"]) == (5, "answer",
                                                                          {"value": 10})


def test_answers_written_as_json_numbers_keep_the_text_the_file_writes(capsys, tmp_path):
    status, out, _ = normalize(capsys, tmp_path, "numeric_answers_as_numbers.jsonl")
    assert status == 0
    records = rows(out)
    assert [r["reference_answer"] for r in records] == [
        "3.10", "1e3", "-0", "25", "123456789012345678901234567890"]
    # raw_answer is the JSON value itself (a number), as a JSON reader sees it
    assert [r["metadata"]["raw_answer"] for r in records] == [
        3.1, 1000.0, 0, 25, 123456789012345678901234567890]


# ----------------------------------------------------------------------------- .json arrays

def test_a_bad_item_of_a_json_array_is_quarantined_by_its_index(capsys, tmp_path):
    status, out, _ = normalize(capsys, tmp_path, "array_file_with_bad_item.json",
                               "--on-bad-record", "quarantine")
    assert status == 0 and len(rows(out)) == 2
    (entry,) = rows(tmp_path / "records.quarantine.jsonl")
    assert entry["source"] == f"{FAULTS / 'array_file_with_bad_item.json'} item 1"
    assert "a record must be an object, got int" in entry["reason"]


def test_a_torn_json_array_is_an_error_naming_the_file_and_line(capsys, tmp_path):
    status, out, err = normalize(capsys, tmp_path, "array_file_torn.json",
                                 "--on-bad-record", "quarantine")
    message = one_line(err)
    assert status == 2 and not out.exists()
    assert f"{FAULTS / 'array_file_torn.json'}: not valid JSON" in message
    assert "(line 4, column 1)" in message  # where the file ends, mid-record


# ----------------------------------------------------------------------------- normalised records

# (file, the bad line, the field named (None: the line itself), what the message says)
BAD_RECORD_LINES = [
    ("records_duplicate_ids.jsonl", 3, "id", "id='r1', field 'id': duplicate id: line 1"),
    ("records_null_id.jsonl", 2, "id", r"expected a string, got NoneType \(null\)"),
    ("records_empty_reasoning.jsonl", 2, "reasoning", "id='r2', field 'reasoning': empty string"),
    ("records_blank_reference.jsonl", 2, "reference_answer", "empty string"),
    ("records_frac_reference.jsonl", 2, "reference_answer",
     r"cannot be graded: 1 '\{' never closed"),
    ("records_boxed_empty_reference.jsonl", 2, "reference_answer", "cannot be graded"),
    ("records_question_number.jsonl", 2, "question", "expected a string, got int"),
    ("records_torn_line.jsonl", 2, None, "not valid JSON"),
    ("records_non_utf8.jsonl", 2, None, r"not UTF-8 text \(byte 0xc3"),
]


@pytest.mark.parametrize("name, line, field, reason", BAD_RECORD_LINES,
                         ids=[case[0] for case in BAD_RECORD_LINES])
def test_segment_stops_at_a_bad_record_with_one_line_naming_file_line_and_field(
        capsys, tmp_path, name, line, field, reason):
    out = tmp_path / "segments.jsonl"
    status = main(["segment", str(FAULTS / name), str(out)])
    message = one_line(capsys.readouterr().err)
    assert status == 2 and not out.exists()
    assert message.startswith(f"retro-search segment: error: {FAULTS / name} line {line}")
    if field is not None:
        assert f"field {field!r}" in message
    assert re.search(reason, message), message


def test_shard_refuses_a_pool_with_a_bad_record_before_writing_a_shard(capsys, tmp_path):
    out = tmp_path / "shard.jsonl"
    status = main(["shard", "--input", str(FAULTS / "records_duplicate_ids.jsonl"),
                   "--output", str(out), "--index", "0", "--num-shards", "2"])
    assert status == 2 and not out.exists()
    assert "records_duplicate_ids.jsonl line 3, id='r1', field 'id'" in one_line(
        capsys.readouterr().err)


# ----------------------------------------------------------------------------- grade rows

BAD_GRADE_LINES = [
    ("grade_torn_line.jsonl", 2, "not valid JSON"),
    ("grade_non_utf8.jsonl", 2, r"not UTF-8 text \(byte 0x80"),
    ("grade_array_line.jsonl", 2, "expected a JSON object, got list"),
    ("grade_frac_gold.jsonl", 2, r"\(id='g2'\), field 'gold': the reference answer cannot be "
                                 r"graded: 1 '\{' never closed"),
]


@pytest.mark.parametrize("name, line, reason", BAD_GRADE_LINES,
                         ids=[case[0] for case in BAD_GRADE_LINES])
def test_grade_stops_at_a_bad_row_with_one_line_naming_file_and_line(capsys, tmp_path, name,
                                                                     line, reason):
    out = tmp_path / "graded.jsonl"
    status = main(["grade", str(FAULTS / name), str(out), "--processes", "0", "--no-progress"])
    message = one_line(capsys.readouterr().err)
    assert status == 2 and not out.exists()
    assert message.startswith(f"retro-search grade: error: {FAULTS / name} line {line}")
    assert re.search(reason, message), message


# ----------------------------------------------------------------------------- prepare

def prepare(capsys, tmp_path, name, on_bad_record="quarantine"):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "data": {"source": str(FAULTS / name), "format": "r1_response", "label": "faults",
                 "on_bad_record": on_bad_record, "drop_incorrect": False},
        "grading": {"processes": 0, "timeout": 10.0},
        "decontamination": {"enabled": False}}))
    out = tmp_path / "prepare"
    status = main(["prepare", "--config", str(config), "--output-dir", str(out),
                   "--no-progress"])
    return status, out, capsys.readouterr().err


@pytest.mark.parametrize("name, line", [
    ("empty_boxed_reference.jsonl", 2), ("frac_reference.jsonl", 2), ("torn_line.jsonl", 2),
    ("non_utf8.jsonl", 2), ("dict_answer_amid_good.jsonl", 5), ("deep_answer_object.jsonl", 2)])
def test_prepare_in_quarantine_mode_quarantines_the_bad_record_and_keeps_the_rest(
        capsys, tmp_path, name, line):
    status, out, err = prepare(capsys, tmp_path, name)
    assert status == 0, err
    stats = json.loads((out / "stats.json").read_text())
    assert [q["line"] for q in rows(out / "quarantine.jsonl")] == [line]
    assert stats["read"] == records_in(FAULTS / name) == stats["loaded"] + stats["quarantined"]
    assert len(rows(out / "traces.jsonl")) == stats["kept"] == stats["loaded"]


def test_prepare_in_error_mode_stops_with_one_line_naming_the_record(capsys, tmp_path):
    status, out, err = prepare(capsys, tmp_path, "empty_boxed_reference.jsonl", "error")
    assert status == 2 and not (out / "traces.jsonl").exists()
    assert "empty_boxed_reference.jsonl line 2, record #1, id='faults:1', field 'answer'" in \
        one_line(err)
