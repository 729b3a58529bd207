"""Periodic jobs each package asks for; ``scheduler.py`` registers them with rq-scheduler.

A schedule is registered under a fixed id (restarts and re-assertions never duplicate it),
cron in UTC, on a named queue.
"""

from __future__ import annotations

from dataclasses import dataclass

EXTENSION = "crm.schedules"
PREFIX = "crm-"


@dataclass(frozen=True)
class Schedule:
    id: str  # without the prefix
    cron: str
    func: str  # dotted path of the job function
    queue: str
    timeout: int

    @property
    def job_id(self) -> str:
        return PREFIX + self.id


def add_schedules(app, *schedules: Schedule) -> None:
    app.extensions.setdefault(EXTENSION, []).extend(schedules)


def schedules_of(app) -> list[Schedule]:
    return list(app.extensions.get(EXTENSION, []))
