"""Football: APIFootball client, sync upserts, live/results jobs, follow notices, flow actions."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from crm.base.extensions import db
from crm.base.models import Contact, Message, utcnow
from football import parse
from football.models import Fixture, League, Odds, Team, TeamFollow
from integrations.apifootball import APIFootballClient, APIFootballError, RateLimiter
from tests.football_fake import API_KEY, PATH, FakeAPIFootball, event, odds_row, season
from tests.helpers import envelope, import_examples, message, post_webhook, run_worker, say


@pytest.fixture
def api(httpserver, graph):  # after `graph`, which clears the server's handlers
    return FakeAPIFootball(httpserver)


@pytest.fixture
def fapp(make_app, graph, api, httpserver):
    return make_app(APIFOOTBALL_URL=httpserver.url_for(PATH), APIFOOTBALL_KEY=API_KEY,
                    APIFOOTBALL_RATE_PER_MINUTE=60000)


def client_for(httpserver, redis=None, per_minute=60000, clock=None, **kwargs) -> APIFootballClient:
    limiter = RateLimiter(redis, per_minute, clock=clock or time.time) if redis is not None else None
    kwargs.setdefault("sleep", lambda s: None)
    return APIFootballClient(httpserver.url_for(PATH), API_KEY, limiter, **kwargs)


def now_hour() -> datetime:
    return utcnow().replace(minute=0, second=0, microsecond=0)


# -- parsing -------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, status, minute", [
    ("", "scheduled", None), ("45'", "live", "45'"), ("90+2'", "live", "90+2'"), ("12", "live", "12'"),
    ("Half Time", "live", "HT"), ("Finished", "finished", None), ("After ET", "finished", None),
    ("After Pen.", "finished", None), ("Postponed", "postponed", None), ("Cancelled", "cancelled", None),
    ("Awarded", "awarded", None), ("Abandoned", "abandoned", None), ("Something new", "unknown", None),
])
def test_every_status_string(raw, status, minute):
    assert parse.parse_status(raw) == (status, minute)


def test_kickoff_is_stored_in_utc():
    assert parse.kickoff_utc("2026-11-29", "15:00", "Europe/Berlin") == (datetime(2026, 11, 29, 14, 0), True)
    assert parse.kickoff_utc("2026-11-29", "TBD") == (datetime(2026, 11, 29), False)
    assert parse.kickoff_utc("", "15:00") == (None, False)


def test_flat_odds_row_gives_every_market():
    prices = {(m, s): p for _b, m, s, p in parse.parse_odds(odds_row(1, "bet365"))}
    assert prices[("1x2", "1")] == 2.0 and prices[("1x2", "x")] == 3.4 and prices[("1x2", "2")] == 3.5
    assert prices[("double_chance", "1x")] == 1.3 and prices[("double_chance", "x2")] == 1.95
    assert prices[("over_under_2.5", "over")] == 1.9 and prices[("over_under_0.5", "under")] == 11.0
    assert prices[("btts", "yes")] == 1.72 and prices[("asian_handicap_-1.5", "2")] == 1.36
    assert ("over_under_3.5", "over") not in prices and ("over_under_3.5", "under") not in prices  # "" and "0"
    assert parse.parse_odds({"match_id": "1", "odd_1": "2.0"}) == []  # no bookmaker


# -- client --------------------------------------------------------------------------------------
def test_no_data_is_an_empty_result(httpserver, api):
    client = client_for(httpserver)
    assert client.events(utcnow().date(), utcnow().date()) == []
    assert api.calls("get_events")[0]["timezone"] == "UTC"


def test_error_payload_raises_without_the_key(httpserver, api):
    client = APIFootballClient(httpserver.url_for(PATH), "wrong-secret-key", sleep=lambda s: None)
    with pytest.raises(APIFootballError) as exc:
        client.leagues()
    assert "Invalid API key" in str(exc.value) and "wrong-secret-key" not in str(exc.value)
    assert not exc.value.retryable and len(api.requests) == 1


def test_retries_on_429_5xx_and_timeouts(httpserver, api):
    sleeps = []

    def sleep(seconds):  # record the backoff; wait only long enough for the slow answer to finish
        sleeps.append(seconds)
        time.sleep(0.7)

    client = client_for(httpserver, sleep=sleep, timeout=(1, 0.4), max_attempts=4)
    api.script = [(429, {"message": "slow down"}), (500, {}), "slow"]
    assert len(client.leagues()) == 2
    assert len(api.requests) == 4 and client.calls == 4
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2]  # exponential backoff


def test_gives_up_after_max_attempts(httpserver, api):
    client = client_for(httpserver, max_attempts=3)
    api.script = [(503, {})] * 5
    with pytest.raises(APIFootballError) as exc:
        client.leagues()
    assert exc.value.retryable and exc.value.status == 503 and len(api.requests) == 3
    assert API_KEY not in str(exc.value)


def test_rate_limit_is_shared_through_redis(httpserver, api, fapp):
    redis = fapp.extensions["redis"]
    waits_a, waits_b = [], []
    frozen = lambda: 1_000_000.0  # an injected clock: the waits do not depend on this machine's speed
    a = client_for(httpserver, redis, per_minute=60, clock=frozen, sleep=waits_a.append)
    b = client_for(httpserver, redis, per_minute=60, clock=frozen, sleep=waits_b.append)  # same Redis
    a.leagues()
    a.leagues()
    b.leagues()
    a.leagues()
    # one call per second between both clients: the 2nd waits ~1 s, the 3rd (b) ~2 s, the 4th ~3 s
    assert len(waits_a) == 2 and len(waits_b) == 1
    assert 0.8 < waits_a[0] <= 1.0 and 1.8 < waits_b[0] <= 2.0 and 2.8 < waits_a[1] <= 3.0


# -- sync ----------------------------------------------------------------------------------------
def test_full_sync_upserts_and_reruns_idempotently(fapp, api):
    start = now_hour() + timedelta(hours=2)
    api.events, api.odds = season(60, 3, start)
    runner = fapp.test_cli_runner()
    out = runner.invoke(args=["football", "sync", "--now"])
    assert out.exit_code == 0, out.output
    assert "fixtures: 60 fetched, 60 upserted" in out.output and "odds:" in out.output and "leagues:" in out.output
    # one date-window call per kind, not one per league or fixture
    assert [r["action"] for r in api.requests] == ["get_leagues", "get_events", "get_odds", "get_events"]
    with fapp.app_context():
        counts = {m.__name__: db.session.execute(select(func.count()).select_from(m)).scalar_one()
                  for m in (League, Team, Fixture, Odds)}
        # 3 bookmakers x (3 + 3 + 2x2 over/under + 2 btts + 2 handicap) selections
        assert counts == {"League": 2, "Team": 40, "Fixture": 60, "Odds": 60 * 3 * 14}
        ids = dict(db.session.execute(select(Fixture.provider_id, Fixture.id)).all())
    # the provider changes a kickoff, a price and a team name; the re-run updates in place
    api.events[0]["match_time"] = "23:45"
    for e in api.events:  # a renamed team is renamed in every fixture the provider lists it in
        for side in ("home", "away"):
            if e[f"match_{side}team_id"] == "100":
                e[f"match_{side}team_name"] = "Team 00 FC"
    api.odds[0]["odd_1"] = "9.50"
    assert runner.invoke(args=["football", "sync", "--now"]).exit_code == 0
    with fapp.app_context():
        assert {m.__name__: db.session.execute(select(func.count()).select_from(m)).scalar_one()
                for m in (League, Team, Fixture, Odds)} == counts
        assert dict(db.session.execute(select(Fixture.provider_id, Fixture.id)).all()) == ids
        first = db.session.execute(select(Fixture).where(Fixture.provider_id == "10000")).scalar_one()
        assert first.kickoff_at.strftime("%H:%M") == "23:45" and first.home.name == "Team 00 FC"
        price = db.session.execute(select(Odds.price).where(
            Odds.fixture_id == first.id, Odds.bookmaker == "Bookmaker 0", Odds.market == "1x2",
            Odds.selection == "1")).scalar_one()
        assert price == 9.5


def test_upserts_commit_in_short_transactions(make_app, graph, api, httpserver):
    """Each transaction writes at most FOOTBALL_UPSERT_CHUNK rows: a reply never waits long for
    SQLite's write lock (PostgreSQL: short row locks)."""
    from sqlalchemy import event

    from football.jobs import full_sync

    app = make_app(APIFOOTBALL_URL=httpserver.url_for(PATH), APIFOOTBALL_KEY=API_KEY,
                   APIFOOTBALL_RATE_PER_MINUTE=60000, FOOTBALL_UPSERT_CHUNK=100)
    api.events, api.odds = season(60, 3, now_hour() + timedelta(hours=2))
    written, transactions = [0], []

    def on_execute(_conn, _cursor, statement, parameters, _context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO FOOTBALL_"):
            written[0] += len(parameters) if executemany else 1

    def on_commit(_conn):
        if written[0]:
            transactions.append(written[0])
        written[0] = 0

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", on_execute)
        event.listen(db.engine, "commit", on_commit)
        try:
            summary = full_sync()
        finally:
            event.remove(db.engine, "before_cursor_execute", on_execute)
            event.remove(db.engine, "commit", on_commit)
    assert summary["odds"]["upserted"] == 60 * 3 * 14
    assert max(transactions) <= 100
    assert sum(transactions) >= 60 * 3 * 14 + 60 and len(transactions) >= 26


def test_league_allow_list(make_app, graph, api, httpserver):
    app = make_app(APIFOOTBALL_URL=httpserver.url_for(PATH), APIFOOTBALL_KEY=API_KEY,
                   APIFOOTBALL_RATE_PER_MINUTE=60000, FOOTBALL_LEAGUES="302")
    api.events, api.odds = season(10, 1, now_hour() + timedelta(hours=2))
    from football.jobs import full_sync

    with app.app_context():
        summary = full_sync()
        assert summary["fixtures"]["upserted"] == 5 and summary["fixtures"]["skipped"] == 5
        assert summary["odds"]["skipped"] == 5
        assert db.session.execute(select(League.name)).scalars().all() == ["La Liga"]


def test_statuses_scores_and_90_minute_score(fapp, api):
    past = now_hour() - timedelta(hours=5)
    api.events = [
        event(1, 1, "Alpha", 2, "Beta", past, "Finished", score=("2", "1")),
        event(2, 3, "Gamma", 4, "Delta", past, "After ET", score=("3", "2"), ft=("2", "2")),
        event(3, 5, "Eps", 6, "Zeta", past, "After Pen.", score=("1", "1"), ft=("1", "1"), pen=("4", "3")),
        event(4, 7, "Eta", 8, "Theta", past, "Postponed"),
        event(5, 9, "Iota", 10, "Kappa", past, "Cancelled"),
        event(6, 11, "Lambda", 12, "Mu", past, "Awarded", score=("3", "0")),
        event(7, 13, "Nu", 14, "Xi", utcnow() - timedelta(minutes=50), "45'", score=("0", "0"), live="1"),
        event(8, 15, "Omicron", 16, "Pi", utcnow() - timedelta(minutes=47), "Half Time", score=("1", "0"), live="1"),
    ]
    from football.jobs import sync_results

    with fapp.app_context():
        sync_results()
        rows = {f.provider_id: f for f in db.session.execute(select(Fixture)).scalars()}
        assert [rows[str(i)].status for i in range(1, 9)] == [
            "finished", "finished", "finished", "postponed", "cancelled", "awarded", "live", "live"]
        assert (rows["2"].home_score, rows["2"].home_ft_score, rows["2"].away_ft_score) == (3, 2, 2)
        assert (rows["3"].home_pen_score, rows["3"].away_pen_score) == (4, 3)
        assert rows["4"].home_score is None and rows["7"].minute == "45'" and rows["8"].minute == "HT"
        assert rows["1"].finished_at is not None and rows["7"].finished_at is None


def test_live_sync_only_when_live_or_due_and_notifies_followers(fapp, api, graph):
    from football import jobs

    with fapp.app_context():
        assert jobs.sync_live() == {"skipped": "no fixture live or due"}
    assert api.requests == []  # nothing live or due: no API call at all
    kickoff = utcnow() - timedelta(minutes=30)
    api.events = [event(1, 1, "Arsenal", 2, "Chelsea", kickoff, "", live="0"),
                  event(2, 3, "Everton", 4, "Fulham", kickoff, "", live="0")]
    with fapp.app_context():
        jobs.sync_results(days=1)  # yesterday and today: the kickoff may fall before midnight
        arsenal = db.session.execute(select(Team).where(Team.name == "Arsenal")).scalar_one()
        fan = Contact(wa_id="4477", profile_name="Fan", last_inbound_at=utcnow())
        away = Contact(wa_id="4488", profile_name="Old", last_inbound_at=utcnow() - timedelta(days=3))
        db.session.add_all([fan, away])
        db.session.flush()
        db.session.add_all([TeamFollow(contact_id=fan.id, team_id=arsenal.id),
                            TeamFollow(contact_id=away.id, team_id=arsenal.id)])
        db.session.commit()
    # both kicked off: the live pass asks for live matches only
    api.events[0].update(match_status="31'", match_live="1", match_hometeam_score="1", match_awayteam_score="0")
    api.events[1].update(match_status="30'", match_live="1", match_hometeam_score="0", match_awayteam_score="0")
    api.requests.clear()
    with fapp.app_context():
        summary = jobs.sync_live()
    assert list(summary) == ["live"] and api.requests[0]["match_live"] == "1"
    # Arsenal's match ends and drops out of the live list; the next pass settles it and tells the fan
    api.events[0].update(match_status="Finished", match_live="0", match_hometeam_score="2")
    api.requests.clear()
    with fapp.app_context():
        summary = jobs.sync_live()
        assert list(summary) == ["live", "live-settle"]
        assert db.session.execute(select(Fixture.status).where(Fixture.provider_id == "1")).scalar_one() == "finished"
    run_worker(fapp, ("default", "high"))
    assert graph.texts("4477") == ["Full time ⚽ Arsenal 2-0 Chelsea (Premier League)"]
    assert graph.texts("4488") == []  # outside the 24-hour window and no template configured
    with fapp.app_context():  # a later pass never notifies twice
        jobs.sync_results()
    run_worker(fapp, ("default", "high"))
    assert len(graph.texts("4477")) == 1


def test_sync_command_enqueues_on_low(fapp):
    out = fapp.test_cli_runner().invoke(args=["football", "sync"])
    assert out.exit_code == 0 and "enqueued full sync on 'low'" in out.output
    with fapp.app_context():
        from crm.base.extensions import get_queue

        assert get_queue("low").count == 1 and get_queue("high").count == 0


def test_sync_fails_clearly_without_a_key(make_app, graph, api):
    app = make_app()
    out = app.test_cli_runner().invoke(args=["football", "sync", "--now"])
    assert out.exit_code != 0 and "APIFOOTBALL_KEY is not set" in out.output
    from football import jobs

    with app.app_context():  # the scheduled jobs skip quietly instead of failing every 2 minutes
        assert jobs.sync_live() == jobs.sync_upcoming() == jobs.sync_results() == jobs.NO_KEY
    assert api.requests == []


# -- flow actions and the example flow ------------------------------------------------------------


def test_example_flow_answers_fixtures_results_and_odds(fapp, api, graph):
    import_examples(fapp)
    soon = now_hour() + timedelta(days=1)
    api.events = [
        event(1, 1, "Arsenal", 2, "Chelsea", soon),
        event(2, 3, "Everton", 4, "Fulham", soon + timedelta(hours=2), league_id="302", league="La Liga"),
        event(3, 5, "Leeds", 6, "Burnley", now_hour() - timedelta(days=1), "Finished", score=("3", "1")),
    ]
    api.odds = [odds_row(1, "bet365", 2.1), odds_row(1, "Unibet", 2.3)]
    with fapp.app_context():
        from football.jobs import full_sync

        full_sync()
    say(fapp, "555", "fixtures")
    reply = graph.texts("555")[-1]
    assert "Fixtures, next 7 days" in reply and "Arsenal v Chelsea" in reply and "Everton v Fulham" in reply
    assert reply.index("Premier League") < reply.index("La Liga")
    say(fapp, "555", "results")
    assert "Leeds 3-1 Burnley" in graph.texts("555")[-1]
    say(fapp, "555", "odds")
    pick = graph.sent[-1]
    assert pick["type"] == "interactive" and pick["interactive"]["type"] == "button"
    fixture_id = pick["interactive"]["action"]["buttons"][0]["reply"]["id"]
    msg = message("555", kind="interactive",
                  interactive={"type": "button_reply", "button_reply": {"id": fixture_id, "title": "x"}})
    post_webhook(fapp.test_client(), envelope([msg]))
    run_worker(fapp)
    text = graph.texts("555")[-1]
    assert "Arsenal v Chelsea" in text and "Home 2.30" in text and "Best prices from 2 bookmakers" in text


def test_long_lists_respect_whatsapp_limits(fapp, api):
    api.events, api.odds = season(300, 0, now_hour() + timedelta(hours=2))
    from football import actions
    from football.jobs import full_sync

    with fapp.app_context():
        full_sync()
        result = actions.fixtures({"days": 7}, {"contact": {"id": 0}})
        assert result["count"] == 300 and len(result["text"]) <= 4096 and result["text"].endswith("more.")
        assert len(result["options"]) == actions.MAX_OPTIONS
        assert all(len(o["title"]) <= 24 and len(o["description"]) <= 72 for o in result["options"])
        one_league = actions.fixtures({"days": 7, "league": "La Liga"}, {"contact": {"id": 0}})
        assert one_league["count"] == 150


def test_follow_and_unfollow_actions(fapp, api):
    api.events = [event(1, 1, "Arsenal", 2, "Chelsea", now_hour() + timedelta(hours=3)),
                  event(2, 3, "Arsenal Women", 4, "Chelsea Women", now_hour() + timedelta(hours=4))]
    from football import actions
    from football.jobs import sync_upcoming

    with fapp.app_context():
        sync_upcoming(days=1)
        contact = Contact(wa_id="777", profile_name="Fan")
        db.session.add(contact)
        db.session.commit()
        ctx = {"contact": {"id": contact.id}}
        assert actions.follow({"team": "arsenal"}, ctx)["ok"]  # exact name wins over "Arsenal Women"
        assert actions.follow({"team": "Arsenal"}, ctx)["ok"]  # twice is once
        ambiguous = actions.follow({"team": "chel"}, ctx)
        assert not ambiguous["ok"] and [o["title"] for o in ambiguous["options"]] == ["Chelsea", "Chelsea Women"]
        assert actions.follow({"team": ambiguous["options"][1]["id"]}, ctx)["team"] == "Chelsea Women"
        assert not actions.follow({"team": "Nobody"}, ctx)["ok"]
        db.session.commit()
        assert actions.following({}, ctx)["text"] == "You follow: Arsenal, Chelsea Women"
        actions.unfollow({"team": "Arsenal"}, ctx)
        db.session.commit()
        assert db.session.execute(select(func.count()).select_from(TeamFollow)).scalar_one() == 1


def test_scheduler_registers_football_jobs(fapp):
    import scheduler

    ids = {s["id"]: s for s in scheduler.schedules(fapp)}
    assert ids["crm-football-upcoming"]["cron"] == "*/15 * * * *" and ids["crm-football-upcoming"]["queue"] == "low"
    assert ids["crm-football-live"]["cron"] == "*/2 * * * *"
    assert all(s["queue"] == "low" for k, s in ids.items() if k.startswith("crm-football"))


def test_replies_never_wait_for_the_football_worker(fapp, api, graph):
    """A sync job sitting on `low` does not hold back the reply worker (it listens to high/default)."""
    import_examples(fapp)
    with fapp.app_context():
        from crm.base.extensions import get_queue
        from football.jobs import full_sync

        get_queue("low").enqueue(full_sync)
    say(fapp, "900", "hi")
    assert graph.texts("900") and api.requests == []
    with fapp.app_context():
        assert get_queue("low").count == 1
        assert db.session.execute(select(func.count()).select_from(Message)).scalar_one() == 2


def test_follow_a_team_through_the_example_flow(fapp, api, graph):
    import_examples(fapp)
    api.events = [event(1, 1, "Chelsea", 2, "Arsenal", now_hour() + timedelta(hours=3)),
                  event(2, 3, "Chelsea Women", 4, "Arsenal Women", now_hour() + timedelta(hours=4))]
    with fapp.app_context():
        from football.jobs import sync_upcoming

        sync_upcoming(days=1)
    say(fapp, "321", "follow")
    assert graph.texts("321")[-1].startswith("Which team would you like to follow?")
    say(fapp, "321", "chel")
    pick = graph.sent[-1]
    assert pick["interactive"]["body"]["text"] == "Which team do you mean?"
    buttons = pick["interactive"]["action"]["buttons"]
    assert [b["reply"]["title"] for b in buttons] == ["Chelsea", "Chelsea Women"]
    msg = message("321", kind="interactive",
                  interactive={"type": "button_reply", "button_reply": {"id": buttons[0]["reply"]["id"], "title": "x"}})
    post_webhook(fapp.test_client(), envelope([msg]))
    run_worker(fapp)
    assert graph.texts("321")[-1] == "Done ✅ I'll send you Chelsea's result when each match finishes."
    say(fapp, "321", "follow")
    say(fapp, "321", "Nobody FC")
    assert graph.texts("321")[-1].startswith("I couldn't find a team called “Nobody FC”.")
    with fapp.app_context():
        assert db.session.execute(select(func.count()).select_from(TeamFollow)).scalar_one() == 1
