"""A fake APIFootball v3 on a real local HTTP server (pytest-httpserver), and its data."""

from __future__ import annotations

import json
import threading
import time
from datetime import date, datetime, timedelta

from werkzeug.wrappers import Response

API_KEY = "apifootball-key-for-tests"
PATH = "/apifootball/"


def event(match_id, home_id, home, away_id, away, when: datetime, status="", league_id="152",
          league="Premier League", score=("", ""), ft=("", ""), pen=("", ""), live="0"):
    return {
        "match_id": str(match_id), "country_id": "44", "country_name": "England", "league_id": league_id,
        "league_name": league, "match_date": when.strftime("%Y-%m-%d"), "match_status": status,
        "match_time": when.strftime("%H:%M"), "match_hometeam_id": str(home_id), "match_hometeam_name": home,
        "match_hometeam_score": score[0], "match_awayteam_name": away, "match_awayteam_id": str(away_id),
        "match_awayteam_score": score[1], "match_hometeam_halftime_score": "", "match_awayteam_halftime_score": "",
        "match_hometeam_extra_score": "", "match_awayteam_extra_score": "",
        "match_hometeam_penalty_score": pen[0], "match_awayteam_penalty_score": pen[1],
        "match_hometeam_ft_score": ft[0], "match_awayteam_ft_score": ft[1], "match_live": live,
        "match_round": "13", "team_home_badge": "", "team_away_badge": "", "league_logo": "",
    }


def odds_row(match_id, bookmaker, base=2.0):
    return {"match_id": str(match_id), "odd_bookmakers": bookmaker, "odd_date": "2026-11-28 10:00:00",
            "odd_1": f"{base:.2f}", "odd_x": "3.40", "odd_2": f"{base + 1.5:.2f}", "odd_1x": "1.30",
            "odd_12": "1.33", "odd_x2": "1.95", "ah-1.5_1": "3.10", "ah-1.5_2": "1.36",
            "o+0.5": "1.05", "u+0.5": "11.00", "o+2.5": "1.90", "u+2.5": "1.90", "o+3.5": "", "u+3.5": "0",
            "bts_yes": "1.72", "bts_no": "2.05"}


class FakeAPIFootball:
    """Serves events, odds and leagues from lists the test sets; records every request."""

    def __init__(self, server):
        self.events: list[dict] = []
        self.live_events: list[dict] | None = None  # what match_live=1 returns (default: live ones)
        self.odds: list[dict] = []
        self.leagues = [{"country_id": "44", "country_name": "England", "league_id": "152",
                         "league_name": "Premier League", "league_season": "2026/2027", "league_logo": ""},
                        {"country_id": "6", "country_name": "Spain", "league_id": "302",
                         "league_name": "La Liga", "league_season": "2026/2027", "league_logo": ""}]
        self.script: list = []  # (status, body) | "slow" answers for the next requests
        self.delay = 0.0
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server.expect_request(PATH, method="GET").respond_with_handler(self.handle)

    def calls(self, action: str | None = None) -> list[dict]:
        return [r for r in self.requests if action is None or r["action"] == action]

    def handle(self, request):
        args = request.args.to_dict()
        with self.lock:
            self.requests.append(args)
            step = self.script.pop(0) if self.script else None
        if self.delay:
            time.sleep(self.delay)
        if step == "slow":
            time.sleep(1.0)
            step = None
        if step is not None:
            return Response(json.dumps(step[1]), status=step[0], content_type="application/json")
        if args.get("APIkey") != API_KEY:
            return self.json({"error": 401, "message": "Invalid API key"})
        action = args.get("action")
        if action == "get_leagues":
            return self.json(self.leagues)
        if action == "get_events":
            rows = self.events
            if args.get("match_live") == "1":
                rows = self.live_events if self.live_events is not None else [
                    e for e in rows if e["match_live"] == "1"]
            start, end = date.fromisoformat(args["from"]), date.fromisoformat(args["to"])
            rows = [e for e in rows if start <= date.fromisoformat(e["match_date"]) <= end]
            return self.json(rows or {"error": 404, "message": "No event found (please check your plan)!"})
        if action == "get_odds":
            ids = {e["match_id"] for e in self.events}
            rows = [o for o in self.odds if o["match_id"] in ids or args.get("match_id") == o["match_id"]]
            return self.json(rows or {"error": 404, "message": "No odds found (please check your plan)!"})
        return self.json({"error": 404, "message": "Unknown action"})

    @staticmethod
    def json(data) -> Response:
        return Response(json.dumps(data), content_type="application/json")


def season(n_fixtures: int, bookmakers: int, start: datetime, teams: int = 40) -> tuple[list[dict], list[dict]]:
    """``n_fixtures`` upcoming fixtures over six days and ``bookmakers`` odds rows for each."""
    events, odds = [], []
    for i in range(n_fixtures):
        home, away = i % teams, (i * 7 + 1) % teams
        if home == away:
            away = (away + 1) % teams
        when = start + timedelta(minutes=(i * 37) % (6 * 24 * 60))
        league_id, league = ("152", "Premier League") if i % 2 == 0 else ("302", "La Liga")
        events.append(event(10_000 + i, 100 + home, f"Team {home:02d}", 100 + away, f"Team {away:02d}", when,
                            league_id=league_id, league=league))
        odds += [odds_row(10_000 + i, f"Bookmaker {b}", 1.5 + b / 10) for b in range(bookmakers)]
    return events, odds
