"""Operator accounts, sign-in, CSRF, personal API tokens, audit, and the inbox pages (test client).

The same scenarios in a real browser are in tests/browser/.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from crm.base.extensions import db
from crm.base.models import Contact, Message, utcnow
from flows.models import FlowSession
from tests.helpers import PNID, envelope, import_examples, post_webhook, run_worker
from tests.inbox_support import (
    PASSWORD,
    TEMPLATES,
    contact_id,
    csrf_of,
    install_templates,
    login,
    make_operator,
    post_form,
    say,
)

SHARED = "shared-operator-token-1"


@pytest.fixture
def inbox_app(make_app, graph):
    app = make_app(OPERATOR_API_TOKENS=SHARED)
    import_examples(app)
    make_operator(app, "Bo", "agent")
    make_operator(app, "Cy", "agent")
    make_operator(app, "Ada", "admin")
    return app


def signed_in(app, name: str):
    client = app.test_client()
    assert login(client, name).status_code == 302
    return client


def text_of(response) -> str:
    return response.get_data(as_text=True)


def run_cli(app, *args, input=None):
    return app.test_cli_runner().invoke(args=list(args), input=input)


# -- accounts on the command line ------------------------------------------------------------------
def test_cli_creates_lists_and_manages_operators(make_app, graph):
    app = make_app()
    created = run_cli(app, "operators", "create", "Dee", "--role", "admin", input="a long password\n")
    assert created.exit_code == 0, created.output
    assert "created admin Dee" in created.output
    for args, stdin, message in (
            (("create", "Dee"), "another password\n", "exists already"),
            (("create", "Eve"), "short\n", "at least 10"),
            (("create", "operator-3"), "a long password\n", "OPERATOR_API_TOKENS"),
            (("create", "bad/name"), "a long password\n", "a name is"),
            (("password", "Nobody"), "a long password\n", "no operator named")):
        result = run_cli(app, "operators", *args, input=stdin)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    assert run_cli(app, "operators", "create", "Eve", "--role", "boss", input="x\n").exit_code == 2
    listed = run_cli(app, "operators", "list").output
    assert re.search(r"Dee\s+admin\s+active", listed) and "Eve" not in listed
    from crm.base.operators import Operator, authenticate

    with app.app_context():
        stored = db.session.execute(select(Operator)).scalar_one()
        assert stored.password_hash.startswith(("scrypt:", "pbkdf2:")) and "a long password" not in stored.password_hash
        assert authenticate("Dee", "a long password") is not None and authenticate("Dee", "wrong") is None
    assert run_cli(app, "operators", "password", "Dee", input="a new password!\n").exit_code == 0
    assert run_cli(app, "operators", "role", "Dee", "agent").exit_code == 0
    token = run_cli(app, "operators", "token", "Dee", "--label", "reports").output.strip().splitlines()[-1]
    assert token.startswith("crm_") and len(token) > 40
    with app.app_context():
        assert authenticate("Dee", "a new password!").role == "agent"
        from crm.base.operators import OperatorToken

        row = db.session.execute(select(OperatorToken)).scalar_one()
        assert row.token_hash != token and token not in row.token_hash and row.label == "reports"
    assert run_cli(app, "operators", "disable", "Dee").exit_code == 0
    with app.app_context():
        assert authenticate("Dee", "a new password!") is None
    client = app.test_client()
    assert client.get("/api/contacts", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert run_cli(app, "operators", "enable", "Dee").exit_code == 0
    assert client.get("/api/contacts", headers={"Authorization": f"Bearer {token}"}).status_code == 200


# -- sign-in ---------------------------------------------------------------------------------------
def test_login_cookie_flags_logout_and_replayed_cookie(inbox_app):
    client = inbox_app.test_client()
    page = client.get("/inbox/")
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=/inbox/")
    response = login(client, "Bo")
    assert response.status_code == 302 and response.headers["Location"] == "/inbox/"
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("crm_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    page = client.get("/inbox/")
    assert "Bo" in text_of(page) and page.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    stolen = client.get_cookie("crm_session").value
    assert post_form(client, "/logout").status_code == 302
    assert client.get("/inbox/").status_code == 302
    replay = inbox_app.test_client()
    replay.set_cookie("crm_session", stolen)
    assert replay.get("/inbox/").status_code == 302  # the server forgot the session at logout
    # next= only ever leads to a path on this site
    other = inbox_app.test_client()
    token = csrf_of(text_of(other.get("/login")))
    away = other.post("/login?next=//evil.example/x", data={"name": "Bo", "password": PASSWORD, "csrf_token": token})
    assert away.headers["Location"] == "/inbox/"


def test_wrong_passwords_lock_the_account_from_that_address(inbox_app):
    client = inbox_app.test_client()
    for _ in range(5):
        failed = login(client, "Bo", "wrong password")
        assert failed.status_code == 401 and "Wrong name or password" in text_of(failed)
    locked = login(client, "Bo")  # the right password, but locked
    assert locked.status_code == 429 and "Try again in 15 min" in text_of(locked)
    assert login(inbox_app.test_client(), "Cy").status_code == 302  # other accounts are not affected
    other_address = inbox_app.test_client()
    token = csrf_of(text_of(other_address.get("/login")))
    assert other_address.post("/login", data={"name": "Bo", "password": PASSWORD, "csrf_token": token},
                              environ_base={"REMOTE_ADDR": "10.9.8.7"}).status_code == 302
    unknown = login(inbox_app.test_client(), "Nobody", "whatever it is")
    assert unknown.status_code == 401 and "Wrong name or password" in text_of(unknown)
    assert "cleared" in run_cli(inbox_app, "operators", "unlock", "Bo").output
    assert login(client, "Bo").status_code == 302


def test_csrf_is_checked_on_every_form(inbox_app):
    client = inbox_app.test_client()
    bad = client.post("/login", data={"name": "Bo", "password": PASSWORD})
    assert bad.status_code == 400 and "could not be accepted" in text_of(bad)
    assert login(client, "Bo").status_code == 302
    posts = [r for r in inbox_app.url_map.iter_rules() if "POST" in r.methods and r.endpoint.startswith(
        ("inbox.", "auth."))]
    assert len(posts) >= 15
    for rule in posts:
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "welcome" if m.group(1) == "name" else "1", rule.rule)
        for data in ({}, {"csrf_token": "forged"}):
            response = client.post(path, data=data)
            assert response.status_code == 400, (rule.rule, response.status_code)
            assert "could not be accepted" in text_of(response)
    assert "Bo" in text_of(client.get("/inbox/"))  # still signed in


def test_every_page_and_endpoint_needs_a_sign_in(inbox_app):
    client = inbox_app.test_client()
    rules = [r for r in inbox_app.url_map.iter_rules()
             if r.endpoint.startswith("inbox.") and r.endpoint != "inbox.static" or r.endpoint == "auth.logout"]
    assert len(rules) >= 20
    for rule in rules:
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "welcome" if m.group(1) == "name" else "1", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            response = client.open(path, method=method)
            assert response.status_code in (302, 400, 401), (method, path, response.status_code)
            assert response.status_code != 302 or response.headers["Location"].startswith("/login")
            assert 'id="logout"' not in text_of(response)
    assert client.get("/inbox/poll").status_code == 401
    assert client.get("/inbox/static/inbox.js").status_code == 200  # the script itself holds nothing


# -- personal API tokens and the audit trail -------------------------------------------------------
def test_personal_tokens_act_as_the_operator_and_are_audited(inbox_app, graph):
    bo = signed_in(inbox_app, "Bo")
    created = post_form(bo, "/inbox/account/tokens", {"label": "my script"})
    assert created.status_code == 201
    token = re.search(r'id="new-token">(crm_[^<]+)<', text_of(created)).group(1)
    assert token not in text_of(bo.get("/inbox/account"))  # shown once
    auth = {"Authorization": f"Bearer {token}"}
    say(inbox_app, "27100", "agent")
    say(inbox_app, "27100", "my order is late")
    cid = contact_id(inbox_app, "27100")
    claimed = bo.application.test_client().post(f"/api/contacts/{cid}/handover", headers=auth)
    assert claimed.status_code == 200 and claimed.json["claimed_by"] == "Bo"
    shared = {"Authorization": f"Bearer {SHARED}"}
    refused = inbox_app.test_client().post(f"/api/contacts/{cid}/messages", headers=shared,
                                           json={"type": "text", "text": "me too"})
    assert refused.status_code == 409 and "Bo holds" in refused.json["error"]["message"]
    api = inbox_app.test_client()
    assert api.post(f"/api/contacts/{cid}/messages", headers=auth, json={"type": "text", "text": "Hi from Bo"}
                    ).status_code == 202
    assert api.patch(f"/api/contacts/{cid}", headers=auth, json={"fields": {"plan": "pro"}}).status_code == 200
    assert api.post("/api/flows/welcome/deactivate", headers=auth).status_code == 403  # agents: no flow changes
    assert api.post("/api/flows/welcome/deactivate", headers=shared).status_code == 200  # shared tokens as before
    run_worker(inbox_app)
    assert graph.texts("27100")[-1] == "Hi from Bo"
    from crm.base.operators import AuditEvent

    with inbox_app.app_context():
        events = [(e.operator, e.via, e.action) for e in db.session.execute(
            select(AuditEvent).order_by(AuditEvent.id)).scalars()]
    assert ("Bo", "web", "login") in events and ("Bo", "web", "token_create") in events
    assert ("bot", "flow", "handover") in events
    assert events[-4:] == [("Bo", "api", "claim"), ("Bo", "api", "send"), ("Bo", "api", "fields"),
                           ("operator-1", "api", "flow_deactivate")]
    page = text_of(bo.get(f"/inbox/audit?contact={cid}"))
    assert page.count("<tr>") >= 4 and "claim" in page and "plan" in page
    history = text_of(bo.get(f"/inbox/c/{cid}"))
    assert "Bo</strong> claim" in history and "Bo claimed the conversation" in history
    revoke_id = re.search(r'/inbox/account/tokens/(\d+)/revoke', text_of(bo.get("/inbox/account"))).group(1)
    assert post_form(bo, f"/inbox/account/tokens/{revoke_id}/revoke").status_code == 303
    assert api.get("/api/contacts", headers=auth).status_code == 401
    assert post_form(signed_in(inbox_app, "Cy"), f"/inbox/account/tokens/{revoke_id}/revoke").status_code == 404


def test_logs_name_the_operator(inbox_app, caplog):
    import json

    from crm.base.logs import JsonFormatter

    caplog.set_level("INFO")
    say(inbox_app, "27150", "hi")
    cid = contact_id(inbox_app, "27150")
    post_form(signed_in(inbox_app, "Cy"), f"/inbox/c/{cid}/block")
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert any(line.get("event") == "operator.block" and line.get("operator") == "Cy" and line.get("contact_id") == cid
               for line in lines)


# -- the conversation list ---------------------------------------------------------------------------
def test_list_puts_waiting_first_with_search_filters_and_unread(inbox_app):
    say(inbox_app, "27201", "hi", name="Alma")
    say(inbox_app, "27202", "agent", name="Bruno")
    say(inbox_app, "27202", "refund please", name="Bruno")  # now waiting for a person
    say(inbox_app, "27203", "hi", name="Carla")  # the most recent
    bo = signed_in(inbox_app, "Bo")
    page = text_of(bo.get("/inbox/"))
    order = [m.group(1) for m in re.finditer(r'data-contact="(\d+)"', page)]
    ids = {wa: contact_id(inbox_app, wa) for wa in ("27201", "27202", "27203")}
    assert order == [str(ids["27202"]), str(ids["27203"]), str(ids["27201"])]
    assert re.search(r"waiting \d+ s", page) and 'class="unread"' in page
    assert "Carla" in text_of(bo.get("/inbox/?q=carl")) and "Alma" not in text_of(bo.get("/inbox/?q=carl"))
    assert "Alma" in text_of(bo.get("/inbox/?q=27201"))
    assert "No conversations match" in text_of(bo.get("/inbox/?q=%25_nobody"))
    waiting = text_of(bo.get("/inbox/?filter=waiting"))
    assert "Bruno" in waiting and "Carla" not in waiting
    assert "Bruno" not in text_of(bo.get("/inbox/?filter=bot"))
    post_form(bo, f"/inbox/c/{ids['27202']}/claim")
    assert "Bruno" in text_of(bo.get("/inbox/?filter=mine"))
    assert "Bruno" not in text_of(signed_in(inbox_app, "Cy").get("/inbox/?filter=mine"))
    post_form(bo, f"/inbox/c/{ids['27201']}/block")
    assert "Alma" in text_of(bo.get("/inbox/?filter=blocked")) and "Carla" not in text_of(
        bo.get("/inbox/?filter=blocked"))
    say(inbox_app, "27203", "stop", name="Carla")
    assert "Carla" in text_of(bo.get("/inbox/?filter=opted_out"))
    # unread: Cy has never opened Carla's conversation; Bo reads it
    assert re.search(rf'data-contact="{ids["27203"]}".*?class="unread" title="2 unread"', text_of(bo.get("/inbox/")),
                     re.S)
    bo.get(f"/inbox/c/{ids['27203']}")
    assert not re.search(rf'data-contact="{ids["27203"]}"[^<]*<a[^>]*>\s*<span class="line1">[^/]*?class="unread"',
                         text_of(bo.get("/inbox/")))
    assert 'title="2 unread"' in text_of(signed_in(inbox_app, "Cy").get("/inbox/"))
    for bad in ("filter=nope", "limit=abc", "limit=-5", "q=" + "x" * 500):
        assert bo.get(f"/inbox/?{bad}").status_code == 200


# -- the thread ----------------------------------------------------------------------------------------
def test_thread_shows_ticks_errors_media_and_notes(inbox_app, graph):
    say(inbox_app, "27300", "hi")
    cid = contact_id(inbox_app, "27300")
    media = [
        ("image", {"image": {"id": "M1", "mime_type": "image/jpeg", "caption": "my receipt"}}),
        ("audio", {"audio": {"id": "M2", "mime_type": "audio/ogg", "voice": True}}),
        ("document", {"document": {"id": "M3", "filename": "invoice.pdf", "mime_type": "application/pdf"}}),
        ("location", {"location": {"latitude": 52.5, "longitude": 13.4, "name": "Office"}}),
    ]
    from tests.helpers import message

    media.append(("contacts", {"contacts": ["not a card", {"phones": "nope"}]}))  # odd shapes show, never fail
    for kind, extra in media:
        post_webhook(inbox_app.test_client(), envelope([message("27300", kind=kind, **extra)]))
    run_worker(inbox_app)
    with inbox_app.app_context():
        outbound = db.session.execute(select(Message).where(Message.direction == "out").order_by(Message.id)
                                      ).scalars().all()
        first = outbound[0].wa_message_id
    statuses = [{"id": first, "status": "delivered", "timestamp": "1900000000", "recipient_id": "27300"},
                {"id": first, "status": "read", "timestamp": "1900000001", "recipient_id": "27300"}]
    post_webhook(inbox_app.test_client(), envelope(statuses=statuses))
    bo = signed_in(inbox_app, "Bo")
    post_form(bo, f"/inbox/c/{cid}/claim")
    graph.script = [(400, {"error": {"code": 131026, "message": "Message undeliverable"}})]
    post_form(bo, f"/inbox/c/{cid}/send", {"text": "Can you hear me?"})
    run_worker(inbox_app)
    page = text_of(bo.get(f"/inbox/c/{cid}"))
    assert "tick-read" in page and "✓✓" in page
    assert re.search(r"tick-failed.*failed: 131026 Message undeliverable", page)
    assert "my receipt" in page and "Voice message" in page and "invoice.pdf" in page and "Office" in page
    assert "openstreetmap.org/?mlat=52.5" in page
    assert "Flow welcome started" in page and "Flow welcome ended: too many answers" in page
    assert "Bo took the conversation over" in page
    assert '<span class="sender">Bo</span>' in page and '<span class="sender">bot</span>' in page
    texts = re.findall(r'<p class="text">([^<]*)</p>', page)
    assert texts.index("hi") < texts.index("my receipt") < texts.index("Can you hear me?")
    post_form(bo, f"/inbox/c/{cid}/resolve")
    assert "Bo resolved the conversation" in text_of(bo.get(f"/inbox/c/{cid}"))


def test_expiry_and_handover_notes(inbox_app):
    from crm.replies.expiry import expire_idle_sessions

    say(inbox_app, "27310", "hi")
    cid = contact_id(inbox_app, "27310")
    with inbox_app.app_context():
        session = db.session.execute(select(FlowSession).where(FlowSession.contact_id == cid)).scalar_one()
        session.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
        assert expire_idle_sessions()["expired"] == 1
    say(inbox_app, "27310", "agent")
    say(inbox_app, "27310", "help")
    page = text_of(signed_in(inbox_app, "Bo").get(f"/inbox/c/{cid}"))
    thread = page[page.index('id="thread"'):page.index('id="reply"')]
    assert "Session expired (idle)" in thread and "The user asked for a person (flow handover)" in thread
    assert thread.index("Session expired") < thread.index("agent") < thread.index("asked for a person")


def test_long_threads_page_backwards(inbox_app):
    say(inbox_app, "27320", "hi")
    cid = contact_id(inbox_app, "27320")
    with inbox_app.app_context():
        now = utcnow()
        db.session.add_all([Message(contact_id=cid, direction="in", type="text", text=f"old {i}", payload={
            "type": "text", "text": {"body": f"old {i}"}}, phone_number_id=PNID, wa_message_id=f"wamid.old.{i}",
            status="received", created_at=now, processed_at=now, attempts=0) for i in range(520)])
        db.session.commit()
    bo = signed_in(inbox_app, "Bo")
    page = text_of(bo.get(f"/inbox/c/{cid}"))
    page = page[page.index('id="thread"'):]
    assert page.count('class="msg ') == 500 and "old 519" in page and "Older messages" in page
    before = re.search(r'before=(\d+)', page).group(1)
    older = text_of(bo.get(f"/inbox/c/{cid}?before={before}"))
    older = older[older.index('id="thread"'):]
    assert "old 0<" in older and "old 519" not in older and "Newest messages" in older


def test_poll_brings_new_messages_ticks_and_changed_panels(inbox_app, graph):
    say(inbox_app, "27400", "hi")
    cid = contact_id(inbox_app, "27400")
    bo = signed_in(inbox_app, "Bo")
    page = text_of(bo.get(f"/inbox/c/{cid}"))
    body = re.search(r'<body[^>]*data-after="(\d+)" data-state="(\w+)" data-t="([^"]+)"', page)
    after, state, t = body.groups()
    quiet = bo.get(f"/inbox/poll?c={cid}&after={after}&state={state}&t={t}").json
    assert "data-mid" not in quiet["thread"].get("html", "")  # notes of the last seconds come again: the page
    assert "reply" not in quiet["thread"] and quiet["waiting"] == []  # keeps one of each
    say(inbox_app, "27400", "cancel")
    say(inbox_app, "27400", "agent")
    say(inbox_app, "27400", "where is my parcel")
    update = bo.get(f"/inbox/poll?c={cid}&after={after}&state={state}&t={t}").json
    thread = update["thread"]
    assert "where is my parcel" in thread["html"] and int(thread["after"]) > int(after)
    assert "asked for a person" in thread["html"]
    assert 'id="claim"' in thread["reply"] and "handover" in thread["contact"]
    assert update["waiting"] == [cid] and "waiting" in update["list"]
    assert all("tick" in html for html in thread["ticks"].values())
    assert bo.get("/inbox/poll?c=999999&after=x&t=garbage&filter=zzz").status_code == 200


# -- holding a conversation ----------------------------------------------------------------------------
def test_one_operator_holds_a_conversation(inbox_app, graph):
    say(inbox_app, "27500", "agent")
    say(inbox_app, "27500", "late order")
    cid = contact_id(inbox_app, "27500")
    bo, cy, ada = (signed_in(inbox_app, n) for n in ("Bo", "Cy", "Ada"))
    early = post_form(bo, f"/inbox/c/{cid}/send", {"text": "before claiming"})
    assert early.status_code == 409 and "Claim the conversation" in text_of(early)
    assert "before claiming" in text_of(early)  # the draft is kept
    assert post_form(bo, f"/inbox/c/{cid}/claim").status_code == 303
    assert post_form(bo, f"/inbox/c/{cid}/send", {"text": "Hi, Bo here"}).status_code == 303
    seen_by_cy = text_of(cy.get(f"/inbox/c/{cid}"))
    assert 'id="held-by"' in seen_by_cy and "<strong>Bo</strong> holds this conversation" in seen_by_cy
    assert 'id="reply-text"' not in seen_by_cy and "Take over from" not in seen_by_cy
    for path, data in ((f"/inbox/c/{cid}/send", {"text": "Cy too"}), (f"/inbox/c/{cid}/claim", {}),
                       (f"/inbox/c/{cid}/claim", {"force": "1"}), (f"/inbox/c/{cid}/resolve", {}),
                       (f"/inbox/c/{cid}/resolve", {"force": "1"})):
        refused = post_form(cy, path, data)
        assert refused.status_code in (403, 409) and ("Bo" in text_of(refused) or "admin" in text_of(refused))
    run_worker(inbox_app)
    assert graph.texts("27500")[-1] == "Hi, Bo here" and "Cy too" not in graph.texts("27500")
    assert "Take over from Bo" in text_of(ada.get(f"/inbox/c/{cid}"))
    assert post_form(ada, f"/inbox/c/{cid}/claim", {"force": "1"}).status_code == 303
    assert "<strong>Ada</strong> holds" in text_of(bo.get(f"/inbox/c/{cid}"))
    assert "Ada took the conversation over from Bo" in text_of(bo.get(f"/inbox/c/{cid}"))
    assert post_form(ada, f"/inbox/c/{cid}/resolve").status_code == 303
    say(inbox_app, "27500", "hi")
    assert graph.texts("27500")[-1].startswith("Hello")  # the bot is back


def test_take_over_from_the_bot(inbox_app, graph):
    say(inbox_app, "27510", "hi")
    cid = contact_id(inbox_app, "27510")
    bo = signed_in(inbox_app, "Bo")
    assert "The bot is handling this conversation" in text_of(bo.get(f"/inbox/c/{cid}"))
    claimed = post_form(bo, f"/inbox/c/{cid}/claim")
    assert claimed.status_code == 303, text_of(claimed)[-3000:]
    before = len(graph.texts("27510"))
    say(inbox_app, "27510", "menu")
    assert len(graph.texts("27510")) == before  # the bot is silent


# -- the reply box outside the 24-hour window -----------------------------------------------------------
def test_outside_the_window_only_templates_with_parameters(inbox_app, graph):
    install_templates(inbox_app)
    say(inbox_app, "27600", "hi")
    cid = contact_id(inbox_app, "27600")
    with inbox_app.app_context():
        db.session.get(Contact, cid).last_inbound_at = utcnow() - timedelta(hours=25)
        db.session.commit()
    bo = signed_in(inbox_app, "Bo")
    post_form(bo, f"/inbox/c/{cid}/claim")
    page = text_of(bo.get(f"/inbox/c/{cid}"))
    assert 'id="reply-text"' not in page and 'id="template-select"' in page and "window is closed" in page
    assert "order_update:en_US" in page and "welcome_back:en_US" in page and "still_pending" not in page
    assert "Hi {{1}}, your order {{2}} ships on {{3}}." in page
    refused = post_form(bo, f"/inbox/c/{cid}/send", {"text": "free text"})
    assert refused.status_code == 409 and "only a template" in text_of(refused)
    key = "order_update:en_US"
    params = {f"param-{key}-header-1": "A-17", f"param-{key}-body-1": "Ana", f"param-{key}-body-2": "A-17"}
    missing = post_form(bo, f"/inbox/c/{cid}/template", {"template": key, **params})
    assert missing.status_code == 422 and "Fill in body {{3}}" in text_of(missing)
    assert 'value="Ana"' in text_of(missing)  # what was typed stays
    tabbed = post_form(bo, f"/inbox/c/{cid}/template", {"template": key, **params,
                                                          f"param-{key}-body-3": "Mon\tday"})
    assert tabbed.status_code == 422 and "new lines, tabs" in text_of(tabbed)
    unknown = post_form(bo, f"/inbox/c/{cid}/template", {"template": "still_pending:en_US"})
    assert unknown.status_code == 422 and "approved templates" in text_of(unknown)
    sent = post_form(bo, f"/inbox/c/{cid}/template", {"template": key, **params, f"param-{key}-body-3": "Monday"})
    assert sent.status_code == 303
    named = post_form(bo, f"/inbox/c/{cid}/template", {"template": "welcome_back:en_US",
                                                         "param-welcome_back:en_US-body-first_name": "Ana"})
    assert named.status_code == 303
    run_worker(inbox_app)
    first, second = [b for b in graph.sent if b["type"] == "template"][-2:]
    assert first["template"] == {"name": "order_update", "language": {"code": "en_US"}, "components": [
        {"type": "header", "parameters": [{"type": "text", "text": "A-17"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "A-17"},
                                        {"type": "text", "text": "Monday"}]}]}
    assert second["template"]["components"] == [
        {"type": "body", "parameters": [{"type": "text", "text": "Ana", "parameter_name": "first_name"}]}]
    page = text_of(bo.get(f"/inbox/c/{cid}"))
    assert "Template order_update" in page and "A-17, Ana, A-17, Monday" in page


def test_template_components_cover_media_headers_and_url_buttons():
    from crm.app.inbox.message_templates import TemplateInfo, TemplateInputError

    info = TemplateInfo("ship", "en", "UTILITY", [
        {"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "Parcel {{1}} is out"},
        {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "OK"},
                                        {"type": "URL", "text": "Track", "url": "https://t.example/{{1}}"}]}])
    assert [p.key for p in info.params] == ["header-media", "body-1", "button1-1"]
    values = {"header-media": "https://img.example/p.png", "body-1": "P-9", "button1-1": "P-9"}
    assert info.components_for(values) == [
        {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://img.example/p.png"}}]},
        {"type": "body", "parameters": [{"type": "text", "text": "P-9"}]},
        {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "P-9"}]}]
    with pytest.raises(TemplateInputError, match="https://"):
        info.components_for({**values, "header-media": "ftp://x"})
    assert TEMPLATES[0]["name"] == "order_update"


# -- the contact panel and flows -------------------------------------------------------------------------
def test_contact_panel_fields_block_and_session(inbox_app, graph):
    say(inbox_app, "27700", "hi")
    cid = contact_id(inbox_app, "27700")
    bo = signed_in(inbox_app, "Bo")
    page = text_of(bo.get(f"/inbox/c/{cid}"))
    assert "welcome" in page and "menu" in page  # the flow session: flow and step
    saved = post_form(bo, f"/inbox/c/{cid}/fields", {"name": "Ana B", "new_key": "visits", "new_value": "3"})
    assert saved.status_code == 303
    post_form(bo, f"/inbox/c/{cid}/fields", {"name": "Ana B", "field_key": "visits", "field_value": "4",
                                             "new_key": "vip", "new_value": "yes"})
    with inbox_app.app_context():
        contact = db.session.get(Contact, cid)
        assert contact.profile_name == "Ana B" and contact.custom_fields == {"visits": "4", "vip": "yes"}
    for data, message in (({"new_key": "9lives", "new_value": "x"}, "a new field needs a name"),
                          ({"new_key": "color"}, "give the new field"),
                          ({"field_key": ["visits", "vip"], "field_value": ["1"]}, "incomplete"),
                          ({"name": "x" * 300}, "at most 256")):
        bad = post_form(bo, f"/inbox/c/{cid}/fields", data)
        assert bad.status_code in (400, 422) and message in text_of(bad).lower(), data
    assert post_form(bo, f"/inbox/c/{cid}/fields", {"field_key": "vip", "field_value": ""}).status_code == 303
    with inbox_app.app_context():
        assert db.session.get(Contact, cid).custom_fields == {"visits": "4"}
    assert post_form(bo, f"/inbox/c/{cid}/block").status_code == 303
    assert "This contact is blocked" in text_of(bo.get(f"/inbox/c/{cid}"))
    post_form(bo, f"/inbox/c/{cid}/unblock")
    reset = post_form(bo, f"/inbox/c/{cid}/session/reset", follow=True)
    assert "Flow session reset" in text_of(reset)
    again = post_form(bo, f"/inbox/c/{cid}/session/reset")
    assert again.status_code == 404 and "no open flow session" in text_of(again)
    started = post_form(bo, f"/inbox/c/{cid}/session/start", {"flow": "signup"}, follow=True)
    assert "Flow signup started" in text_of(started)
    run_worker(inbox_app)
    assert "name" in graph.texts("27700")[-1].lower()
    assert post_form(bo, f"/inbox/c/{cid}/session/start", {"flow": "nope"}).status_code == 422
    with inbox_app.app_context():
        session = db.session.execute(select(FlowSession).where(FlowSession.contact_id == cid,
                                                                FlowSession.status == "active")).scalar_one()
        assert session.flow_name == "signup"


def test_every_form_answers_bad_input_with_a_message(inbox_app):
    say(inbox_app, "27800", "hi")
    cid = contact_id(inbox_app, "27800")
    ada = signed_in(inbox_app, "Ada")
    garbage = {"text": "\x00" * 5000, "template": "x", "flow": "", "force": "maybe", "name": ["a", "b"],
               "field_key": "zzz", "field_value": "1", "label": "", "current": "", "new": "", "confirm": "x",
               "source": "", "filename": ""}
    for rule in inbox_app.url_map.iter_rules():
        if "POST" not in rule.methods or not rule.endpoint.startswith("inbox."):
            continue
        for contact in (cid, 999999):
            path = rule.rule.replace("<int:contact_id>", str(contact)).replace("<name>", "nope").replace(
                "<int:token_id>", "999")
            for data in ({}, garbage):
                response = post_form(ada, path, data)
                assert response.status_code < 500, (path, data, response.status_code)
                if response.status_code >= 400:
                    assert 'class="alert error"' in text_of(response), (path, response.status_code)
    assert ada.get("/inbox/c/999999").status_code == 404
    assert "There is no contact with id 999999" in text_of(ada.get("/inbox/c/999999"))


def test_flows_page_upload_validation_and_activation(inbox_app):
    ada, bo = signed_in(inbox_app, "Ada"), signed_in(inbox_app, "Bo")
    page = text_of(ada.get("/inbox/flows"))
    assert "welcome" in page and "handover" in page and 'id="upload-form"' in page
    assert 'id="upload-form"' not in text_of(bo.get("/inbox/flows"))  # agents see the list only
    doc = "name: promo\ntriggers: {keywords: [promo]}\nsteps:\n  - {id: s, type: send, messages: [Deal!]}\n"
    created = post_form(ada, "/inbox/flows", {"source": doc, "filename": "promo.yaml"}, follow=True)
    assert "Flow promo: created (version 1)" in text_of(created)
    from io import BytesIO

    token = csrf_of(text_of(ada.get("/inbox/flows")))
    upload = ada.post("/inbox/flows", data={"csrf_token": token, "file": (BytesIO(doc.replace("Deal!", "Deal!!")
                                                                                   .encode()), "promo.yaml")},
                      content_type="multipart/form-data", follow_redirects=True)
    assert "Flow promo: updated (version 2)" in text_of(upload)
    bad = post_form(ada, "/inbox/flows", {"source": "name: bad\nsteps:\n  - {id: s, type: send, mesages: [x]}\n",
                                          "filename": "bad.yaml"})
    assert bad.status_code == 422 and re.search(r"<li>bad\.yaml:3: ", text_of(bad))
    assert "mesages" in text_of(bad)  # the pasted document is still there
    huge = post_form(ada, "/inbox/flows", {"source": "x" * (2 * 1024 * 1024)})
    assert huge.status_code == 413 and "too large" in text_of(huge)
    assert post_form(bo, "/inbox/flows", {"source": doc}).status_code == 403
    assert post_form(bo, "/inbox/flows/promo/deactivate").status_code == 403
    off = post_form(ada, "/inbox/flows/promo/deactivate", follow=True)
    assert "Flow promo is inactive" in text_of(off)
    assert "Flow promo is active" in text_of(post_form(ada, "/inbox/flows/promo/activate", follow=True))
    assert "name: promo" in text_of(bo.get("/inbox/flows/promo"))
    assert bo.get("/inbox/flows/nope").status_code == 404


def test_account_password_change_and_operators_page(inbox_app):
    bo = signed_in(inbox_app, "Bo")
    for data, message in (({"current": "wrong", "new": "a brand new one", "confirm": "a brand new one"}, "not right"),
                          ({"current": PASSWORD, "new": "a brand new one", "confirm": "other"}, "differ"),
                          ({"current": PASSWORD, "new": "short", "confirm": "short"}, "at least 10")):
        response = post_form(bo, "/inbox/account/password", data)
        assert response.status_code == 422 and message in text_of(response)
    assert post_form(bo, "/inbox/account/password", {"current": PASSWORD, "new": "a brand new one",
                                                     "confirm": "a brand new one"}).status_code == 303
    assert login(inbox_app.test_client(), "Bo", "a brand new one").status_code == 302
    assert bo.get("/inbox/operators").status_code == 403
    operators = text_of(signed_in(inbox_app, "Ada").get("/inbox/operators"))
    assert "Bo" in operators and "Cy" in operators and "admin" in operators
