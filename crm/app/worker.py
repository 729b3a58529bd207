"""RQ workers with the Flask app loaded once, before any job runs.

    python -m crm.app.worker high default      # the reply workers: a pool of WORKER_PROCESSES
    python -m crm.app.worker low               # the football worker: one process, lowest priority

The reply line of the Procfile starts the whole pool itself (``WORKER_PROCESSES``, default
one per usable core capped by the memory limit, each serving from ``WORKER_THREADS`` threads,
default 4, see ``crm/base/sizing.py``): one dyno or one honcho line runs exactly what the
benchmarks measure. The pool (``crm/app/pool.py``) imports the code once, forks, and each
child builds its own app (database engine, Redis client) after the fork; a dead child is
restarted with backoff, SIGTERM/SIGINT are forwarded for a warm shutdown. With one process
there is no pool: the worker runs in this process.

A reply worker pops the ready list of woken contacts (``crm:contacts:ready``, see
``crm.replies.wake``) together with RQ's queues, in one BLPOP (``ReadyQueue``): a contact is
served at once in this process, with no RQ job; jobs (a retry that is due, the expiry
sweep, ...) run as RQ jobs. The process's other threads (``ReadyThreads``) pop the ready list
alone and serve what they pop the same way, so while one turn waits on the Graph API the
others go on. Measured with ``bench/profile_turn.py``: RQ's bookkeeping was 49
Redis commands and about 40 % of the reply worker's CPU per turn when each wake was a job.

Why ``SimpleWorker`` (no fork per job): measured on this machine, a forking
worker takes about 19 ms to start each job even with the app preloaded, and
570 ms when each child re-imports Flask and SQLAlchemy; SimpleWorker takes
about 4 ms. Replies are the product, so a reply worker runs in-process
and the pool scales by processes. Timeouts still apply (RQ's SIGALRM death penalty,
also around each contact served), and a contact lost with a crashed process is
recovered from the database inbox (``crm.replies.recovery``).

The football worker lowers its own CPU and I/O priority before it builds the app (nice 19,
the idle I/O class, and, when Linux groups CPU time by session (autogroup) and the session is
the worker's own, the session's nice too), so a sync never takes CPU time from replies.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.timeouts import JobTimeoutException
from rq.utils import as_text
from rq.worker import WorkerStatus

import crm.replies.contact  # noqa: F401 - every job module is imported before the first job
import crm.replies.expiry  # noqa: F401
import crm.replies.recovery  # noqa: F401
import football.jobs  # noqa: F401
from crm.app import create_app
from crm.app.pool import die_with_parent
from crm.base import keys
from crm.base.extensions import db, queues_on, redis_client
from crm.base.locks import ContactLock
from crm.base.metrics_store import start_pusher
from crm.base.outages import OUTAGE_ERRORS, OutageLog
from crm.replies.contact import serve_ready
from crm.replies.wake import hand_back, ready_contact

log = logging.getLogger("crm.app.worker")


class AppWorker(SimpleWorker):
    """Runs every job inside the application context and cleans the session after it."""

    app = None
    # RQ refreshes the worker's liveness key (HSET + EXPIRE) three times per job; the key
    # lives worker_ttl + 60 s, so once every few seconds is plenty. Measured: ~7 % of a reply
    # worker's CPU went to these heartbeats.
    heartbeat_every = 5.0
    _heartbeat_sent = 0.0

    def heartbeat(self, timeout=None, pipeline=None):
        now = time.monotonic()
        if timeout is None and now - self._heartbeat_sent < self.heartbeat_every:
            return
        self._heartbeat_sent = now
        super().heartbeat(timeout, pipeline)

    def execute_job(self, job, queue):
        with self.app.app_context():
            try:
                return super().execute_job(job, queue)
            finally:
                db.session.remove()

    # Contacts the main thread serves in a row, each taking the next in the round trip that frees
    # the last, before it goes back to RQ's pop (which returns the ready list first anyway).
    CHAIN = 100

    def serve(self, contact_id: int) -> None:
        """Serve a contact popped off the ready list, in this process, as a job would run; then,
        while the ready list holds more, the contact its ``finish`` took (``ReadyThreads``).

        RQ's job timeout applies to each (its death penalty, SIGALRM), and a SIGTERM meanwhile
        waits for the turn to end (RQ's warm shutdown looks at the state), then stops the worker:
        a contact taken meanwhile is handed back to the ready list.
        """
        lock: ContactLock | None = None
        for served in range(1, self.CHAIN + 1):
            following = ContactLock(self.app.extensions["redis"], None) if served < self.CHAIN else None
            self._state = WorkerStatus.BUSY  # in memory only: RQ's shutdown handler reads it
            try:
                try:
                    with self.death_penalty_class(keys.CONTACT_JOB_TIMEOUT, JobTimeoutException):
                        serve_in(self.app, contact_id, lock, following)
                except JobTimeoutException:  # the lock expires; the marker too, then recovery wakes it
                    log.error("serving contact %s took longer than %s s; abandoned", contact_id,
                              keys.CONTACT_JOB_TIMEOUT, extra={"event": "flow.task_timeout", "contact_id": contact_id})
            except BaseException:
                _to_serve_next(following, stopping=True)
                raise
            finally:
                self._state = WorkerStatus.IDLE
            lock = _to_serve_next(following, stopping=self._stop_requested)
            if self._stop_requested:
                raise StopRequested()
            self.heartbeat()  # RQ's loop does these between jobs; a busy ready list may never let it
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            if lock is None:
                return
            contact_id = lock.contact_id


def _to_serve_next(following: ContactLock | None, stopping: bool) -> ContactLock | None:
    """The lock of the contact ``finish`` took (None: it took none), to serve next; when its
    server is ``stopping``, the contact goes back to the ready list instead (with Redis away, its
    lock and marker expire and recovery wakes it)."""
    if following is None or following.contact_id is None:
        return None
    if not stopping:
        return following
    with contextlib.suppress(*OUTAGE_ERRORS):
        hand_back(following)
    return None


def serve_in(app, contact_id: int, lock: ContactLock | None = None, next_lock: ContactLock | None = None) -> None:
    """Serve a contact popped off the ready list, in its own application context and session
    (``lock`` and ``next_lock``: see ``crm.replies.contact.serve_contact``)."""
    with app.app_context():
        try:
            serve_ready(contact_id, lock, next_lock)
        finally:
            db.session.remove()


class ReadyThreads:
    """The other servers of the ready list in a reply process: ``count`` threads that each pop a
    contact (BLPOP on the ready list alone; the main thread also watches RQ's queues) and serve
    it, so the process keeps answering while a turn waits on the Graph API or the database.
    While the list holds more, the round trip that frees a served contact also takes the next
    one, locked (``crm.replies.wake.finish``); so does the main thread, up to ``AppWorker.CHAIN``
    contacts in a row (RQ's pop, to which it then goes back, returns the ready list first anyway).

    Only the main thread gets signals, so these turns have no SIGALRM death penalty: a turn is
    bounded by the Graph API's timeouts and the database's, and the contact's lock expires in
    any case. ``stop`` lets each thread finish the contact it holds (the warm shutdown).
    """

    POLL = 1.0  # seconds a thread blocks on the ready list before it looks at the stop flag

    def __init__(self, app, count: int):
        self.app, self.count = app, count
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.count):
            thread = threading.Thread(target=self._run, name=f"ready-{i + 1}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        redis, wait = self.app.extensions["redis"], 1.0
        taken: ContactLock | None = None  # the next contact, locked by the last one's finish
        while taken is not None or not self._stop.is_set():
            lock, taken = taken, None
            if lock is not None:
                contact_id = lock.contact_id
            else:
                try:
                    found = redis.blpop([keys.READY], timeout=self.POLL)
                except OUTAGE_ERRORS:  # the main thread logs the outage; here: wait, with backoff
                    self._stop.wait(wait)
                    wait = min(wait * 2, 10.0)
                    continue
                wait = 1.0
                if found is None:
                    continue
                contact_id = ready_contact(found[1])
                if contact_id is None:
                    continue
            # While the ready list holds more, freeing this contact takes the next one (one round
            # trip where BLPOP and the lock's SET were two more); not once asked to stop.
            following = None if self._stop.is_set() else ContactLock(redis, None)
            try:
                serve_in(self.app, contact_id, lock, following)  # serve_ready logs a contact's failure
            except Exception:  # outside the contact's serve (its app context): never end the thread
                log.exception("serving contact %s failed", contact_id,
                              extra={"event": "flow.task_failed", "contact_id": contact_id})
            taken = _to_serve_next(following, stopping=self._stop.is_set())  # a warm shutdown: handed back


class ReadyQueue(Queue):
    """RQ's queue class for the reply workers: the pop also watches the ready list.

    ``BLPOP crm:contacts:ready rq:queue:high rq:queue:default``: a contact id is served at once,
    in this process, with no RQ job (``AppWorker.serve``); a job id is handed to RQ as usual.
    A wake costs one Redis round trip and a turn no job bookkeeping (measured with
    ``bench/profile_turn.py``: 49 Redis commands per turn before, most of them RQ's).
    """

    worker: AppWorker | None = None  # set per worker (build_worker)

    @classmethod
    def lpop(cls, queue_keys, timeout, connection=None):
        watched = [keys.READY, *queue_keys]
        while True:
            found = super().lpop(watched, timeout, connection=connection)
            if found is None or as_text(found[0]) != keys.READY:
                return found
            contact_id = ready_contact(found[1])
            if contact_id is not None:
                cls.worker.serve(contact_id)

    @classmethod
    def lmove(cls, connection, queue_key, timeout):
        # RQ moves the job of a lone queue to an intermediate list with BLMOVE, which cannot
        # watch two lists: a reply worker on ``high`` alone pops with BLPOP like the others.
        return cls.lpop([queue_key], timeout, connection=connection)


# What create_app and the first jobs import: the pool imports them once, before it forks.
# (this module's own imports load the job modules and the app factory with everything it imports)
PRELOAD = ("rq_dashboard.web", "integrations.whatsapp.client", "sqlite3", "psycopg")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def settle() -> None:
    """Put every object alive now (the imported code, then the app and its caches) out of the
    garbage collector's reach (``gc.freeze``): its collections then walk only what the work
    allocates, and a forked child never copies the parent's pages by collecting them.

    Measured in-process over 1 000 webhook + reply turns (``bench/profile_turn.py``): 191 ms
    of collections (three full ones of ~35 ms each, a pause for every contact served by the
    process meanwhile) without, 20 ms with the startup objects frozen. End to end the change
    is within the noise (``bench/cpu_split.sh sqlite``, two alternated runs of 3: 5.4-6.3 ms
    of CPU per reply and p99 104-131 ms either way), as is the reply workers' PSS.
    """
    gc.freeze()


def build_worker(app, queue_names: list[str], name: str | None = None) -> AppWorker:
    """An RQ worker for ``queue_names``; a reply worker (``high``) also serves the ready list.

    RQ gets a Redis client of its own: it raises the socket timeout of its client's connection
    pool for its long BLPOP (to the dequeue timeout + 10 s, 415 s). On the app's pool that would
    reach every command of the process; and a connection the process's other threads had opened
    with the app's 5 s, handed to RQ's BLPOP, timed out every few seconds ("Redis connection
    timeout, quitting...", seen with reply threads).
    """
    connection = redis_client(app.config["SETTINGS"])
    queues = list(queues_on(connection, queue_names).values())
    worker_class = type("AppWorker", (AppWorker,), {"app": app})
    worker = worker_class(queues, connection=connection, name=name)
    if keys.HIGH in queue_names:
        worker.queue_class = type("ReadyQueue", (ReadyQueue,), {"worker": worker})
    return worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queues", nargs="+", choices=keys.QUEUE_NAMES)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--name")
    parser.add_argument("--processes", type=int, help="reply processes (default: WORKER_PROCESSES or sized "
                                                      "from the cores and memory limit)")
    parser.add_argument("--threads", type=int, help="contacts each reply process serves at once "
                                                    "(default: WORKER_THREADS or 4; 1 with --burst)")
    args = parser.parse_args(argv)
    if keys.LOW in args.queues and keys.HIGH in args.queues:
        parser.error("football jobs (low) must not share a process with replies (high)")
    os.environ.setdefault("TZ", "UTC")
    from crm.base import sizing
    from crm.base.config import Settings
    from crm.base.logs import configure_logging

    configure_logging(Settings.from_env().log_level)
    if keys.LOW in args.queues:
        lower_priority()
        return start(args.queues, args.name, args.burst)
    try:
        plan = sizing.plan()
    except sizing.SizingError as exc:
        parser.error(str(exc))
    size = args.processes or plan.reply_processes
    threads = 1 if args.burst else args.threads or plan.reply_threads  # a burst drains and exits: one thread
    if size < 1 or threads < 1:
        parser.error("--processes and --threads must be at least 1")
    log.info("reply workers: %d process(es) x %d thread(s) on %s", size, threads, sizing.detect().describe(),
             extra={"event": "worker.pool"})
    if size == 1:
        return start(args.queues, args.name, args.burst, threads)
    from crm.app.pool import Pool

    preload()  # imported once here, shared copy-on-write by the children
    settle()

    def child(index: int) -> int:  # RQ refuses a name a live (or crashed, until its key expires) worker has
        return start(args.queues, f"{args.name}-{index}-{os.getpid()}" if args.name else None, args.burst,
                     threads)

    return Pool(size, child, name="reply worker", restart=not args.burst).run()


def start(queue_names: list[str], name: str | None, burst: bool, threads: int = 1) -> int:
    """Build this process's app (after any fork) and work: the main thread runs RQ's worker,
    ``threads - 1`` more serve the ready list (reply processes only)."""
    # A process forked from this one (RQ's scheduler) holds copies of its sockets. Were this
    # process killed (the OOM killer, SIGKILL), the copies would keep its threads' BLPOP
    # connections open, and Redis would hand woken contacts to readers that are gone: the
    # child dies with its parent (seen in test_worker_killed_mid_job_loses_nothing).
    os.register_at_fork(after_in_child=lambda: die_with_parent(os.getppid()))
    app = create_app()
    start_pusher(app)  # this process's metrics reach /metrics through Redis
    settle()
    others = ReadyThreads(app, threads - 1) if keys.HIGH in queue_names and threads > 1 else None
    if others:
        others.start()
    try:
        return run(app, queue_names, name, burst=burst)
    finally:
        if others:
            others.stop()  # after RQ's warm shutdown: each thread finishes its contact


def run(app, queue_names: list[str], name: str | None = None, burst: bool = False) -> int:
    """Work the queues until asked to stop, riding out Redis and database outages.

    RQ retries a lost connection only while it waits for a job; anywhere else (start-up, a
    heartbeat, its bookkeeping after a job) the error ends ``work()``. Then we wait, with
    backoff, log once per state change, and start a fresh worker: the process never exits
    for an outage, so honcho (which stops every process when one exits) keeps the stack up.
    """
    outages = OutageLog(log)
    wait = 1.0
    while True:
        worker = None
        try:
            worker = build_worker(app, queue_names, name)  # RQ talks to Redis here already
            # RQ's own lines (4 per job at INFO) repeat our one line per message: WARNING by default.
            worker.work(burst=burst, with_scheduler=True, logging_level=app.config["SETTINGS"].rq_log_level)
        except OUTAGE_ERRORS as exc:
            outages.down("redis", exc)
        except Exception as exc:  # anything else RQ raised: log it, never exit for it
            log.exception("the RQ worker stopped on %s; starting a fresh one", type(exc).__name__,
                          extra={"event": "worker.restart"})
        else:
            # A SIGTERM/SIGINT while idle ends work() without setting _stop_requested (RQ only
            # sets it when a job is running): the shutdown date says it was asked to stop.
            if burst or worker._stop_requested or worker._shutdown_requested_date is not None:
                return 0
            # RQ logged why it quit (an error it did not expect): start a fresh worker.
            if _redis_down(app):
                outages.down("redis", ConnectionError("the worker stopped"))
        time.sleep(wait)
        wait = min(wait * 2, 10.0)
        if not _redis_down(app):
            outages.up("redis")
            wait = 1.0


# -- football: lowest priority -------------------------------------------------------------
IOPRIO_SET = {"x86_64": 251, "aarch64": 30, "i686": 289, "armv7l": 314}  # syscall numbers
IOPRIO_WHO_PROCESS, IOPRIO_CLASS_IDLE, IOPRIO_CLASS_SHIFT = 1, 3, 13


def _idle_io_class() -> str:
    number = IOPRIO_SET.get(platform.machine())
    if number is not None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syscall(number, IOPRIO_WHO_PROCESS, 0, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT) == 0:
                return "idle"
        except (OSError, AttributeError):
            pass
    binary = shutil.which("ionice")
    if binary and subprocess.run([binary, "-c", "3", "-p", str(os.getpid())], capture_output=True).returncode == 0:
        return "idle (ionice)"
    return "unchanged (no ioprio_set here)"


def _stat(pid: str) -> tuple[int, int] | None:
    """(parent pid, session id) from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[3])


def session_is_ours() -> bool:
    """True when every process of our session is this process, an ancestor or a descendant
    (honcho, systemd and a dyno start each process type in its own session)."""
    me, sid = os.getpid(), os.getsid(0)
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) is not None}
    ancestors, pid = set(), me
    while pid in stats and pid not in ancestors and stats[pid][1] == sid:
        ancestors.add(pid)
        pid = stats[pid][0]

    def descendant(pid: int) -> bool:
        seen = set()
        while pid in stats and pid not in seen:
            if pid == me:
                return True
            seen.add(pid)
            pid = stats[pid][0]
        return False

    return all(pid in ancestors or descendant(pid) for pid, (_ppid, session) in stats.items() if session == sid)


def _autogroup_nice() -> str:
    """Linux schedules sessions against each other (autogroup) before it looks at nice values
    inside a session: nice 19 alone does nothing against a reply worker in another session."""
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            if f.read().strip() != "1":
                return "off"
        if not session_is_ours():
            return "shared session, left alone"
        with open("/proc/self/autogroup", "w") as f:
            f.write("19")
        return "19"
    except OSError as exc:
        return f"unchanged ({exc.strerror or exc})"


def lower_priority() -> dict[str, str]:
    """nice 19, idle I/O class, and the session's autogroup nice; best effort, logged once."""
    try:
        cpu = str(os.nice(19 - os.nice(0)))
    except OSError as exc:
        cpu = f"unchanged ({exc.strerror})"
    done = {"nice": cpu, "io_class": _idle_io_class(), "autogroup": _autogroup_nice()}
    log.info("football worker priority: nice %s, I/O class %s, autogroup %s", done["nice"], done["io_class"],
             done["autogroup"], extra={"event": "worker.priority"})
    return done


def _redis_down(app) -> bool:
    try:
        app.extensions["redis"].ping()
        return False
    except OUTAGE_ERRORS:
        return True


if __name__ == "__main__":
    sys.exit(main())
