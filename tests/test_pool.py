"""The worker pool: restarts, crash loops, signals; the football worker's lowered priority."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ROOT, make_env, terminate, wait_for

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[3])
    from crm.app.pool import Pool

    mode, marks = sys.argv[1], sys.argv[2]

    def note(text):
        with open(marks, "a") as f:
            f.write(text + "\\n")

    def target(index):
        note(f"start {index} {os.getpid()}")
        if mode == "crash":
            sys.exit(3)
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        while not stop:
            time.sleep(0.02)
        time.sleep(0.3)  # the job in hand finishes
        note(f"finished {index}")
        return 0

    sys.exit(Pool(2, target, backoff=0.05, max_quick_exits=3).run())
""")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def pool(tmp_path):
    script, marks = tmp_path / "pool.py", tmp_path / "marks"
    script.write_text(SCRIPT)
    marks.touch()
    procs = []

    def start(mode: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(script), mode, str(marks), str(ROOT)],
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    def lines(word: str) -> list[list[str]]:
        return [line.split()[1:] for line in marks.read_text().splitlines() if line.startswith(word)]

    yield start, lines
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_children_that_keep_dying_at_start_stop_the_pool(pool):
    start, lines = pool
    proc = start("crash")
    assert proc.wait(30) == 1
    starts = [index for index, _pid in lines("start")]
    # restarted with backoff until one child has died three times in a row, then no more
    assert max(starts.count("0"), starts.count("1")) == 3 and len(starts) <= 6
    assert "giving up" in proc.stderr.read()


def test_a_dead_child_is_replaced_and_sigterm_is_a_warm_shutdown(pool):
    start, lines = pool
    proc = start("serve")
    assert wait_for(lambda: len(lines("start")) == 2, 20)
    first = {index: int(pid) for index, pid in lines("start")}
    os.kill(first["0"], signal.SIGKILL)
    assert wait_for(lambda: len(lines("start")) == 3, 20)
    index, pid = lines("start")[-1]
    assert index == "0" and int(pid) != first["0"] and alive(int(pid))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert sorted(i for (i,) in lines("finished")) == ["0", "1"]  # both children finished their work
    assert not alive(int(pid)) and not alive(first["1"])


def test_children_stop_when_the_pool_is_killed(pool):
    start, lines = pool
    proc = start("serve")
    assert wait_for(lambda: len(lines("start")) == 2, 20)
    proc.kill()
    proc.wait(10)
    pids = [int(pid) for _index, pid in lines("start")]
    assert wait_for(lambda: not any(alive(pid) for pid in pids), 10)
    assert len(lines("finished")) == 2  # told to stop (SIGTERM), not killed


def test_reply_worker_pool_finishes_the_running_job_on_sigterm(tmp_path, redis_url):
    """``python -m crm.app.worker high default`` starts WORKER_PROCESSES workers; SIGTERM lets a
    running job finish, then every process exits."""
    from redis import Redis
    from rq import Queue

    env = {**os.environ, **make_env(f"sqlite:///{tmp_path / 'w.sqlite3'}", redis_url, "http://127.0.0.1:9"),
           "WORKER_PROCESSES": "3", "LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT)}
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    proc = subprocess.Popen([sys.executable, "-m", "crm.app.worker", "high", "default"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        from rq import Worker

        assert wait_for(lambda: len(Worker.all(connection=redis)) == 3, 30)
        pids = [w.pid for w in Worker.all(connection=redis)]
        job = Queue("high", connection=redis).enqueue("time.sleep", 1.5)
        assert wait_for(lambda: job.get_status(refresh=True) == "started", 10)
    finally:
        code = terminate(proc)
    assert code == 0
    assert job.get_status(refresh=True) == "finished"
    assert not any(alive(pid) for pid in pids)
    log = proc.stderr.read()
    assert "reply workers: 3 process(es)" in log


def test_football_worker_lowers_its_priority(tmp_path, redis_url):
    from redis import Redis
    from rq import Queue

    env = {**os.environ, **make_env(f"sqlite:///{tmp_path / 'f.sqlite3'}", redis_url, "http://127.0.0.1:9"),
           "LOG_LEVEL": "INFO", "PYTHONPATH": str(ROOT)}
    redis = Redis.from_url(redis_url)
    redis.flushdb()
    job = Queue("low", connection=redis).enqueue("os.nice", 0)  # answers the worker's niceness
    # its own session, as honcho, systemd or a dyno start it
    proc = subprocess.run([sys.executable, "-m", "crm.app.worker", "low", "--burst"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert job.get_status(refresh=True) == "finished" and job.return_value() == 19
    assert "football worker priority: nice 19" in proc.stderr
    if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1":
        assert "autogroup 19" in proc.stderr


def test_session_check_sees_foreign_processes():
    check = f"{sys.executable} -c 'from crm.app.worker import session_is_ours as s; print(s())'"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(command: str) -> str:
        done = subprocess.run(["sh", "-c", command], cwd=ROOT, capture_output=True, text=True, env=env,
                              start_new_session=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run(f"exec {check}") == "True"  # a session of its own (its shell is an ancestor)
    # an orphaned sleep (neither ancestor nor descendant) shares the session: leave its nice alone
    assert run(f"(sleep 2 >/dev/null 2>&1 &); exec {check}") == "False"
