"""The flow simulator (/simulator) through Flask's test client, on SQLite and PostgreSQL.

The real runtime answers (intake, contact task, engine, actions, expiry); the fake Graph API
(conftest ``graph``) must receive nothing. The same chat in a real browser is in
tests/browser/test_simulator_browser.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from crm.base.extensions import db
from crm.base.models import Contact, Message, utcnow
from crm.replies.expiry import expire_idle_sessions
from flows.models import FlowSession
from tests.helpers import import_examples, run_worker, say
from tests.inbox_support import csrf_of, login, make_operator

TOKEN = "shared-operator-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def sim_app(make_app, graph):
    app = make_app(OPERATOR_API_TOKENS=TOKEN)
    import_examples(app)
    make_operator(app, "Bo")
    return app


class User:
    """An operator signed in, using the simulator's JSON routes as its page does."""

    def __init__(self, app, name: str = "Bo"):
        self.client = app.test_client()
        assert login(self.client, name).status_code == 302
        page = self.client.get("/simulator/")
        assert page.status_code == 200
        self.page = page.get_data(as_text=True)
        self.csrf = csrf_of(self.page)

    def post(self, path: str, body: dict | None, status: int = 200) -> dict:
        response = self.client.post(f"/simulator/{path}", json=body, headers={"X-CSRFToken": self.csrf})
        assert response.status_code == status, response.get_data(as_text=True)
        return response.json

    def start(self, flow: str | None = "welcome") -> dict:
        return self.post("reset", {"flow": flow})

    def send(self, text: str) -> dict:
        return self.post("send", {"text": text})

    def press(self, state: dict, title: str) -> dict:
        """Press the button or list row titled ``title`` of the newest message that has it."""
        for m in reversed(state["messages"]):
            for option in options(m):
                if option["title"] == title:
                    return self.post("press", {"message_id": m["id"], "reply_id": option["id"]})
        raise AssertionError(f"no button or list row {title!r} in {bot_texts(state)}")

    def poll(self) -> dict:
        response = self.client.get("/simulator/poll")
        assert response.status_code == 200
        return response.json


def options(m: dict) -> list[dict]:
    inter = (m["payload"] or {}).get("interactive") or {}
    action = inter.get("action") or {}
    if inter.get("type") == "button":
        return [b["reply"] for b in action["buttons"]]
    if inter.get("type") == "list":
        return [row for section in action["sections"] for row in section["rows"]]
    return []


def bot_texts(state: dict) -> list[str]:
    return [m["text"] for m in state["messages"] if m["direction"] == "out"]


def last_bot(state: dict) -> dict:
    return [m for m in state["messages"] if m["direction"] == "out"][-1]


def steps(state: dict) -> list[tuple[str, str]]:
    return [(p["flow"], p["step"]) for p in state["sessions"][-1]["path"]]


def test_sign_in_is_required(sim_app, graph):
    client = sim_app.test_client()
    page = client.get("/simulator/")
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=/simulator/")
    assert client.get("/simulator/poll").status_code == 401
    for path in ("send", "press", "reset"):
        assert client.post(f"/simulator/{path}", json={"text": "hi"}).status_code == 401
    tester = User(sim_app)
    refused = tester.client.post("/simulator/send", json={"text": "hi"})  # signed in, but no CSRF token
    assert refused.status_code == 400 and "CSRF" in refused.json["error"]
    assert graph.requests == []


def test_chat_through_welcome_pressing_buttons(sim_app, graph):
    tester = User(sim_app)
    assert "Main menu (welcome)" in tester.page and 'id="flow-select"' in tester.page
    state = tester.start("welcome")
    menu = last_bot(state)
    assert menu["type"] == "interactive" and [o["title"] for o in options(menu)] == [
        "Football", "Sign up", "Talk to a person"]
    assert menu["status"] == "sent" and menu["wa_message_id"].startswith("sim.")
    assert state["session"]["flow"] == "welcome" and state["session"]["step"] == "menu"

    state = tester.press(state, "Sign up")
    pressed = [m for m in state["messages"] if m["direction"] == "in"][-1]
    reply = pressed["payload"]["interactive"]
    assert reply == {"type": "button_reply", "button_reply": {"id": "signup", "title": "Sign up"}}
    assert pressed["payload"]["context"]["id"] == menu["wa_message_id"]  # a reply to the menu, as in WhatsApp
    assert bot_texts(state)[-1] == "What is your full name?"

    state = tester.send("Ana Lima")
    assert bot_texts(state)[-1] == "Thanks Ana Lima. What is your email address?"
    state = tester.send("not an email")
    assert bot_texts(state)[-1].startswith("That does not look like an email address")
    state = tester.send("ana@example.com")
    session = state["session"]
    assert (session["flow"], session["step"], session["status"]) == ("signup", "ask_dob", "active")
    assert session["variables"] == {"choice": "signup", "choice_title": "Sign up", "name": "Ana Lima",
                                    "email": "ana@example.com"}
    assert session["expires_at"] is not None
    path = steps(state)  # (a flow may route before its menu: the path ends with the steps we took)
    assert path[0][0] == "welcome" and path[-5:] == [("welcome", "menu"), ("welcome", "to_signup"),
                                                      ("signup", "ask_name"), ("signup", "ask_email"),
                                                      ("signup", "ask_dob")]
    state = tester.send("1990-04-21")
    assert bot_texts(state)[-1] == "You're signed up, Ana Lima! Send 'menu' to go back to the menu."
    assert state["session"]["status"] == "ended" and state["session"]["end_reason"] == "completed"
    assert state["contact"]["fields"]["email"] == "ana@example.com"  # the real set step wrote the contact

    # every message was delivered (to the sink), none reached the Graph API, not even a read receipt
    assert all(m["status"] == "sent" for m in state["messages"] if m["direction"] == "out")
    run_worker(sim_app)  # the RQ jobs the intake woke find nothing left to do
    assert graph.requests == []
    with sim_app.app_context():
        contact = db.session.get(Contact, state["contact"]["id"])
        assert contact.is_test and contact.wa_id.startswith("sim-") and contact.profile_name == "Simulator (Bo)"
        assert db.session.execute(select(Message.id).where(Message.contact_id == contact.id,
                                                           Message.processed_at.is_(None),
                                                           Message.direction == "in")).first() is None


