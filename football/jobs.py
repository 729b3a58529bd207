"""Football jobs. Syncs run on ``low`` (their own worker); result notices on ``default``.

Periodic ids (registered by ``scheduler.py``):
  crm-football-upcoming  fixtures and odds for the coming days   FOOTBALL_UPCOMING_CRON (*/15)
  crm-football-live      live scores, only when a fixture is live or due   FOOTBALL_LIVE_CRON (*/2)
  crm-football-results   results of the last days               FOOTBALL_RESULTS_CRON (*/30)
  crm-football-leagues   the league list                        daily
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from rq.exceptions import DuplicateJobError
from sqlalchemy import or_, select, update

from crm import metrics
from crm.extensions import FAILURE_TTL, db, get_queue, get_redis, get_settings
from crm.models import Contact, utcnow
from football.models import Fixture, TeamFollow
from football.sync import StageResult, Sync
from integrations.apifootball import APIFootballClient
from integrations.whatsapp import messages as wa

log = logging.getLogger(__name__)
NOTIFY_MAX_AGE_HOURS = 24


def schedules(settings, prefix: str) -> list[dict]:
    return [
        {"id": f"{prefix}football-upcoming", "cron": settings.football_upcoming_cron,
         "func": "football.jobs.sync_upcoming", "queue": "low", "timeout": 1800},
        {"id": f"{prefix}football-live", "cron": settings.football_live_cron,
         "func": "football.jobs.sync_live", "queue": "low", "timeout": 300},
        {"id": f"{prefix}football-results", "cron": settings.football_results_cron,
         "func": "football.jobs.sync_results", "queue": "low", "timeout": 900},
        {"id": f"{prefix}football-leagues", "cron": "17 3 * * *",
         "func": "football.jobs.sync_leagues", "queue": "low", "timeout": 300},
    ]


def make_client() -> APIFootballClient:
    def record(action: str, outcome: str, _seconds: float) -> None:
        metrics.FOOTBALL_API_CALLS.labels(action, outcome).inc()

    return APIFootballClient.from_settings(get_settings(), get_redis(), on_call=record)


def make_sync(progress: Callable[[str], None] | None = None) -> Sync:
    return Sync(make_client(), get_settings().football_leagues, progress=progress)


class SyncLock:
    """One sync of a kind at a time across all football workers (a scheduled and a manual run)."""

    def __init__(self, kind: str, ttl: int = 1800):
        self.key, self.ttl = f"football:sync-lock:{kind}", ttl

    def __enter__(self) -> bool:
        self.held = bool(get_redis().set(self.key, "1", nx=True, ex=self.ttl))
        return self.held

    def __exit__(self, *_exc) -> None:
        if self.held:
            get_redis().delete(self.key)


NO_KEY = {"skipped": "APIFOOTBALL_KEY is not set"}


def _configured() -> bool:
    """Scheduled syncs skip quietly without an API key (the CLI says so loudly)."""
    if get_settings().apifootball_key:
        return True
    log.info("football sync skipped: APIFOOTBALL_KEY is not set", extra={"event": "football.not_configured"})
    return False


def _summary(results: list[StageResult]) -> dict:
    return {r.stage: {"fetched": r.fetched, "upserted": r.upserted, "skipped": r.skipped, "calls": r.calls,
                      "seconds": round(r.seconds, 2)} for r in results}


def _run_sync(kind: str, work: Callable[[], list[StageResult]], ttl: int = 1800, needs_key: bool = True,
              nothing: str | None = None) -> dict:
    """Run a sync under its lock, then tell followers about fixtures that finished in it."""
    if needs_key and not _configured():
        return NO_KEY
    with SyncLock(kind, ttl) as held:
        if not held:
            return {"skipped": f"another {kind} sync is running"}
        results = work()
    enqueue_notify([f for r in results for f in r.finished])
    if not results and nothing:
        return {"skipped": nothing}
    return _summary(results)


def sync_upcoming(days: int | None = None) -> dict:
    return _run_sync("upcoming", lambda: make_sync().upcoming(days or get_settings().football_days_ahead))


def sync_results(days: int | None = None) -> dict:
    return _run_sync("results", lambda: [make_sync().results(days or get_settings().football_results_days)])


def sync_live() -> dict:
    return _run_sync("live", lambda: make_sync().live(), ttl=300, nothing="no fixture live or due")


def sync_leagues() -> dict:
    return _run_sync("leagues", lambda: [make_sync().leagues()], ttl=300)


def full_sync(progress: Callable[[str], None] | None = None) -> dict:
    """Leagues, fixtures and odds for the coming days, and recent results.

    Without an API key this raises (``make_client``): the CLI reports it.
    """
    settings = get_settings()

    def work() -> list[StageResult]:
        sync = make_sync(progress)
        return [sync.leagues(), *sync.upcoming(settings.football_days_ahead),
                sync.results(settings.football_results_days)]

    return _run_sync("full", work, needs_key=False)


# -- following teams --------------------------------------------------------------------------
def enqueue_notify(fixture_ids: list[int]) -> None:
    if not fixture_ids:
        return
    try:
        get_queue("default").enqueue(notify_results, job_id="football-notify", unique=True, result_ttl=0,
                                     failure_ttl=FAILURE_TTL)
    except DuplicateJobError:
        pass  # one is queued already; it picks these fixtures up too


def result_line(fixture: Fixture) -> str:
    score = f"{fixture.home_score}-{fixture.away_score}" if fixture.home_score is not None else "-"
    line = f"{fixture.home.name} {score} {fixture.away.name}"
    if fixture.home_pen_score is not None and fixture.away_pen_score is not None:
        line += f" ({fixture.home_pen_score}-{fixture.away_pen_score} on penalties)"
    elif fixture.status_text in {"After ET", "AET"}:
        line += " (after extra time)"
    if fixture.home_ft_score is not None and fixture.status_text not in {None, "Finished", "FT"}:
        line += f", {fixture.home_ft_score}-{fixture.away_ft_score} after 90 minutes"
    return line


def notification(contact: Contact, fixture: Fixture, now) -> dict | None:
    """The message telling a follower the result, or None when none may be sent."""
    text = f"Full time ⚽ {result_line(fixture)} ({fixture.league.name})"
    if contact.window_open(now):
        return wa.text(text)
    name = get_settings().football_result_template
    if not name:
        return None  # outside the 24-hour window only a template may be sent, and none is configured
    template, _, language = name.partition(":")
    return wa.template(template, language or "en_US", [
        {"type": "body", "parameters": [{"type": "text", "text": result_line(fixture)[:1024]}]}])


def notify_results() -> int:
    """Tell the followers of both teams the result of each newly finished fixture, once."""
    from flows.jobs import queue_outbound, run_contact

    settings, now = get_settings(), utcnow()
    fixtures = db.session.execute(
        select(Fixture).where(Fixture.finished_at.is_not(None), Fixture.result_notified_at.is_(None),
                              Fixture.kickoff_at >= now - timedelta(hours=NOTIFY_MAX_AGE_HOURS))
    ).scalars().all()
    contacts: set[int] = set()
    sent = 0
    for fixture in fixtures:
        claimed = db.session.execute(
            update(Fixture).where(Fixture.id == fixture.id, Fixture.result_notified_at.is_(None))
            .values(result_notified_at=now)).rowcount
        if not claimed:
            continue  # another notify job got it
        followers = db.session.execute(
            select(Contact).where(
                Contact.id.in_(select(TeamFollow.contact_id).where(
                    or_(TeamFollow.team_id == fixture.home_team_id, TeamFollow.team_id == fixture.away_team_id))),
                Contact.blocked.is_(False), Contact.opted_out.is_(False)).order_by(Contact.id)
        ).scalars().all()
        for contact in followers:
            message = notification(contact, fixture, now)
            if message is None:
                log.info("result for %s not sent: outside the 24-hour window and no template", contact.id,
                         extra={"event": "football.notify_skipped", "contact_id": contact.id})
                continue
            queue_outbound(contact, settings.whatsapp_phone_number_id, message, "football")
            contacts.add(contact.id)
            sent += 1
        db.session.commit()
    for contact_id in sorted(contacts):
        run_contact(contact_id)  # ordered delivery through the contact's outbox
    return sent
