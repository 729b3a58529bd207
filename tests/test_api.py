"""Operator API, handover, rq-dashboard and /metrics."""

from __future__ import annotations

import base64
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from crm.base.extensions import db
from crm.base.models import Contact, Message, utcnow
from flows.models import FlowSession
from tests.helpers import envelope, import_examples, message, post_webhook, run_worker, say, store_template

TOKEN = "operator-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OTHER = {"Authorization": "Bearer second-operator-5678"}


@pytest.fixture
def api_app(make_app, graph):
    app = make_app(OPERATOR_API_TOKENS=f"{TOKEN},second-operator-5678")
    import_examples(app)
    return app


@pytest.fixture
def client(api_app):
    return api_app.test_client()




def contact_id(app, wa_id) -> int:
    with app.app_context():
        return db.session.execute(select(Contact.id).where(Contact.wa_id == wa_id)).scalar_one()


ROUTES = [("get", "/api/contacts"), ("get", "/api/contacts/1"), ("patch", "/api/contacts/1"),
          ("post", "/api/contacts/1/block"), ("post", "/api/contacts/1/unblock"),
          ("get", "/api/contacts/1/messages"), ("post", "/api/contacts/1/messages"),
          ("get", "/api/contacts/1/session"), ("delete", "/api/contacts/1/session"),
          ("post", "/api/contacts/1/session"), ("get", "/api/handovers"), ("post", "/api/contacts/1/handover"),
          ("post", "/api/contacts/1/handover/resolve"), ("get", "/api/flows"), ("post", "/api/flows"),
          ("get", "/api/flows/welcome"), ("post", "/api/flows/welcome/activate"),
          ("post", "/api/flows/welcome/deactivate"), ("get", "/api/stats"), ("get", "/api/templates")]


