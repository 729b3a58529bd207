"""The web process: Granian serving the Flask app, sized from the machine.

    python -m crm.app.server            # the Procfile's web line

``WEB_CONCURRENCY`` worker processes (default: one per usable core, capped by the memory
limit; see ``crm/base/sizing.py``) with ``WEB_THREADS`` threads each (default 4) on ``PORT``
(default 8000). ``WEB_ACCESS_LOG=1`` writes one access-log line per request (default off:
Heroku's router already logs every request, and at hundreds of webhooks a second the lines
cost CPU the replies need).

Why Granian and not gunicorn: its HTTP server is Rust, the WSGI call is the only Python per
request. Measured on this machine (2 cores), 2 000 signed webhooks one after the other over
one keep-alive connection, CPU of the server's processes per webhook (SQLite, medians of 2):
gunicorn (gthread, 2 x 4) 2.97 ms, p50 3.4 ms; Granian (2 x 4) 1.98 ms, p50 2.2 ms.

The parent imports the application's code before it forks the workers, which then share
those pages copy-on-write (gunicorn's preload, measured there: ~74 -> ~45 MB PSS per
worker); each worker builds its own app (database engine, Redis client) and starts pushing
its metrics to Redis, where ``/metrics`` on any of them sums them. SIGTERM/SIGINT stop the
workers gracefully; a worker that dies is started again.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from flask import Flask
from granian.constants import Interfaces
from granian.log import LogLevels
from granian.server import Server

from crm.app import create_app
from crm.app.worker import preload, settle
from crm.base import sizing
from crm.base.config import Settings
from crm.base.logs import configure_logging
from crm.base.metrics_store import start_pusher

log = logging.getLogger("crm.app.server")


def web_app() -> Flask:
    """The app of one web worker (Granian calls this in the worker, after the fork)."""
    app = create_app()
    start_pusher(app)
    settle()
    return app


def options(env: Mapping[str, str] | None = None) -> dict:
    """Granian's settings for this machine and environment (raises ``sizing.SizingError``)."""
    env = os.environ if env is None else env
    plan = sizing.plan(env)
    return {
        "target": "crm.app.server:web_app", "factory": True, "interface": Interfaces.WSGI,
        "address": env.get("WEB_HOST", "0.0.0.0"),  # noqa: S104 - a dyno's router reaches it on PORT
        "port": int(env.get("PORT") or 8000),
        "workers": plan.web_processes, "blocking_threads": plan.web_threads, "websockets": False,
        "log_level": LogLevels.warning, "log_access": env.get("WEB_ACCESS_LOG") == "1",
        "respawn_failed_workers": True,
    }


def main() -> int:
    try:
        settings = options()
    except sizing.SizingError as exc:
        print(f"web: {exc}", file=sys.stderr)
        return 2
    preload()  # imported once here, shared copy-on-write by the forked workers
    settle()
    configure_logging(Settings.from_env().log_level)
    log.info("web: %d process(es) x %d thread(s) on port %d (%s)", settings["workers"], settings["blocking_threads"],
             settings["port"], sizing.detect().describe(), extra={"event": "web.start"})
    Server(**settings).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
