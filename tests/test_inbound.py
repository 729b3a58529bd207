"""Webhook parsing, table-driven: every message type, every status, and odd shapes that never raise."""

from __future__ import annotations

import copy
from datetime import datetime

import pytest

from integrations.whatsapp.inbound import describe, identity_change, parse_webhook
from tests.helpers import PNID, envelope, message

WA = "27820000001"
TS = "1700000000"
AT = datetime(2023, 11, 14, 22, 13, 20)  # TS as naive UTC


def inter(sub: str, **body) -> dict:
    return {"interactive": {"type": sub, sub: body}}


# (type on the wire, its fields) -> (refined type, text, reply id)
TYPES = [
    pytest.param("text", {"text": {"body": "hello"}}, ("text", "hello", None), id="a text is its body"),
    pytest.param("button", {"button": {"text": "Yes", "payload": "YES"}}, ("button", "Yes", "YES"),
                 id="a template quick reply gives its text and payload"),
    pytest.param("interactive", inter("button_reply", id="a", title="Alpha"), ("button_reply", "Alpha", "a"),
                 id="a reply button gives its title and id"),
    pytest.param("interactive", inter("list_reply", id="r1", title="Row", description="d"),
                 ("list_reply", "Row", "r1"), id="a list reply gives its title and id"),
    pytest.param("interactive", inter("nfm_reply", name="flow", body="Sent", response_json='{"a": 1}'),
                 ("nfm_reply", "Sent", "flow"), id="a flow reply gives its body and flow name"),
    pytest.param("interactive", inter("nfm_reply", name="flow", response_json='{"a": 1}'),
                 ("nfm_reply", '{"a": 1}', "flow"), id="a flow reply without body gives its response json"),
    pytest.param("interactive", inter("call_permission_reply", response="accept"), ("unknown", None, None),
                 id="an interactive reply of a new kind is unknown"),
    pytest.param("image", {"image": {"id": "m1", "caption": "Look"}}, ("image", "Look", None),
                 id="an image is its caption"),
    pytest.param("image", {"image": {"id": "m1"}}, ("image", None, None), id="an image without caption has no text"),
    pytest.param("audio", {"audio": {"id": "m2"}}, ("audio", None, None), id="an audio file is audio"),
    pytest.param("audio", {"audio": {"id": "m2", "voice": True}}, ("voice", None, None),
                 id="a recorded voice note is voice"),
    pytest.param("video", {"video": {"id": "m3", "caption": "Clip"}}, ("video", "Clip", None),
                 id="a video is its caption"),
    pytest.param("document", {"document": {"id": "m4", "caption": "Bill", "filename": "b.pdf"}},
                 ("document", "Bill", None), id="a document is its caption"),
    pytest.param("sticker", {"sticker": {"id": "m5", "animated": False}}, ("sticker", None, None),
                 id="a sticker has no text"),
    pytest.param("location", {"location": {"latitude": 38.7, "longitude": -9.1, "name": "Home", "address": "Rua"}},
                 ("location", "Home", None), id="a named location is its name"),
    pytest.param("location", {"location": {"latitude": 38.7, "longitude": -9.1, "address": "Rua 1"}},
                 ("location", "Rua 1", None), id="an unnamed location is its address"),
    pytest.param("location", {"location": {"latitude": 38.7, "longitude": -9.1}}, ("location", "38.7,-9.1", None),
                 id="a bare location is its coordinates"),
    pytest.param("contacts", {"contacts": [{"name": {"formatted_name": "Ana"}}, {"name": {"formatted_name": "Rui"}}]},
                 ("contacts", "Ana, Rui", None), id="shared contacts are their names"),
    pytest.param("contacts", {"contacts": [{"phones": [{"phone": "+1"}]}]}, ("contacts", None, None),
                 id="shared contacts without names have no text"),
    pytest.param("reaction", {"reaction": {"message_id": "wamid.x", "emoji": "👍"}}, ("reaction", "👍", None),
                 id="a reaction is its emoji"),
    pytest.param("reaction", {"reaction": {"message_id": "wamid.x"}}, ("reaction", None, None),
                 id="a removed reaction has no emoji"),
    pytest.param("order", {"order": {"catalog_id": "c", "product_items": [{"product_retailer_id": "p"}] * 2}},
                 ("order", "order of 2 item(s)", None), id="an order counts its items"),
    pytest.param("system", {"system": {"body": "Ana changed her number", "type": "user_changed_number"}},
                 ("system", "Ana changed her number", None), id="a system message is its body"),
    pytest.param("unsupported", {"errors": [{"code": 131051, "title": "Message type unknown"}]},
                 ("unsupported", None, None), id="an unsupported message is unsupported"),
    pytest.param("hologram", {"hologram": {"x": 1}}, ("unknown", None, None), id="a type nobody knows is unknown"),
    pytest.param(None, {}, ("unknown", None, None), id="a message without a type is unknown"),
]


