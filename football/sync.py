"""Store what APIFootball returns: upserts in place, in short transactions.

Each stage makes one date-window call (not one per league or fixture), filters
by the league allow-list, and upserts leagues, teams, fixtures and odds keyed
by the provider's ids with ``INSERT ... ON CONFLICT DO UPDATE``.

Short transactions: every ``chunk`` rows (``FOOTBALL_UPSERT_CHUNK``, 200) are one
transaction, and on SQLite the sync pauses ``FOOTBALL_UPSERT_PAUSE_MS`` (20 ms) after each
commit. SQLite has one write lock for the whole database; a reply that finds it taken
sleeps in SQLite's busy handler (1, 2, 5, 10, 15, 20, 25 ms ...) and, without the pause,
wakes to find the next chunk holding it again. The football worker also runs at nice 19,
so it may lose the CPU while it holds the lock: the less it holds per transaction, the
shorter that wait. PostgreSQL locks rows, not the database: no pause there.
Measured on the 2-core benchmark box, odds rows (upsert of 162 000 prices), median time the
write lock is held per transaction (the cursor's executemany plus the commit; building the
statement and its parameters happens before SQLite takes the lock):
    50 rows 0.4 ms,   200 rows 1.1 ms,   500 rows 2.9 ms (the previous chunk, with no pause)
and a whole sync at 200 rows with the 20 ms pause: 30 s wall, 6.5 s CPU (the pause is 16 s
of it). 200 rows with a 20 ms pause keeps the lock held ~5 % of the sync's time. With it, the
b scenario's p99 (20 users x 5 messages) during a sync against without: 185 / 243 ms (ratio
0.76, bench/football_isolation.sh sqlite, quiet box); a sweep of chunk sizes against that p99
is still to do (on the busy box it was drowned by other work).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import case, or_, select

from crm.base import metrics
from crm.base.extensions import db
from crm.base.models import utcnow
from crm.replies.intake import dialect_insert
from football import parse
from football.models import Fixture, League, Odds, Team
from integrations.apifootball import APIFootballClient

log = logging.getLogger(__name__)
READ_CHUNK = 500  # provider ids per IN (...) lookup; reads never block a writer (WAL)
LIVE_WINDOW = timedelta(hours=3)  # a fixture that kicked off less than this ago may still be on
DUE_AHEAD = timedelta(minutes=5)


@dataclass
class StageResult:
    stage: str
    fetched: int = 0
    upserted: int = 0
    skipped: int = 0
    calls: int = 0
    seconds: float = 0.0
    finished: list[int] = field(default_factory=list)  # fixtures seen finishing in this stage

    def line(self) -> str:
        return (f"{self.stage}: {self.fetched} fetched, {self.upserted} upserted, {self.skipped} skipped, "
                f"{self.calls} API call(s), {self.seconds:.1f} s")


class LeagueFilter:
    """``FOOTBALL_LEAGUES``: provider league ids or names; empty = everything the plan returns."""

    def __init__(self, allowed: Iterable[str]):
        self.allowed = {a.casefold() for a in allowed}

    def __call__(self, league_id, league_name) -> bool:
        if not self.allowed:
            return True
        return str(league_id).casefold() in self.allowed or str(league_name or "").casefold() in self.allowed


def _chunks(rows: list, size: int):
    for i in range(0, len(rows), size):
        yield rows[i:i + size]


def _upsert(model, rows: list[dict], keys: list[str], extra_set: Callable | None = None) -> None:
    """Insert or update ``rows`` by ``keys``; ``extra_set(excluded)`` overrides some SET expressions."""
    if not rows:
        return
    stmt = dialect_insert(model)
    update = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    update.update(extra_set(stmt.excluded) if extra_set else {})
    db.session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update), rows)


def _by_provider_id(model, provider_ids: Iterable[str], column=None) -> dict:
    """provider id -> ``column`` (default: our id) for the rows that exist."""
    column = model.id if column is None else column
    out: dict = {}
    for chunk in _chunks(sorted(set(provider_ids)), READ_CHUNK):
        out.update(db.session.execute(
            select(model.provider_id, column).where(model.provider_id.in_(chunk))).all())
    return out


class Sync:
    def __init__(self, client: APIFootballClient, leagues: Iterable[str] = (), tz: str = "UTC",
                 progress: Callable[[str], None] | None = None, now: Callable[[], datetime] = utcnow,
                 chunk: int = 200, pause: float = 0.0):
        self.client, self.allowed, self.tz = client, LeagueFilter(leagues), tz
        self.progress, self.now = progress, now
        self.chunk, self.pause = chunk, pause

    def _write(self, model, rows: list[dict], keys: list[str], extra_set: Callable | None = None) -> None:
        """Upsert ``rows``, one short transaction per chunk (see the module docstring)."""
        for chunk in _chunks(rows, self.chunk):
            _upsert(model, chunk, keys, extra_set)
            db.session.commit()
            if self.pause:
                time.sleep(self.pause)

    def _run(self, stage: str, fn) -> StageResult:
        result = StageResult(stage)
        calls, started = self.client.calls, time.perf_counter()
        try:
            fn(result)
        finally:
            db.session.rollback()  # nothing half-written survives a failure; committed chunks stay
            result.calls = self.client.calls - calls
            result.seconds = time.perf_counter() - started
            metrics.FOOTBALL_SYNC_SECONDS.labels(stage).observe(result.seconds)
        log.info("football sync %s", result.line(), extra={"event": "football.sync", "stage": stage,
                                                            "fetched": result.fetched, "upserted": result.upserted,
                                                            "calls": result.calls, "ms": round(result.seconds * 1000)})
        if self.progress:
            self.progress(result.line())
        return result

    # -- stages ---------------------------------------------------------------------------
    def leagues(self) -> StageResult:
        def work(result: StageResult) -> None:
            rows = self.client.leagues()
            result.fetched = len(rows)
            parsed = {}
            for row in rows:
                league = parse.parse_league(row)
                if league is None or not self.allowed(league["provider_id"], league["name"]):
                    result.skipped += 1
                    continue
                parsed[league["provider_id"]] = {**league, "updated_at": self.now()}
            self._write(League, list(parsed.values()), ["provider_id"])
            result.upserted = len(parsed)

        return self._run("leagues", work)

    def events(self, start: date, end: date, live: bool = False, stage: str = "fixtures") -> StageResult:
        def work(result: StageResult) -> None:
            rows = self.client.events(start, end, live=live)
            result.fetched = len(rows)
            self.store_events(rows, result)

        return self._run(stage, work)

    def store_events(self, rows: list[dict], result: StageResult) -> None:
        now = self.now()
        leagues, teams, fixtures, refs = {}, {}, {}, {}
        for row in rows:
            event = parse.parse_event(row, self.tz)
            if event is None or not self.allowed(event["league"]["provider_id"], event["league"]["name"]):
                result.skipped += 1
                continue
            leagues[event["league"]["provider_id"]] = {**event["league"], "updated_at": now}
            for side in ("home", "away"):
                teams[event[side]["provider_id"]] = {**event[side], "updated_at": now}
            fixture = event["fixture"]
            fixtures[fixture["provider_id"]] = fixture
            refs[fixture["provider_id"]] = (event["league"]["provider_id"], event["home"]["provider_id"],
                                            event["away"]["provider_id"])
        self._write(League, list(leagues.values()), ["provider_id"])
        self._write(Team, list(teams.values()), ["provider_id"])
        league_ids, team_ids = _by_provider_id(League, leagues), _by_provider_id(Team, teams)
        before = _by_provider_id(Fixture, fixtures, Fixture.status)
        rows_out = []
        for pid, fixture in fixtures.items():
            league, home, away = refs[pid]
            ended = fixture["status"] in parse.ENDED
            rows_out.append({**fixture, "league_id": league_ids[league], "home_team_id": team_ids[home],
                             "away_team_id": team_ids[away], "updated_at": now,
                             "finished_at": now if ended else None})

        def keep_first_finish(excluded) -> dict:  # finished_at: when we first saw the final whistle
            return {"finished_at": case((Fixture.finished_at.is_not(None), Fixture.finished_at),
                                        else_=excluded.finished_at)}

        self._write(Fixture, rows_out, ["provider_id"], keep_first_finish)
        result.upserted += len(rows_out)
        newly = [pid for pid, f in fixtures.items()
                 if f["status"] in parse.ENDED and before.get(pid) not in parse.ENDED]
        result.finished.extend(_by_provider_id(Fixture, newly).values())

    def odds(self, start: date, end: date) -> StageResult:
        def work(result: StageResult) -> None:
            rows = self.client.odds(start, end)
            result.fetched = len(rows)
            fixture_ids = _by_provider_id(Fixture, {str(r.get("match_id") or "") for r in rows})
            now, prices = self.now(), {}
            for row in rows:
                fixture_id = fixture_ids.get(str(row.get("match_id") or ""))
                parsed = parse.parse_odds(row)
                if fixture_id is None or not parsed:
                    result.skipped += 1  # a fixture outside the allow-list, or a row with no prices
                    continue
                for bookmaker, market, selection, price in parsed:
                    prices[(fixture_id, bookmaker, market, selection)] = {
                        "fixture_id": fixture_id, "bookmaker": bookmaker, "market": market,
                        "selection": selection, "price": price, "updated_at": now}
            self._write(Odds, list(prices.values()), ["fixture_id", "bookmaker", "market", "selection"])
            result.upserted = len(prices)

        return self._run("odds", work)

    # -- what the jobs run ----------------------------------------------------------------
    def upcoming(self, days: int) -> list[StageResult]:
        today = self.now().date()
        return [self.events(today, today + timedelta(days=days)), self.odds(today, today + timedelta(days=days))]

    def results(self, days: int) -> StageResult:
        today = self.now().date()
        return self.events(today - timedelta(days=days), today, stage="results")

    def live(self) -> list[StageResult]:
        """Live scores, only when a fixture is live or due; settles fixtures that left the live list."""
        now = self.now()
        if not live_or_due(now):
            return []
        out = [self.events(now.date() - timedelta(days=1), now.date(), live=True, stage="live")]
        live_ids = set(stale_live_fixtures(now))
        if live_ids:  # still 'live' here but no longer in the live answer: finished (or stopped)
            out.append(self.events(now.date() - timedelta(days=1), now.date(), stage="live-settle"))
        return out


def live_or_due(now: datetime) -> bool:
    return db.session.execute(
        select(Fixture.id).where(or_(
            Fixture.status == parse.LIVE,
            (Fixture.status == parse.SCHEDULED) & (Fixture.kickoff_at <= now + DUE_AHEAD)
            & (Fixture.kickoff_at >= now - LIVE_WINDOW),
        )).limit(1)
    ).first() is not None


def stale_live_fixtures(now: datetime) -> list[str]:
    """Fixtures stored as live whose last update is older than this live pass."""
    return list(db.session.execute(
        select(Fixture.provider_id).where(Fixture.status == parse.LIVE, Fixture.updated_at < now)
    ).scalars())
