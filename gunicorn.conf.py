"""gunicorn settings (read automatically from the working directory), sized by the machine.

    WEB_CONCURRENCY   worker processes (default: one per usable core, capped by the memory
                      limit; see crm/base/sizing.py)
    WEB_THREADS       threads per process (default 4)
    WEB_ACCESS_LOG    "1" writes one access-log line per request to stdout (default off:
                      Heroku's router already logs every request, and at hundreds of webhooks
                      a second the lines cost CPU the replies need)
"""

import importlib.util
import os
import sys
from pathlib import Path

# Loaded by path: the sizing needs none of the application's imports.
_spec = importlib.util.spec_from_file_location("crm_sizing", Path(__file__).parent / "crm" / "base" / "sizing.py")
_sizing = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_sizing)
_plan = _sizing.plan()

worker_class = "gthread"  # keep-alive connections; measured no faster as 4 sync workers
workers = _plan.web_processes
threads = _plan.web_threads
loglevel = "warning"
accesslog = "-" if os.environ.get("WEB_ACCESS_LOG") == "1" else None
# The worker heartbeat touches a file on every loop; in memory it costs no disk I/O
# (gunicorn's advice for containers). Linux only; elsewhere the default temp directory.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None


def post_worker_init(worker):
    """Each web process pushes its metrics to Redis, where /metrics on any of them sums them."""
    from crm.base.metrics_store import start_pusher

    start_pusher(worker.wsgi)


def on_starting(server):
    """Import the application's code (not the app: no connections) once in the master: the
    workers fork with those pages shared copy-on-write. Measured with bench/procs.py memory:
    each web worker's PSS went from ~74 MB to ~45 MB."""
    from crm.app.worker import preload

    preload()