@pytest.mark.parametrize("kind, fields, expected", TYPES)
def test_describe(kind, fields, expected):
    assert describe({"from": WA, "id": "wamid.1", "type": kind, **fields}) == expected


@pytest.mark.parametrize("kind, fields, expected", TYPES)
def test_every_type_is_kept_and_only_unknown_ones_warn(kind, fields, expected):
    parsed = parse_webhook(envelope([message(WA, kind=kind, **copy.deepcopy(fields))]))
    (msg,) = parsed.messages
    assert (msg.type, msg.text, msg.reply_id) == expected
    assert msg.payload["type"] == kind and msg.phone_number_id == PNID and msg.wa_id == WA
    assert bool(parsed.warnings) == (expected[0] == "unknown")
    if parsed.warnings:
        assert "messages[0]" in parsed.warnings[0] and "unknown type" in parsed.warnings[0]


@pytest.mark.parametrize("fields", [
    pytest.param({"text": "hello"}, id="a text whose text is a string"),
    pytest.param({"type": "interactive", "interactive": "x"}, id="an interactive that is a string"),
    pytest.param({"type": "interactive", "interactive": {"type": "list_reply", "list_reply": ["r1"]}},
                 id="a list reply that is a list"),
    pytest.param({"type": "contacts", "contacts": "Ana"}, id="contacts that are a string"),
    pytest.param({"type": "contacts", "contacts": ["Ana", None, {"name": "Ana"}]},
                 id="contact cards that are not objects"),
    pytest.param({"type": "order", "order": {"product_items": "three"}}, id="order items that are a string"),
    pytest.param({"type": "image", "image": None}, id="an image without its object"),
    pytest.param({"type": "location", "location": []}, id="a location that is a list"),
    pytest.param({"type": "text", "text": {"body": {"nested": True}}}, id="a text body that is an object"),
])
def test_odd_message_bodies_never_raise(fields):
    parsed = parse_webhook(envelope([message(WA, **{"type": "text", **fields})]))
    (msg,) = parsed.messages
    assert msg.text is None or isinstance(msg.text, str)
    assert msg.reply_id is None


def test_a_message_keeps_sender_context_referral_and_time():
    msg = message(WA, body="hi", wamid="wamid.in.1", timestamp=TS, context={"from": PNID, "id": "wamid.out.9"},
                  referral={"source_type": "ad", "source_id": "42"}, from_user_id="US.123")
    (got,) = parse_webhook(envelope([msg], name="Ana")).messages
    assert (got.wa_id, got.wa_message_id, got.profile_name, got.user_id) == (WA, "wamid.in.1", "Ana", "US.123")
    assert (got.timestamp, got.context_id) == (AT, "wamid.out.9")
    assert got.referral == {"source_type": "ad", "source_id": "42"}


