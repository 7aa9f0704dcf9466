"""The `retro-search` command line, run as a user would (in-process through `main`)."""

import json
from pathlib import Path

import pytest

from retro_search.cli import build_parser, main
from retro_search.config import compose

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
THOUGHT_ANCHORS = SHARED / "traces" / "thought_anchors_r1_distill_math.jsonl"


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write_rows(path, items):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


@pytest.mark.parametrize("command", ["normalize", "segment", "grade", "search", "tiny-model",
                                     "sample", "prepare"])
def test_every_subcommand_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: retro-search " + command in text
    assert len(text.splitlines()) > 6


def test_top_level_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("normalize", "segment", "grade", "search", "tiny-model", "sample"):
        assert command in text


def test_grade_adds_correct_and_extracted(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [
        {"id": "a", "gold": "025", "response": "so \\boxed{25}"},
        {"id": "b", "gold": 27.0, "response": "The answer is \\boxed{26}"},
        {"id": "c", "gold": "\\frac{1}{2}", "response": "no answer here"},
    ])
    assert main(["grade", src, str(tmp_path / "out.jsonl"), "--processes", "0", "--no-progress"]) == 0
    out = rows(tmp_path / "out.jsonl")
    assert [r["correct"] for r in out] == [True, False, False]
    assert [r["extracted"] for r in out] == ["25", "26", None]
    assert out[0]["id"] == "a"  # other fields kept


def test_grade_takes_a_response_that_is_not_text_for_an_error_never_a_match(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [{"id": "a", "gold": "25", "response": {"answer": 25}},
                                             {"id": "b", "gold": "25", "response": ["25"]}])
    assert main(["grade", src, str(tmp_path / "out.jsonl"), "--processes", "0", "--no-progress"]) == 0
    for row in rows(tmp_path / "out.jsonl"):
        assert not row["correct"] and "not a string" in row["grade_error"], row


def test_grade_names_the_line_and_field_that_is_missing(tmp_path, capsys):
    src = write_rows(tmp_path / "in.jsonl", [{"id": "a", "gold": "1", "response": "1"},
                                             {"id": "b", "answer": "1", "response": "1"}])
    assert main(["grade", src, str(tmp_path / "out.jsonl"), "--processes", "0"]) == 2
    err = capsys.readouterr().err
    assert "in.jsonl line 2" in err and "'b'" in err and "'gold'" in err
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.skipif(not THOUGHT_ANCHORS.exists(), reason="shared data not present")
def test_normalize_then_segment_real_traces(tmp_path):
    records = tmp_path / "traces.jsonl"
    assert main(["normalize", str(THOUGHT_ANCHORS), str(records), "--format", "thought_anchors",
                 "--limit", "5"]) == 0
    assert len(rows(records)) == 5
    assert main(["segment", str(records), str(tmp_path / "seg.jsonl")]) == 0
    seg = rows(tmp_path / "seg.jsonl")
    assert len(seg) == 5
    for row in seg:
        assert row["boundaries"] == row["thoughts"] - 1 == len(row["boundary_steps"])
        assert sum(row["thought_lengths"]) == row["steps"]


def test_segment_uses_the_given_keywords(tmp_path):
    src = write_rows(tmp_path / "raw.jsonl", [{"problem": "Q", "answer": "1",
                                               "response": "<think>a\n\nSo b\n\nWait c</think>\\boxed{1}"}])
    assert main(["segment", src, str(tmp_path / "seg.jsonl"), "--format", "r1_response",
                 "--keyword", "So"]) == 0
    assert rows(tmp_path / "seg.jsonl")[0]["boundary_steps"] == [1]


def test_normalize_quarantines_bad_records_and_reports_the_count(tmp_path, capsys):
    src = write_rows(tmp_path / "raw.jsonl", [
        {"problem": "Q1", "answer": "1", "response": "<think>ok</think>\\boxed{1}"},
        {"problem": "Q2", "answer": "2", "response": "<think>never closed"},
    ])
    out = tmp_path / "records.jsonl"
    assert main(["normalize", src, str(out), "--format", "r1_response",
                 "--on-bad-record", "quarantine"]) == 0
    assert len(rows(out)) == 1
    quarantined = rows(tmp_path / "records.quarantine.jsonl")
    assert len(quarantined) == 1 and "never closed" in quarantined[0]["reason"]
    assert "1 quarantined" in capsys.readouterr().err