def test_list_messages_and_real_actions(sim_app, graph):
    tester = User(sim_app)
    state = tester.press(tester.start("welcome"), "Football")
    football_menu = last_bot(state)
    inter = football_menu["payload"]["interactive"]
    assert inter["type"] == "list" and inter["action"]["button"]  # 4 options: WhatsApp shows a list
    assert [o["title"] for o in options(football_menu)][:2] == ["Fixtures", "Results"]
    state = tester.press(state, "Fixtures")
    pressed = [m for m in state["messages"] if m["direction"] == "in"][-1]
    assert pressed["payload"]["interactive"]["type"] == "list_reply"
    assert pressed["payload"]["interactive"]["list_reply"]["id"] == "fb_fixtures"
    assert ("football", "fixtures") in steps(state)  # the real football.fixtures action ran
    assert len(bot_texts(state)) > 2
    assert graph.requests == []


def test_bad_input_gets_a_clear_error(sim_app, graph):
    tester = User(sim_app)
    assert tester.post("press", {"message_id": 1, "reply_id": "x"}, 409)["error"] == "Start a chat first"
    state = tester.start("welcome")
    menu = last_bot(state)
    assert "no button or list row" in tester.post("press", {"message_id": menu["id"], "reply_id": "nope"}, 422)["error"]
    assert "not in this simulator chat" in tester.post("press", {"message_id": 10**9, "reply_id": "signup"},
                                                       404)["error"]
    assert tester.post("send", {"text": "  "}, 422)["error"] == "Type a message first"
    assert "at most 4096" in tester.post("send", {"text": "x" * 4097}, 422)["error"]
    assert "not an active flow" in tester.post("reset", {"flow": "nope"}, 422)["error"]
    assert "JSON object" in tester.post("send", None, 400)["error"]
    assert len(tester.poll()["messages"]) == 1  # nothing was stored by the refused requests


def test_simulator_contacts_are_left_out(sim_app, graph):
    say(sim_app, "27900", "agent", name="Real")  # a real contact, for contrast
    say(sim_app, "27900", "my order is late", name="Real")  # waits for a person
    real_sends = len(graph.requests)
    tester = User(sim_app)
    state = tester.press(tester.start("welcome"), "Talk to a person")
    state = tester.send("refund please")
    assert state["session"]["status"] == "handover" and bot_texts(state)[-1].startswith("Thanks!")
    sim_id = state["contact"]["id"]
    api = sim_app.test_client()
    with sim_app.app_context():
        real_id = db.session.execute(select(Contact.id).where(Contact.wa_id == "27900")).scalar_one()

    handovers = api.get("/api/handovers", headers=AUTH).json["items"]
    assert [h["contact"]["id"] for h in handovers] == [real_id]
    listed = [c["id"] for c in api.get("/api/contacts", headers=AUTH).json["items"]]
    assert listed == [real_id]
    tests = api.get("/api/contacts?test=true", headers=AUTH).json["items"]
    assert [c["id"] for c in tests] == [sim_id] and tests[0]["test"] is True
    stats = api.get("/api/stats", headers=AUTH).json
    assert stats["sessions"]["handover"] == 1  # the real one
    assert sum(d["inbound"] for d in stats["days"]) == 2 and sum(d["outbound"] for d in stats["days"]) == 2
    assert stats["reply_latency_ms"]["count"] == 2

    inbox = tester.client.get("/inbox/").get_data(as_text=True)
    assert "Real" in inbox and "Simulator (Bo)" not in inbox and "sim-" not in inbox
    assert tester.client.get("/inbox/poll").json["waiting"] == [real_id]
    assert len(graph.requests) == real_sends  # the simulator added nothing