@pytest.mark.parametrize("stamp", [
    pytest.param("garbage", id="a word"), pytest.param("", id="an empty string"),
    pytest.param("1.5e9", id="a float string"),
    pytest.param(None, id="null"), pytest.param([1], id="a list"), pytest.param({"t": 1}, id="an object"),
    pytest.param(10**30, id="a number past year 9999"), pytest.param(-(10**30), id="a number before year 1"),
    pytest.param(float("inf"), id="infinity"), pytest.param(float("nan"), id="not a number"),
])
def test_garbage_timestamps_become_none(stamp):
    parsed = parse_webhook(envelope([message(WA, timestamp=stamp)], statuses=[
        {"id": "wamid.out.1", "status": "sent", "timestamp": stamp, "recipient_id": WA}]))
    assert [m.timestamp for m in parsed.messages] == [None] and [s.timestamp for s in parsed.statuses] == [None]


@pytest.mark.parametrize("stamp", [pytest.param(TS, id="a string"), pytest.param(int(TS), id="a number")])
def test_epoch_timestamps_become_naive_utc(stamp):
    assert parse_webhook(envelope([message(WA, timestamp=stamp)])).messages[0].timestamp == AT


ERROR = {"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
         "error_data": {"details": "The recipient is not on WhatsApp"}}


@pytest.mark.parametrize("status, expected", [
    pytest.param({"status": "sent", "conversation": {"id": "c"}, "pricing": {"billable": True}},
                 {"status": "sent", "errors": []}, id="sent ignores conversation and pricing"),
    pytest.param({"status": "delivered"}, {"status": "delivered"}, id="delivered"),
    pytest.param({"status": "read"}, {"status": "read"}, id="read"),
    pytest.param({"status": "deleted"}, {"status": "deleted"}, id="deleted"),
    pytest.param({"status": "sent", "biz_opaque_callback_data": "cb-77"}, {"callback_id": "cb-77"},
                 id="the callback data we sent comes back as callback id"),
    pytest.param({"status": "sent"}, {"callback_id": None}, id="no callback data means no callback id"),
])
def test_statuses(status, expected):
    body = {"id": "wamid.out.1", "recipient_id": WA, "timestamp": TS, **status}
    parsed = parse_webhook(envelope(statuses=[body]))
    (got,) = parsed.statuses
    assert parsed.warnings == [] and parsed.messages == []
    assert (got.phone_number_id, got.wa_message_id, got.recipient_id, got.timestamp) == (PNID, "wamid.out.1", WA, AT)
    assert {k: getattr(got, k) for k in expected} == expected


def test_a_failed_status_carries_its_errors():
    (got,) = parse_webhook(envelope(statuses=[{"id": "wamid.out.1", "status": "failed", "errors": [ERROR]}])).statuses
    assert got.status == "failed" and len(got.errors) == 1
    assert (got.errors[0]["code"], got.errors[0]["title"]) == (131026, "Message undeliverable")
    assert got.errors[0]["error_data"]["details"] == "The recipient is not on WhatsApp"


