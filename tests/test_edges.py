"""Nothing jams at the edges: inputs a database cannot hold, inputs that cost unbounded work,
and the monitoring pages (issue 14, input side)."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import logging
import shutil
import subprocess
import sys
import threading
import time

import pytest
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import select, text
from werkzeug.serving import make_server

from crm.base.extensions import db, get_queue
from crm.base.logs import JsonFormatter
from crm.base.models import Contact, Message
from flows import engine as e
from flows.document import FlowError, parse_flow
from flows.store import load_files
from flows.templating import must_propagate
from tests.helpers import ECHO, ROOT, envelope, free_port, import_examples, message, post_webhook, run_worker, sign

AGE = """
name: age
triggers: {keywords: [age]}
steps:
  - {id: ask, type: question, text: "How old are you?", expect: number, save_as: age, max_attempts: 5}
  - {id: done, type: end, text: "You are {{ age }}."}
"""
MENU = "Hello Ana! 👋 What would you like to do?"
RETRY = "Sorry, that is not a valid answer.\n\nHow old are you?"


@pytest.fixture
def edge_app(app):
    import_examples(app, ECHO, AGE)
    return app


def deliver(app, payload_or_raw, wa_id: str | None = None):
    """POST one signed webhook (a dict, or raw bytes), answer 200, run the reply worker."""
    client = app.test_client()
    if isinstance(payload_or_raw, bytes):
        response = post_webhook(client, None, raw=payload_or_raw)
    else:
        response = post_webhook(client, payload_or_raw)
    assert response.status_code == 200, response.get_data(as_text=True)
    run_worker(app)
    return response


def say(app, wa_id: str, body: str):
    deliver(app, envelope([message(wa_id, body=body)]))


def raw_text_message(wa_id: str, json_string_literal: str, name: str = "Ana") -> bytes:
    """A webhook whose text body is given as JSON source (escapes such as \\ud800 kept as written)."""
    placeholder = "@@BODY@@"
    body = json.dumps(envelope([message(wa_id, body=placeholder)], name=name))
    return body.replace(json.dumps(placeholder), json_string_literal).encode()


def inbound_rows(app, wa_id: str) -> list[Message]:
    with app.app_context():
        return list(db.session.execute(
            select(Message).join(Contact).where(Contact.wa_id == wa_id, Message.direction == "in")
            .order_by(Message.id)).scalars())


# --- values the database cannot hold ----------------------------------------

@pytest.mark.parametrize("answer", ["NaN", "nan", "Infinity", "-inf", "1e999"])
def test_a_nan_answer_is_asked_again_and_the_contact_is_not_jammed(edge_app, graph, answer):
    for said in ("age", answer, "41", "age", answer, "menu"):
        say(edge_app, "7001", said)
    assert graph.texts("7001") == ["How old are you?", RETRY, "You are 41.", "How old are you?", RETRY, MENU]
    assert all(row.processed_at is not None for row in inbound_rows(edge_app, "7001"))


def test_a_lone_surrogate_is_stored_and_answered_and_nothing_else_in_the_delivery_is_lost(edge_app, graph):
    body = json.dumps(envelope([message("7002", body="@@"), message("7003", body="fine")]))
    body = body.replace('"@@"', '"a\\ud800b \\udfff"', 1).encode()
    deliver(edge_app, body)
    assert graph.texts("7002") == ["echo a\ufffdb \ufffd"]
    assert graph.texts("7003") == ["echo fine"]
    (row,) = inbound_rows(edge_app, "7002")
    assert row.text == "a\ufffdb \ufffd" and row.payload["text"]["body"] == "a\ufffdb \ufffd"
    say(edge_app, "7002", "menu")
    assert graph.texts("7002")[-1] == MENU


def test_nul_characters_are_removed_from_every_stored_string(edge_app, graph):
    payload = envelope([message("7004", body="a\x00b", context={"id": "wamid.ctx\x00", "from": "1\x00"},
                                extra={"deep": ["x\x00y", {"k\x00": "\x00"}]})], name="A\x00na")
    deliver(edge_app, payload)
    assert graph.texts("7004") == ["echo ab"]
    (row,) = inbound_rows(edge_app, "7004")
    assert row.text == "ab" and row.context_wa_id == "wamid.ctx"
    assert row.payload["extra"] == {"deep": ["xy", {"k": ""}]}
    with edge_app.app_context():
        assert db.session.execute(select(Contact.profile_name).where(Contact.wa_id == "7004")).scalar_one() == "Ana"
    say(edge_app, "7004", "menu")
    assert graph.texts("7004")[-1] == MENU


@pytest.mark.parametrize("length", [4096, 20_000])
def test_long_text_is_capped_in_the_searchable_column_and_kept_in_the_payload(edge_app, graph, length):
    body = ("0123456789" * (length // 10 + 1))[:length]
    say(edge_app, "7005", body)
    (row,) = inbound_rows(edge_app, "7005")
    assert row.text == body[:4096] and row.payload["text"]["body"] == body
    (reply,) = graph.texts("7005")
    assert reply == ("echo " + body[:4096])[:4096]
    say(edge_app, "7005", "menu")
    assert graph.texts("7005")[-1] == MENU


def test_ids_and_names_that_do_not_fit_their_columns(edge_app, graph):
    payload = envelope([message("7006", body="too long id", wamid="wamid." + "x" * 200),
                        message("7006", body="ok", context={"id": {"not": "a string"}})], name="N" * 1000)
    deliver(edge_app, payload)
    (row,) = inbound_rows(edge_app, "7006")  # the message whose id is not Meta's is refused, not stored
    assert row.text == "ok" and row.context_wa_id is None
    with edge_app.app_context():
        assert len(db.session.execute(select(Contact.profile_name).where(Contact.wa_id == "7006")).scalar_one()) == 256


def test_status_errors_with_odd_types_are_stored(edge_app, graph):
    say(edge_app, "7007", "hello")
    with edge_app.app_context():
        out = db.session.execute(select(Message).where(Message.direction == "out")).scalars().first()
        wamid = out.wa_message_id
    status = {"id": wamid, "status": "failed", "timestamp": "99999999999999999999", "recipient_id": "7007",
              "errors": [{"code": 10**30, "title": "t\x00" * 600, "error_data": {"details": ["not text"]}}]}
    deliver(edge_app, envelope(statuses=[status]))
    with edge_app.app_context():
        out = db.session.get(Message, out.id)
        assert out.status == "failed" and out.error_code is None and len(out.error_title) == 512


def test_a_number_too_large_for_a_float_keeps_its_text(edge_app, graph):
    body = json.dumps(envelope([message("7008", body="big", extra="@@")])).replace('"@@"', "1e400").encode()
    deliver(edge_app, body)
    (row,) = inbound_rows(edge_app, "7008")
    assert row.payload["extra"] == "1e400"


def test_turn_variables_are_always_storable():
    flow = parse_flow("""
