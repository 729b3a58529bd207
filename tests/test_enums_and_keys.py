"""Stored enums, Redis keys and TTLs, and the engine's events, table-driven."""

from __future__ import annotations

import dataclasses
import inspect
from enum import StrEnum

import pytest

from crm.base import enums, keys
from crm.base.enums import OPEN_STATUSES, PENDING, STATUS_RANK, MessageStatus, SessionStatus
from flows import events as ev

ENUMS = [cls for _, cls in inspect.getmembers(enums, inspect.isclass)
         if issubclass(cls, StrEnum) and cls.__module__ == enums.__name__ and cls.__members__]
MEMBERS = [pytest.param(member, id=f"{cls.__name__}.{member.name} is the string {member.value!r}")
           for cls in ENUMS for member in cls]


def test_every_stored_enum_is_found():
    assert {c.__name__ for c in ENUMS} >= {"Direction", "MessageStatus", "Origin", "SessionStatus", "EndReason"}


@pytest.mark.parametrize("member", MEMBERS)
def test_members_equal_their_strings_and_read_back(member):
    cls = type(member)
    assert member == member.value and str(member) == member.value and f"{member}" == member.value
    assert cls(member.value) is member
    assert hash(member) == hash(member.value)  # a plain string from a row finds the member in a dict


@pytest.mark.parametrize("cls", [pytest.param(c, id=f"{c.__name__} has UNKNOWN and no two members share a value")
                                 for c in ENUMS])
def test_each_enum_has_unknown_and_unique_values(cls):
    assert cls.UNKNOWN == "unknown"
    assert len(cls.__members__) == len({m.value for m in cls.__members__.values()})  # an alias would hide a member


@pytest.mark.parametrize("cls, raw", [
    pytest.param(c, raw, id=f"{c.__name__}({raw!r}) becomes UNKNOWN")
    for c in ENUMS for raw in ("written-by-a-newer-version", "", "QUEUED ", None)
])
def test_an_unknown_value_becomes_unknown(cls, raw):
    assert cls(raw) is cls.UNKNOWN


def test_pending_is_the_outbox_still_to_send():
    assert PENDING == (MessageStatus.QUEUED, MessageStatus.SENDING)
    assert "queued" in PENDING and "sent" not in PENDING


def test_open_sessions_are_active_or_handover():
    assert OPEN_STATUSES == (SessionStatus.ACTIVE, SessionStatus.HANDOVER)
    assert "ended" not in OPEN_STATUSES and "expired" not in OPEN_STATUSES


def test_status_rank_orders_the_outbound_lifecycle():
    order = ["queued", "sending", "sent", "delivered", "read"]
    assert [STATUS_RANK[s] for s in order] == sorted(STATUS_RANK[s] for s in order)
    assert len(set(STATUS_RANK.values())) == len(STATUS_RANK) == len(order)
    assert all(STATUS_RANK[p] < STATUS_RANK["sent"] for p in PENDING)
    assert "failed" not in STATUS_RANK and "deleted" not in STATUS_RANK  # outside the order: never ranked


KEY_FAMILIES = {
    "queued": keys.queued,
    "rewake": keys.rewake,
    "contact_lock": keys.contact_lock,
    "apology": keys.apology,
    "turn_failures": keys.turn_failures,
    "sync_lock": lambda i: keys.sync_lock(str(i)),
    "operator_session": lambda i: keys.operator_session(str(i)),
    "login_failures": lambda i: keys.login_failures(str(i), "127.0.0.1"),
}


def test_every_key_function_is_in_the_table():
    functions = {name for name, f in inspect.getmembers(keys, inspect.isfunction)
                 if f.__module__ == keys.__name__}
    assert functions == set(KEY_FAMILIES)


@pytest.mark.parametrize("family", [pytest.param(f, id=f"{f} keys start with crm:") for f in KEY_FAMILIES])
def test_keys_start_with_the_prefix(family):
    assert keys.PREFIX == "crm:"
    assert KEY_FAMILIES[family](7).startswith(keys.PREFIX)


@pytest.mark.parametrize("name", [pytest.param(n, id=f"{n} starts with crm:")
                                  for n in ("FLOWS_GENERATION", "APIFOOTBALL_RATE", "READY")])
def test_fixed_keys_start_with_the_prefix(name):
    assert getattr(keys, name).startswith(keys.PREFIX)


