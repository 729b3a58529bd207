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
    worker = build_worker(app, args.queues, args.name)
    # RQ's own lines (4 per job at INFO) repeat what our one line per message says: WARNING by default.
    worker.work(burst=args.burst, with_scheduler=True, logging_level=app.config["SETTINGS"].rq_log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
