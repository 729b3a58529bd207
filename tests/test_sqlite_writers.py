"""The SQLite writer gate (crm.base.sqlite_writers): held exactly while a write transaction is
open, so writers wait in the kernel instead of in SQLite's sleeping busy handler."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import threading

import pytest
from sqlalchemy import text

from crm.app import create_app
from crm.base.config import Settings
from crm.base.extensions import db
from crm.base.sqlite_writers import WriterConnection, gate_path, wait_for_gate
from tests.helpers import wait_for


@pytest.fixture
def database(tmp_path):
    path = str(tmp_path / "gate.sqlite3")
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x INTEGER)")
    return path


def connect(path: str, busy_ms: int = 10000) -> WriterConnection:
    conn = sqlite3.connect(path, factory=WriterConnection, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    return conn


def gate_taken(path: str) -> bool:
    """Whether someone holds the gate, seen from a file description of our own."""
    fd = os.open(gate_path(path), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_gate_is_held_from_the_first_write_to_the_commit(database):
    conn = connect(database)
    conn.execute("SELECT count(*) FROM t").fetchall()
    assert not gate_taken(database)  # reads never take it
    conn.execute("INSERT INTO t VALUES (1)")
    assert conn.in_transaction and gate_taken(database)
    conn.cursor().execute("UPDATE t SET x = 2")  # the same transaction: taken once
    conn.commit()
    assert not gate_taken(database)
    conn.cursor().executemany("INSERT INTO t VALUES (?)", [(3,), (4,)])
    assert gate_taken(database)
    conn.rollback()
    assert not gate_taken(database)
    conn.execute("INSERT INTO t VALUES (5)")
    conn.close()  # closing with the transaction open ends it, and frees the gate
    assert not gate_taken(database)


def test_a_failed_write_frees_the_gate_with_its_rollback(database):
    conn = connect(database)
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("INSERT INTO missing VALUES (1)")
    conn.rollback()
    assert not gate_taken(database)


def test_a_second_writer_waits_at_the_gate_and_goes_on_when_the_first_commits(database):
    first, second = connect(database), connect(database)
    first.execute("INSERT INTO t VALUES (1)")
    reached, done = threading.Event(), threading.Event()

    def write():
        reached.set()
        second.execute("INSERT INTO t VALUES (2)")
        second.commit()
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reached.wait(5)
    assert not done.wait(0.3), "the second writer went past the gate while the first held it"
    first.commit()
    assert done.wait(5)
    writer.join()
    assert [row[0] for row in first.execute("SELECT x FROM t ORDER BY x")] == [1, 2]
    assert not gate_taken(database)


def test_the_same_thread_writing_through_a_second_connection_does_not_wait_for_itself(database):
    """A thread that holds the gate never waits for it again: its second connection meets
    SQLite's own lock and busy timeout, as without the gate (no deadlock)."""
    first, second = connect(database), connect(database, busy_ms=50)
    first.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        second.execute("INSERT INTO t VALUES (2)")
    second.rollback()
    first.commit()
    assert not gate_taken(database)


def test_waiting_for_the_gate_gives_up_after_its_timeout(database):
    holder = connect(database)
    holder.execute("INSERT INTO t VALUES (1)")
    fd = os.open(gate_path(database), os.O_RDWR)
    try:
        assert wait_for_gate(fd, timeout=0.05) is False
        holder.commit()
        assert wait_for_gate(fd, timeout=0.05) is True
    finally:
        os.close(fd)


def test_a_killed_writer_frees_the_gate(database):
    child = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        "from crm.base.sqlite_writers import WriterConnection\n"
        f"c = sqlite3.connect({database!r}, factory=WriterConnection)\n"
        "c.execute('INSERT INTO t VALUES (1)')\n"
        "print('holding', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert child.stdout.readline().strip() == "holding"
        assert gate_taken(database)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert wait_for(lambda: not gate_taken(database), timeout=5)
    finally:
        child.kill()


def test_in_memory_databases_have_no_gate():
    assert gate_path(":memory:") is None
    assert gate_path("file:x?mode=memory&cache=shared") is None
    assert gate_path("file:/data/crm.sqlite3?mode=rw") == "/data/crm.sqlite3-writer"
    conn = sqlite3.connect(":memory:", factory=WriterConnection)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()


def test_the_apps_sqlite_engine_writes_through_the_gate(tmp_path, redis_url):
    path = tmp_path / "app.sqlite3"
    app = create_app(Settings.from_env({"DATABASE_URL": f"sqlite:///{path}", "REDIS_URL": redis_url}))
    with app.app_context():
        db.session.execute(text("CREATE TABLE t (x INTEGER)"))
        db.session.execute(text("INSERT INTO t VALUES (1)"))
        assert isinstance(db.session.connection().connection.dbapi_connection, WriterConnection)
        assert gate_taken(str(path))
        db.session.commit()
        assert not gate_taken(str(path))
        db.engine.dispose()


def test_a_thread_queued_behind_another_of_its_process_gives_up_after_the_timeout(database, monkeypatch, caplog):
    """Threads of one process wait for the gate in line (one polls the file, the others sleep);
    the line's wait is bounded too: past it the writer goes on without the gate and meets
    SQLite's own lock and busy timeout, as without the gate."""
    monkeypatch.setattr("crm.base.sqlite_writers.GATE_WAIT_S", 0.2)
    first, second = connect(database), connect(database, busy_ms=50)
    first.execute("INSERT INTO t VALUES (1)")
    failure: list[Exception] = []

    def write():
        try:
            second.execute("INSERT INTO t VALUES (2)")
        except sqlite3.OperationalError as exc:
            failure.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(5)
    assert not writer.is_alive() and "locked" in str(failure[0])
    assert any(getattr(r, "event", None) == "db.writer_gate_timeout" for r in caplog.records)
    second.rollback()
    first.commit()
    assert not gate_taken(database)
    second.execute("INSERT INTO t VALUES (3)")  # the line is free again
    second.commit()
    assert not gate_taken(database)


def test_threads_of_a_process_pass_the_gate_one_after_another(database):
    """Many threads of one process writing at once: each waits its turn and all get through."""
    done: list[int] = []

    def write(n: int) -> None:
        conn = connect(database)
        for i in range(20):
            conn.execute("INSERT INTO t VALUES (?)", (n * 100 + i,))
            conn.commit()
        done.append(n)
        conn.close()

    writers = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(30)
    assert sorted(done) == list(range(6))
    assert connect(database).execute("SELECT count(*) FROM t").fetchone()[0] == 120
    assert not gate_taken(database)


def test_a_writer_interrupted_while_waiting_leaves_the_line_free(database):
    """RQ's death penalty (SIGALRM) may interrupt a writer waiting for the gate: the next writer
    of the process must not wait behind it for ever."""
    other = os.open(gate_path(database), os.O_RDWR | os.O_CREAT)  # another process's writer
    fcntl.flock(other, fcntl.LOCK_EX)

    def interrupt(_signum, _frame):
        raise TimeoutError("death penalty")

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        waiting = connect(database)
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(TimeoutError):
            waiting.execute("INSERT INTO t VALUES (1)")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    waiting.rollback()
    writer = connect(database)
    done = threading.Event()

    def write():
        writer.execute("INSERT INTO t VALUES (2)")
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    assert done.wait(3), "the next writer is stuck behind the interrupted one"
    assert gate_taken(database)  # through the gate, not around it
    thread.join()
    writer.commit()
    assert not gate_taken(database)
