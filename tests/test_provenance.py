"""Manifests hash a stage's artifacts, not what is written beside them later."""

from retro_search.audit import audit
from retro_search.provenance import hash_paths, write_manifest


def test_hash_paths_of_a_folder_skip_logs_checkpoints_and_hidden_files(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "eval.benchmark.tsv").write_text("s\n1\n")
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-2" / "state.json").write_text("{}")
    (tmp_path / ".progress.jsonl").write_text("{}\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "metrics.json").write_text("{}")
    paths = [e["path"] for e in hash_paths([tmp_path])]
    assert paths == [str(tmp_path / "metrics.json"), str(tmp_path / "model" / "config.json")]


def test_a_log_rewritten_by_a_rerun_does_not_break_the_audit(tmp_path):
    stage = tmp_path / "results" / "eval" / "x-0123456789"
    (stage / "logs").mkdir(parents=True)
    (stage / "logs" / "eval.log").write_text("first run\n")
    (stage / "metrics.json").write_text('{"accuracy": 0.5}\n')
    write_manifest(stage / "manifest.json", stage="eval", config_file=None, inputs=[],
                   outputs=[stage], upstream=[], started="t0", command=["eval"])
    (stage / "logs" / "eval.log").write_text("second run\n")
    assert audit(stage).ok, audit(stage).problems
    (stage / "metrics.json").write_text('{"accuracy": 0.9}\n')
    report = audit(stage)
    assert not report.ok and any("metrics.json" in p for p in report.problems)