@pytest.mark.parametrize("method, path", ROUTES)
def test_every_endpoint_needs_a_token(client, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = getattr(client, method)(path, headers=headers, json={})
        assert response.status_code == 401
        assert response.json["error"]["status"] == 401 and TOKEN not in response.get_data(as_text=True)


def test_contacts_search_filters_and_pages(api_app, client):
    for i in range(5):
        say(api_app, f"2600{i}", "hi", name=f"Person {i}")
    say(api_app, "27000", "hi", name="Zed")
    listed = client.get("/api/contacts?limit=4", headers=AUTH).json
    assert len(listed["items"]) == 4 and listed["next_cursor"]
    rest = client.get(f"/api/contacts?limit=4&cursor={listed['next_cursor']}", headers=AUTH).json
    assert len(rest["items"]) == 2 and rest["next_cursor"] is None
    assert {c["wa_id"] for c in listed["items"] + rest["items"]} == {"26000", "26001", "26002", "26003", "26004",
                                                                     "27000"}
    assert [c["name"] for c in client.get("/api/contacts?q=zed", headers=AUTH).json["items"]] == ["Zed"]
    assert len(client.get("/api/contacts?q=2600", headers=AUTH).json["items"]) == 5
    zed = contact_id(api_app, "27000")
    assert client.post(f"/api/contacts/{zed}/block", headers=AUTH).json["blocked"] is True
    assert [c["id"] for c in client.get("/api/contacts?blocked=true", headers=AUTH).json["items"]] == [zed]
    assert len(client.get("/api/contacts?blocked=false&opted_out=false", headers=AUTH).json["items"]) == 5
    assert client.get("/api/contacts?handover=true", headers=AUTH).json["items"] == []
    future = (utcnow() + timedelta(hours=1)).isoformat() + "Z"
    assert client.get(f"/api/contacts?seen_since={future}", headers=AUTH).json["items"] == []
    for bad in ("limit=0", "limit=x", "blocked=maybe", "seen_since=yesterday", "cursor=-1"):
        response = client.get(f"/api/contacts?{bad}", headers=AUTH)
        assert response.status_code == 400 and response.json["error"]["message"]


def test_contact_detail_update_and_block(api_app, client):
    say(api_app, "26100", "hi")
    cid = contact_id(api_app, "26100")
    detail = client.get(f"/api/contacts/{cid}", headers=AUTH).json
    assert detail["wa_id"] == "26100" and detail["window_open"] and detail["session"]["flow"] == "welcome"
    updated = client.patch(f"/api/contacts/{cid}", headers=AUTH, json={"name": "Ana B", "fields": {"plan": "pro"}})
    assert updated.status_code == 200 and updated.json["name"] == "Ana B" and updated.json["fields"] == {"plan": "pro"}
    removed = client.patch(f"/api/contacts/{cid}", headers=AUTH, json={"fields": {"plan": None}}).json
    assert removed["fields"] == {}
    assert client.get("/api/contacts/999999", headers=AUTH).status_code == 404
    assert client.patch(f"/api/contacts/{cid}", headers=AUTH, json={"age": 3}).status_code == 422
    assert client.patch(f"/api/contacts/{cid}", headers=AUTH, json={"fields": {"x": [1]}}).status_code == 422
    assert client.patch(f"/api/contacts/{cid}", headers=AUTH, data="nope",
                        content_type="application/json").status_code == 400
    assert client.post(f"/api/contacts/{cid}/block", headers=AUTH).json["blocked"] is True
    assert client.post(f"/api/contacts/{cid}/unblock", headers=AUTH).json["blocked"] is False
    assert client.post("/api/contacts/999999/block", headers=AUTH).status_code == 404


def test_conversation_and_operator_sends(api_app, client, graph):
    say(api_app, "26200", "hi")
    cid = contact_id(api_app, "26200")
    sent = client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json={"type": "text", "text": "Hello from Bo"})
    assert sent.status_code == 202 and sent.json["status"] == "queued" and sent.json["origin"] == "operator"
    run_worker(api_app)
    assert graph.texts("26200")[-1] == "Hello from Bo"
    store_template(api_app, "order_update", "en")
    template = client.post(f"/api/contacts/{cid}/messages", headers=AUTH,
                           json={"type": "template", "name": "order_update", "language": "en"})
    image = client.post(f"/api/contacts/{cid}/messages", headers=AUTH,
                        json={"type": "image", "link": "https://example.com/a.png", "caption": "A"})
    buttons = client.post(f"/api/contacts/{cid}/messages", headers=AUTH,
                          json={"type": "buttons", "text": "Pick", "buttons": [{"id": "a", "title": "A"}]})
    assert {template.status_code, image.status_code, buttons.status_code} == {202}
    run_worker(api_app)
    assert [b["type"] for b in graph.sent[-3:]] == ["template", "image", "interactive"]
    graph.script = [(400, {"error": {"code": 131026, "message": "Message undeliverable"}})]
    client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json={"type": "text", "text": "lost"})
    run_worker(api_app)
    history = client.get(f"/api/contacts/{cid}/messages?limit=50", headers=AUTH).json["items"]
    assert history[0]["text"] == "lost" and history[0]["status"] == "failed" and history[0]["error_code"] == 131026
    assert history[1]["status_history"]["sent"] and history[-1]["direction"] == "in"
    assert [m["id"] for m in history] == sorted((m["id"] for m in history), reverse=True)
    page = client.get(f"/api/contacts/{cid}/messages?limit=2", headers=AUTH).json
    assert len(page["items"]) == 2 and page["next_cursor"] == page["items"][1]["id"]
    for bad in ({"type": "text"}, {"type": "fax"}, {"type": "text", "text": "x" * 5000},
                {"type": "buttons", "text": "Pick", "buttons": [{"id": str(i), "title": "t"} for i in range(4)]}):
        response = client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json=bad)
        assert response.status_code == 422, bad
    assert client.post(f"/api/contacts/{cid}/messages", headers=AUTH, data="[]",
                       content_type="application/json").status_code == 400
    assert client.post("/api/contacts/999999/messages", headers=AUTH,
                       json={"type": "text", "text": "x"}).status_code == 404


