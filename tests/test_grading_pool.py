"""Grader: process pool with per-item hard timeouts, input order, serial mode, threads."""

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from retro_search.grading import Grade, Grader, grade

TIMEOUT = 1.5
# sympy spins on 9^(9^9) for minutes (over 300 s measured) when nothing stops it.
PATHOLOGICAL = ("9", r"\boxed{9^{9^{9}}}")
NORMAL = [(r"\frac{1}{2}", r"\boxed{0.5}"), ("(1, 2)", r"\boxed{(1,2)}"), ("25", r"\boxed{025}"),
          (r"\sqrt{8}", r"\boxed{2\sqrt{2}}"), ("yes", r"\boxed{\text{Yes}}"), ("x^2", r"\boxed{x^{2}}")]


def _worker_pids() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.name == "retro-search-grader"}


@pytest.fixture(scope="module")
def grader():
    with Grader(processes=2, timeout=TIMEOUT) as g:
        g.grade_many(NORMAL[:2])  # start the forkserver and both workers outside the timings
        yield g


def _mixed_pairs(n: int) -> list[tuple[str, str]]:
    pairs = []
    for k in range(n):
        gold = rf"\frac{{{k}}}{{{k + 2}}}"
        kind = k % 5
        if kind == 0:
            response = rf"So \boxed{{\frac{{{2 * k}}}{{{2 * k + 4}}}}}"   # equal, not identical
        elif kind == 1:
            response = rf"\boxed{{{k + 1}}}"                              # wrong
        elif kind == 2:
            response = f"The answer is {k}/{k + 2}."                      # fallback phrase
        elif kind == 3:
            response = "I give up."                                       # no answer
        else:
            response = rf"\boxed{{({k}, {k + 2})}}"                       # wrong type
        pairs.append((gold, response))
    return pairs


def test_results_in_input_order_and_equal_to_serial(grader):
    pairs = _mixed_pairs(200)
    expected = [grade(g, r) for g, r in pairs]
    assert grader.grade_many(pairs) == expected
    assert {g.correct for g in expected} == {True, False}


def test_serial_mode_grades_in_this_process():
    before = _worker_pids()
    with Grader(processes=0) as serial:
        assert serial.grade_many(NORMAL) == [grade(g, r) for g, r in NORMAL]
        assert _worker_pids() == before


def test_pathological_item_costs_one_timeout(grader):
    batch = NORMAL + [PATHOLOGICAL] + NORMAL
    before = _worker_pids()
    started = time.monotonic()
    results = grader.grade_many(batch)
    elapsed = time.monotonic() - started
    assert results[len(NORMAL)] == Grade(False, "9^{9^{9}}", "timeout")
    others = results[:len(NORMAL)] + results[len(NORMAL) + 1:]
    assert all(r.correct and r.error is None for r in others), others
    assert TIMEOUT <= elapsed < TIMEOUT + 2.0
    assert len(before - _worker_pids()) == 1  # the stuck worker was killed
    grader.grade_many(NORMAL)
    after = _worker_pids()
    assert len(after) == 2 and len(after - before) == 1  # and replaced when work came


def test_grader_keeps_working_after_a_timeout(grader):
    grader.grade_many([PATHOLOGICAL])
    assert grader.grade_many(NORMAL) == [Grade(True, grade(g, r).extracted) for g, r in NORMAL]


def test_pathological_item_really_hangs_without_the_guard():
    # The same item with math-verify's own timeouts off keeps a process busy far past TIMEOUT.
    code = ("from retro_search.grading.verify import grade_extracted; "
            "print('start', flush=True); "
            f"grade_extracted({PATHOLOGICAL[0]!r}, '9^{{9^{{9}}}}', timeout=None); print('done')")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "start"
        time.sleep(2 * TIMEOUT)
        assert proc.poll() is None, "the pathological item finished: pick a harder one"
    finally:
        proc.kill()
        proc.wait()


