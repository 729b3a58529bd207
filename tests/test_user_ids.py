"""Senders known by Meta's business-scoped user id (BSUID), with or without a phone number
(docs/whatsapp-user-ids.md)."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select

from crm.base.extensions import db
from crm.base.models import Contact, Message
from integrations.whatsapp import messages as wa
from integrations.whatsapp.inbound import parse_webhook
from tests.helpers import ECHO, PNID, import_examples, post_webhook, run_worker

BSUID = "US.13491208655302741918"


@pytest.fixture
def uid_app(app):
    import_examples(app, ECHO)
    return app


def user_message(body: str, phone: str | None = None, user_id: str | None = BSUID, in_message: bool = True,
                 name: str = "Bo", username: str | None = "bo.w") -> dict:
    """One webhook in the shapes Meta documents: the user id on contacts[] (and, with
    ``in_message``, as from_user_id on the message); the phone number only when given."""
    msg = {"id": f"wamid.in.{uuid.uuid4().hex}", "timestamp": str(int(time.time())), "type": "text",
           "text": {"body": body}}
    contact = {"profile": {"name": name, **({"username": username} if username else {})}}
    if user_id:
        contact["user_id"] = user_id
        if in_message:
            msg["from_user_id"] = user_id
    if phone:
        contact["wa_id"] = phone
        msg["from"] = phone
    value = {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000",
                                                           "phone_number_id": PNID},
             "contacts": [contact], "messages": [msg]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}]}


def deliver(app, payload):
    assert post_webhook(app.test_client(), payload).status_code == 200
    run_worker(app)


def sent(graph) -> list[tuple[str | None, str | None, str]]:
    """(to, recipient, text) of every accepted text send."""
    return [(b.get("to"), b.get("recipient"), b["text"]["body"]) for b in graph.sent if b.get("type") == "text"]


def contacts(app) -> list[tuple]:
    with app.app_context():
        return [tuple(r) for r in db.session.execute(
            select(Contact.id, Contact.wa_id, Contact.user_id, Contact.profile_name).order_by(Contact.id))]


def test_a_message_without_a_phone_number_is_stored_and_answered_by_user_id(uid_app, graph):
    deliver(uid_app, user_message("hello there"))
    ((contact_id, wa_id, user_id, name),) = contacts(uid_app)
    assert (wa_id, user_id, name) == (None, BSUID, "Bo")
    assert sent(graph) == [(None, BSUID, "echo hello there")]
    with uid_app.app_context():
        (row,) = db.session.execute(select(Message).where(Message.direction == "in")).scalars()
        assert row.contact_id == contact_id and row.text == "hello there" and row.processed_at is not None
    receipts = [r["body"] for r in graph.requests if r["body"].get("status") == "read"]
    assert len(receipts) == 1  # read receipts name the message, not the user


def test_a_later_message_with_a_phone_number_is_the_same_contact(uid_app, graph):
    deliver(uid_app, user_message("first"))
    deliver(uid_app, user_message("second", phone="4915100000001"))
    ((_, wa_id, user_id, _),) = contacts(uid_app)
    assert (wa_id, user_id) == ("4915100000001", BSUID)
    deliver(uid_app, user_message("third", in_message=False))  # user id on contacts[] only
    assert len(contacts(uid_app)) == 1
    # Once the phone number is known, Meta prefers sends to it.
    assert sent(graph) == [(None, BSUID, "echo first"), ("4915100000001", None, "echo second"),
                           ("4915100000001", None, "echo third")]


def test_a_known_phone_contact_gets_the_user_id(uid_app, graph):
    deliver(uid_app, user_message("by phone", phone="4915100000002", user_id=None))
    deliver(uid_app, user_message("now with a user id", phone="4915100000002"))
    deliver(uid_app, user_message("user id only", phone=None))
    ((_, wa_id, user_id, _),) = contacts(uid_app)
    assert (wa_id, user_id) == ("4915100000002", BSUID)
    assert [t for _, _, t in sent(graph)] == ["echo by phone", "echo now with a user id", "echo user id only"]


def test_a_phone_number_held_by_another_contact_is_not_taken(uid_app, graph):
    """Two contacts (one known by phone, one by user id) are never merged automatically and
    a message naming both never fails: it belongs to the user id's contact."""
    deliver(uid_app, user_message("phone contact", phone="4915100000003", user_id=None))
    deliver(uid_app, user_message("user contact", phone=None))
    deliver(uid_app, user_message("both", phone="4915100000003"))
    assert [c[1:3] for c in contacts(uid_app)] == [("4915100000003", None), (None, BSUID)]
    with uid_app.app_context():
        last = db.session.execute(select(Message).where(Message.direction == "in").order_by(Message.id.desc())
                                  ).scalars().first()
        user_contact = db.session.execute(select(Contact.id).where(Contact.user_id == BSUID)).scalar_one()
        assert last.contact_id == user_contact