def test_free_text_outside_the_window_is_refused(api_app, client):
    say(api_app, "26300", "hi")
    cid = contact_id(api_app, "26300")
    with api_app.app_context():
        db.session.get(Contact, cid).last_inbound_at = utcnow() - timedelta(hours=25)
        db.session.commit()
    refused = client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json={"type": "text", "text": "late"})
    assert refused.status_code == 409 and "template" in refused.json["error"]["message"]
    store_template(api_app, "hello")
    template = client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json={"type": "template", "name": "hello"})
    assert template.status_code == 202


def test_sessions_get_reset_and_start(api_app, client, graph):
    say(api_app, "26400", "hi")
    cid = contact_id(api_app, "26400")
    session = client.get(f"/api/contacts/{cid}/session", headers=AUTH).json["session"]
    assert session["flow"] == "welcome" and session["status"] == "active" and session["idle_seconds"] >= 0
    assert "variables" in session
    reset = client.delete(f"/api/contacts/{cid}/session", headers=AUTH)
    assert reset.status_code == 200 and reset.json["session"]["end_reason"] == "reset"
    assert client.get(f"/api/contacts/{cid}/session", headers=AUTH).json["session"] is None
    assert client.delete(f"/api/contacts/{cid}/session", headers=AUTH).status_code == 404
    started = client.post(f"/api/contacts/{cid}/session", headers=AUTH, json={"flow": "signup"})
    assert started.status_code == 201 and started.json["session"]["flow"] == "signup"
    run_worker(api_app)
    assert "name" in graph.texts("26400")[-1].lower()
    assert client.post(f"/api/contacts/{cid}/session", headers=AUTH, json={"flow": "nope"}).status_code == 422
    assert client.post("/api/contacts/999999/session", headers=AUTH, json={"flow": "signup"}).status_code == 404


def test_handover_scenario(api_app, client, graph):
    """Flow hands over -> bot silent for two messages -> operator replies -> resolves -> bot is back."""
    say(api_app, "26500", "agent")
    say(api_app, "26500", "my order is late")  # the topic; then the flow hands over
    cid = contact_id(api_app, "26500")
    bot_said = len(graph.texts("26500"))
    waiting = client.get("/api/handovers", headers=AUTH).json["items"]
    assert [w["contact"]["id"] for w in waiting] == [cid] and waiting[0]["claimed_by"] is None
    assert client.get("/api/contacts?handover=true", headers=AUTH).json["items"][0]["id"] == cid
    claimed = client.post(f"/api/contacts/{cid}/handover", headers=AUTH)
    assert claimed.status_code == 200 and claimed.json["claimed_by"] == "operator-1"
    assert client.post(f"/api/contacts/{cid}/handover", headers=OTHER).status_code == 409
    assert client.get("/api/handovers?claimed=false", headers=AUTH).json["items"] == []
    say(api_app, "26500", "hello?")
    say(api_app, "26500", "anyone there")
    assert len(graph.texts("26500")) == bot_said  # the bot stays silent
    with api_app.app_context():
        stored = db.session.execute(select(Message.text).where(Message.direction == "in")
                                    .order_by(Message.id)).scalars().all()
        assert stored[-2:] == ["hello?", "anyone there"]
    client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json={"type": "text", "text": "Hi, Bo here"})
    run_worker(api_app)
    assert graph.texts("26500")[-1] == "Hi, Bo here"
    assert client.post(f"/api/contacts/{cid}/handover/resolve", headers=OTHER).status_code == 409
    resolved = client.post(f"/api/contacts/{cid}/handover/resolve", headers=AUTH)
    assert resolved.status_code == 200 and resolved.json["session"]["end_reason"] == "resolved"
    assert client.post(f"/api/contacts/{cid}/handover/resolve", headers=AUTH).status_code == 409
    say(api_app, "26500", "hi")
    assert graph.texts("26500")[-1].startswith("Hello")  # the bot answers again


