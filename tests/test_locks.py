"""One writer per output: a second command on an output another process is writing is refused in
one line naming the holder, before it reads anything; a killed holder leaves no stale lock."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from retro_search.locks import OutputLocked, lock_path, output_lock

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "retro_search.cli", *args], capture_output=True,
                          text=True, timeout=120, env=kwargs.pop("env", ENV), **kwargs)


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "traces.jsonl"
    row = {"id": "t1", "question": "1+1?", "reasoning": "One plus one. Wait, it is two.",
           "solution": "\\boxed{2}", "reference_answer": "2"}
    path.write_text(json.dumps(row) + "\n")
    return path


def test_a_search_on_an_output_being_written_is_refused_naming_the_holder(tmp_path, records):
    out = tmp_path / "revised.jsonl"
    with output_lock(out, "2026-12-06T00:00:00Z"):
        # no model at this path: the refusal comes before anything is loaded
        done = cli("search", "--input", str(records), "--output", str(out),
                   "model.path=/no/such/model", env={**ENV, "RETRO_SEARCH_LOCK": ""})
    assert done.returncode == 2, done.stderr
    line, = done.stderr.strip().splitlines()
    assert line == (f"retro-search search: error: {out} is being written by another run (pid "
                    f"{os.getpid()} on {os.uname().nodename} since 2026-12-06T00:00:00Z); two "
                    "runs on one output would mix their work: wait for it to end or stop it "
                    f"(lock: {lock_path(out)})")
    assert not out.exists() and not lock_path(out).exists()


def test_a_killed_holder_leaves_no_lock_behind(tmp_path, records):
    out = tmp_path / "segments.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from retro_search.locks import output_lock
        with output_lock({str(out)!r}, "then"):
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(OutputLocked, match=f"pid {holder.pid} on "):
        with output_lock(out, "now"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_path(out).exists()  # the file stays; the kernel dropped the lock with the process
    done = cli("segment", str(records), str(out))
    assert done.returncode == 0, done.stderr
    assert out.is_file() and not lock_path(out).exists()


def test_processes_started_by_the_holder_share_its_lock(tmp_path, records):
    # A multi-GPU SFT reruns its own command in each training process, on the same output.
    out = tmp_path / "segments.jsonl"
    with output_lock(out, "now"):
        done = subprocess.run([sys.executable, "-m", "retro_search.cli", "segment", str(records),
                               str(out)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        unrelated = cli("segment", str(records), str(out), env={**ENV, "RETRO_SEARCH_LOCK": ""})
        assert unrelated.returncode == 2 and "is being written by another run" in unrelated.stderr
    assert out.is_file() and not lock_path(out).exists()


def test_runs_on_different_outputs_go_ahead(tmp_path, records):
    with output_lock(tmp_path / "a.jsonl", "now"):
        done = cli("segment", str(records), str(tmp_path / "b.jsonl"),
                   env={**ENV, "RETRO_SEARCH_LOCK": ""})
    assert done.returncode == 0, done.stderr
