"""Webhook intake: signatures, bad input, every message type, exactly once, statuses."""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import func, select

from crm.base import keys
from crm.base.extensions import db
from crm.base.models import Contact, Message
from tests.helpers import PNID, VERIFY, envelope, message, post_webhook, sign


def count(model, *where):
    return db.session.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def test_verify_handshake(app):
    client = app.test_client()
    ok = client.get(f"/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY}&hub.challenge=12345")
    assert ok.status_code == 200 and ok.data == b"12345" and ok.mimetype == "text/plain"
    assert client.get("/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1").status_code == 403
    assert client.get("/webhooks/whatsapp").status_code == 403


@pytest.mark.parametrize("headers", [{}, {"X-Hub-Signature-256": "sha256=00"},
                                     {"X-Hub-Signature-256": sign(b"other body")}])
def test_bad_signature_401_nothing_stored(app, headers, caplog):
    body = json.dumps(envelope([message("111")])).encode()
    response = app.test_client().post("/webhooks/whatsapp", data=body, headers=headers,
                                      content_type="application/json")
    assert response.status_code == 401
    with app.app_context():
        assert count(Message) == 0
    assert any("signature" in r.getMessage() for r in caplog.records)


def test_no_secret_refuses_with_503(make_app, graph, caplog):
    app = make_app(WHATSAPP_APP_SECRET="")
    response = post_webhook(app.test_client(), envelope([message("111")]), secret="x")
    assert response.status_code == 503
    assert any("WHATSAPP_APP_SECRET" in r.getMessage() for r in caplog.records)


def test_deliveries_are_answered_before_flask_and_everything_else_after(app):
    """POST /webhooks/whatsapp: JSON answers with the request id, counted by outcome; the
    handshake, other methods and other paths are Flask's as before."""
    from prometheus_client import REGISTRY

    def counted(outcome: str) -> float:
        return REGISTRY.get_sample_value("crm_webhook_requests_total", {"outcome": outcome}) or 0.0

    client = app.test_client()
    ok_before, bad_before = counted("ok"), counted("bad_signature")
    ok = post_webhook(client, envelope([message("26377001000", body="hi")]))
    assert ok.status_code == 200 and ok.get_json() == {"status": "ok"}
    assert len(ok.headers["X-Request-ID"]) == 32
    refused = client.post("/webhooks/whatsapp", data=b"{}", headers={"X-Request-ID": "abc-1"})
    assert refused.status_code == 401 and refused.get_json() == {"error": "invalid signature"}
    assert refused.headers["X-Request-ID"] == "abc-1" and refused.mimetype == "application/json"
    assert (counted("ok") - ok_before, counted("bad_signature") - bad_before) == (1, 1)
    assert client.put("/webhooks/whatsapp", data=b"{}").status_code == 405
    assert post_webhook(client, None, raw=b"{}").status_code == 200
    assert client.post("/webhooks/whatsapp/", data=b"{}").status_code in (404, 405)
    with app.app_context():
        assert count(Message) == 1


def test_too_large_and_not_json(app):
    from crm.app.webhook import MAX_BODY

    client = app.test_client()
    big = b"x" * (MAX_BODY + 10)
    assert post_webhook(client, None, raw=big).status_code == 413
    assert post_webhook(client, None, raw=b"{not json").status_code == 400


def test_a_delivery_above_the_apps_upload_limit_is_stored(app):
    # Meta's deliveries go up to 3 MB, the app's forms and uploads stop at 1 MiB
    payload = envelope([message("26377009900", body="big batch")])
    payload["entry"][0]["changes"][0]["value"]["padding"] = "x" * (2 * 1024 * 1024)
    assert post_webhook(app.test_client(), payload).status_code == 200
    with app.app_context():
        assert db.session.execute(select(Message.text).where(Message.direction == "in")).scalars().all() == [
            "big batch"]


@pytest.mark.parametrize("payload", [
    {"object": "page", "entry": []},
    {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "account_update", "value": {}}]}]},
    {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {}}]}]},
    {"object": "whatsapp_business_account", "entry": "nope"},
    {"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages",
                                                                     "value": {"metadata": {"phone_number_id": PNID},
                                                                               "messages": [{"id": 5}]}}]}]},
    [1, 2, 3],
])
def test_unknown_shapes_answer_200(app, payload):
    assert post_webhook(app.test_client(), payload).status_code == 200