name: act
triggers: {keywords: [go]}
steps:
  - {id: a, type: action, action: odd, save_as: result}
  - {id: s, type: set, variables: {copy: "{{ message.text }}"}}
  - {id: q, type: question, text: "Next?", expect: any, save_as: answer}
""", "act.yaml").doc
    def odd(params, context):
        return {"nan": float("nan"), "inf": float("-inf"), "nul": "a\x00b", "lone": "\ud800",
                "when": datetime.date(2026, 1, 2), "dec": decimal.Decimal("NaN"), "set": {1},
                "obj": object(), 3: "int key", "contact_fields": {"score": float("inf"), "x\x00": "y"}}

    turn = e.handle(e.Library([flow]), e.Session(), e.Inbound(text="go"), {"fields": {}}, actions={"odd": odd})
    state = turn.session.to_state()
    json.dumps(state, allow_nan=False, ensure_ascii=False).encode("utf-8")  # raises on NaN or a lone surrogate
    assert "\x00" not in json.dumps(state)
    result = state["vars"]["result"]
    assert result["nan"] is None and result["nul"] == "ab" and result["lone"] == "\ufffd"
    assert result["when"] == "2026-01-02" and result["3"] == "int key" and result["set"] == [1]
    fields = [x.data for x in turn.effects if x.kind == "set_contact_field"]
    assert {"name": "score", "value": None} in fields and {"name": "x", "value": "y"} in fields


def test_parse_number_refuses_what_is_not_a_finite_number():
    for value in ("nan", "NaN", "inf", "-Infinity", "1e999", float("nan"), float("inf")):
        assert e.parse_number(value) is None
    assert e.parse_number("41") == 41.0 and e.parse_number("3,5") == 3.5


# --- bounded work for every input --------------------------------------------

def test_a_signature_header_with_any_characters_is_refused_with_401(edge_app):
    client = edge_app.test_client()
    body = json.dumps(envelope([message("7010")])).encode()
    for header in ("sha256=\xe9\xff\xe9", "sha256=" + "\xe9" * 64, "sha256=", "md5=abc", sign(body) + "\xe9"):
        response = client.post("/webhooks/whatsapp", data=body, content_type="application/json",
                               headers={"X-Hub-Signature-256": header})
        assert response.status_code == 401, header


@pytest.mark.timeout(30)
@pytest.mark.parametrize("depth, status", [(100_000, 400), (57, 400), (56, 200)])
def test_json_nesting_is_limited(edge_app, depth, status):
    """The message object is 8 levels deep in Meta's envelope: 8 + 56 = 64 is the limit."""
    body = json.dumps(envelope([message("7011", extra="@@")])).replace(
        '"@@"', "[" * depth + "]" * depth).encode()
    response = post_webhook(edge_app.test_client(), None, raw=body)
    assert response.status_code == status


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_that_is_not_rfc_8259_answers_400(edge_app, constant):
    body = json.dumps(envelope([message("7012", extra="@@")])).replace('"@@"', constant).encode()
    assert post_webhook(edge_app.test_client(), None, raw=body).status_code == 400