def test_reset_ends_the_session_and_starts_a_fresh_contact(sim_app, graph):
    tester = User(sim_app)
    first = tester.press(tester.start("welcome"), "Sign up")
    state = tester.start("signup")
    assert state["contact"]["id"] != first["contact"]["id"]
    assert state["contact"]["wa_id"] != first["contact"]["wa_id"]
    assert bot_texts(state) == ["What is your full name?"]
    assert [s["flow"] for s in state["sessions"]] == ["signup"] and state["run_flow"] == "signup"
    with sim_app.app_context():
        old = db.session.execute(select(FlowSession).where(
            FlowSession.contact_id == first["contact"]["id"])).scalars().all()
        assert [(s.status, s.end_reason) for s in old] == [("ended", "reset")]
    empty = tester.start(None)  # no flow: the tester writes first, and triggers decide
    assert empty["messages"] == [] and empty["session"] is None
    state = tester.send("hello")
    assert state["session"]["flow"] == "welcome" and [o["title"] for o in options(last_bot(state))][0] == "Football"
    assert graph.requests == []


def test_test_contacts_left_idle_are_deleted_with_their_conversations(sim_app, graph):
    from crm.app.simulator.cleanup import JOB, purge_idle_test_contacts
    from crm.base.operators import AuditEvent
    from crm.base.schedules import schedules_of
    from tests.helpers import envelope, message, post_webhook

    assert JOB in {s.func for s in schedules_of(sim_app)}  # the scheduler runs it daily
    tester = User(sim_app)
    old = tester.press(tester.start("welcome"), "Sign up")["contact"]["id"]
    current = tester.start("welcome")["contact"]["id"]
    assert post_webhook(sim_app.test_client(), envelope([message("26377005555", body="hi")])).status_code == 200
    run_worker(sim_app)  # a real contact, answered, with its rows
    with sim_app.app_context():
        real = db.session.execute(select(Contact.id).where(Contact.is_test.is_(False))).scalar_one()
        ancient = utcnow() - timedelta(days=30)
        for contact_id in (old, real):  # the real contact is as old: it stays all the same
            db.session.get(Contact, contact_id).last_seen_at = ancient
        db.session.add(AuditEvent(at=utcnow(), operator="Bo", via="web", action="note", contact_id=old))
        db.session.commit()
        rows_before = {c: db.session.execute(select(Message.id).where(Message.contact_id == c)).all()
                       for c in (old, current, real)}
        assert all(rows_before.values())
        assert purge_idle_test_contacts() == 1
        assert purge_idle_test_contacts() == 0
        assert {c for (c,) in db.session.execute(select(Contact.id))} == {current, real}
        assert not db.session.execute(select(Message.id).where(Message.contact_id == old)).all()
        assert not db.session.execute(select(FlowSession.id).where(FlowSession.contact_id == old)).all()
        assert not db.session.execute(select(AuditEvent.id).where(AuditEvent.contact_id == old)).all()
        for c in (current, real):
            assert db.session.execute(select(Message.id).where(Message.contact_id == c)).all() == rows_before[c]


def test_an_idle_session_expires_and_the_notice_shows(sim_app, graph):
    tester = User(sim_app)
    state = tester.press(tester.start("welcome"), "Sign up")
    assert state["session"]["flow"] == "signup"
    with sim_app.app_context():  # the real cleanup job, 16 minutes later
        assert expire_idle_sessions(now=utcnow() + timedelta(minutes=16))["notices"] == 1
    state = tester.poll()  # the page's poll delivers the notice (to the sink) and shows it
    notice = last_bot(state)
    assert notice["origin"] == "expiry" and notice["status"] == "sent"
    assert notice["text"] == "Your sign-up was not finished. Send 'signup' to try again."
    assert state["session"]["status"] == "expired" and state["session"]["end_reason"] == "idle"
    assert graph.requests == []


def test_real_sessions_keep_no_step_path(sim_app, graph):
    say(sim_app, "27950", "hi")
    with sim_app.app_context():
        session = db.session.execute(select(FlowSession)).scalar_one()
        assert session.step_id == "menu" and "path" not in (session.state or {})
    assert len(graph.sent) == 1


def test_each_operator_has_own_runs(sim_app, graph):
    make_operator(sim_app, "Cy")
    bo, cy = User(sim_app), User(sim_app, "Cy")
    bo_state = bo.start("welcome")
    assert cy.poll()["contact"] is None
    cy_state = cy.start("signup")
    assert bo.poll()["contact"]["id"] == bo_state["contact"]["id"] != cy_state["contact"]["id"]
    assert cy_state["contact"]["name"] == "Simulator (Cy)"
