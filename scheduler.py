"""Periodic jobs, registered with rq-scheduler under fixed ids (restarts never duplicate them).

    python scheduler.py            # register, then run the scheduler (polls every 5 s)
    python scheduler.py --list     # show what is registered

Cron strings are evaluated in UTC.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["TZ"] = "UTC"
time.tzset()

from rq_scheduler import Scheduler  # noqa: E402

PREFIX = "crm-"


def schedules(settings) -> list[dict]:
    """Every periodic job: id, cron, function, queue."""
    specs = [
        {"id": f"{PREFIX}sessions-cleanup", "cron": settings.session_cleanup_cron,
         "func": "flows.expiry.cleanup_job", "queue": "low", "timeout": 600},
        {"id": f"{PREFIX}recover-stalled", "cron": "* * * * *",
         "func": "flows.jobs.recover_stalled", "queue": "default", "timeout": 120},
    ]
    from football.jobs import schedules as football_schedules

    return specs + football_schedules(settings, PREFIX)


def register(scheduler: Scheduler, settings) -> list[str]:
    wanted = schedules(settings)
    ids = {spec["id"] for spec in wanted}
    for job in scheduler.get_jobs():
        if job.id.startswith(PREFIX) and job.id not in ids:
            scheduler.cancel(job)
    for spec in wanted:
        if spec["id"] in scheduler:
            scheduler.cancel(spec["id"])
        scheduler.cron(spec["cron"], func=spec["func"], id=spec["id"], queue_name=spec["queue"],
                       timeout=spec["timeout"], result_ttl=3600, repeat=None, use_local_timezone=False)
    return sorted(ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run rq-scheduler with the project's periodic jobs.")
    parser.add_argument("--interval", type=float, default=5.0, help="polling interval in seconds (≤ 10)")
    parser.add_argument("--list", action="store_true", help="register, print the schedule and exit")
    args = parser.parse_args(argv)
    from crm import create_app

    app = create_app()
    settings = app.config["SETTINGS"]
    scheduler = Scheduler(connection=app.extensions["redis"], interval=min(args.interval, 10.0))
    registered = register(scheduler, settings)
    if args.list:
        for job in scheduler.get_jobs(with_times=True):
            j, when = job
            print(f"{j.id:32} {j.meta.get('cron_string', ''):14} {j.origin:8} next {when:%Y-%m-%d %H:%M:%S}Z")
        return 0
    print(f"scheduler: registered {', '.join(registered)}", flush=True)
    scheduler.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
