"""A small process supervisor: N forked children, restarted when they die.

    Pool(4, run_child).run()        # returns the exit status for the whole pool

Used by ``python -m crm.app.worker high default`` to run ``WORKER_PROCESSES`` reply workers from
the one Procfile line, so that a deployment runs the shape the benchmarks measure.

Why not RQ's ``rq.worker_pool.WorkerPool`` (read in RQ 2.12):
* it restarts a dead worker at once, every second, forever: a worker that cannot start
  (a bad ``DATABASE_URL``, PostgreSQL refusing connections) becomes a fork loop and the pool
  never exits, so the platform never sees the crash. Here a child that dies within
  ``quick_exit`` seconds is restarted with exponential backoff, and after ``max_quick_exits``
  such deaths in a row the pool stops the others and exits 1;
* its children build the worker from the pool's Redis connection parameters and the worker
  class alone; ours must build the Flask app (database engine, Redis client, logging) in the
  child, after the fork, so no connection is ever shared between processes;
* it installs RQ's plain-text log handler at INFO on its own logger (our logs are JSON);
* the pool is documented as beta.
What this module keeps from it: forked children (the parent imports the code once, so the
children share those pages copy-on-write, which matters on a 512 MB dyno), SIGINT to the
children for a warm shutdown, and RQ's rule that a second signal within a second is the same
shutdown (honcho and Heroku signal every process of the group, and the pool forwards too).

Signals: SIGTERM and SIGINT are forwarded to every child (RQ: finish the current job, then
exit; a second SIGINT later is a cold shutdown); the pool then waits for the children and
exits 0. Children ask the kernel for SIGTERM if the pool itself dies (Linux), so a killed
pool leaves no workers behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
PR_SET_PDEATHSIG = 1


@dataclass
class _Slot:
    index: int
    pid: int | None = None
    started: float = 0.0
    quick_exits: int = 0  # consecutive deaths within quick_exit seconds of starting
    restart_at: float | None = None
    last_status: int = 0


def die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this child when the pool process dies (best effort elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Pool:
    def __init__(self, size: int, target: Callable[[int], int | None], *, name: str = "worker",
                 restart: bool = True, quick_exit: float = 5.0, max_quick_exits: int = 5,
                 backoff: float = 0.5, max_backoff: float = 30.0):
        if size < 1:
            raise ValueError("a pool needs at least one process")
        self.size, self.target, self.name, self.restart = size, target, name, restart
        self.quick_exit, self.max_quick_exits = quick_exit, max_quick_exits
        self.backoff, self.max_backoff = backoff, max_backoff
        self.slots = [_Slot(i) for i in range(size)]
        self.stopping = False
        self.status = 0

    # -- the supervisor loop ---------------------------------------------------------------
    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        previous = {sig: signal.signal(sig, lambda *_: None) for sig in _SIGNALS}
        previous_fd = signal.set_wakeup_fd(wake_w)
        self._fds = (wake_r, wake_w)
        try:
            log.info("%s pool: starting %d process(es)", self.name, self.size,
                     extra={"event": "pool.start"})
            for slot in self.slots:
                self._spawn(slot)
            while any(s.pid for s in self.slots) or self._pending():
                select.select([wake_r], [], [], self._timeout())
                for sig in self._drain(wake_r):
                    if sig in (signal.SIGTERM, signal.SIGINT):
                        self.stop(sig)
                self._reap()
                self._restart_due()
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        log.info("%s pool: stopped (status %d)", self.name, self.status, extra={"event": "pool.stop"})
        return self.status

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Forward ``sig`` to every child; restart nothing from now on."""
        if not self.stopping:
            log.info("%s pool: %s, stopping %d process(es) after their current job", self.name,
                     signal.Signals(sig).name, sum(1 for s in self.slots if s.pid), extra={"event": "pool.stopping"})
        self.stopping = True
        for slot in self.slots:
            slot.restart_at = None
            if slot.pid:
                try:
                    os.kill(slot.pid, sig)
                except ProcessLookupError:
                    pass

    def _pending(self) -> bool:
        return not self.stopping and any(s.restart_at is not None for s in self.slots)

    def _timeout(self) -> float:
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        # Wake at least every 5 s: a lost SIGCHLD (two children dying at once) is still reaped.
        return max(0.0, min([5.0] + [d - time.monotonic() for d in due]))

    @staticmethod
    def _drain(fd: int) -> bytes:
        out = b""
        while True:
            try:
                chunk = os.read(fd, 512)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            out += chunk

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is not None:
                self._exited(slot, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: _Slot, code: int) -> None:
        uptime = time.monotonic() - slot.started
        slot.pid, slot.last_status = None, code
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
        if self.stopping or not self.restart:
            if code != 0 and not (self.stopping and code in (-signal.SIGTERM, -signal.SIGINT)):
                self.status = 1
            log.info("%s %d exited with %s", self.name, slot.index, how, extra={"event": "pool.exit"})
            return
        slot.quick_exits = slot.quick_exits + 1 if uptime < self.quick_exit else 0
        if slot.quick_exits >= self.max_quick_exits:
            log.error("%s %d died %d times within %.0f s of starting (last: %s): giving up",
                      self.name, slot.index, slot.quick_exits, self.quick_exit, how,
                      extra={"event": "pool.crash_loop"})
            self.status = 1
            self.stop(signal.SIGTERM)
            return
        delay = min(self.max_backoff, self.backoff * 2 ** slot.quick_exits)
        slot.restart_at = time.monotonic() + delay
        log.warning("%s %d exited with %s after %.1f s; restarting in %.1f s", self.name, slot.index, how,
                    uptime, delay, extra={"event": "pool.restart"})

    def _restart_due(self) -> None:
        if self.stopping:
            return
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now:
                slot.restart_at = None
                self._spawn(slot)

    # -- a child ---------------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        parent = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # no handler of ours may run in the child
        try:
            pid = os.fork()
            if pid == 0:
                self._child(slot.index, parent)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        slot.pid, slot.started = pid, time.monotonic()

    def _child(self, index: int, parent: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for fd in self._fds:
                os.close(fd)
            for sig in _SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            die_with_parent(parent)
            code = self.target(index) or 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - whatever kills a child is logged, the pool decides
            log.exception("%s %d crashed", self.name, index, extra={"event": "pool.crash"})
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001, S110 - nothing left to report to
                    pass
            os._exit(code)
