"""Every enumerated value the CRM stores, as a ``StrEnum`` with an ``UNKNOWN`` member.

Members compare equal to their strings, so rows written before these existed read back as
members; a value this version does not know (written by a newer one, or by hand) becomes
``UNKNOWN`` instead of an exception (pywa types Meta's enums the same way).
"""

from __future__ import annotations

from enum import StrEnum

# Meta's template statuses and status-webhook events, stored in message_templates.status; defined
# with the Graph client that parses them.
from integrations.whatsapp.templates import TemplateEvent, TemplateStatus  # noqa: F401


class _Lenient(StrEnum):
    @classmethod
    def _missing_(cls, value):
        return cls.__members__.get("UNKNOWN")


class Direction(_Lenient):
    IN = "in"
    OUT = "out"
    UNKNOWN = "unknown"


class MessageStatus(_Lenient):
    RECEIVED = "received"  # inbound, stored
    FAILED = "failed"  # outbound refused by Meta for good; inbound set aside (quarantined)
    QUEUED = "queued"  # outbound, waiting its turn in the contact's outbox
    SENDING = "sending"  # claimed: the request is (or was) on its way
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    DELETED = "deleted"
    UNKNOWN = "unknown"


# Outbound rows still to be sent, and the order statuses move in (they never move back).
PENDING = (MessageStatus.QUEUED, MessageStatus.SENDING)
STATUS_RANK = {MessageStatus.QUEUED: 0, MessageStatus.SENDING: 1, MessageStatus.SENT: 2,
               MessageStatus.DELIVERED: 3, MessageStatus.READ: 4}


class Origin(_Lenient):
    """Who wrote an outbound row."""

    FLOW = "flow"
    OPERATOR = "operator"
    SYSTEM = "system"  # notices of the runtime itself (apologies)
    CONSENT = "consent"  # the opt-out/opt-in confirmation: the one row an opted-out contact may get
    EXPIRY = "expiry"
    FOOTBALL = "football"
    UNKNOWN = "unknown"


class SessionStatus(_Lenient):
    NONE = "none"  # the engine's "no session" (never stored)
    ACTIVE = "active"
    HANDOVER = "handover"
    ENDED = "ended"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


OPEN_STATUSES = (SessionStatus.ACTIVE, SessionStatus.HANDOVER)


class EndReason(_Lenient):
    """Why a flow session ended (``flow_sessions.end_reason``)."""

    COMPLETED = "completed"
    CANCELLED = "cancelled"
    STOPPED = "stopped"  # the user opted out
    INVALID = "invalid"  # too many invalid answers
    LOOP = "loop"
    FLOW_UNAVAILABLE = "flow_unavailable"
    RESTARTED = "restarted"  # another flow started by keyword or the menu
    INTERRUPTED = "interrupted"  # a button of another flow was pressed mid-question
    REPLACED = "replaced"  # an operator started a flow
    TAKEN_OVER = "handover"  # an operator took the conversation over from the bot
    RESET = "reset"  # an operator reset the session
    RESOLVED = "resolved"  # an operator handed the conversation back to the bot
    IDLE = "idle"  # expired for inactivity
    HANDOVER_IDLE = "handover_idle"  # a handover nobody answered for HANDOVER_IDLE_HOURS
    UNKNOWN = "unknown"
