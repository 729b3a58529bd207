"""Message templates: parameter counting, the Graph list client (paging, retries), the sync, the
status webhook, and the refusals (operator sends, flow imports, football results)."""

from __future__ import annotations

import base64
import json
import logging
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from werkzeug import Response

import scheduler
from crm.base import templates
from crm.base.extensions import db, get_queue
from crm.base.models import Contact, utcnow
from crm.base.templates import MessageTemplate, approved_templates, enqueue_sync
from football.jobs import notify_results
from football.models import Fixture, League, Team, TeamFollow
from integrations.whatsapp.templates import (
    EVENT_STATUS,
    TemplateClientError,
    TemplateEvent,
    TemplateParams,
    TemplatesClient,
    TemplateStatus,
    check_send_components,
    count_parameters,
    parse_status_update,
)
from tests.helpers import TOKEN as GRAPH_TOKEN
from tests.helpers import envelope, message, post_webhook, run_worker, store_template

WABA = "300000000000003"
OPERATOR = "operator-token-1234"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
PATH = f"/v23.0/{WABA}/message_templates"


def tpl(name, language="en_US", status="APPROVED", body="Hi there", category="UTILITY", id=None, extra=()):
    return {"name": name, "language": language, "status": status, "category": category,
            "id": id or str(abs(hash((name, language))) % 10**15),
            "components": [{"type": "BODY", "text": body}, *extra]}


class FakeTemplates:
    """GET /<WABA>/message_templates on the local server: pages of ``page_size`` with opaque
    cursors and ``next`` while more remain; ``script`` holds (status, body[, headers]) answers."""

    def __init__(self, server, page_size: int = 2):
        self.templates: list[dict] = []
        self.page_size = page_size
        self.script: list = []
        self.requests: list[dict] = []
        server.expect_request(PATH, method="GET").respond_with_handler(self.handle)

    def handle(self, request):
        args = request.args.to_dict()
        self.requests.append({**args, "auth": request.headers.get("Authorization")})
        if self.script:
            status, body, *headers = self.script.pop(0)
            return Response(json.dumps(body), status=status, content_type="application/json",
                            headers=headers[0] if headers else None)
        start = int(base64.b64decode(args["after"]).decode().split(":")[1]) if args.get("after") else 0
        size = min(int(args.get("limit", 25)), self.page_size)  # Meta may return fewer than asked
        page = self.templates[start:start + size]
        cursor = lambda n: base64.b64encode(f"pos:{n}".encode()).decode()  # noqa: E731
        paging = {"cursors": {"before": cursor(start), "after": cursor(start + len(page))}}
        if start + size < len(self.templates):
            paging["next"] = f"https://graph.example/{PATH}?after={cursor(start + len(page))}"
        return Response(json.dumps({"data": page, "paging": paging}), content_type="application/json")


@pytest.fixture
def fake(httpserver, graph):  # after `graph`, which clears the server's handlers
    return FakeTemplates(httpserver)


@pytest.fixture
def tapp(make_app, graph, fake):
    return make_app(WHATSAPP_BUSINESS_ACCOUNT_ID=WABA, OPERATOR_API_TOKENS=OPERATOR)


def rows(app) -> dict[tuple[str, str], MessageTemplate]:
    with app.app_context():
        out = {(r.name, r.language): r for r in db.session.execute(select(MessageTemplate)).scalars()}
        for r in out.values():
            db.session.expunge(r)
        return out


def client_for(httpserver, **kwargs) -> TemplatesClient:
    kwargs.setdefault("sleep", lambda s: None)
    return TemplatesClient(httpserver.url_for("/v23.0"), GRAPH_TOKEN, WABA, **kwargs)


# -- parameters (pure) ---------------------------------------------------------------------------
BODY2 = {"type": "BODY", "text": "Hi {{1}}, order {{2}} ships {{1}}"}