TYPES = {
    "text": ({"text": {"body": "hello"}}, "text", "hello"),
    "button_reply": ({"interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Yes"}}},
                     "button_reply", "Yes"),
    "list_reply": ({"interactive": {"type": "list_reply", "list_reply": {"id": "r1", "title": "Row"}}},
                   "list_reply", "Row"),
    "nfm_reply": ({"interactive": {"type": "nfm_reply", "nfm_reply": {"name": "flow", "body": "Sent",
                                                                       "response_json": "{}"}}}, "nfm_reply", "Sent"),
    "button": ({"button": {"payload": "P1", "text": "Stop promos"}}, "button", "Stop promos"),
    "image": ({"image": {"id": "M1", "mime_type": "image/jpeg", "caption": "look"}}, "image", "look"),
    "audio": ({"audio": {"id": "M2", "mime_type": "audio/ogg", "voice": True}}, "voice", None),
    "video": ({"video": {"id": "M3", "mime_type": "video/mp4"}}, "video", None),
    "document": ({"document": {"id": "M4", "filename": "a.pdf"}}, "document", None),
    "sticker": ({"sticker": {"id": "M5", "animated": False}}, "sticker", None),
    "location": ({"location": {"latitude": 1, "longitude": 2, "name": "Home"}}, "location", "Home"),
    "contacts": ({"contacts": [{"name": {"formatted_name": "Bo"}, "phones": []}]}, "contacts", "Bo"),
    "reaction": ({"reaction": {"message_id": "wamid.x", "emoji": "👍"}}, "reaction", "👍"),
    "order": ({"order": {"catalog_id": "c", "product_items": [{}, {}]}}, "order", "order of 2 item(s)"),
    "system": ({"system": {"body": "changed number", "type": "user_changed_number"}}, "system", "changed number"),
    "unsupported": ({"errors": [{"code": 131051}]}, "unsupported", None),
    "brand_new_type": ({"brand_new_type": {}}, "unknown", None),
}


@pytest.mark.parametrize("kind", sorted(TYPES))
def test_every_message_type_is_stored(app, kind):
    extra, stored_type, text = TYPES[kind]
    meta_type = "interactive" if kind.endswith("_reply") else kind
    msg = message("27820000001", kind=meta_type, **extra)
    if kind == "text":
        msg["text"] = extra["text"]
    assert post_webhook(app.test_client(), envelope([msg])).status_code == 200
    with app.app_context():
        row = db.session.execute(select(Message)).scalar_one()
        assert (row.type, row.text, row.direction) == (stored_type, text, "in")
        assert row.payload == msg
        assert app.extensions["redis"].llen(keys.READY) == 1


def test_every_entry_change_and_message(app):
    payload = envelope([message("1"), message("2")])
    payload["entry"].append(envelope([message("3")], name="Cy")["entry"][0])
    payload["entry"][0]["changes"].append(envelope([message("4")])["entry"][0]["changes"][0])
    assert post_webhook(app.test_client(), payload).status_code == 200
    with app.app_context():
        assert count(Message) == 4 and count(Contact) == 4


def test_contact_upsert_keeps_profile_and_user_id(app):
    client = app.test_client()
    first = envelope([message("555")], name="Old")
    post_webhook(client, first)
    second = envelope([message("555")], name="New Name")
    second["entry"][0]["changes"][0]["value"]["contacts"][0]["user_id"] = "US.123"
    post_webhook(client, second)
    with app.app_context():
        contact = db.session.execute(select(Contact)).scalar_one()
        assert (contact.profile_name, contact.user_id) == ("New Name", "US.123")
        assert contact.last_inbound_at is not None