@pytest.mark.parametrize("some_id", [pytest.param(i, id=f"id {i!r}") for i in (1, 7, 123456789)])
def test_no_two_key_families_collide_for_the_same_id(some_id):
    made = [f(some_id) for f in KEY_FAMILIES.values()] + [keys.FLOWS_GENERATION, keys.APIFOOTBALL_RATE, keys.READY]
    assert len(set(made)) == len(made)


@pytest.mark.parametrize("family", [pytest.param(f, id=f"{f} keys differ per id") for f in KEY_FAMILIES])
def test_different_ids_get_different_keys(family):
    make = KEY_FAMILIES[family]
    assert len({make(i) for i in (1, 11, 111, 2)}) == 4


TTLS = ["RESULT_TTL", "FAILURE_TTL", "CONTACT_JOB_TIMEOUT", "QUEUED_TTL", "LOCK_TTL_MS",
        "OPERATOR_LOCK_TTL_MS", "SYNC_LOCK_TTL", "APOLOGY_TTL", "TURN_FAILURES_TTL", "OPERATOR_SESSION_TTL",
        "LOGIN_FAILURES_MAX", "LOGIN_LOCKOUT_TTL"]


@pytest.mark.parametrize("name", [pytest.param(n, id=f"{n} is a positive whole number") for n in TTLS])
def test_ttls_are_positive_integers(name):
    value = getattr(keys, name)
    assert isinstance(value, int) and value > 0


@pytest.mark.parametrize("queue", [pytest.param(q, id=f"queue {q} has a positive job timeout")
                                   for q in keys.QUEUE_NAMES])
def test_every_queue_has_a_timeout(queue):
    assert keys.QUEUE_TIMEOUT[queue] > 0


@pytest.mark.parametrize("longer, shorter", [
    pytest.param(keys.LOCK_TTL_MS, keys.QUEUED_TTL * 1000, id="the contact lock outlives the queued marker"),
    pytest.param(keys.LOCK_TTL_MS, keys.OPERATOR_LOCK_TTL_MS, id="the task lock outlives an operator's hold"),
    pytest.param(keys.SYNC_LOCK_TTL, keys.QUEUE_TIMEOUT[keys.LOW], id="a sync lock outlives its job timeout"),
    pytest.param(keys.QUEUE_TIMEOUT[keys.HIGH], keys.CONTACT_JOB_TIMEOUT, id="the contact task fits its queue"),
])
def test_ttls_that_must_outlive_others(longer, shorter):
    assert longer >= shorter


EXAMPLES = [
    ev.SessionStarted(flow="signup"),
    ev.SessionEnded(reason="completed", flow="signup"),
    ev.SessionEnded(reason="idle"),
    ev.FieldSet(name="city", value="Lisbon"),
    ev.FieldSet(name="tags", value=["a", "b"]),
    ev.OptedOut(),
    ev.OptedIn(),
    ev.HandoverRequested(flow="support", step="human"),
    ev.HandoverRequested(),
    ev.FlowEntered(flow="football"),
    ev.FlowFailed(details={"action": "football.fixtures", "error": "timeout"}),
    ev.StepEntered(flow="signup", step="ask_email"),
]
EVENTS = [pytest.param(e, id=repr(e)) for e in EXAMPLES]


def test_every_event_type_is_listed_with_a_unique_kind():
    defined = {c for _, c in inspect.getmembers(ev, inspect.isclass) if issubclass(c, ev.Event) and c is not ev.Event}
    assert defined == set(ev.EVENT_TYPES)
    kinds = [t.kind for t in ev.EVENT_TYPES]
    assert len(set(kinds)) == len(kinds) and "event" not in kinds
    assert {type(e) for e in EXAMPLES} == set(ev.EVENT_TYPES)  # the tables below cover every type


@pytest.mark.parametrize("event", EVENTS)
def test_data_round_trips_the_fields(event):
    if isinstance(event, ev.FlowFailed):
        assert ev.FlowFailed(details=event.data) == event
    else:
        assert type(event)(**event.data) == event
        assert set(event.data) == {f.name for f in dataclasses.fields(event)}
    assert "kind" not in event.data


@pytest.mark.parametrize("event", EVENTS)
def test_events_are_frozen(event):
    before = event.data
    for field in dataclasses.fields(event):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, field.name, "changed")
    # a new attribute: FrozenInstanceError, or TypeError from CPython 3.11's frozen+slots __setattr__
    with pytest.raises((AttributeError, TypeError)):
        event.extra = 1
    assert event.data == before and not hasattr(event, "extra")


def test_flow_failed_data_is_a_copy():
    event = ev.FlowFailed(details={"error": "x"})
    event.data["error"] = "changed"
    assert event.details == {"error": "x"}