@pytest.mark.parametrize("components, fmt, expected", [
    ([], None, dict(header=0, body=0, buttons=(), parameter_format="POSITIONAL")),
    ([{"type": "BODY", "text": "No variables"}], None, dict(body=0)),
    ([BODY2], None, dict(body=2, body_names=())),  # a repeated placeholder is one parameter
    ([{"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"}, BODY2], None,
     dict(header=1, header_format="TEXT", body=2)),
    ([{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "Look"}], None,
     dict(header=1, header_format="IMAGE", body=0)),
    ([{"type": "HEADER", "format": "LOCATION"}], None, dict(header=1, header_format="LOCATION")),
    ([{"type": "BODY", "text": "Hi {{first_name}}, {{ order_id }} is late"}], None,
     dict(parameter_format="NAMED", body=2, body_names=("first_name", "order_id"))),
    ([{"type": "HEADER", "format": "TEXT", "text": "{{sale}} now"}, {"type": "BODY", "text": "Code {{code}}"}],
     "NAMED", dict(header=1, header_names=("sale",), body=1, body_names=("code",))),
    ([{"type": "BODY", "text": "x"}, {"type": "BUTTONS", "buttons": [
        {"type": "QUICK_REPLY", "text": "Stop"}, {"type": "URL", "text": "Track", "url": "https://x.test/{{1}}"},
        {"type": "URL", "text": "Home", "url": "https://x.test/"}, {"type": "COPY_CODE", "example": "ABC"}]}],
     None, dict(buttons=((1, "URL"), (3, "COPY_CODE")))),
    ([{"type": "BODY", "text": "{{1}} is your code."}, {"type": "BUTTONS", "buttons": [{"type": "OTP"}]}],
     None, dict(body=1, buttons=((0, "OTP"),))),
    ([{"type": "BODY", "text": "{{1}}"}, {"type": "CAROUSEL", "cards": []}], None, dict(body=1, checkable=False)),
    ("not a list", None, dict(body=0)),
])
def test_parameters_are_counted_per_component(components, fmt, expected):
    params = count_parameters(components, fmt)
    for key, value in expected.items():
        assert getattr(params, key) == value, key


def body(*values, named=False):
    return {"type": "body", "parameters": [
        {"type": "text", "text": v, **({"parameter_name": v} if named else {})} for v in values]}


