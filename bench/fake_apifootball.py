"""A fake APIFootball v3 for the isolation benchmark (standard library only).

    python bench/fake_apifootball.py --port 18998 --leagues 30 --fixtures 1800 --bookmakers 5 --delay 0.15

Serves ``get_leagues``, ``get_events`` (``match_live=1`` answers "no event") and ``get_odds``
(one flat row per fixture and bookmaker) for fixtures spread over the next six days. Every
answer waits ``--delay`` seconds first (0.15 s: a provider answering promptly, so the sync's
database work, not its waiting, fills the benchmark's window). Logs one line per request.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def build(fixtures: int, bookmakers: int, league_count: int = 20) -> tuple[list, list, list]:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    leagues = [{"league_id": str(100 + i), "league_name": f"League {i}", "country_name": "Benchland",
                "league_season": "2026/2027", "league_logo": ""} for i in range(league_count)]
    events, odds = [], []
    for i in range(fixtures):
        when = start + timedelta(minutes=(i * 37) % (6 * 24 * 60))
        league = leagues[i % len(leagues)]
        home, away = i % 400, (i * 7 + 1) % 400
        away = (away + 1) % 400 if away == home else away
        events.append({
            "match_id": str(500_000 + i), "league_id": league["league_id"], "league_name": league["league_name"],
            "country_name": "Benchland", "match_date": when.strftime("%Y-%m-%d"), "match_time": when.strftime("%H:%M"),
            "match_status": "", "match_live": "0", "match_hometeam_id": str(10_000 + home),
            "match_hometeam_name": f"Club {home}", "match_awayteam_id": str(10_000 + away),
            "match_awayteam_name": f"Club {away}", "match_hometeam_score": "", "match_awayteam_score": "",
            "match_round": "1"})
        for b in range(bookmakers):
            row = {"match_id": str(500_000 + i), "odd_bookmakers": f"Book {b}", "odd_date": "2026-11-28 10:00:00",
                   "odd_1": f"{1.5 + b / 10:.2f}", "odd_x": "3.40", "odd_2": "4.10", "odd_1x": "1.20",
                   "odd_12": "1.25", "odd_x2": "1.90", "bts_yes": "1.70", "bts_no": "2.10"}
            for line in ("0.5", "1.5", "2.5", "3.5", "4.5"):
                row[f"o+{line}"], row[f"u+{line}"] = "1.85", "1.95"
            odds.append(row)
    return leagues, events, odds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18998)
    parser.add_argument("--leagues", type=int, default=30)
    parser.add_argument("--fixtures", type=int, default=1800)
    parser.add_argument("--bookmakers", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.15)
    args = parser.parse_args()
    leagues, events, odds = build(args.fixtures, args.bookmakers, args.leagues)
    bodies = {"get_leagues": json.dumps(leagues).encode(), "get_events": json.dumps(events).encode(),
              "get_odds": json.dumps(odds).encode(),
              "none": json.dumps({"error": 404, "message": "No event found (please check your plan)!"}).encode()}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's name
            query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
            time.sleep(args.delay)
            action = query.get("action", "")
            body = bodies["none"] if query.get("match_live") == "1" else bodies.get(action, bodies["none"])
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            print(f"{time.time():.3f} {action} {len(body)} bytes", flush=True)

        def log_message(self, *_args):
            pass

    print(f"fake apifootball: {len(events)} fixtures, {len(odds)} odds rows, delay {args.delay} s, "
          f"port {args.port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
