"""The one atomic write every artifact goes through, and the file types built on it."""

import json
import os
import stat

import pytest

from retro_search.artifacts import (atomic_path, read_json, read_jsonl, write_json, write_jsonl,
                                    write_text)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "rows.jsonl"
    write_jsonl(target, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("killed half-way")

    with pytest.raises(RuntimeError):
        write_jsonl(target, rows())
    assert list(read_jsonl(target)) == [{"a": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


def test_a_library_writes_through_a_temp_path_that_appears_only_on_success(tmp_path):
    target = tmp_path / "sub" / "table.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".")
        tmp.write_bytes(b"\x00\x01")
        assert not target.exists()
    assert target.read_bytes() == b"\x00\x01"


def test_outputs_get_the_permissions_of_a_plain_open_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "report.md", "# hi\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_json_writes_nan_and_infinity_as_null_and_reads_back(tmp_path):
    path = write_json(tmp_path / "m.json", {"acc": float("nan"), "len": [1.5, float("inf")]})
    assert json.loads(path.read_text()) == {"acc": None, "len": [1.5, None]}
    assert read_json(path) == {"acc": None, "len": [1.5, None]}


def test_a_damaged_file_is_an_error_naming_the_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match=r"rows.jsonl line 2: not valid JSON"):
        list(read_jsonl(path))
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(ValueError, match=r"m.json: not valid JSON"):
        read_json(tmp_path / "m.json")


def test_a_line_that_is_not_utf8_or_too_deep_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(ValueError, match=r"rows.jsonl line 2: not UTF-8 text \(byte 0xff"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n' + "[" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"rows.jsonl line 2: nested more than 100 levels deep"):
        list(read_jsonl(path))


def test_a_byte_order_mark_crlf_line_ends_and_blank_lines_are_read_as_plain_lines(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\r\n  \n{"a": 2}\r\n')
    assert list(read_jsonl(path)) == [{"a": 1}, {"a": 2}]


def test_a_progress_file_with_a_torn_last_line_is_cut_before_the_next_append(tmp_path):
    from retro_search.artifacts import open_progress
    from retro_search.scheduler import _ProgressWriter, read_progress

    path = tmp_path / ".out.progress.jsonl"
    path.write_text('{"done": 1}\n{"torn": ')  # the process died while writing line 2
    with open_progress(path) as fh:
        fh.write('{"done": 3}\n')
    assert path.read_text().splitlines() == ['{"done": 1}', '{"done": 3}']
    # search's writer cuts it too (sample's and eval's open the same way)
    path.write_text('{"done": 1}\n{"trace_id": ')
    _ProgressWriter(path).close()
    assert path.read_text() == '{"done": 1}\n' and read_progress(path) == {}
