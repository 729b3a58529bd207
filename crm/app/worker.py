"""RQ worker with the Flask app loaded once, before any job runs.

    python -m crm.app.worker high default      # the reply worker
    python -m crm.app.worker low               # the football worker

Why ``SimpleWorker`` (no fork per job): measured on this machine, a forking
worker takes about 19 ms to start each job even with the app preloaded, and
570 ms when each child re-imports Flask and SQLAlchemy; SimpleWorker takes
about 4 ms. Replies are the product, so the reply worker runs jobs in-process
and scales by running more processes (``honcho start -c worker=N`` or more
dynos). Nothing forks after the app is created, so no database connection is
ever shared between processes. Job timeouts still apply (SIGALRM), and a job
lost with a crashed process is recovered from the database inbox
(``crm.replies.contact.recover_stalled``) and by RQ's abandoned-job handling.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from rq import SimpleWorker

import crm.replies.contact  # noqa: F401 - every job module is imported before the first job
import crm.replies.expiry  # noqa: F401
import crm.replies.recovery  # noqa: F401
import football.jobs  # noqa: F401
from crm.app import create_app
from crm.base import keys
from crm.base.extensions import db
from crm.base.metrics_store import start_pusher
from crm.base.outages import OUTAGE_ERRORS, OutageLog

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


def build_worker(app, queue_names: list[str], name: str | None = None) -> AppWorker:
    queues = [app.extensions["queues"][q] for q in queue_names]
    worker_class = type("AppWorker", (AppWorker,), {"app": app})
    return worker_class(queues, connection=app.extensions["redis"], name=name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queues", nargs="+", choices=keys.QUEUE_NAMES)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--name")
    args = parser.parse_args(argv)
    if keys.LOW in args.queues and keys.HIGH in args.queues:
        parser.error("football jobs (low) must not share a process with replies (high)")
    os.environ.setdefault("TZ", "UTC")
    app = create_app()
    start_pusher(app)  # this process's metrics reach /metrics through Redis
    return run(app, args.queues, args.name, burst=args.burst)


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
            if burst or worker._stop_requested:
                return 0
            # RQ logged why it quit (an error it did not expect): start a fresh worker.
            if _redis_down(app):
                outages.down("redis", ConnectionError("the worker stopped"))
        time.sleep(wait)
        wait = min(wait * 2, 10.0)
        if not _redis_down(app):
            outages.up("redis")
            wait = 1.0


def _redis_down(app) -> bool:
    try:
        app.extensions["redis"].ping()
        return False
    except OUTAGE_ERRORS:
        return True


if __name__ == "__main__":
    sys.exit(main())
