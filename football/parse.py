"""Turn APIFootball rows into plain dicts for the upserts (pure functions, no I/O)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

# Fixture statuses we store; `status_text` keeps APIFootball's own string.
SCHEDULED, LIVE, FINISHED = "scheduled", "live", "finished"
POSTPONED, CANCELLED, AWARDED, ABANDONED = "postponed", "cancelled", "awarded", "abandoned"
ENDED = {FINISHED, AWARDED}
_FIXED = {
    "": SCHEDULED, "tbd": SCHEDULED, "not started": SCHEDULED,
    "half time": LIVE, "ht": LIVE, "break time": LIVE, "extra time": LIVE, "penalties": LIVE, "live": LIVE,
    "finished": FINISHED, "ft": FINISHED, "after et": FINISHED, "aet": FINISHED, "after pen.": FINISHED,
    "after pen": FINISHED, "pen.": FINISHED,
    "postponed": POSTPONED, "cancelled": CANCELLED, "canceled": CANCELLED, "awarded": AWARDED,
    "abandoned": ABANDONED, "interrupted": ABANDONED, "suspended": ABANDONED,
}
_MINUTE = re.compile(r"^(\d{1,3})(?:\+(\d{1,2}))?'?$")
_OVER_UNDER = re.compile(r"^([ou])\+(\d+(?:\.\d+)?)$")
_HANDICAP = re.compile(r"^ah([+-]?\d+(?:\.\d+)?)_([12])$")
ODDS_SIMPLE = {
    "odd_1": ("1x2", "1"), "odd_x": ("1x2", "x"), "odd_2": ("1x2", "2"),
    "odd_1x": ("double_chance", "1x"), "odd_12": ("double_chance", "12"), "odd_x2": ("double_chance", "x2"),
    "bts_yes": ("btts", "yes"), "bts_no": ("btts", "no"),
}


def parse_status(raw: str | None) -> tuple[str, str | None]:
    """APIFootball's ``match_status`` -> (status, minute shown while live)."""
    text = (raw or "").strip()
    fixed = _FIXED.get(text.casefold())
    if fixed is not None:
        return fixed, ("HT" if fixed == LIVE and text.casefold() in {"half time", "ht"} else None)
    match = _MINUTE.match(text)
    if match:
        return LIVE, text if text.endswith("'") else f"{text}'"
    return "unknown", None


def _int(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _price(value) -> float | None:
    try:
        price = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return price if price > 1.0 else None  # decimal odds are > 1; 0 or "" means "not offered"


def kickoff_utc(match_date: str | None, match_time: str | None, tz: str = "UTC") -> tuple[datetime | None, bool]:
    """(naive UTC kickoff, whether the time is known). Times are in the zone we asked for."""
    try:
        day = datetime.strptime((match_date or "").strip(), "%Y-%m-%d")
    except ValueError:
        return None, False
    known = True
    try:
        hour, minute = (int(x) for x in (match_time or "").strip().split(":")[:2])
        local = day.replace(hour=hour, minute=minute)
    except ValueError:
        local, known = day, False  # "TBD" or empty: the date is right, the time is not known
    aware = local.replace(tzinfo=ZoneInfo(tz))
    return aware.astimezone(UTC).replace(tzinfo=None), known


def parse_league(row: dict) -> dict | None:
    provider_id = str(row.get("league_id") or "").strip()
    if not provider_id:
        return None
    return {"provider_id": provider_id, "name": (row.get("league_name") or "").strip() or provider_id,
            "country": (row.get("country_name") or "").strip() or None,
            "season": (row.get("league_season") or "").strip() or None,
            "logo_url": (row.get("league_logo") or "").strip() or None}


def parse_event(row: dict, tz: str = "UTC") -> dict | None:
    """One ``get_events`` row -> fixture fields plus its league and teams (by provider id)."""
    match_id = str(row.get("match_id") or "").strip()
    home_id = str(row.get("match_hometeam_id") or "").strip()
    away_id = str(row.get("match_awayteam_id") or "").strip()
    league_id = str(row.get("league_id") or "").strip()
    if not (match_id and home_id and away_id and league_id):
        return None
    kickoff, time_known = kickoff_utc(row.get("match_date"), row.get("match_time"), tz)
    if kickoff is None:
        return None
    status, minute = parse_status(row.get("match_status"))
    if str(row.get("match_live") or "") == "1" and status == SCHEDULED:
        status = LIVE
    started = status not in {SCHEDULED, POSTPONED, CANCELLED}
    text = (row.get("match_status") or "").strip()
    fixture = {
        "provider_id": match_id,
        "kickoff_at": kickoff,
        "kickoff_time_known": time_known,
        "status": status,
        "status_text": text or None,
        "minute": minute,
        "home_score": _int(row.get("match_hometeam_score")) if started else None,
        "away_score": _int(row.get("match_awayteam_score")) if started else None,
        "home_ht_score": _int(row.get("match_hometeam_halftime_score")),
        "away_ht_score": _int(row.get("match_awayteam_halftime_score")),
        # After ET / After Pen.: the 90-minute score, next to the final one
        "home_ft_score": _int(row.get("match_hometeam_ft_score")),
        "away_ft_score": _int(row.get("match_awayteam_ft_score")),
        "home_et_score": _int(row.get("match_hometeam_extra_score")),
        "away_et_score": _int(row.get("match_awayteam_extra_score")),
        "home_pen_score": _int(row.get("match_hometeam_penalty_score")),
        "away_pen_score": _int(row.get("match_awayteam_penalty_score")),
        "round": (row.get("match_round") or "").strip() or None,
    }
    return {
        "fixture": fixture,
        "league": {"provider_id": league_id, "name": (row.get("league_name") or "").strip() or league_id,
                   "country": (row.get("country_name") or "").strip() or None,
                   "logo_url": (row.get("league_logo") or "").strip() or None},
        "home": {"provider_id": home_id, "name": (row.get("match_hometeam_name") or "").strip() or home_id,
                 "badge_url": (row.get("team_home_badge") or "").strip() or None},
        "away": {"provider_id": away_id, "name": (row.get("match_awayteam_name") or "").strip() or away_id,
                 "badge_url": (row.get("team_away_badge") or "").strip() or None},
    }


def parse_odds(row: dict) -> list[tuple[str, str, str, float]]:
    """One flat ``get_odds`` row -> [(bookmaker, market, selection, price)].

    Markets: ``1x2`` (1/x/2), ``double_chance`` (1x/12/x2), ``over_under_<line>``
    (over/under), ``btts`` (yes/no) and ``asian_handicap_<line>`` (1/2).
    """
    bookmaker = (row.get("odd_bookmakers") or "").strip()
    if not bookmaker:
        return []
    out = []
    for key, value in row.items():
        price = None
        if key in ODDS_SIMPLE:
            market, selection = ODDS_SIMPLE[key]
        elif m := _OVER_UNDER.match(key):
            market, selection = f"over_under_{m.group(2)}", "over" if m.group(1) == "o" else "under"
        elif m := _HANDICAP.match(key):
            market, selection = f"asian_handicap_{m.group(1)}", m.group(2)
        else:
            continue
        price = _price(value)
        if price is not None:
            out.append((bookmaker[:64], market, selection, price))
    return out