@pytest.mark.parametrize("params, components, problem", [
    (TemplateParams(), None, None),
    (TemplateParams(body=2), [body("a", "b")], None),
    (TemplateParams(body=2), [body("a")], "the body expects 2 parameter(s); got 1"),
    (TemplateParams(body=0), [body("a")], "the body expects 0 parameter(s); got 1"),
    (TemplateParams(header=1, header_format="IMAGE"), [], "the header (image) expects 1 parameter(s); got 0"),
    (TemplateParams(header=1, header_format="IMAGE"),
     [{"type": "HEADER", "parameters": [{"type": "image", "image": {"link": "https://x.test/a.png"}}]}], None),
    (TemplateParams(parameter_format="NAMED", body=1, body_names=("first_name",)), [body("first_name", named=True)],
     None),
    (TemplateParams(parameter_format="NAMED", body=1, body_names=("first_name",)), [body("x")],
     "needs named parameter(s) first_name"),
    (TemplateParams(buttons=((1, "URL"),)), [], "button 1 (URL) expects 1 parameter"),
    (TemplateParams(buttons=((1, "URL"),)),
     [{"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "A1"}]}], None),
    (TemplateParams(body=1, checkable=False), [], None),
    (TemplateParams(), "nope", "'components' must be a list"),
])
def test_send_components_are_checked(params, components, problem):
    problems = check_send_components(params, components)
    assert (problems == []) if problem is None else any(problem in p for p in problems), problems


def test_statuses_and_events():
    assert TemplateStatus("APPROVED") is TemplateStatus("approved") is TemplateStatus.APPROVED
    assert TemplateStatus("SOMETHING_NEW") is TemplateStatus.UNKNOWN
    assert EVENT_STATUS[TemplateEvent.REINSTATED] is TemplateStatus.APPROVED
    assert EVENT_STATUS[TemplateEvent.PAUSED] is TemplateStatus.PAUSED
    assert EVENT_STATUS[TemplateEvent.FLAGGED] is None and EVENT_STATUS[TemplateEvent("NEW_EVENT")] is None
    value = {"event": "REJECTED", "message_template_id": 1689556908129832, "message_template_name": "abandoned_cart",
             "message_template_language": "en-US", "reason": "INVALID_FORMAT", "message_template_category": "marketing"}
    update = parse_status_update(WABA, value, 1751247548)
    assert (update.template_id, update.language, update.status, update.reason, update.category) == (
        "1689556908129832", "en_US", TemplateStatus.REJECTED, "INVALID_FORMAT", "MARKETING")
    assert update.time.year == 2025
    assert parse_status_update(WABA, {"event": "APPROVED"}) is None


# -- the Graph client ----------------------------------------------------------------------------
def test_client_reads_every_page(httpserver, fake):
    fake.templates = [tpl(f"t{i}") for i in range(5)]
    listing = client_for(httpserver, page_size=100).list_templates()
    assert [t.name for t in listing.templates] == ["t0", "t1", "t2", "t3", "t4"]
    assert listing.pages == 3 and len(fake.requests) == 3
    assert "after" not in fake.requests[0] and fake.requests[1]["after"] and fake.requests[2]["after"]
    assert all(r["limit"] == "100" and r["fields"] == "id,name,language,status,category,components"
               and r["auth"] == f"Bearer {GRAPH_TOKEN}" for r in fake.requests)


def test_client_retries_throttling_and_server_errors(httpserver, fake):
    fake.templates = [tpl("a")]
    slept = []
    fake.script = [(500, {"error": {"message": "oops", "code": 2}}),
                   (429, {}, {"Retry-After": "7"}),
                   (400, {"error": {"message": "Too many calls to this WhatsApp Business account", "code": 80008}})]
    listing = client_for(httpserver, sleep=slept.append).list_templates()
    assert [t.name for t in listing.templates] == ["a"] and listing.calls == 4
    assert len(slept) == 3 and 7 <= slept[1] <= 7 * 1.25 and slept[0] < slept[2]


def test_client_errors_are_clear_and_never_hold_the_token(httpserver, fake):
    fake.script = [(401, {"error": {"message": f"Invalid OAuth access token - {GRAPH_TOKEN}", "code": 190}})]
    with pytest.raises(TemplateClientError) as exc:
        client_for(httpserver).list_templates()
    assert "HTTP 401, error 190: Invalid OAuth access token" in str(exc.value)
    assert GRAPH_TOKEN not in str(exc.value) and not exc.value.retryable and len(fake.requests) == 1
    fake.script = [(503, {})] * 2
    with pytest.raises(TemplateClientError) as exc:
        client_for(httpserver, max_attempts=2).list_templates()
    assert exc.value.retryable and exc.value.status == 503
    with pytest.raises(TemplateClientError, match="WHATSAPP_BUSINESS_ACCOUNT_ID is not set"):
        TemplatesClient("http://x.test", GRAPH_TOKEN, "")


# -- sync, CLI, API ------------------------------------------------------------------------------
def test_sync_upserts_lists_and_marks_removed_templates_deleted(tapp, fake):
    fake.templates = [
        tpl("order_update", body="Hi {{1}}, order {{2}} shipped", id="11"),
        tpl("order_update", "es", body="Hola {{1}}", id="12"),
        tpl("promo", status="PENDING", category="MARKETING", id="13",
            extra=[{"type": "HEADER", "format": "IMAGE"}]),
        tpl("welcome_named", body="Hi {{first_name}}", id="14"),
    ]
    runner = tapp.test_cli_runner()
    out = runner.invoke(args=["templates", "sync"])
    assert out.exit_code == 0, out.output
    assert "4 created, 0 updated, 0 unchanged, 0 marked deleted (2 page(s), 2 request(s))" in out.output
    stored = rows(tapp)
    assert set(stored) == {("order_update", "en_US"), ("order_update", "es"), ("promo", "en_US"),
                           ("welcome_named", "en_US")}
    order = stored[("order_update", "en_US")]
    assert (order.status, order.category, order.body_params, order.header_params, order.remote_id, order.waba_id) == (
        "APPROVED", "UTILITY", 2, 0, "11", WABA)
    assert stored[("promo", "en_US")].header_params == 1
    assert stored[("welcome_named", "en_US")].parameter_format == "NAMED"
    listed = runner.invoke(args=["templates", "list"]).output
    assert "order_update" in listed and "PENDING" in listed and "4 template(s)" in listed
    assert "promo" not in runner.invoke(args=["templates", "list", "--approved"]).output

    # Meta pauses one and the Spanish one is deleted in WhatsApp Manager
    fake.templates = [tpl("order_update", status="PAUSED", body="Hi {{1}}, order {{2}} shipped", id="11"),
                      fake.templates[2], fake.templates[3]]
    out = runner.invoke(args=["templates", "sync"])
    assert "0 created, 1 updated, 2 unchanged, 1 marked deleted" in out.output
    stored = rows(tapp)
    assert stored[("order_update", "en_US")].status == "PAUSED" and stored[("order_update", "es")].status == "DELETED"

    client = tapp.test_client()
    items = client.get("/api/templates", headers=AUTH).json["items"]
    assert [(t["name"], t["language"], t["status"]) for t in items] == [
        ("order_update", "en_US", "PAUSED"), ("order_update", "es", "DELETED"), ("promo", "en_US", "PENDING"),
        ("welcome_named", "en_US", "APPROVED")]
    named = items[3]
    assert named["parameters"] == {"header": 0, "body": 1, "buttons": 0, "header_format": None,
                                   "names": ["first_name"], "buttons_needing_values": []}
    assert named["approved"] and named["components"][0]["text"] == "Hi {{first_name}}"
    approved = client.get("/api/templates?status=approved", headers=AUTH).json["items"]
    assert [t["name"] for t in approved] == ["welcome_named"]
    assert [t["name"] for t in client.get("/api/templates?q=promo", headers=AUTH).json["items"]] == ["promo"]
    assert client.get("/api/templates?status=bogus", headers=AUTH).status_code == 400
    assert client.get("/api/templates").status_code == 401
    with tapp.app_context():
        assert [(t.name, t.language) for t in approved_templates()] == [("welcome_named", "en_US")]


def test_a_failed_page_changes_nothing(tapp, fake):
    fake.templates = [tpl("a"), tpl("b"), tpl("c")]
    runner = tapp.test_cli_runner()
    assert runner.invoke(args=["templates", "sync"]).exit_code == 0
    fake.templates = [tpl("a", status="PAUSED")]
    fake.script = [(200, {"data": [tpl("a", status="PAUSED")], "paging": {"cursors": {"after": "QQ=="},
                                                                          "next": "https://x"}}),
                   (400, {"error": {"message": "Invalid parameter", "code": 100}})]
    out = runner.invoke(args=["templates", "sync"])
    assert out.exit_code == 1 and "templates sync failed: message_templates: HTTP 400, error 100" in out.output
    assert {k: r.status for k, r in rows(tapp).items()} == {("a", "en_US"): "APPROVED", ("b", "en_US"): "APPROVED",
                                                           ("c", "en_US"): "APPROVED"}


def test_sync_needs_the_account_id(make_app, graph, fake):
    app = make_app()
    out = app.test_cli_runner().invoke(args=["templates", "sync"])
    assert out.exit_code == 1 and "WHATSAPP_BUSINESS_ACCOUNT_ID is not set" in out.output
    with app.app_context():  # the scheduled job skips quietly instead of failing every hour
        assert templates.sync_job() == templates.NOT_CONFIGURED
        assert templates.enqueue_sync() is False
    assert fake.requests == []


def test_scheduled_sync_runs_on_low(tapp, fake):
    ids = {s["id"]: s for s in scheduler.schedules(tapp)}
    spec = ids["crm-templates-sync"]
    assert (spec["cron"], spec["queue"], spec["func"]) == ("7 * * * *", "low", "crm.base.templates.sync_job")
    fake.templates = [tpl("a")]
    with tapp.app_context():
        assert enqueue_sync() and enqueue_sync()  # the second finds one waiting
        assert get_queue("low").count == 1
    run_worker(tapp, ("low",))
    assert set(rows(tapp)) == {("a", "en_US")}


# -- the status webhook --------------------------------------------------------------------------
def template_event(event, name, language="en_US", template_id="11", reason="NONE", at=None):
    return {"object": "whatsapp_business_account", "entry": [{"id": WABA, "time": int(at or time.time()), "changes": [
        {"field": "message_template_status_update", "value": {
            "event": event, "message_template_id": int(template_id), "message_template_name": name,
            "message_template_language": language, "reason": reason, "message_template_category": "UTILITY"}}]}]}


def test_status_webhooks_are_applied(tapp, fake):
    store_template(tapp, "order_update", body="Hi {{1}}", remote_id="11")
    client = tapp.test_client()
    with tapp.app_context():
        contact = Contact(wa_id="5501", last_inbound_at=utcnow())
        db.session.add(contact)
        db.session.commit()
        cid = contact.id
    send = {"type": "template", "name": "order_update", "components": [body("Ana")]}
    assert post_webhook(client, template_event("PAUSED", "order_update", reason="NONE")).status_code == 200
    refused = client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json=send)
    assert refused.status_code == 422
    assert refused.json["error"]["message"] == "template 'order_update' (en_US) is not approved: status PAUSED"
    # an event from before the status we hold (delivered late) changes nothing
    post_webhook(client, template_event("APPROVED", "order_update", at=time.time() - 3600))
    assert rows(tapp)[("order_update", "en_US")].status == "PAUSED"
    post_webhook(client, template_event("REINSTATED", "order_update"))
    assert client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json=send).status_code == 202
    post_webhook(client, template_event("REJECTED", "order_update", reason="INVALID_FORMAT"))
    refused = client.post(f"/api/contacts/{cid}/messages", headers=AUTH, json=send).json["error"]["message"]
    assert refused.endswith("status REJECTED (INVALID_FORMAT)")
    post_webhook(client, template_event("FLAGGED", "order_update"))  # says nothing about the status
    assert rows(tapp)[("order_update", "en_US")].status == "REJECTED"

    # a template approved before any sync saw it: stored at once, its parameters come with a sync
    fake.templates = [tpl("new_offer", body="Only {{1}} today", id="99")]
    assert post_webhook(client, template_event("APPROVED", "new_offer", "en-US", "99")).status_code == 200
    new = rows(tapp)[("new_offer", "en_US")]
    assert new.status == "APPROVED" and new.components is None and new.remote_id == "99"
    with tapp.app_context():
        assert get_queue("low").count == 1
    run_worker(tapp, ("low",))
    assert rows(tapp)[("new_offer", "en_US")].body_params == 1
    # a webhook with messages and one with an unknown shape still answer 200
    mixed = envelope([message("5501")])
    mixed["entry"].append(template_event("WHATEVER", "order_update")["entry"][0])
    assert post_webhook(client, mixed).status_code == 200
    bad = template_event("APPROVED", "x")
    del bad["entry"][0]["changes"][0]["value"]["message_template_name"]
    assert post_webhook(client, bad).status_code == 200


# -- refusals ------------------------------------------------------------------------------------
def test_operator_template_sends_are_checked(tapp, graph):
    client = tapp.test_client()
    with tapp.app_context():
        contact = Contact(wa_id="5502", last_inbound_at=utcnow() - timedelta(days=2))  # outside the window
        db.session.add(contact)
        db.session.commit()
        cid = contact.id
    url = f"/api/contacts/{cid}/messages"
    empty = client.post(url, headers=AUTH, json={"type": "template", "name": "hello"})
    assert empty.status_code == 422 and "no templates are synced yet" in empty.json["error"]["message"]
    assert "flask --app wsgi templates sync" in empty.json["error"]["message"]
    store_template(tapp, "shipping", "en", body="Hi {{1}}, {{2}} is on its way")
    store_template(tapp, "greeting", body="Hi {{first_name}}")
    store_template(tapp, "old", status="DISABLED")
    for data, expected in [
        ({"name": "nope"}, "unknown template 'nope' (any language); run `flask --app wsgi templates sync` if it"),
        ({"name": "shipping", "language": "de"}, "unknown template 'shipping' (de): it exists in en (approved: en)"),
        ({"name": "old"}, "template 'old' (en_US) is not approved: status DISABLED"),
        ({"name": "shipping", "components": [body("Ana")]},
         "template 'shipping' (en): the body expects 2 parameter(s); got 1"),
        ({"name": "greeting", "components": [body("Ana")]}, "needs named parameter(s) first_name"),
        ({"name": "greeting", "language": 5}, "'language' must be a language code"),
    ]:
        response = client.post(url, headers=AUTH, json={"type": "template", **data})
        assert response.status_code == 422 and expected in response.json["error"]["message"], response.json
    ok = client.post(url, headers=AUTH, json={"type": "template", "name": "shipping",
                                              "components": [body("Ana", "Parcel 7")]})
    named = client.post(url, headers=AUTH, json={"type": "template", "name": "greeting",
                                                 "components": [body("first_name", named=True)]})
    assert ok.status_code == named.status_code == 202
    run_worker(tapp)
    sent = [b["template"] for b in graph.sent]
    assert [(t["name"], t["language"]["code"]) for t in sent] == [("shipping", "en"), ("greeting", "en_US")]


FLOW = """name: notify
triggers: {{keywords: [notify]}}
steps:
  - id: s
    type: send
    messages:
      - {{type: template, name: {name}, language: en_US, components: {components}}}
"""


def flow_with(name, components="[]"):
    return FLOW.format(name=name, components=components)


def test_flow_import_checks_templates(tapp, tmp_path):
    runner = tapp.test_cli_runner()
    path = tmp_path / "notify.yaml"
    path.write_text(flow_with("reminder"))
    fresh = runner.invoke(args=["flows", "import", str(path)])  # nothing synced yet: warn, import
    assert fresh.exit_code == 0 and "created" in fresh.output
    assert "warning: 1 template message(s) not checked: no templates are synced yet" in fresh.output
    store_template(tapp, "reminder", status="PAUSED", body="See you at {{1}}")
    path.write_text(flow_with("reminder", '[{type: body, parameters: [{type: text, text: "9:00"}]}]'))
    refused = runner.invoke(args=["flows", "import", str(path)])
    assert refused.exit_code == 1 and "nothing imported" in refused.output
    assert f"{path}: step 's' field 'messages[0]': template 'reminder' (en_US) is not approved: status PAUSED" \
        in refused.output
    path.write_text(flow_with("unknown_one"))
    assert "unknown template 'unknown_one' (en_US)" in runner.invoke(args=["flows", "import", str(path)]).output
    with tapp.app_context():
        db.session.execute(MessageTemplate.__table__.update().values(status="APPROVED"))
        db.session.commit()
    path.write_text(flow_with("reminder"))  # approved, but the parameter is missing
    assert "the body expects 1 parameter(s); got 0" in runner.invoke(args=["flows", "import", str(path)]).output
    client = tapp.test_client()
    good = flow_with("reminder", '[{type: body, parameters: [{type: text, text: "9:00"}]}]')
    uploaded = client.post("/api/flows", headers=AUTH, data=good, content_type="application/yaml")
    assert uploaded.status_code == 200 and uploaded.json["version"] == 2 and "warnings" not in uploaded.json
    bad = client.post("/api/flows", headers=AUTH, data=flow_with("nope"), content_type="application/yaml")
    assert bad.status_code == 422 and "unknown template 'nope'" in bad.json["error"]["details"][0]


def test_football_result_template_is_checked_at_send_time(make_app, graph, fake, caplog):
    app = make_app(WHATSAPP_BUSINESS_ACCOUNT_ID=WABA, FOOTBALL_RESULT_TEMPLATE="match_result")

    def finished_match(provider_id: str, wa_id: str) -> None:
        with app.app_context():
            league = db.session.execute(select(League)).scalar_one_or_none() or League(provider_id="1", name="PL")
            home, away = Team(provider_id=f"h{provider_id}", name="Arsenal"), Team(provider_id=f"a{provider_id}",
                                                                                  name="Chelsea")
            fan = Contact(wa_id=wa_id, last_inbound_at=utcnow() - timedelta(days=3))  # outside the window
            db.session.add_all([league, home, away, fan])
            db.session.flush()
            now = utcnow()
            db.session.add_all([
                Fixture(provider_id=provider_id, league_id=league.id, home_team_id=home.id, away_team_id=away.id,
                        kickoff_at=now - timedelta(hours=2), status="finished", status_text="Finished",
                        home_score=2, away_score=0, finished_at=now),
                TeamFollow(contact_id=fan.id, team_id=home.id)])
            db.session.commit()

    store_template(app, "match_result", "en_GB", status="PAUSED", body="Full time: {{1}}")
    finished_match("1", "5601")
    caplog.set_level(logging.INFO)
    with app.app_context():
        assert notify_results() == 0
    assert "FOOTBALL_RESULT_TEMPLATE not used: template 'match_result' (en_GB) is not approved: status PAUSED" \
        in caplog.text
    with app.app_context():
        db.session.execute(MessageTemplate.__table__.update().values(status="APPROVED"))
        db.session.commit()
    finished_match("2", "5602")
    with app.app_context():
        assert notify_results() == 1
    run_worker(app, ("default", "high"))
    template = graph.sent[-1]["template"]
    assert template["name"] == "match_result" and template["language"] == {"code": "en_GB"}
    assert template["components"][0]["parameters"][0]["text"] == "Arsenal 2-0 Chelsea"