def value(**fields) -> dict:
    return {"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"phone_number_id": PNID}, **fields}}]}]}


GOOD = message(WA)


@pytest.mark.parametrize("body, kept, warns", [
    pytest.param(None, 0, "not a JSON object", id="null is not a payload"),
    pytest.param([envelope([GOOD])], 0, "not a JSON object", id="a list around the envelope is not a payload"),
    pytest.param("text", 0, "not a JSON object", id="a string is not a payload"),
    pytest.param({"object": "page", "entry": []}, 0, "unknown object 'page'", id="another product's object"),
    pytest.param({"object": "whatsapp_business_account", "entry": "x"}, 0, "entry", id="entry is a string"),
    pytest.param({"object": "whatsapp_business_account", "entry": ["x", 3]}, 0, "entry[0]",
                 id="entries that are not objects"),
    pytest.param({"object": "whatsapp_business_account", "entry": [{"changes": {"field": "messages"}}]}, 0,
                 "changes", id="changes is an object instead of a list"),
    pytest.param({"object": "whatsapp_business_account", "entry": [{"changes": ["x"]}]}, 0, "unhandled field",
                 id="a change that is a string"),
    pytest.param({"object": "whatsapp_business_account", "entry": [{"changes": [
        {"field": "some_future_field", "value": {}}]}]}, 0, "unhandled field 'some_future_field'",
                 id="a change field we do not handle"),
    pytest.param(value(metadata=None, messages=[GOOD]), 0, "phone_number_id", id="missing metadata"),
    pytest.param(value(metadata={"phone_number_id": 100}, messages=[GOOD]), 0, "phone_number_id",
                 id="a phone number id that is a number"),
    pytest.param(value(messages="hello"), 0, "messages", id="messages is a string"),
    pytest.param(value(messages={"0": GOOD}), 0, "messages", id="messages is an object"),
    pytest.param(value(statuses="read"), 0, "statuses", id="statuses is a string"),
    pytest.param(value(messages=["hello", GOOD]), 1, "messages[0]", id="a message that is a string"),
    pytest.param(value(messages=[{"id": "wamid.1", "type": "text"}, GOOD]), 1, "messages[0]",
                 id="a message without a sender"),
    pytest.param(value(messages=[{"from": WA, "type": "text"}, GOOD]), 1, "messages[0]", id="a message without an id"),
    pytest.param(value(messages=[{"from": 27820000001, "id": "wamid.1"}]), 0, "messages[0]",
                 id="a sender that is a number"),
    pytest.param(value(statuses=[{"id": "wamid.1", "status": "exploded"}]), 0, "unknown status 'exploded'",
                 id="a status we do not know"),
    pytest.param(value(statuses=[{"status": "read"}, "read"]), 0, "statuses[0]", id="a status without an id"),
    pytest.param(value(messages=[GOOD], errors=[{"code": 131000, "title": "Something went wrong"}]), 1, "131000",
                 id="an error Meta reports in the change"),
    pytest.param(value(messages=[GOOD], contacts="Ana"), 1, None,
                 id="contacts that are a string still keep the message"),
    pytest.param(value(messages=[GOOD], contacts=[{"wa_id": [WA], "profile": {"name": "Ana"}}, "x"]), 1, None,
                 id="a contact whose wa id is a list still keeps the message"),
    pytest.param({**value(messages=[{**GOOD, "flavour": {"x": 1}}], novelty=1), "extra": True}, 1, None,
                 id="unknown fields at every level are ignored"),
])
def test_odd_shapes_warn_and_never_raise(body, kept, warns):
    parsed = parse_webhook(body)
    assert len(parsed.messages) == kept and parsed.statuses == []
    if warns is None:
        assert parsed.warnings == []
    else:
        assert any(warns in w for w in parsed.warnings), parsed.warnings


@pytest.mark.parametrize("system, expected", [
    ({"type": "user_changed_number", "wa_id": "4915100000011", "user_id": "DE.2", "body": "changed"},
     ("user_changed_number", "4915100000011", "DE.2")),
    ({"type": "customer_changed_number", "new_wa_id": "4915100000012", "body": "changed"},
     ("customer_changed_number", "4915100000012", None)),
    ({"type": "user_changed_user_id", "user_id": "US.2", "previous_user_id": "US.1"},
     ("user_changed_user_id", None, "US.2")),
    ({"type": "user_changed_user_id", "wa_id": "4915100000013"}, None),  # a number only counts with a number change
    ({"type": "user_changed_number", "wa_id": "x" * 40}, None),  # not an id that fits its column
    ({"type": "something_new", "wa_id": "4915100000014"}, None),
], ids=["number", "older api", "user id", "number on a user id change", "too long", "unknown"])
def test_a_system_message_says_what_changed(system, expected):
    change = identity_change({"type": "system", "system": system})
    assert (None if change is None else (change.kind, change.new_wa_id, change.new_user_id)) == expected
