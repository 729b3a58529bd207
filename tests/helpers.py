"""Test helpers shared by the test files (fixtures live in conftest.py and use these).

Import them from here, never from conftest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from werkzeug import Response

from crm.app.worker import build_worker
from crm.base.extensions import db
from crm.base.templates import MessageTemplate, _set_components
from flows.document import parse_flow
from flows.store import import_flows, load_files
from integrations.whatsapp.templates import count_parameters

ROOT = Path(__file__).resolve().parent.parent
SECRET, VERIFY, TOKEN, PNID = "app-secret-for-tests", "verify-me", "graph-token-for-tests", "100000000000001"


# Catch-all flows for pipeline tests: ECHO repeats the text; COUNTING_ECHO also numbers each
# contact's messages (a contact field), so order and exactly-once show in the replies.
ECHO = """
name: echo
triggers: {catch_all: true}
steps:
  - {id: say, type: send, messages: ["echo {{ message.text }}"]}
"""
COUNTING_ECHO = """
name: echo
triggers: {catch_all: true}
steps:
  - {id: count, type: set, contact_fields: {count: "{{ (contact.fields.count or 0) | int + 1 }}"}}
  - {id: say, type: send, messages: ["echo {{ message.text }} #{{ contact.fields.count }}"]}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGraph:
    """Records Graph API requests; answers are scripted per call (default: 200)."""

    def __init__(self, server):
        self.server = server
        self.requests: list[dict] = []
        self.script: list = []  # items: (status, body) or "timeout"
        self.fail_to: dict[str, tuple[int, dict]] = {}  # recipient -> (status, body): answered so, always
        self.lock = threading.Lock()
        self.counter = 0
        server.expect_request(f"/v23.0/{PNID}/messages", method="POST").respond_with_handler(self.handle)
        server.expect_request("/v23.0/200000000000002/messages", method="POST").respond_with_handler(self.handle)

    def handle(self, request):
        body = json.loads(request.data)
        with self.lock:
            step = self.fail_to.get(body.get("to")) if "status" not in body else None
            step = step or (self.script.pop(0) if self.script else None)
            self.counter += 1
            wamid = f"wamid.out.{self.counter}"
        if step == "timeout":
            time.sleep(1.5)
            step = None
        entry = {"body": body, "path": request.path, "auth": request.headers.get("Authorization"),
                 "status": (step or (200,))[0]}
        with self.lock:
            self.requests.append(entry)
        if step is not None:
            return Response(json.dumps(step[1]), status=step[0], content_type="application/json")
        if "status" in body:
            return Response(json.dumps({"success": True}), content_type="application/json")
        return Response(json.dumps({"messaging_product": "whatsapp", "contacts": [{"wa_id": body.get("to")}],
                                    "messages": [{"id": wamid}]}), content_type="application/json")

    @property
    def sent(self) -> list[dict]:
        """Accepted (200) message sends, read receipts excluded."""
        return [r["body"] for r in self.requests if "status" not in r["body"] and r["status"] == 200]

    def texts(self, to: str | None = None) -> list[str]:
        out = []
        for body in self.sent:
            if to and body.get("to") != to:
                continue
            if body["type"] == "text":
                out.append(body["text"]["body"])
            elif body["type"] == "interactive":
                out.append(body["interactive"]["body"]["text"])
            else:
                out.append(f"[{body['type']}]")
        return out


def make_env(database_url: str, redis_url: str, graph_url: str, **extra) -> dict:
    env = {
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "WHATSAPP_API_URL": graph_url,
        "WHATSAPP_APP_SECRET": SECRET, "WHATSAPP_VERIFY_TOKEN": VERIFY, "WHATSAPP_ACCESS_TOKEN": TOKEN,
        "WHATSAPP_PHONE_NUMBER_ID": PNID, "WHATSAPP_READ_TIMEOUT": "1", "LOG_LEVEL": "WARNING",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


_seq = [0]


def message(wa_id: str, kind: str = "text", body: str = "hi", wamid: str | None = None, **fields) -> dict:
    _seq[0] += 1
    msg = {"from": wa_id, "id": wamid or f"wamid.in.{uuid.uuid4().hex}", "timestamp": str(int(time.time())),
           "type": kind}
    if kind == "text":
        msg["text"] = {"body": body}
    msg.update(fields)
    return msg


def envelope(messages: list[dict] | None = None, statuses: list[dict] | None = None, pnid: str = PNID,
             name: str = "Ana") -> dict:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550000000", "phone_number_id": pnid}}
    if messages:
        value["contacts"] = [{"profile": {"name": name}, "wa_id": m["from"]} for m in messages]
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}]}


def post_webhook(client, payload, secret: str = SECRET, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(payload).encode()
    return client.post("/webhooks/whatsapp", data=body, content_type="application/json",
                       headers={"X-Hub-Signature-256": sign(body, secret)})


def run_worker(app, queues=("high", "default")):
    """Drain the queues in this process (RQ SimpleWorker, burst), like the real worker."""
    worker = build_worker(app, list(queues))
    worker.work(burst=True, with_scheduler=False)


def spawn_workers(app, n: int, burst: bool = True, queues=("high", "default"), processes: int = 1,
                  **popen) -> list[subprocess.Popen]:
    """``n`` separate ``python -m crm.app.worker`` commands, each running ``processes`` workers (a pool when > 1)."""
    env = {**os.environ, **app.config["TEST_ENV"], "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "crm.app.worker", *queues, "--processes", str(processes)]
    args += ["--burst"] if burst else []
    popen = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, **popen}
    return [subprocess.Popen(args, cwd=ROOT, env=env, **popen) for _ in range(n)]


def terminate(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGTERM (a warm shutdown) and the exit status; still alive after ``timeout``: killed, None."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return None


def import_examples(app, *extra_docs: str):
    """Import flows/examples and ``extra_docs``; an extra catch-all flow replaces the examples' own
    (a library has at most one)."""
    with app.app_context():
        extra = [parse_flow(text, f"<test {i}>") for i, text in enumerate(extra_docs)]
        loaded = load_files([str(ROOT / "flows" / "examples")])
        if any(x.doc.triggers.catch_all for x in extra):
            loaded = [parse_flow(x.source.replace("\n  catch_all: true\n", "\n"), x.path)
                      if x.doc.triggers.catch_all else x for x in loaded]
        import_flows(loaded + extra)


def say(app, wa_id: str, text: str | None = None, reply_id: str | None = None, name: str = "Ana") -> None:
    """A user writes (or picks a list row ``reply_id``); the reply worker answers in this process."""
    if reply_id:
        msg = message(wa_id, kind="interactive",
                      interactive={"type": "list_reply", "list_reply": {"id": reply_id, "title": "x"}})
    else:
        msg = message(wa_id, body=text)
    assert post_webhook(app.test_client(), envelope([msg], name=name)).status_code == 200
    run_worker(app)


def wait_for(predicate, timeout: float = 30.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def store_template(app, name: str, language: str = "en_US", status: str = "APPROVED", body: str = "Hello",
                   **extra):
    """Put a template in the store as a sync would (the tests that do not test the sync itself)."""
    components = [{"type": "BODY", "text": body}, *extra.pop("components", [])]
    with app.app_context():
        row = MessageTemplate(name=name, language=language, status=status, category="UTILITY", **extra)
        _set_components(row, components, count_parameters(components))
        db.session.add(row)
        db.session.commit()
