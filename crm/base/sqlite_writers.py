"""SQLite writers wait their turn in the kernel, not in SQLite's sleeping busy handler.

SQLite lets one connection write at a time. A writer that finds the file locked calls the
busy handler, which *sleeps* 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between tries
(``sqliteDefaultBusyCallback``) whether or not the lock was freed meanwhile. With a web
process and reply processes each running several threads, a reply that meets two or three
other writers sleeps tens of milliseconds while the lock sits free: that is the long tail of
the reply benchmark on SQLite.

Here every connection of this app takes an exclusive ``flock`` on ``<database>-writer``
before the statement that opens its write transaction (pysqlite opens one before the first
INSERT, UPDATE, DELETE or REPLACE) and drops it when the transaction ends (commit,
rollback, close). A waiting writer notices a free gate within a millisecond
(``wait_for_gate``). SQLite's own locking stays what keeps the data safe; the gate only
orders writers (a process that does not take it, such as the ``sqlite3`` shell, still meets
the busy handler). The kernel drops a dead process's lock with its file descriptors.

Measured with ``bash bench/cpu_split.sh sqlite`` (20 users x 20 messages, the Procfile as
shipped, 2 cores), two runs of 3 each: without the gate p99 240-334 ms and the slowest
reply 307-918 ms; with it p99 133-144 ms and the slowest 142-223 ms. Replies per second
stay ~205 (the CPU is the limit there), and the median rises from ~80 to ~89 ms: writers
now take turns instead of some getting lucky. A blocking flock did a little better (p99
123-134 ms) but cannot give up on a writer that hangs.

Within a process, the threads that wait queue on a ``threading.Lock`` per gate file (asleep,
woken at once when the holder is done), so only one thread per process polls the file. When
every thread polled, the polling was 11 % of a reply process's Python time under load
(py-spy ``--gil``, 20 x 300, 2026-12-07).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sqlite3
import threading
import time

log = logging.getLogger(__name__)
# As long as SQLite's busy_timeout (crm.base.extensions): past it, SQLite gives up as well.
GATE_WAIT_S = 10.0
_OPENS_WRITE = re.compile(r"\s*(?:INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)
_holder = threading.local()  # whether this thread holds the gate, through any connection
_queues: dict[str, threading.Lock] = {}  # per gate file: the threads of this process waiting for it
_queues_lock = threading.Lock()


def _queue(gate: str) -> threading.Lock:
    with _queues_lock:
        return _queues.setdefault(gate, threading.Lock())


def _forget_queues() -> None:  # a forked child: its parent's waiters and holders are not its own
    global _queues_lock
    _queues.clear()
    _queues_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_queues)


def wait_for_gate(fd: int, timeout: float = GATE_WAIT_S) -> bool:
    """Take the gate's exclusive lock, trying again every 50 µs to 1 ms (False after ``timeout``).

    flock cannot wait with a deadline, and a blocking wait would outlive a writer that hangs
    (SQLite gives up after its busy_timeout). Polling this finely keeps the benefit: a waiter
    notices a free gate within a millisecond, where SQLite's handler sleeps up to 100 ms.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        pass
    deadline, pause = time.monotonic() + timeout, 0.00005
    while True:
        time.sleep(pause)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            pause = min(pause * 2, 0.001)


def gate_path(database: str) -> str | None:
    """The lock file of a database file (None for an in-memory database)."""
    if database.startswith("file:"):
        database, _, query = database[len("file:"):].partition("?")
        if "mode=memory" in query:
            return None
    if not database or database == ":memory:":
        return None
    return database + "-writer"


def engine_options(database_url: str) -> dict:
    """SQLAlchemy engine options that put an SQLite database's writers behind the gate."""
    if not database_url.startswith("sqlite"):
        return {}
    return {"connect_args": {"factory": WriterConnection}}


class WriterConnection(sqlite3.Connection):
    """An ``sqlite3.Connection`` whose write transactions pass the file's writer gate.

    Pass it as ``sqlite3.connect(..., factory=WriterConnection)`` (the app's engine does,
    through ``connect_args``)."""

    def __init__(self, database, *args, **kwargs):
        super().__init__(database, *args, **kwargs)
        self._gate = gate_path(os.fspath(database))
        self._fd: int | None = None
        self._fd_pid = 0
        self._holding = False
        self._queue: threading.Lock | None = None  # this process's queue for the gate, while we hold it

    def _enter(self, sql: str) -> None:
        if (self._gate is None or self._holding or self.in_transaction or getattr(_holder, "held", False)
                or not _OPENS_WRITE.match(sql)):
            return
        if self._fd is None or self._fd_pid != os.getpid():  # a forked child opens its own
            self._fd = os.open(self._gate, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fd_pid = os.getpid()
        deadline = time.monotonic() + GATE_WAIT_S
        queue = _queue(self._gate)
        if queue.acquire(timeout=GATE_WAIT_S):  # the turn among this process's threads, asleep
            try:
                if wait_for_gate(self._fd, max(deadline - time.monotonic(), 0.0)):  # then among processes
                    self._queue, self._holding, _holder.held = queue, True, True
                    return
            except BaseException:  # interrupted while waiting (RQ's SIGALRM): never keep the line
                if not self._holding:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)  # in case it was taken just before
                    queue.release()
                raise
            queue.release()
        log.warning("SQLite writer gate %s still taken after %.0f s; writing without it", self._gate,
                    GATE_WAIT_S, extra={"event": "db.writer_gate_timeout"})
        # SQLite's busy handler (busy_timeout) decides, as without the gate

    def _leave(self) -> None:
        if self._holding:
            self._holding = _holder.held = False
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                queue, self._queue = self._queue, None
                if queue is not None:
                    queue.release()

    def cursor(self, factory=None):
        return super().cursor(factory or WriterCursor)

    def execute(self, sql, *args):
        self._enter(sql)
        return super().execute(sql, *args)

    def executemany(self, sql, *args):
        self._enter(sql)
        return super().executemany(sql, *args)

    def commit(self):
        try:
            super().commit()
        finally:
            if not self.in_transaction:
                self._leave()

    def rollback(self):
        try:
            super().rollback()
        finally:
            self._leave()

    def close(self):
        try:
            super().close()
        finally:
            self._leave()
            if self._fd is not None and self._fd_pid == os.getpid():
                os.close(self._fd)
            self._fd = None


class WriterCursor(sqlite3.Cursor):
    def execute(self, sql, *args):
        self.connection._enter(sql)
        return super().execute(sql, *args)

    def executemany(self, sql, *args):
        self.connection._enter(sql)
        return super().executemany(sql, *args)
