"""Every Redis key, queue name and TTL the project uses, one line each (RQ's ``defaults.py`` style).

All keys start with ``crm:``; RQ's own keys (``rq:...``) are RQ's business.
"""

from __future__ import annotations

PREFIX = "crm:"

# Queues: ``high`` replies (the reply workers), ``default`` other user-facing work,
# ``low`` football sync (its own worker, never a reply worker).
HIGH, DEFAULT, LOW = "high", "default", "low"
QUEUE_NAMES = (HIGH, DEFAULT, LOW)
QUEUE_TIMEOUT = {HIGH: 300, DEFAULT: 300, LOW: 1800}  # job timeout per queue, seconds

RESULT_TTL = 300  # finished job results, seconds (never read back; RQ deletes them dearer than it keeps)
FAILURE_TTL = 7 * 24 * 3600  # failed jobs stay a week for inspection in /rq
CONTACT_JOB_TIMEOUT = 120  # serving one contact (a ready-list turn or a due retry job), seconds

QUEUED_TTL = 60  # a contact is on the ready list or being served (covers a crash after the pop)
# Contacts with work waiting, in the order they were woken (a list of contact ids): the reply
# workers pop it together with RQ's queues (crm.app.worker), one contact turn at a time.
READY = f"{PREFIX}contacts:ready"
LOCK_TTL_MS = 60_000  # the contact lock, extended while its task runs
OPERATOR_LOCK_TTL_MS = 30_000  # the contact lock held by an operator action
SYNC_LOCK_TTL = 1800  # a football sync of one kind, seconds (longer than its job timeout)
APOLOGY_TTL = 3600  # at most one "sorry, something went wrong" per contact per hour
TURN_FAILURES_TTL = 24 * 3600  # failed attempts at one inbound message


QUEUED_PREFIX = f"{PREFIX}queued:contact:"  # + contact id (also built so by crm.replies.wake's finish script)
REWAKE_PREFIX = f"{PREFIX}rewake:contact:"
CONTACT_LOCK_PREFIX = f"{PREFIX}lock:contact:"


def queued(contact_id: int) -> str:
    return f"{QUEUED_PREFIX}{contact_id}"


def rewake(contact_id: int) -> str:
    """Set by a wake that found the contact already queued or being served: look again after."""
    return f"{REWAKE_PREFIX}{contact_id}"


def contact_lock(contact_id: int) -> str:
    return f"{CONTACT_LOCK_PREFIX}{contact_id}"


def apology(contact_id: int) -> str:
    return f"{PREFIX}apology:contact:{contact_id}"


def turn_failures(message_id: int) -> str:
    return f"{PREFIX}failures:message:{message_id}"


def sync_lock(kind: str) -> str:
    return f"{PREFIX}football:sync-lock:{kind}"


TEMPLATES_SYNC_LOCK = f"{PREFIX}templates:sync-lock"  # one template sync at a time (CLI, schedule, webhook)
TEMPLATES_SYNC_QUEUED = f"{PREFIX}templates:sync-queued"  # a sync is waiting on low: do not queue another
TEMPLATES_SYNC_TTL = 300  # both of the above, seconds (longer than the sync job's timeout)

# Metrics of every process, summed by /metrics (crm.base.metrics_store)
METRICS_INSTANCES = f"{PREFIX}metrics:instances"  # sorted set: instance id -> time of its last push
METRICS_INSTANCE = f"{PREFIX}metrics:instance:"  # + instance id: hash, sample -> that instance's count
METRICS_RETIRED = f"{PREFIX}metrics:retired"  # hash, sample -> final counts of instances that ended
METRICS_META = f"{PREFIX}metrics:meta"  # hash, family -> [type, help]
METRICS_INSTANCE_TTL = 7 * 24 * 3600  # an instance hash nobody pushed or retired for a week

OPERATOR_SESSION_TTL = 12 * 3600  # an inbox sign-in, counted from its last request
LOGIN_FAILURES_MAX = 5  # failed sign-ins for one account from one address ...
LOGIN_LOCKOUT_TTL = 15 * 60  # ... lock that pair this long, seconds


def operator_session(sid: str) -> str:
    """An inbox session id (the cookie holds only the id) -> the operator's id."""
    return f"{PREFIX}operator:session:{sid}"


def login_failures(name: str, address: str) -> str:
    return f"{PREFIX}operator:login-failures:{name.strip().casefold()}:{address}"


FLOWS_GENERATION = f"{PREFIX}flows:generation"  # bumped on every flow import: processes reload their library
APIFOOTBALL_RATE = f"{PREFIX}apifootball:rate"  # the shared slot of the APIFootball rate limit