def test_usable_from_a_non_main_thread(grader):
    out: list = []
    errors: list = []

    def run():
        try:
            out.append(grader.grade_many(NORMAL + [PATHOLOGICAL]))
            with Grader(processes=1, timeout=TIMEOUT) as own:  # created and used in the thread
                out.append(own.grade(*NORMAL[0]))
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert not errors
    batch, single = out
    assert [r.correct for r in batch] == [True] * len(NORMAL) + [False]
    assert batch[-1].error == "timeout"
    assert single.correct


def test_worker_killed_while_idle_is_replaced(grader):
    victim = sorted(_worker_pids())[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.2)
    assert all(r.correct for r in grader.grade_many(NORMAL * 2))
    assert victim not in _worker_pids()


def test_worker_dying_mid_item_fails_only_that_item():
    before = _worker_pids()
    result: list = []
    with Grader(processes=1, timeout=30) as own:
        thread = threading.Thread(target=lambda: result.extend(own.grade_many([PATHOLOGICAL])))
        thread.start()
        deadline = time.monotonic() + 20
        while not (_worker_pids() - before) and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = _worker_pids() - before
        time.sleep(0.5)  # let it take the item
        os.kill(pid, signal.SIGKILL)
        thread.join(30)
        assert result == [Grade(False, "9^{9^{9}}", f"worker died (exit code {-signal.SIGKILL})")]
        assert own.grade(*NORMAL[0]).correct


def test_answer_without_box_is_found_by_math_verify_in_a_worker(grader):
    pairs = [("-5", "-5"), (r"x \geq 5", r"Therefore $x \geq 5$ is the solution."),
             ("28\\%", "about 28 percent"), ("7", "it is 8")]
    results = grader.grade_many(pairs)
    assert results == [grade(g, r) for g, r in pairs]
    assert [r.correct for r in results] == [True, True, True, False]
    assert results[1].extracted == r"x \geq 5"


def test_math_verify_fallback_runs_under_the_item_deadline(grader):
    # The sympy work of the fallback happens in the worker, so the pool's hard limit covers it.
    started = time.monotonic()
    results = grader.grade_many([("9", "So the value is $9^{9^{9}}$."), NORMAL[0]])
    assert time.monotonic() - started < TIMEOUT + 3
    assert results == [Grade(False, None, "timeout"), Grade(True, "0.5", None)]


def test_no_answer_items_start_no_workers():
    before = _worker_pids()
    with Grader(processes=2, timeout=TIMEOUT) as own:
        assert own.grade_many([("1", "no idea"), ("2", "")]) == [Grade(False, None, "no_answer")] * 2
        assert _worker_pids() == before


def test_close_stops_workers_and_grader_restarts_them():
    before = _worker_pids()
    own = Grader(processes=1, timeout=TIMEOUT)
    assert own.grade(*NORMAL[0]).correct
    started = _worker_pids() - before
    assert len(started) == 1
    own.close()
    assert not (_worker_pids() & started)
    assert own.grade(*NORMAL[1]).correct
    own.close()


def test_progress_bar(grader, capsys):
    grader.grade_many(NORMAL, progress=True)
    assert "grading" in capsys.readouterr().err


def test_empty_batch(grader):
    assert grader.grade_many([]) == []


def test_processes_default_to_cpu_count():
    assert Grader().processes == os.cpu_count()


@pytest.mark.parametrize("kwargs", [{"processes": -1}, {"timeout": 0}], ids=["processes", "timeout"])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        Grader(**kwargs)


def test_empty_gold_is_rejected_before_grading(grader):
    with pytest.raises(ValueError, match="gold"):
        grader.grade_many([("", r"\boxed{1}")])


def test_worker_start_failure_raises_a_clear_error():
    # A parent script read from stdin cannot be re-imported by the workers, so none can start;
    # that must surface as one error, not as a batch of per-item failures.
    script = ("from retro_search.grading import Grader\n"
              "with Grader(processes=2, timeout=5) as g:\n"
              "    g.grade_many([('1', r'\\boxed{1}')] * 4)\n")
    run = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0
    assert "RuntimeError: a grading worker failed to start" in run.stderr
