"""The miniature task: exact answers, disjoint splits, teacher traces in R1 format whose flaws come
at their configured rates and can each be cut by Retro-Search, and the character-level model."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict

import pytest

from retro_search import miniature
from retro_search.miniature import (TaskConfig, count_flaws, sound_steps, splits, teacher_trace,
                                    teacher_traces, without_flaws)
from retro_search.segmentation import DEFAULT_KEYWORDS, join_steps, segment, split_steps

# Many traces for the rate tests: 600 questions x 10 traces.
MANY = TaskConfig(heldout=200, sample=200, teacher=600, traces_per_question=10)


@pytest.fixture(scope="module")
def traces():
    return teacher_traces()


@pytest.fixture(scope="module")
def tokenizer():
    return miniature.miniature_tokenizer()


# ----------------------------------------------------------------------------- the task

def test_splits_are_deterministic_and_sized():
    first, again = splits(), splits()
    assert first == again
    config = TaskConfig()
    assert {k: len(v) for k, v in first.items()} == {
        "teacher": config.teacher, "sample": config.sample, "heldout": config.heldout}
    assert splits(TaskConfig(seed=1))["heldout"] != first["heldout"]


def test_splits_are_disjoint_in_questions():
    parts = splits()
    questions = [{p.question for p in parts[name]} for name in miniature.SPLITS]
    for i, name in enumerate(miniature.SPLITS):
        assert len(questions[i]) == len(parts[name])  # no duplicate inside a split
        for j in range(i + 1, len(questions)):
            assert not questions[i] & questions[j]


def test_answers_are_the_exact_sums_of_the_question():
    for p in (p for part in splits().values() for p in part):
        terms = re.fullmatch(r"What is (\d(?: \+ \d)+)\?", p.question).group(1).split(" + ")
        assert p.answer == str(sum(map(int, terms))) and tuple(map(int, terms)) == p.numbers


def test_too_many_questions_for_the_task_is_an_error():
    with pytest.raises(ValueError, match="only 1000"):
        TaskConfig(heldout=900, sample=100, teacher=1)


# ----------------------------------------------------------------------------- teacher traces

def test_teacher_traces_are_deterministic_and_independent_of_the_others(traces):
    assert [t.response() for t in traces] == [t.response() for t in teacher_traces()]
    p = splits()["teacher"][5]
    assert teacher_trace(p, 2) == next(t for t in traces if t.id == f"{p.id}-t2")


def test_every_teacher_trace_reads_with_r1_response_and_grades_correct(traces, tmp_path):
    from retro_search.grading import grade, normalize_reference
    from retro_search.readers import load_traces

    path = tmp_path / "teacher.jsonl"
    path.write_text("".join(json.dumps(t.raw_record()) + "\n" for t in traces))
    records = load_traces(str(path), format="r1_response").records
    assert len(records) == len(traces)
    for record, trace in zip(records, traces):
        assert record.reasoning == trace.reasoning
        assert grade(normalize_reference(record.reference_answer), record.solution).correct


def test_every_addition_in_a_teacher_trace_is_correct(traces):
    for t in traces:
        for terms, total in re.findall(r"(\d+(?: \+ \d+)+) (?:=|is) (\d+)", t.reasoning):
            assert sum(map(int, terms.split(" + "))) == int(total), t.reasoning


def test_flaws_come_at_their_configured_rates():
    many = teacher_traces(MANY)
    n = len(many)
    detour_share = sum(t.detour for t in many) / n
    assert abs(detour_share - MANY.detour_rate) < 4 * math.sqrt(0.25 / n)
    mean_checks = sum(t.verifications for t in many) / n
    assert abs(mean_checks - MANY.expected_verifications()) < 0.05
    at_least = [sum(t.verifications >= j for t in many) / n for j in (1, 2, 3)]
    for j, share in enumerate(at_least, 1):
        assert abs(share - MANY.verify_rate ** j) < 4 * math.sqrt(0.25 / n)
    assert max(t.verifications for t in many) == MANY.max_verifications


def test_rates_zero_give_the_sound_trace_and_rates_one_every_flaw():
    p = splits()["teacher"][0]
    clean = teacher_trace(p, 0, TaskConfig(verify_rate=0, detour_rate=0))
    assert list(clean.steps) == sound_steps(p)
    full = teacher_trace(p, 0, TaskConfig(verify_rate=1, detour_rate=1, max_verifications=2))
    assert (full.detour, full.verifications) == (True, 2)


def test_every_flaw_opens_a_thought_and_nothing_else_does(traces):
    for t in traces:
        seg = segment(t.reasoning)
        assert seg.num_thoughts == 1 + t.detour + t.verifications
        assert count_flaws(t.reasoning) == miniature.Flaws(int(t.detour), t.verifications)


def test_removing_the_flaws_leaves_the_sound_trace(traces):
    from retro_search.grading import grade

    for t in traces:
        revised = without_flaws(t.reasoning)
        assert revised == join_steps(sound_steps(t.problem))
        assert len(revised) < len(t.reasoning) or not (t.detour or t.verifications)
        assert grade(t.problem.answer, t.solution).correct


def test_from_every_boundary_the_sound_line_goes_on_in_fewer_steps(traces):
    # A rollout from boundary i that continues the sound line and closes reaches the answer in
    # fewer steps than the trace's own rest: the value rule of the search accepts it.
    for t in (t for t in traces if t.detour or t.verifications):
        seg = segment(t.reasoning)
        sound = sound_steps(t.problem)
        for boundary in range(1, seg.num_boundaries + 1):
            prefix = list(seg.steps[: seg.prefix_length(boundary)])
            kept = split_steps(without_flaws(join_steps(prefix)))
            assert kept == sound[: len(kept)], (t.id, boundary)
            assert len(sound) - len(kept) < seg.num_steps - len(prefix)


def test_teacher_records_carry_their_flaws(traces):
    record = traces[0].raw_record()
    assert set(record) == {"id", "problem", "answer", "response", "flaws"}
    assert record["response"].startswith("<think>\n") and "\n</think>\n\n" in record["response"]
    assert record["flaws"] == {"verifications": traces[0].verifications,
                               "detour": traces[0].detour}


# ----------------------------------------------------------------------------- the model

@pytest.mark.parametrize("kind", ["digits", "char"])
def test_tokenizer_keeps_digits_apart(kind):
    tok = miniature.miniature_tokenizer(kind)
    for text in ("What is 13 + 5 + 2?", "17 + 9 = 26.\n\nSo the answer is 26.", "\\boxed{1234}"):
        digits = [tok.decode([i]) for i in tok(text, add_special_tokens=False).input_ids
                  if any(ch.isdigit() for ch in tok.decode([i]))]
        assert digits == [ch for ch in text if ch.isdigit()], (kind, text)


def test_tokenizer_merges_words_but_not_numbers(tokenizer):
    pieces = [tokenizer.decode([i]) for i in
              tokenizer("So the answer is 26.", add_special_tokens=False).input_ids]
    assert pieces == ["So", " the", " answer", " is", " ", "2", "6", "."]


@pytest.mark.parametrize("kind", ["digits", "char"])
def test_tokenizer_has_whole_keywords_and_markers_and_round_trips(kind, traces):
    tok = miniature.miniature_tokenizer(kind)
    for word in DEFAULT_KEYWORDS + ("<think>", "</think>"):
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    text = traces[0].response() + tok.eos_token
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == traces[0].response()
    assert ids[-1] == tok.eos_token_id


def test_tokenizer_is_the_same_on_every_build(tokenizer):
    again = miniature.miniature_tokenizer()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_keywords_are_banned_at_their_first_token(tokenizer):
    from retro_search.engines.banned_words import banned_token_sequences

    singles = {s[0] for s in banned_token_sequences(tokenizer, DEFAULT_KEYWORDS) if len(s) == 1}
    for word in ("Wait", "Alternatively", "Hmm", "Let me verify", "Let me double-check"):
        assert tokenizer.convert_tokens_to_ids(word) in singles


def test_teacher_responses_stay_short_in_tokens(tokenizer, traces):
    lengths = [len(tokenizer(t.response(), add_special_tokens=False).input_ids) for t in traces]
    assert sum(lengths) / len(lengths) < 100 and max(lengths) < 200


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return miniature.build_miniature_model(tmp_path_factory.mktemp("miniature") / "model")


def test_model_builds_offline_with_a_head_size_vllm_takes(model_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert config.model_type == "llama"
    assert config.hidden_size // config.num_attention_heads in (32, 64)
    assert config.vocab_size == len(tokenizer)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 10e6
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 1 + 2 + 3?"}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|Assistant|><think>\n")


def test_model_weights_depend_only_on_the_seed(model_dir, tmp_path):
    import hashlib

    def digest(d):
        return hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()

    assert digest(miniature.build_miniature_model(tmp_path / "again")) == digest(model_dir)
    assert digest(miniature.build_miniature_model(tmp_path / "other", seed=1)) != digest(model_dir)


def test_project_sft_trains_the_model_on_teacher_traces(model_dir, tmp_path):
    from transformers import AutoTokenizer

    from retro_search.prompts import load_prompt_format
    from retro_search.readers import load_traces
    from retro_search.sft.config import SFTSettings, ModelSettings
    from retro_search.sft.data import build_sft_data
    from retro_search.sft.train import train

    paths = miniature.write_dataset(tmp_path / "data", TaskConfig(traces_per_question=1))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = load_traces(str(paths["teacher_traces"]), format="r1_response").records
    rows = build_sft_data(records[:64], load_prompt_format(str(model_dir)), tokenizer,
                          eos_token=tokenizer.eos_token).rows
    train_file = tmp_path / "train.jsonl"
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = SFTSettings(learning_rate=3e-3, max_steps=3, per_device_train_batch_size=8,
                           gradient_checkpointing=False, max_length=512, save_steps=100)
    metrics = train(train_file, tmp_path / "run", ModelSettings(path=str(model_dir)), settings)
    assert metrics["global_step"] == 3 and (tmp_path / "run" / "model").is_dir()


def test_write_dataset_and_cli(tmp_path, capsys):
    assert miniature.main(["data", str(tmp_path / "d")]) == 0
    config = TaskConfig()
    rows = (tmp_path / "d" / "teacher_traces.jsonl").read_text().splitlines()
    assert len(rows) == config.teacher * config.traces_per_question
    heldout = [json.loads(line) for line in (tmp_path / "d" / "heldout.jsonl").open()]
    assert heldout == [asdict(p) for p in splits()["heldout"]]
    assert json.loads((tmp_path / "d" / "task.json").read_text()) == asdict(config)
    assert "teacher_traces:" in capsys.readouterr().out