def test_a_changed_user_id_for_a_known_phone_number(uid_app, graph):
    deliver(uid_app, user_message("old id", phone="4915100000004", user_id="DE.111"))
    deliver(uid_app, user_message("new id", phone="4915100000004", user_id="DE.222"))
    assert [c[1:3] for c in contacts(uid_app)] == [("4915100000004", "DE.222")]


def system_message(old_phone: str | None, system: dict, old_user_id: str | None = None) -> dict:
    """WhatsApp's notice that a user changed their number or user id: type system, no contacts[]."""
    msg = {"id": f"wamid.in.{uuid.uuid4().hex}", "timestamp": str(int(time.time())), "type": "system",
           "system": system}
    if old_phone:
        msg["from"] = old_phone
    if old_user_id:
        msg["from_user_id"] = old_user_id
    value = {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000",
                                                           "phone_number_id": PNID}, "messages": [msg]}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": value}]}]}


def test_a_user_who_changed_number_stays_the_same_contact_and_gets_no_reply_to_the_notice(uid_app, graph):
    deliver(uid_app, user_message("before", phone="4915100000010", user_id="DE.old"))
    requests_before = len(graph.requests)
    deliver(uid_app, system_message("4915100000010", {
        "body": "User Bo changed from 4915100000010 to 4915100000011", "type": "user_changed_number",
        "wa_id": "4915100000011", "user_id": "DE.new", "previous_user_id": "DE.old"}))
    assert len(graph.requests) == requests_before  # no reply and no read receipt for WhatsApp's notice
    assert [c[1:3] for c in contacts(uid_app)] == [("4915100000011", "DE.new")]
    deliver(uid_app, user_message("after", phone="4915100000011", user_id="DE.new"))
    assert len(contacts(uid_app)) == 1 and sent(graph)[-1][0] == "4915100000011"
    with uid_app.app_context():  # the notice is in the conversation, answered by nothing
        notice = db.session.execute(select(Message).where(Message.type == "system")).scalar_one()
        assert notice.processed_at is not None and "changed from" in notice.text


def test_a_message_followed_by_a_notice_still_gets_its_read_receipt(uid_app, graph):
    """The notice is the newest waiting message, but read receipts go to the user's newest."""
    first = user_message("before", phone="4915100000012", user_id="DE.old2")
    assert post_webhook(uid_app.test_client(), first).status_code == 200
    assert post_webhook(uid_app.test_client(), system_message("4915100000012", {
        "body": "User Bo changed from 4915100000012 to 4915100000013", "type": "user_changed_number",
        "wa_id": "4915100000013", "user_id": "DE.new2", "previous_user_id": "DE.old2"})).status_code == 200
    run_worker(uid_app)  # both were waiting when the worker came
    receipts = [r["body"]["message_id"] for r in graph.requests if r["body"].get("status") == "read"]
    assert receipts == [first["entry"][0]["changes"][0]["value"]["messages"][0]["id"]]
    assert sent(graph) == [("4915100000013", None, "echo before")]  # one answer, to the number the user has now


def test_a_new_number_another_contact_has_is_not_taken(uid_app, graph, caplog):
    deliver(uid_app, user_message("one", phone="4915100000012", user_id=None))
    deliver(uid_app, user_message("two", phone="4915100000013", user_id=None))
    deliver(uid_app, system_message("4915100000012", {"type": "user_changed_number", "wa_id": "4915100000013",
                                                      "body": "changed"}))
    assert [c[1] for c in contacts(uid_app)] == ["4915100000012", "4915100000013"]
    assert any(getattr(r, "event", None) == "contact.identity_taken" for r in caplog.records)


def test_a_changed_user_id_alone_moves_the_contact(uid_app, graph):
    old, new = "US.13491208655302740001", "US.13491208655302740002"
    deliver(uid_app, user_message("ping one", phone=None, user_id=old))
    deliver(uid_app, system_message(None, {"type": "user_changed_user_id", "user_id": new,
                                           "previous_user_id": old, "body": "changed"}, old_user_id=old))
    deliver(uid_app, user_message("ping two", phone=None, user_id=new))
    assert [c[1:3] for c in contacts(uid_app)] == [(None, new)]
    assert sent(graph) == [(None, old, "echo ping one"), (None, new, "echo ping two")]


def test_a_notice_delivered_again_finds_the_moved_contact_and_makes_no_other(uid_app, graph, caplog):
    deliver(uid_app, user_message("before", phone="4915100000020", user_id=None))
    notice = system_message("4915100000020", {"type": "user_changed_number", "wa_id": "4915100000021",
                                              "body": "changed"})
    deliver(uid_app, notice)
    deliver(uid_app, notice)  # as when the first answer was a 503
    assert [c[1] for c in contacts(uid_app)] == ["4915100000021"]
    assert not any(getattr(r, "event", None) == "contact.identity_taken" for r in caplog.records)