def test_normalize_stops_at_a_bad_record_by_default_and_names_it(tmp_path, capsys):
    src = write_rows(tmp_path / "raw.jsonl", [
        {"problem": "Q1", "answer": "1", "response": "<think>ok</think>\\boxed{1}"},
        {"problem": "", "answer": "2", "response": "<think>x</think>y"},
    ])
    assert main(["normalize", src, str(tmp_path / "out.jsonl"), "--format", "r1_response"]) == 2
    err = capsys.readouterr().err
    assert "record #1" in err and "problem" in err


def test_config_overrides_reach_the_search_settings():
    cfg = compose(None, ["model.path=/m", "search.rollouts=3", "engine.batch_size=4"])
    assert cfg["search"]["rollouts"] == 3 and cfg["engine"]["batch_size"] == 4
    assert cfg["search"]["gamma"] == 0.9


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="model.path"):
        compose(None, [])
    with pytest.raises(ValueError, match="search.gamma"):
        compose(None, ["model.path=/m", "search.gamma=2"])
    with pytest.raises(ValueError, match=r"search.rolouts: no such setting; did you mean search.rollouts\?"):
        compose(None, ["model.path=/m", "search.rolouts=2"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        compose(None, ["model.path=/m", "rollouts"])


def test_search_without_a_model_path_fails_before_loading_anything(tmp_path, capsys):
    src = write_rows(tmp_path / "in.jsonl", [])
    assert main(["search", "--input", src, "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "model.path" in capsys.readouterr().err


def test_parser_keeps_overrides_in_order():
    args = build_parser().parse_args(["search", "--input", "i", "--output", "o", "a.b=1", "a.b=2"])
    assert args.overrides == ["a.b=1", "a.b=2"]


def test_search_refuses_a_reasoning_closer_that_decoding_would_drop(tmp_path, capsys,
                                                                    tiny_model_dir):
    # A tokenizer in which </think> is a special token: the engines decode without special
    # tokens, so every rollout would come back unclosed. The search stops before generating.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["</think>"]},
                                 replace_extra_special_tokens=False)
    tokenizer.save_pretrained(tmp_path / "special")
    trace = {"id": "t", "question": "1+1?", "reference_answer": "2",
             "reasoning": "1+1 is 2.\n\nWait, yes.", "solution": "\\boxed{2}"}
    src = write_rows(tmp_path / "in.jsonl", [trace])
    status = main(["search", "--input", src, "--output", str(tmp_path / "o.jsonl"),
                   "--no-progress", f"model.path={tiny_model_dir}",
                   f"model.tokenizer={tmp_path / 'special'}"])
    err = capsys.readouterr().err
    assert status == 2 and "'</think>' does not survive decoding" in err, err
    assert not (tmp_path / "o.jsonl").exists()


def test_task_writes_the_miniature_splits_and_teacher_records_the_same_every_time(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("task: {heldout: 20, sample: 10, teacher: 5, traces_per_question: 2}\n")
    for out in ("a", "b"):
        assert main(["task", str(tmp_path / out), "--config", str(config)]) == 0
    names = ["teacher_traces.jsonl", "teacher_records.jsonl", "teacher.jsonl", "sample.jsonl",
             "heldout.jsonl", "task.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    records = rows(tmp_path / "a" / "teacher_records.jsonl")
    assert len(records) == 10 and {"question", "reference_answer", "reasoning"} <= set(records[0])
    assert len(rows(tmp_path / "a" / "heldout.jsonl")) == 20


def test_task_names_an_unknown_setting(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text("task: {heldouts: 20}\n")
    assert main(["task", str(tmp_path / "out"), "--config", str(config)]) == 2
    assert "unknown task setting(s) ['heldouts']" in capsys.readouterr().err


def test_tiny_model_builds_the_miniature_model_from_the_stage_config(tmp_path):
    import json as json_

    config = tmp_path / "config.yaml"
    config.write_text("tiny_model: {miniature: xs, seed: 0}\n")
    assert main(["tiny-model", str(tmp_path / "m"), "--config", str(config)]) == 0
    model = json_.loads((tmp_path / "m" / "config.json").read_text())
    assert model["hidden_size"] == 128 and model["hidden_size"] // model["num_attention_heads"] == 64
