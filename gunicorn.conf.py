"""gunicorn settings (read automatically from the working directory), sized by environment.

    WEB_CONCURRENCY   worker processes (default 2)
    WEB_THREADS       threads per process (default 4)
    WEB_ACCESS_LOG    "1" writes one access-log line per request to stdout (default off:
                      Heroku's router already logs every request, and at hundreds of webhooks
                      a second the lines cost CPU the replies need)
"""

import os

worker_class = "gthread"  # keep-alive connections; measured no faster as 4 sync workers
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "4"))
loglevel = "warning"
accesslog = "-" if os.environ.get("WEB_ACCESS_LOG") == "1" else None
# The worker heartbeat touches a file on every loop; in memory it costs no disk I/O
# (gunicorn's advice for containers). Linux only; elsewhere the default temp directory.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None


def post_worker_init(worker):
    """Each web process pushes its metrics to Redis, where /metrics on any of them sums them."""
    from crm.base.metrics_store import start_pusher

    start_pusher(worker.wsgi)
