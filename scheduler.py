"""Periodic jobs, registered with rq-scheduler under fixed ids (restarts never duplicate them).

    python scheduler.py            # register, then run the scheduler (polls every 5 s)
    python scheduler.py --list     # show what is registered

Each package lists its schedules in its ``init_app`` (``crm.base.schedules``). Cron strings
are evaluated in UTC.

Rides out outages: a Redis connection error never ends the process; the loop waits with
backoff, logs once when Redis goes away and once when it is back, and carries on. The
registrations are asserted again every ``REASSERT_SECONDS`` (and after every outage), so a
Redis restart without persistence loses no schedule for long.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import warnings

os.environ["TZ"] = "UTC"
time.tzset()

from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402
from redis.exceptions import TimeoutError as RedisTimeoutError  # noqa: E402
from rq_scheduler import Scheduler  # noqa: E402

from crm.app import create_app  # noqa: E402
from crm.base.schedules import PREFIX, schedules_of  # noqa: E402

log = logging.getLogger("scheduler")
REASSERT_SECONDS = 180
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def quiet_crontab_warning() -> None:
    """Drop crontab's FutureWarning about its ``default_utc`` change, and only that warning.

    rq-scheduler 0.14 (rq_scheduler.utils.get_next_scheduled_time) calls crontab's
    ``CronTab.next()`` without ``default_utc``; crontab then prints a 9-line FutureWarning the
    first time each process computes a cron time. The call is not ours to change and nobody
    running this can act on it; the result is right either way because this process runs
    in UTC (TZ=UTC above), where the old and the new default agree.
    """
    warnings.filterwarnings("ignore", message=r"Version 0\.22\.0\+ of crontab", category=FutureWarning,
                            module=r"rq_scheduler\.utils")


quiet_crontab_warning()


def register(scheduler: Scheduler, app) -> list[str]:
    """Make rq-scheduler hold exactly the app's schedules (idempotent)."""
    quiet_crontab_warning()  # again: a caller (pytest) may have reset the warning filters
    wanted = schedules_of(app)
    ids = {spec.job_id for spec in wanted}
    for job in scheduler.get_jobs():
        if job.id.startswith(PREFIX) and job.id not in ids:
            scheduler.cancel(job)
    for spec in wanted:
        if spec.job_id in scheduler:
            scheduler.cancel(spec.job_id)
        scheduler.cron(spec.cron, func=spec.func, id=spec.job_id, queue_name=spec.queue,
                       timeout=spec.timeout, result_ttl=3600, repeat=None, use_local_timezone=False)
    return sorted(ids)


def schedules(app) -> list[dict]:
    """The app's schedules as rq-scheduler will hold them."""
    return [{"id": s.job_id, "cron": s.cron, "func": s.func, "queue": s.queue, "timeout": s.timeout}
            for s in schedules_of(app)]


class Loop:
    """rq-scheduler's run loop, made to survive Redis outages and to re-assert registrations."""

    def __init__(self, scheduler: Scheduler, app, interval: float):
        self.scheduler, self.app, self.interval = scheduler, app, interval
        self.stopping = False
        self.registered_at = 0.0
        self.down_since: float | None = None

    def stop(self, *_args) -> None:
        self.stopping = True

    def tick(self) -> None:
        if time.monotonic() - self.registered_at > REASSERT_SECONDS:
            register(self.scheduler, self.app)
            self.registered_at = time.monotonic()
        self.scheduler.heartbeat()
        if self.scheduler.acquire_lock():
            try:
                self.scheduler.enqueue_jobs()
            finally:
                self.scheduler.remove_lock()

    def run(self, max_seconds: float | None = None) -> None:
        started, backoff = time.monotonic(), self.interval
        while not self.stopping and (max_seconds is None or time.monotonic() - started < max_seconds):
            began = time.monotonic()
            try:
                self.tick()
            except REDIS_DOWN as exc:
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    log.error("scheduler: Redis is unreachable (%s); retrying", type(exc).__name__,
                              extra={"event": "scheduler.redis_down"})
                self.registered_at = 0.0  # Redis may have lost everything: register again when back
                time.sleep(min(backoff, 10.0))
                backoff = min(backoff * 2, 10.0)
                continue
            if self.down_since is not None:
                log.warning("scheduler: Redis is back after %.0f s", time.monotonic() - self.down_since,
                            extra={"event": "scheduler.redis_up"})
                self.down_since, backoff = None, self.interval
            time.sleep(max(0.0, self.interval - (time.monotonic() - began)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run rq-scheduler with the project's periodic jobs.")
    parser.add_argument("--interval", type=float, default=5.0, help="polling interval in seconds (≤ 10)")
    parser.add_argument("--list", action="store_true", help="register, print the schedule and exit")
    args = parser.parse_args(argv)
    app = create_app()
    scheduler = Scheduler(connection=app.extensions["redis"], interval=min(args.interval, 10.0))
    if args.list:
        register(scheduler, app)
        for job, when in scheduler.get_jobs(with_times=True):
            print(f"{job.id:32} {job.meta.get('cron_string', ''):14} {job.origin:8} next {when:%Y-%m-%d %H:%M:%S}Z")
        return 0
    loop = Loop(scheduler, app, scheduler._interval)
    signal.signal(signal.SIGTERM, loop.stop)
    signal.signal(signal.SIGINT, loop.stop)
    print(f"scheduler: running {', '.join(s.job_id for s in schedules_of(app))}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