BOMB_TEMPLATES = [
    '{{ "x" * 10**9 }}',
    '{{ 2 ** (10**9) }}',
    '{{ (2 ** 8000) * (2 ** 8000) }}',
    '{{ range(10**9)|list|length }}',
    '{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}{% endfor %}{% endfor %}'
    '{% endfor %}',
    '{% set ns = namespace(s="xx") %}{% for i in range(1000) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}',
    '{% set ns = namespace(s="a") %}{% for i in range(100) %}{% set ns.s = ns.s|replace("a", "aa") %}{% endfor %}',
    '{{ "x"|center(10**9) }}',
    '{{ "x".ljust(10**9) }}',
    '{{ "{:>999999999}".format(1) }}',
    '{{ "{:>{}}".format(1, 999999999) }}',
    '{{ "%999999999d" % 1 }}',
    '{{ "%.999999999f"|format(1.5) }}',
    '{{ ("a\n" * 1000)|indent(100000) }}',
    '{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}',
    '{{ lipsum(10**9) }}',
    '{{ [1]|batch(10**9, "x")|list }}',
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("template", BOMB_TEMPLATES)
def test_template_bombs_are_refused(template):
    flow = parse_flow(f"name: bomb\ntriggers: {{keywords: [go]}}\nsteps:\n"
                      f"  - {{id: s, type: send, messages: [{json.dumps('ok ' + template)}, after]}}\n",
                      "bomb.yaml").doc
    turn = e.handle(e.Library([flow]), e.Session(), e.Inbound(text="go"), {"fields": {}})
    errors = [x.data["error"] for x in turn.effects if x.kind == "error"]
    assert errors, "the bomb was not refused"
    texts = [m["text"]["body"] for m in turn.messages if m["type"] == "text"]
    assert texts[-1] == "after" and all(len(t) <= 4096 for t in texts)  # the turn goes on


def test_template_output_is_cut_at_4096_characters():
    flow = parse_flow('name: long\ntriggers: {keywords: [go]}\nsteps:\n'
                      '  - {id: s, type: send, messages: ["{% for i in range(1000) %}0123456789{% endfor %}"]}\n',
                      "long.yaml").doc
    turn = e.handle(e.Library([flow]), e.Session(), e.Inbound(text="go"), {"fields": {}})
    assert turn.messages[0]["text"]["body"] == "0123456789" * 409 + "012345"
    assert any("cut" in x.data["error"] for x in turn.effects if x.kind == "error")


def test_ordinary_templates_still_work():
    flow = parse_flow("""
name: fine
triggers: {keywords: [go]}
steps:
  - id: s
    type: send
    messages:
      - "{{ contact.name|upper }} {{ '%05.1f'|format(3.14159) }} {{ '{:>6}'.format('ab') }} {{ 'ab' * 3 }}"
      - "{% for i in range(3) %}{{ loop.index }}{{ i ~ '-' }}{% endfor %} {{ [3, 1, 2]|sort|join(',') }} {{ 2**10 }}"
""", "fine.yaml").doc
    turn = e.handle(e.Library([flow]), e.Session(), e.Inbound(text="go"), {"name": "ana", "fields": {}})
    assert [m["text"]["body"] for m in turn.messages] == ["ANA 003.1     ab ababab", "10-21-32- 1,2,3 1024"]
    assert not [x for x in turn.effects if x.kind == "error"]


class JobTimeout(Exception):
    """Stands in for rq.timeouts.JobTimeoutException, matched by name."""


def test_job_timeouts_pass_through_templates_and_actions():
    assert must_propagate(JobTimeoutException("x")) and must_propagate(KeyboardInterrupt())
    assert not must_propagate(ValueError("x"))

    class Slow:
        def __str__(self):
            raise JobTimeoutException("Task exceeded maximum timeout value (1 seconds)")

    flow = parse_flow('name: t\ntriggers: {keywords: [go]}\nsteps:\n'
                      '  - {id: s, type: send, messages: ["{{ contact.fields.slow }}"]}\n', "t.yaml").doc
    with pytest.raises(JobTimeoutException):
        e.handle(e.Library([flow]), e.Session(), e.Inbound(text="go"), {"fields": {"slow": Slow()}})

    def slow_action(params, context):
        raise JobTimeoutException("Task exceeded maximum timeout value (1 seconds)")

    flow = parse_flow('name: a\ntriggers: {keywords: [go]}\nsteps:\n'
                      '  - {id: a, type: action, action: slow}\n', "a.yaml").doc
    with pytest.raises(JobTimeoutException):
        e.handle(e.Library([flow]), e.Session(), e.Inbound(text="go"), {"fields": {}}, actions={"slow": slow_action})


def test_the_engine_stays_pure():
    code = ("import sys, flows.engine, flows.document, flows.templating; "
            "print([m for m in ('rq', 'sqlalchemy', 'flask', 'redis', 'psycopg') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def slow_turn() -> str:
    """An RQ job: a flow turn whose action runs past the job's timeout."""
    flow = parse_flow('name: a\ntriggers: {keywords: [go]}\nsteps:\n'
                      '  - {id: a, type: action, action: slow, save_as: r}\n'
                      '  - {id: s, type: send, messages: ["swallowed"]}\n', "a.yaml").doc

    def slow(params, context):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return "late"

    turn = e.handle(e.Library([flow]), e.Session(), e.Inbound(text="go"), {"fields": {}}, actions={"slow": slow})
    return turn.messages[0]["text"]["body"]


@pytest.mark.timeout(60)
def test_a_real_rq_job_timeout_is_not_swallowed_by_the_engine(edge_app):
    with edge_app.app_context():
        job = get_queue("default").enqueue(slow_turn, job_timeout=1)
    run_worker(edge_app, queues=("default",))
    job.refresh()
    assert job.is_failed
    assert "JobTimeoutException" in job.latest_result().exc_string


# --- flow documents ----------------------------------------------------------

YAML_BOMB = """name: lol
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
steps: *i
"""


@pytest.mark.timeout(30)
def test_a_yaml_alias_bomb_is_refused():
    assert len(YAML_BOMB) < 500
    with pytest.raises(FlowError) as info:
        parse_flow(YAML_BOMB, "bomb.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("bomb.yaml:2: ") and "anchors and aliases" in problem


@pytest.mark.timeout(30)
@pytest.mark.parametrize("source", ["[" * 100_000 + "]" * 100_000, '{"name": ' + "[" * 100_000 + "]" * 100_000 + "}",
                                    "a:\n" + "".join(" " * i + "- \n" for i in range(1, 200))])
def test_deeply_nested_flow_documents_are_refused(source):
    with pytest.raises(FlowError) as info:
        parse_flow(source, "deep.yaml")
    assert info.value.problems[0].startswith("deep.yaml:")


def test_flow_documents_have_a_size_cap(tmp_path):
    big = "name: big\nsteps:\n  - {id: s, type: send, messages: [hi]}\n" + "# padding\n" * 60_000
    with pytest.raises(FlowError) as info:
        parse_flow(big, "big.yaml")
    assert "512 KiB" in info.value.problems[0]
    (tmp_path / "big.yaml").write_text(big)
    with pytest.raises(FlowError) as info:
        load_files([str(tmp_path)])
    assert "512 KiB" in info.value.problems[0] and "big.yaml" in info.value.problems[0]


def test_flow_text_a_database_cannot_hold_is_refused():
    with pytest.raises(FlowError) as info:
        parse_flow('{"name": "n", "steps": [{"id": "s", "type": "send", "messages": ["a\\u0000b"]}]}', "n.json")
    assert "NUL" in info.value.problems[0]


@pytest.mark.timeout(30)
def test_flow_uploads_refuse_bombs_through_the_api(make_app, graph):
    app = make_app(OPERATOR_API_TOKENS="edge-token-1234")
    client = app.test_client()
    auth = {"Authorization": "Bearer edge-token-1234"}
    response = client.post("/api/flows", data=YAML_BOMB.encode(), headers=auth)
    assert response.status_code == 422
    assert "anchors and aliases" in response.json["error"]["details"][0]
    response = client.post("/api/flows", data=("[" * 100_000).encode(), headers=auth)
    assert response.status_code == 422


REGEX_FLOW = """
name: rx
triggers: {keywords: [go]}
steps:
  - {id: q, type: question, text: "Code?", expect: text, save_as: code}
  - id: r
    type: route
    cases:
      - {when: {var: code, regex: "(a+)+$"}, next: hit}
      - {when: {var: code, regex: "(x|xx)+y"}, next: hit}
    default: miss
  - {id: hit, type: end, text: matched}
  - {id: miss, type: end, text: no match}
"""


@pytest.mark.timeout(30)
def test_regex_conditions_match_in_linear_time():
    library = e.Library([parse_flow(REGEX_FLOW, "rx.yaml").doc])
    session = e.handle(library, e.Session(), e.Inbound(text="go"), {"fields": {}}).session
    for answer, outcome in (("a" * 4000 + "!", "no match"), ("x" * 4000 + "!", "no match"), ("aaaa", "matched"),
                            ("xxy", "matched"), ("AAA", "matched")):
        turn = e.handle(library, session, e.Inbound(text=answer), {"fields": {}})
        assert turn.messages[-1]["text"]["body"] == outcome, answer


@pytest.mark.parametrize("pattern, line", [("(a)\\\\1", 9), ("(?=a)b", 9), ("a{1001}", 9)])
def test_a_regex_re2_cannot_compile_is_refused_at_load_time(pattern, line):
    source = REGEX_FLOW.replace('"(a+)+$"', f'"{pattern}"')
    with pytest.raises(FlowError) as info:
        parse_flow(source, "rx.yaml")
    (problem,) = info.value.problems
    assert problem.startswith(f"rx.yaml:{line}: step 'r' field 'cases[0].when.regex': bad regex"), problem
    assert "RE2" in problem


# --- monitoring ----------------------------------------------------------------

DASH_TOKEN = "dash-operator-token-1"


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def failed_job(app, text: str):
    """A real RQ job that fails with ``text`` as its exception message."""
    with app.app_context():
        job = get_queue("default").enqueue(fail_with, text, failure_ttl=600)
    run_worker(app, queues=("default",))
    job.refresh()
    assert job.is_failed
    return job


def fail_with(text: str):
    raise ValueError(text)


@pytest.fixture
def dash_app(make_app, graph):
    return make_app(OPERATOR_API_TOKENS=DASH_TOKEN)


def test_dashboard_state_changes_need_post_from_its_own_pages(dash_app):
    client, auth = dash_app.test_client(), basic("ops", DASH_TOKEN)
    ajax = {**auth, "X-Requested-With": "XMLHttpRequest"}
    job = failed_job(dash_app, "boom")
    assert client.get("/rq/requeue/default", headers=auth).status_code == 405
    assert client.get(f"/rq/job/{job.id}/requeue", headers=auth).status_code == 405
    assert client.post("/rq/requeue/default", headers=auth).status_code == 403  # neither Origin nor XHR
    assert client.post("/rq/requeue/default", headers={**auth, "Origin": "https://evil.example"}).status_code == 403
    assert client.post("/rq/requeue/default", headers={**ajax, "Origin": "http://localhost"}).status_code == 200
    job.refresh()
    assert job.get_status() == "queued"


def test_dashboard_deletes_only_when_allowed(dash_app, make_app):
    client, ajax = dash_app.test_client(), {**basic("ops", DASH_TOKEN), "X-Requested-With": "XMLHttpRequest"}
    job = failed_job(dash_app, "boom")
    assert client.post(f"/rq/job/{job.id}/delete", headers=ajax).status_code == 403
    assert client.post("/rq/queue/default/failed/empty", headers=ajax).status_code == 403
    job.refresh()  # still there
    page = client.get(f"/rq/0/view/job/{job.id}", headers=ajax).get_data(as_text=True)
    assert 'id="delete-job-btn"' not in page
    allowed = make_app(OPERATOR_API_TOKENS=DASH_TOKEN, RQ_DASHBOARD_ALLOW_DELETE="1").test_client()
    response = allowed.post(f"/rq/job/{job.id}/delete", headers=ajax)
    assert response.status_code == 200 and response.json["status"] == "OK"
    with pytest.raises(NoSuchJobError):
        Job.fetch(job.id, connection=dash_app.extensions["redis"])


def test_dashboard_pages_are_never_framed_and_escape_job_data(dash_app):
    client, auth = dash_app.test_client(), basic("ops", DASH_TOKEN)
    job = failed_job(dash_app, "boom")
    for path in ("/rq/", "/rq/0/view/workers", f"/rq/0/view/job/{job.id}", f"/rq/0/data/job/{job.id}.json"):
        response = client.get(path, headers=auth)
        assert response.status_code == 200 and response.headers["X-Frame-Options"] == "DENY", path
    page = client.get(f"/rq/0/view/job/{job.id}", headers=auth).get_data(as_text=True)
    assert "<%=" not in page and '<pre class="exc_info col-12"><%- d.exc_info %></pre>' in page


XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def live_server(dash_app):
    port = free_port()
    server = make_server("127.0.0.1", port, dash_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(10)


@pytest.fixture
def browser():
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are needed (scripts/test.sh installs them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


@pytest.mark.timeout(120)
def test_job_page_shows_exception_text_as_text_in_a_real_browser(dash_app, live_server, browser):
    job = failed_job(dash_app, XSS)
    assert XSS in job.latest_result().exc_string
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": basic("ops", DASH_TOKEN)})
    browser.get(f"{live_server}/rq/")  # record alert() calls before the job page's scripts run
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {
        "source": "window.__alerts = []; window.alert = (m) => window.__alerts.push(String(m));"})
    browser.get(f"{live_server}/rq/0/view/job/{job.id}")
    shown = WebDriverWait(browser, 20).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#job-data pre.exc_info") or None)[0]
    assert XSS in shown.text  # the markup is shown as text
    assert browser.find_elements(By.CSS_SELECTOR, "#job-data img") == []
    time.sleep(0.5)  # an injected image would have failed to load and run its handler by now
    assert browser.execute_script("return window.__alerts") == []
    assert "ValueError" in shown.text


def test_metrics_need_a_token_unless_public(make_app, graph):
    app = make_app(OPERATOR_API_TOKENS="metrics-operator-1", METRICS_TOKEN="scrape-token-123")
    client = app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer sc\xe9"}).status_code == 401
    for token in ("scrape-token-123", "metrics-operator-1"):
        response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200 and b"crm_webhook_requests_total" in response.data
    public = make_app(METRICS_PUBLIC="1").test_client()
    assert public.get("/metrics").status_code == 200


def test_sql_parameters_never_reach_a_log_line(edge_app, capsys):
    secret_phone, secret_text, now = "+15557654321", "my secret answer", datetime.datetime(2026, 1, 1)
    with edge_app.app_context():
        db.session.execute(text("INSERT INTO contacts (wa_id, custom_fields, opted_out, blocked, first_seen_at, "
                                "last_seen_at) VALUES (:wa, '{}', false, false, :now, :now)"),
                           {"wa": secret_phone, "now": now})
        db.session.commit()
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        log = logging.getLogger("tests.edges.sql")
        log.addHandler(handler)
        try:
            db.session.execute(text("INSERT INTO contacts (wa_id, profile_name, custom_fields, opted_out, blocked, "
                                    "first_seen_at, last_seen_at) VALUES (:wa, :name, '{}', false, false, :now, :now)"),
                               {"wa": secret_phone, "name": secret_text, "now": now})
        except Exception:  # noqa: BLE001 - the duplicate phone number fails
            db.session.rollback()
            log.exception("statement failed")
        finally:
            log.removeHandler(handler)
    lines = [x for x in capsys.readouterr().err.splitlines() if "statement failed" in x]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert "IntegrityError" in entry["exception"] and "parameters hidden" in entry["exception"]
        assert secret_phone not in line and secret_text not in line


def test_the_webhook_answers_5xx_only_when_storage_is_down(edge_app, make_app, graph):
    """Every odd payload above answered 200 or 4xx; with Redis away a payload answers 503."""
    body = raw_text_message("7020", '"x\\ud800\\u0000"')
    assert post_webhook(edge_app.test_client(), None, raw=body).status_code == 200
    no_redis = make_app(REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens there
    body = raw_text_message("7021", '"hello"')
    assert post_webhook(no_redis.test_client(), None, raw=body).status_code == 503
