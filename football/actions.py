"""Flow actions over the synced football data (``type: action`` steps).

They only read (or, for follow/unfollow, write) our own database, never the
API, so a flow step costs milliseconds. Each returns a dict the flow uses:

  text     ready to send, within WhatsApp's 4 096-character limit
  options  [{id, title, description}] for a choice question (``options_from``);
           the engine pages them as list messages when there are more than 10
  count    how many rows matched
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, or_, select

from crm.base.extensions import contains_pattern, db, dialect_insert, get_settings
from crm.base.models import utcnow
from football import parse
from football.models import Fixture, League, Odds, Team, TeamFollow
from integrations.whatsapp import messages as wa

ACTIONS: dict = {}  # name -> fn(params, context); registered with the app by football.init_app
MAX_OPTIONS = 50
TEXT_BUDGET = wa.TEXT_MAX - 60  # room for the "…and N more" line


def action(name: str):
    def register(fn):
        ACTIONS[name] = fn
        return fn

    return register


def _int(params: dict, name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(params.get(name, default))
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name!r} must be a whole number") from None
    return max(lo, min(hi, value))


def _local(when: datetime) -> datetime:
    zone = ZoneInfo(get_settings().football_display_timezone)
    return when.replace(tzinfo=ZoneInfo("UTC")).astimezone(zone)


def _when(fixture: Fixture) -> str:
    local = _local(fixture.kickoff_at)
    return f"{local:%a %d %b} {local:%H:%M}" if fixture.kickoff_time_known else f"{local:%a %d %b} (time TBC)"


def _filters(stmt, params: dict):
    league = str(params.get("league") or "").strip()
    if league:
        stmt = stmt.join(League, League.id == Fixture.league_id).where(
            or_(League.provider_id == league, func.lower(League.name) == league.casefold()))
    team = str(params.get("team") or "").strip()
    if team:
        ids = [t.id for t in find_teams(team)]
        stmt = stmt.where(or_(Fixture.home_team_id.in_(ids), Fixture.away_team_id.in_(ids)))
    return stmt


def _score(f: Fixture) -> str:
    if f.home_score is None or f.away_score is None:
        return "v"
    score = f"{f.home_score}-{f.away_score}"
    if f.home_pen_score is not None and f.away_pen_score is not None:
        score += f" ({f.home_pen_score}-{f.away_pen_score}p)"
    return score


def _title(f: Fixture) -> str:
    title = f"{f.home.name} v {f.away.name}"
    if len(title) <= wa.ROW_TITLE_MAX:
        return title
    half = (wa.ROW_TITLE_MAX - 3) // 2
    return f"{f.home.name[:half].rstrip()} v {f.away.name[:wa.ROW_TITLE_MAX - 3 - half].rstrip()}"


def render(fixtures: list[Fixture], heading: str, empty: str, line) -> dict:
    """Text grouped by day and league, cut to the WhatsApp limit, plus list options."""
    if not fixtures:
        return {"text": empty, "options": [], "count": 0}
    lines, day, league, shown = [heading], None, None, 0
    for f in fixtures:
        block = []
        this_day = f"{_local(f.kickoff_at):%A %d %B}"
        if this_day != day:
            block += ["", f"*{this_day}*"]
            day, league = this_day, None
        if f.league.name != league:
            block.append(f"_{f.league.name}_")
            league = f.league.name
        block.append(line(f))
        if len("\n".join(lines + block)) > TEXT_BUDGET:
            break
        lines += block
        shown += 1
    if shown < len(fixtures):
        lines += ["", f"…and {len(fixtures) - shown} more."]
    options = [{"id": str(f.id), "title": _title(f),
                "description": f"{_when(f)} · {f.league.name}"[: wa.ROW_DESCRIPTION_MAX]}
               for f in fixtures[:MAX_OPTIONS]]
    return {"text": "\n".join(lines), "options": options, "count": len(fixtures)}


@action("football.fixtures")
def fixtures(params: dict, context: dict) -> dict:
    """Upcoming fixtures: ``days`` (default 7), ``league``, ``team``, ``with_odds``."""
    days = _int(params, "days", 7, 1, 30)
    now = utcnow()
    stmt = select(Fixture).where(Fixture.status == parse.SCHEDULED, Fixture.kickoff_at >= now - timedelta(hours=1),
                                 Fixture.kickoff_at < now + timedelta(days=days))
    if params.get("with_odds"):
        stmt = stmt.where(Fixture.id.in_(select(Odds.fixture_id)))
    rows = db.session.execute(_filters(stmt, params).order_by(Fixture.kickoff_at, Fixture.id)).scalars().all()
    return render(list(rows), f"📅 Fixtures, next {days} day{'s' if days != 1 else ''}",
                  "No fixtures in the coming days.",
                  lambda f: f"{_local(f.kickoff_at):%H:%M} {f.home.name} v {f.away.name}"
                  if f.kickoff_time_known else f"TBC {f.home.name} v {f.away.name}")


@action("football.results")
def results(params: dict, context: dict) -> dict:
    """Finished fixtures of the last ``days`` (default 3), newest first; ``league``, ``team``."""
    days = _int(params, "days", 3, 1, 30)
    now = utcnow()
    stmt = select(Fixture).where(Fixture.status.in_(sorted(parse.ENDED)),
                                 Fixture.kickoff_at >= now - timedelta(days=days))
    rows = db.session.execute(_filters(stmt, params).order_by(Fixture.kickoff_at.desc(), Fixture.id)).scalars().all()

    def line(f: Fixture) -> str:
        text = f"{f.home.name} {_score(f)} {f.away.name}"
        if f.status_text in {"After ET", "AET"}:
            text += " (aet)"
        if f.status == parse.AWARDED:
            text += " (awarded)"
        return text

    return render(list(rows), f"🏁 Results, last {days} day{'s' if days != 1 else ''}",
                  "No results in the last days.", line)


@action("football.live")
def live(params: dict, context: dict) -> dict:
    """Fixtures being played now, with the minute."""
    stmt = select(Fixture).where(Fixture.status == parse.LIVE)
    rows = db.session.execute(_filters(stmt, params).order_by(Fixture.kickoff_at, Fixture.id)).scalars().all()
    return render(list(rows), "🔴 Live now", "No matches are being played right now.",
                  lambda f: f"{f.minute or ''} {f.home.name} {_score(f)} {f.away.name}".strip())


MARKETS = [("1x2", "Match result", {"1": "Home", "x": "Draw", "2": "Away"}),
           ("double_chance", "Double chance", {"1x": "1X", "12": "12", "x2": "X2"}),
           ("over_under_2.5", "Goals over/under 2.5", {"over": "Over", "under": "Under"}),
           ("btts", "Both teams score", {"yes": "Yes", "no": "No"})]


@action("football.odds")
def odds(params: dict, context: dict) -> dict:
    """Best price per selection across bookmakers for one fixture (``fixture_id``)."""
    raw = str(params.get("fixture_id") or "").strip()
    if not raw.isdigit():
        raise ValueError("parameter 'fixture_id' must be a fixture id")
    fixture = db.session.get(Fixture, int(raw))
    if fixture is None:
        return {"text": "That match is no longer listed.", "count": 0, "markets": {}}
    rows = db.session.execute(select(Odds.market, Odds.selection, func.max(Odds.price), func.count())
                              .where(Odds.fixture_id == fixture.id)
                              .group_by(Odds.market, Odds.selection)).all()
    best = {(m, s): (p, n) for m, s, p, n in rows}
    lines = [f"📊 {fixture.home.name} v {fixture.away.name}", f"{_when(fixture)} · {fixture.league.name}"]
    markets = {}
    for market, label, selections in MARKETS:
        cells = [(name, best[(market, key)]) for key, name in selections.items() if (market, key) in best]
        if not cells:
            continue
        markets[market] = {name: price for name, (price, _n) in cells}
        lines += ["", f"*{label}*", "  ".join(f"{name} {price:.2f}" for name, (price, _n) in cells)]
    if not markets:
        lines += ["", "No odds for this match yet."]
    else:
        bookmakers = db.session.execute(select(func.count(func.distinct(Odds.bookmaker)))
                                        .where(Odds.fixture_id == fixture.id)).scalar_one()
        lines += ["", f"Best prices from {bookmakers} bookmaker{'s' if bookmakers != 1 else ''}."]
    return {"text": "\n".join(lines)[: wa.TEXT_MAX], "count": len(markets), "markets": markets}


def find_teams(name: str, limit: int = 10) -> list[Team]:
    """Exact name (any case) first, then names containing it."""
    key = name.strip().casefold()
    if not key:
        return []
    exact = db.session.execute(select(Team).where(func.lower(Team.name) == key).limit(limit)).scalars().all()
    if exact:
        return list(exact)
    return list(db.session.execute(select(Team).where(func.lower(Team.name).like(contains_pattern(key), escape="\\"))
                                   .order_by(Team.name).limit(limit)).scalars())


def _team_choice(params: dict) -> tuple[Team | None, dict | None]:
    raw = str(params.get("team") or "").strip()
    if raw.startswith("team:") and raw[5:].isdigit():
        team = db.session.get(Team, int(raw[5:]))
        return team, None if team else {"ok": False, "text": "I don't know that team.", "options": []}
    teams = find_teams(raw)
    if len(teams) == 1:
        return teams[0], None
    if not teams:
        return None, {"ok": False, "text": f"I couldn't find a team called “{raw[:50]}”.", "options": []}
    return None, {"ok": False, "text": "Which team do you mean?",
                  "options": [{"id": f"team:{t.id}", "title": t.name[: wa.ROW_TITLE_MAX]} for t in teams]}


@action("football.follow")
def follow(params: dict, context: dict) -> dict:
    """Follow ``team`` (a name, or ``team:<id>`` from the options): its results are sent when it finishes."""
    team, problem = _team_choice(params)
    if problem:
        return problem
    stmt = dialect_insert(TeamFollow).values(contact_id=context["contact"]["id"], team_id=team.id, created_at=utcnow())
    db.session.execute(stmt.on_conflict_do_nothing(index_elements=["contact_id", "team_id"]))
    return {"ok": True, "team": team.name,
            "text": f"Done ✅ I'll send you {team.name}'s result when each match finishes."}


@action("football.unfollow")
def unfollow(params: dict, context: dict) -> dict:
    team, problem = _team_choice(params)
    if problem:
        return problem
    db.session.execute(delete(TeamFollow).where(TeamFollow.contact_id == context["contact"]["id"],
                                                TeamFollow.team_id == team.id))
    return {"ok": True, "team": team.name, "text": f"You won't get {team.name}'s results any more."}


@action("football.following")
def following(params: dict, context: dict) -> dict:
    names = db.session.execute(select(Team.name).join(TeamFollow, TeamFollow.team_id == Team.id)
                               .where(TeamFollow.contact_id == context["contact"]["id"])
                               .order_by(Team.name)).scalars().all()
    text = ("You follow: " + ", ".join(names)) if names else "You don't follow any team yet."
    return {"text": text[: wa.TEXT_MAX], "count": len(names),
            "options": [{"id": n[: wa.ROW_ID_MAX], "title": n[: wa.ROW_TITLE_MAX]} for n in names]}
