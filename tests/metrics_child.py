"""A separate process for tests/test_metrics_redis.py ("another machine"): record metrics, push
them to Redis like a web or worker process does, then exit (or, with --hang, wait to be killed).

    python tests/metrics_child.py <webhook requests> <latency,latency,...> [--hang]
"""

import sys
import time

from crm.app import create_app
from crm.base import metrics
from crm.base.metrics_store import start_pusher


def main() -> None:
    app = create_app()
    pusher = start_pusher(app)
    for _ in range(int(sys.argv[1])):
        metrics.WEBHOOK_REQUESTS.labels("ok").inc()
    for value in filter(None, sys.argv[2].split(",")):
        metrics.REPLY_LATENCY.observe(float(value))
    if "--hang" in sys.argv:
        pusher.push()
        print("pushed", flush=True)
        time.sleep(120)
    # a normal exit pushes once more and retires the instance (atexit)


if __name__ == "__main__":
    main()