@pytest.mark.parametrize("user_id", [None, "US.777"], ids=["by phone", "by user id"])
def test_the_service_window_opens_when_the_user_wrote_and_never_moves_back(app, user_id):
    """A delivery Meta re-sends hours late (our webhook was down) opens the 24-hour window at the
    message's own timestamp; an older message after a newer one leaves the newer time."""
    from datetime import timedelta

    from crm.base.models import utcnow

    client = app.test_client()

    def deliver(ago: timedelta) -> None:  # a message the user sent ``ago`` (negative: a clock ahead of ours)
        payload = envelope([message("888", timestamp=str(int(time.time() - ago.total_seconds())))])
        if user_id:
            payload["entry"][0]["changes"][0]["value"]["contacts"][0]["user_id"] = user_id
        assert post_webhook(client, payload).status_code == 200

    def opened():
        with app.app_context():
            return db.session.execute(select(Contact.last_inbound_at)).scalar_one()

    deliver(timedelta(hours=5))
    assert abs(opened() - (utcnow() - timedelta(hours=5))) < timedelta(seconds=5)
    deliver(timedelta(hours=1))
    assert abs(opened() - (utcnow() - timedelta(hours=1))) < timedelta(seconds=5)
    deliver(timedelta(hours=3))  # older than what is stored: no move back
    assert abs(opened() - (utcnow() - timedelta(hours=1))) < timedelta(seconds=5)
    deliver(timedelta(hours=-1))  # a timestamp ahead of our clock counts as now
    assert abs(opened() - utcnow()) < timedelta(seconds=5)


def test_concurrent_duplicates_give_one_row_and_one_job(app):
    payload = envelope([message("777", wamid="wamid.same")])
    statuses = []

    def deliver():
        statuses.append(post_webhook(app.test_client(), payload).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8
    post_webhook(app.test_client(), payload)  # a late re-delivery too
    with app.app_context():
        assert count(Message) == 1
        assert app.extensions["redis"].llen(keys.READY) == 1


def test_database_down_answers_5xx_then_redelivery_is_processed(app):
    payload = envelope([message("888", wamid="wamid.retry")])
    with app.app_context():
        db.session.execute(db.text("ALTER TABLE messages RENAME TO messages_away"))
        db.session.commit()
    try:
        assert post_webhook(app.test_client(), payload).status_code == 503
    finally:
        with app.app_context():
            db.session.execute(db.text("ALTER TABLE messages_away RENAME TO messages"))
            db.session.commit()
    assert post_webhook(app.test_client(), payload).status_code == 200
    with app.app_context():
        assert count(Message) == 1
        assert app.extensions["redis"].llen(keys.READY) == 1


def _outbound(app, wamid="wamid.out.1", status="sent"):
    with app.app_context():
        contact = Contact(wa_id="999", custom_fields={})
        db.session.add(contact)
        db.session.flush()
        msg = Message(contact_id=contact.id, direction="out", type="text", payload={}, phone_number_id=PNID,
                      wa_message_id=wamid, status=status, callback_id="cb-1", attempts=1)
        db.session.add(msg)
        db.session.commit()
        return msg.id


def status(wamid, value, ts, **extra):
    return {"id": wamid, "status": value, "timestamp": str(ts), "recipient_id": "999", **extra}


def test_statuses_never_go_backwards(app):
    msg_id = _outbound(app)
    client = app.test_client()
    for value, ts in (("read", 1700000030), ("delivered", 1700000020), ("sent", 1700000010)):
        post_webhook(client, envelope(statuses=[status("wamid.out.1", value, ts)]))
    with app.app_context():
        msg = db.session.get(Message, msg_id)
        assert msg.status == "read"
        assert msg.read_at and msg.delivered_at and msg.sent_at


def test_failed_status_keeps_meta_error(app):
    msg_id = _outbound(app)
    error = {"code": 131026, "title": "Message undeliverable", "error_data": {"details": "unknown recipient"}}
    post_webhook(app.test_client(), envelope(statuses=[status("wamid.out.1", "failed", 1700000040,
                                                                errors=[error])]))
    with app.app_context():
        msg = db.session.get(Message, msg_id)
        assert (msg.status, msg.error_code, msg.error_title, msg.error_details) == (
            "failed", 131026, "Message undeliverable", "unknown recipient")


def test_status_links_a_send_whose_answer_was_lost(app):
    msg_id = _outbound(app, wamid=None, status="sending")
    post_webhook(app.test_client(), envelope(statuses=[status("wamid.late", "sent", 1700000050,
                                                                biz_opaque_callback_data="cb-1")]))
    with app.app_context():
        msg = db.session.get(Message, msg_id)
        assert (msg.wa_message_id, msg.status) == ("wamid.late", "sent")