def test_operator_takes_over_without_a_flow(api_app, client, graph):
    say(api_app, "26600", "hi")
    cid = contact_id(api_app, "26600")
    taken = client.post(f"/api/contacts/{cid}/handover", headers=AUTH)
    assert taken.status_code == 200 and taken.json["session"]["status"] == "handover"
    before = len(graph.texts("26600"))
    say(api_app, "26600", "menu")
    assert len(graph.texts("26600")) == before
    with api_app.app_context():
        ended = db.session.execute(select(FlowSession.end_reason).where(FlowSession.flow_name == "welcome")
                                   ).scalar_one()
        assert ended == "handover"


def test_flows_list_get_upload_activate(api_app, client):
    names = [f["name"] for f in client.get("/api/flows", headers=AUTH).json["items"]]
    assert names == sorted(names) and "welcome" in names
    detail = client.get("/api/flows/welcome", headers=AUTH).json
    assert detail["source"].startswith("#") or "name: welcome" in detail["source"]
    assert client.get("/api/flows/nope", headers=AUTH).status_code == 404
    doc = "name: promo\ntriggers: {keywords: [promo]}\nsteps:\n  - {id: s, type: send, messages: [Deal!]}\n"
    created = client.post("/api/flows", headers=AUTH, data=doc, content_type="application/yaml")
    assert created.status_code == 201 and created.json == {"name": "promo", "version": 1, "outcome": "created"}
    again = client.post("/api/flows", headers=AUTH, data=doc.replace("Deal!", "Deal!!"),
                        content_type="application/yaml")
    assert again.status_code == 200 and again.json["version"] == 2
    bad = client.post("/api/flows?filename=promo.yaml", headers=AUTH,
                      data="name: bad\nsteps:\n  - {id: s, type: send, mesages: [x]}\n",
                      content_type="application/yaml")
    assert bad.status_code == 422 and any(re.match(r"promo\.yaml:3: ", p) for p in bad.json["error"]["details"])
    assert client.post("/api/flows", headers=AUTH, data="", content_type="application/yaml").status_code == 400
    clash = "name: promo2\ntriggers: {keywords: [promo]}\nsteps:\n  - {id: s, type: send, messages: [x]}\n"
    assert client.post("/api/flows", headers=AUTH, data=clash, content_type="application/yaml").status_code == 422
    off = client.post("/api/flows/promo/deactivate", headers=AUTH)
    assert off.status_code == 200 and off.json["active"] is False
    assert client.post("/api/flows/promo/activate", headers=AUTH).json["active"] is True
    assert client.post("/api/flows/nope/activate", headers=AUTH).status_code == 404


def test_stats(api_app, client, graph):
    say(api_app, "26700", "agent")
    say(api_app, "26700", "refund")
    graph.script = [(400, {"error": {"code": 131026, "message": "Message undeliverable"}})]
    cid = contact_id(api_app, "26700")
    client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json={"type": "text", "text": "x"})
    run_worker(api_app)
    stats = client.get("/api/stats?days=2", headers=AUTH).json
    today = stats["days"][-1]
    assert today["inbound"] == 2 and today["outbound"] == 3
    assert stats["reply_latency_ms"]["count"] == 2 and stats["reply_latency_ms"]["p50"] > 0
    assert stats["sessions"]["handover"] == 1 and stats["sessions"]["expired"] == 0
    assert stats["failed_sends"] == [{"error_code": 131026, "error_title": "Message undeliverable", "count": 1}]
    assert client.get("/api/stats?days=0", headers=AUTH).status_code == 400


def test_openapi_lists_every_route_and_validates(api_app, client):
    from openapi_spec_validator import validate

    response = client.get("/api/openapi.json")  # public: it holds no data
    assert response.status_code == 200
    spec = response.json
    validate(spec)
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    routed = set()
    for rule in api_app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            routed |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed


def test_rq_dashboard_needs_credentials(api_app, make_app):
    client = api_app.test_client()
    assert client.get("/rq/").status_code == 401
    assert client.get("/rq/", headers={"Authorization": "Basic " + base64.b64encode(b"x:wrong").decode()}
                      ).status_code == 401
    good = {"Authorization": "Basic " + base64.b64encode(f"ops:{TOKEN}".encode()).decode()}
    response = client.get("/rq/", headers=good)
    assert response.status_code == 200 and b"RQ" in response.data
    assert client.get("/rq/queues.json", headers=good).status_code in (200, 404)
    own = make_app(RQ_DASHBOARD_USERNAME="admin", RQ_DASHBOARD_PASSWORD="dash-pass-999")
    c2 = own.test_client()
    ok = {"Authorization": "Basic " + base64.b64encode(b"admin:dash-pass-999").decode()}
    assert c2.get("/rq/", headers=ok).status_code == 200
    with_token = {"Authorization": "Basic " + base64.b64encode(f"admin:{TOKEN}".encode()).decode()}
    assert c2.get("/rq/", headers=with_token).status_code == 401


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_move(api_app, client, graph):
    before = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    wamid = "wamid.metrics.dup"
    for _ in range(2):
        post_webhook(client, envelope([message("26800", body="hi", wamid=wamid)]))
    client.post("/webhooks/whatsapp", data=b"{}", content_type="application/json",
                headers={"X-Hub-Signature-256": "sha256=bad"})
    run_worker(api_app)
    after = client.get("/metrics", headers=AUTH).get_data(as_text=True)
    assert metric(after, "crm_webhook_requests_total", outcome="ok") - metric(before, "crm_webhook_requests_total",
                                                                               outcome="ok") == 2
    assert metric(after, "crm_webhook_requests_total", outcome="bad_signature") > metric(
        before, "crm_webhook_requests_total", outcome="bad_signature")
    assert metric(after, "crm_webhook_events_total", outcome="duplicate") - metric(
        before, "crm_webhook_events_total", outcome="duplicate") == 1
    assert metric(after, "crm_sends_total", outcome="sent") > metric(before, "crm_sends_total", outcome="sent")
    assert metric(after, "crm_reply_latency_seconds_count") > metric(before, "crm_reply_latency_seconds_count")
    assert 'crm_queue_depth{queue="high"} 0.0' in after
    assert "crm_football_sync_seconds" in after and "crm_sessions_expired_total" in after


def test_logs_carry_request_and_job_ids(api_app, client, caplog):
    import json
    import logging

    from crm.base.logs import JsonFormatter

    caplog.set_level("DEBUG")  # the turn's line is DEBUG (README, Operating it)
    post_webhook(client, envelope([message("26900", body="hi")]))
    run_worker(api_app)
    response = client.post("/webhooks/whatsapp", data=b"{}", content_type="application/json",
                           headers={"X-Hub-Signature-256": "sha256=bad", "X-Request-ID": "req-abc-123"})
    assert response.headers["X-Request-ID"] == "req-abc-123"
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    turn = next(line for line in lines if line.get("event") == "flow.turn")
    # a turn served off the ready list runs in no RQ job: the line names the contact and the message
    assert turn["contact_id"] and turn["message"].startswith("processed message ") and "job_id" not in turn
    assert turn["level"] == "DEBUG" and turn["time"]
    assert any(line.get("request_id") == "req-abc-123" and line.get("event") == "webhook.bad_signature"
               for line in lines)
    assert TOKEN not in "".join(map(str, lines))
    # callers (RQ) pass job_id themselves: that must neither fail nor be overwritten
    record = logging.getLogger("rq.worker").makeRecord("rq.worker", 40, "f", 1, "boom", (), None,
                                                       extra={"job_id": "given"})
    assert json.loads(JsonFormatter().format(record))["job_id"] == "given"


def test_a_routine_turn_logs_nothing_at_info(api_app, client, caplog):
    caplog.set_level("INFO")
    post_webhook(client, envelope([message("26901", body="hi")]))
    run_worker(api_app)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "flow.turn"]
    assert not [r for r in caplog.records if r.levelname == "INFO" and r.name.startswith("crm.replies")]
