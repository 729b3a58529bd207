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

from sqlalchemy import or_, select, update

from crm.base import keys, metrics
from crm.base.enums import Origin
from crm.base.extensions import db, get_queue, get_redis, get_settings
from crm.base.locks import TokenLock
from crm.base.models import Contact, utcnow
from crm.base.schedules import Schedule
from crm.base.templates import TemplateRefused, require_approved
from crm.replies.delivery import queue_outbound
from crm.replies.wake import wake_many
from football.models import Fixture, TeamFollow
from football.sync import StageResult, Sync
from integrations.apifootball import APIFootballClient, RateLimiter
from integrations.whatsapp import messages as wa

log = logging.getLogger(__name__)
NOTIFY_MAX_AGE_HOURS = 24


def schedules(settings) -> list[Schedule]:
    return [
        Schedule("football-upcoming", settings.football_upcoming_cron, "football.jobs.sync_upcoming", keys.LOW, 1800),
        Schedule("football-live", settings.football_live_cron, "football.jobs.sync_live", keys.LOW, 300),
        Schedule("football-results", settings.football_results_cron, "football.jobs.sync_results", keys.LOW, 900),
        Schedule("football-leagues", "17 3 * * *", "football.jobs.sync_leagues", keys.LOW, 300),
        # Result notices talk to users (queue ``default``); every minute too, so fixtures a failed
        # notify job left are picked up by the next one.
        Schedule("result-notices", "* * * * *", "football.jobs.notify_results", keys.DEFAULT, 300),
    ]


def make_client() -> APIFootballClient:
    def record(action: str, outcome: str, _seconds: float) -> None:
        metrics.FOOTBALL_API_CALLS.labels(action, outcome).inc()

    settings = get_settings()
    limiter = RateLimiter(get_redis(), settings.apifootball_rate_per_minute, keys.APIFOOTBALL_RATE)
    return APIFootballClient.from_settings(settings, limiter, on_call=record)


def make_sync(progress: Callable[[str], None] | None = None) -> Sync:
    settings = get_settings()
    pause = settings.football_upsert_pause_ms / 1000 if db.engine.dialect.name == "sqlite" else 0.0
    return Sync(make_client(), settings.football_leagues, progress=progress,
                chunk=settings.football_upsert_chunk, pause=pause)


def sync_lock(kind: str, ttl: int) -> TokenLock:
    """One sync of a kind at a time across all football workers (a scheduled and a manual run).

    A token lock: a sync whose lock expired can never delete the lock of the sync after it.
    Its TTL outlives the job's timeout (manual syncs run up to an hour).
    """
    return TokenLock(get_redis(), keys.sync_lock(kind), max(ttl, keys.SYNC_LOCK_TTL) * 1000)


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
    with sync_lock(kind, ttl) as held:
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
    """Tell followers soon (the every-minute schedule also does, so a failed job loses nothing)."""
    if fixture_ids:
        get_queue(keys.DEFAULT).enqueue(notify_results, result_ttl=keys.RESULT_TTL, failure_ttl=keys.FAILURE_TTL)


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


def result_parameters(fixture: Fixture | None) -> list[dict]:
    line = result_line(fixture)[:1024] if fixture is not None else "result"
    return [{"type": "body", "parameters": [{"type": "text", "text": line}]}]


def result_template() -> tuple[str, str] | None:
    """(name, language) of FOOTBALL_RESULT_TEMPLATE when it is set and approved with one body
    parameter; otherwise None, and a warning says why (checked once per notify run)."""
    configured = get_settings().football_result_template
    if not configured:
        return None
    name, _, language = configured.partition(":")
    try:
        template = require_approved(name, language or None, result_parameters(None))
    except TemplateRefused as exc:
        log.warning("FOOTBALL_RESULT_TEMPLATE not used: %s", exc, extra={"event": "football.template_refused"})
        return None
    return template.name, template.language


def notification(contact: Contact, fixture: Fixture, now, template: tuple[str, str] | None = None) -> dict | None:
    """The message telling a follower the result, or None when none may be sent."""
    text = f"Full time ⚽ {result_line(fixture)} ({fixture.league.name})"
    if contact.window_open(now):
        return wa.text(text)
    if template is None:
        return None  # outside the 24-hour window only an approved template may be sent
    return wa.template(template[0], template[1], result_parameters(fixture))


def notify_results() -> int:
    """Tell the followers of both teams the result of each newly finished fixture, once.

    Each fixture is claimed with a conditional UPDATE (never twice) in the transaction that
    queues its notices; then every follower is woken on its own (the ready list), serial with that
    contact's own messages (``wake_many``): one follower's failure never holds back the others.
    """
    settings, now = get_settings(), utcnow()
    fixtures = db.session.execute(
        select(Fixture).where(Fixture.finished_at.is_not(None), Fixture.result_notified_at.is_(None),
                              Fixture.kickoff_at >= now - timedelta(hours=NOTIFY_MAX_AGE_HOURS))
    ).scalars().all()
    contacts: set[int] = set()
    sent = 0
    template = result_template() if fixtures else None
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
            message = notification(contact, fixture, now, template)
            if message is None:
                log.info("result for %s not sent: outside the 24-hour window and no approved template", contact.id,
                         extra={"event": "football.notify_skipped", "contact_id": contact.id})
                continue
            queue_outbound(contact, settings.whatsapp_phone_number_id, message, Origin.FOOTBALL)
            contacts.add(contact.id)
            sent += 1
        db.session.commit()
    wake_many(sorted(contacts))
    return sent