def test_a_notice_naming_the_user_by_the_new_id_moves_the_contact_known_by_the_old(uid_app, graph):
    old, new = "US.13491208655302740003", "US.13491208655302740004"
    deliver(uid_app, user_message("ping one", phone=None, user_id=old))
    deliver(uid_app, system_message(None, {"type": "user_changed_user_id", "user_id": new,
                                           "previous_user_id": old, "body": "changed"}, old_user_id=new))
    assert [c[1:3] for c in contacts(uid_app)] == [(None, new)]


def test_a_notice_opens_no_service_window(uid_app, graph):
    from datetime import timedelta

    from crm.base.models import utcnow

    deliver(uid_app, user_message("before", phone="4915100000022", user_id=None))
    three_days_ago = utcnow() - timedelta(days=3)
    with uid_app.app_context():
        contact = db.session.execute(select(Contact)).scalar_one()
        contact.last_inbound_at = three_days_ago
        db.session.commit()
    deliver(uid_app, system_message("4915100000022", {"type": "user_changed_number", "wa_id": "4915100000023",
                                                      "body": "changed"}))
    # a user we never met: a contact under the new number, with no window either
    deliver(uid_app, system_message("4915100000030", {"type": "user_changed_number", "wa_id": "4915100000031",
                                                      "body": "changed"}))
    with uid_app.app_context():
        rows = db.session.execute(select(Contact.wa_id, Contact.last_inbound_at).order_by(Contact.id)).all()
    assert [tuple(r) for r in rows] == [("4915100000023", three_days_ago), ("4915100000031", None)]


def test_a_message_with_neither_phone_nor_user_id_is_refused_with_a_warning(uid_app, graph):
    payload = user_message("nobody", user_id=None)
    parsed = parse_webhook(payload)
    assert parsed.messages == [] and "no sender" in parsed.warnings[0]
    deliver(uid_app, payload)
    assert contacts(uid_app) == [] and graph.sent == []


def test_parsing_accepts_every_documented_shape():
    shapes = {
        "from_user_id only": user_message("a", username=None)["entry"][0]["changes"][0]["value"],
        "contacts[].user_id only": user_message("a", in_message=False)["entry"][0]["changes"][0]["value"],
        "phone and user id": user_message("a", phone="4915100000005")["entry"][0]["changes"][0]["value"],
    }
    for what, value in shapes.items():
        parsed = parse_webhook({"object": "whatsapp_business_account",
                                "entry": [{"changes": [{"field": "messages", "value": value}]}]})
        (m,) = parsed.messages
        assert m.user_id == BSUID and m.profile_name == "Bo", what
    status = {"id": "wamid.out.1", "status": "delivered", "timestamp": "1", "recipient_user_id": BSUID}
    value = {"metadata": {"phone_number_id": PNID}, "statuses": [status]}
    (st,) = parse_webhook({"object": "whatsapp_business_account",
                           "entry": [{"changes": [{"field": "messages", "value": value}]}]}).statuses
    assert st.recipient_user_id == BSUID and st.recipient_id is None


def test_the_send_body_addresses_a_phone_number_or_a_user_id():
    assert wa.recipient("4915100000006", BSUID) == {"to": "4915100000006"}
    assert wa.recipient(None, BSUID) == {"recipient": BSUID}
    with pytest.raises(wa.MessageLimitError):
        wa.recipient(None, None)


def test_operators_find_and_message_a_user_id_contact(make_app, graph):
    app = make_app(OPERATOR_API_TOKENS="uid-operator-1")
    import_examples(app, ECHO)
    deliver(app, user_message("hi from a username"))
    client, auth = app.test_client(), {"Authorization": "Bearer uid-operator-1"}
    (item,) = client.get("/api/contacts?q=US.1349", headers=auth).json["items"]
    assert item["wa_id"] is None
    response = client.post(f"/api/contacts/{item['id']}/messages", headers=auth, json={"type": "text", "text": "Hi Bo"})
    assert response.status_code in (200, 201, 202), response.json
    run_worker(app)
    assert sent(graph)[-1] == (None, BSUID, "Hi Bo")


@pytest.mark.parametrize("user_id", ["DE.copy", None], ids=["by user id", "by phone number"])
def test_a_late_copy_of_a_message_changes_nothing_about_its_contact(uid_app, graph, user_id):
    """Meta delivers at least once: a copy of an old message arriving after the user changed
    number (or name) must not move the contact back."""
    old = user_message("hello", phone="4915100000030", user_id=user_id, name="Bo")
    deliver(uid_app, old)
    if user_id:
        deliver(uid_app, system_message("4915100000030", {"type": "user_changed_number", "wa_id": "4915100000031",
                                                          "body": "changed"}, old_user_id=user_id))
        expected = ("4915100000031", user_id, "Bo")
    else:
        deliver(uid_app, user_message("renamed", phone="4915100000030", user_id=None, name="Bo Renamed"))
        expected = ("4915100000030", None, "Bo Renamed")
    assert [c[1:] for c in contacts(uid_app)] == [expected]
    replies = len(sent(graph))
    deliver(uid_app, old)  # the copy
    assert [c[1:] for c in contacts(uid_app)] == [expected]
    assert len(sent(graph)) == replies  # answered once
