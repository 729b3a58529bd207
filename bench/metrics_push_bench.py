"""CPU per metrics push (crm.base.metrics_store): collect this process's crm_* samples, encode
them and run the push script, with the project's metrics filled with realistic label sets.

    REDIS_URL=redis://127.0.0.1:6379/15 .venv/bin/python bench/metrics_push_bench.py [pushes]

Prints the sample count and the pushing thread's CPU time per push (Redis's own time excluded).
Uses (and afterwards deletes) the crm:metrics:* keys of that Redis database: not production's.
"""

from __future__ import annotations

import os
import sys
import time

from redis import Redis

from crm.base import metrics
from crm.base import metrics_store as ms


def fill() -> None:
    for outcome in ("ok", "malformed", "bad_signature", "too_large", "unavailable"):
        metrics.WEBHOOK_REQUESTS.labels(outcome).inc()
    for kind in ("message", "status", "template"):
        for outcome in ("stored", "duplicate"):
            metrics.WEBHOOK_EVENTS.labels(kind, outcome).inc()
    for code in ("", "130429", "131026", "131047", "131051", "132001", "100", "190"):
        metrics.SENDS.labels("sent" if not code else "failed", code).inc()
    for value in (0.004, 0.02, 0.07, 0.3, 1.2, 4):
        metrics.REPLY_LATENCY.observe(value)
    for stage in ("leagues", "upcoming", "odds", "results", "live"):
        metrics.FOOTBALL_SYNC_SECONDS.labels(stage).observe(2.0)
    for action in ("get_leagues", "get_events", "get_odds"):
        for outcome in ("ok", "retry"):
            metrics.FOOTBALL_API_CALLS.labels(action, outcome).inc()
    metrics.SESSIONS_EXPIRED.inc()


def main() -> None:
    pushes = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15"))
    fill()
    samples, _meta = ms.local_samples()
    pusher = ms.Pusher(redis, 5.0)
    pusher.push()
    start = time.thread_time()
    for _ in range(pushes):
        pusher.push()
    per_push = (time.thread_time() - start) / pushes
    collect_start = time.thread_time()
    for _ in range(pushes):
        ms.local_samples()
    per_collect = (time.thread_time() - collect_start) / pushes
    pusher.retire()
    redis.delete(ms.KEY_INSTANCES, ms.KEY_RETIRED, ms.KEY_META)
    print(f"{len(samples)} samples: {per_push * 1e3:.3f} ms CPU per push "
          f"(of which collecting and encoding {per_collect * 1e3:.3f} ms); "
          f"at one push per 5 s: {per_push / 5 * 100:.4f} % of a core")


if __name__ == "__main__":
    main()
