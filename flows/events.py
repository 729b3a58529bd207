"""What a turn of the engine asks the runtime to do, one small frozen type per kind (goflow style).

The engine returns them in order in ``Turn.events``; the runtime persists each through its
handler (``crm.replies.turns.HANDLERS``). ``kind`` names the event in logs; ``data`` is its
fields as a dict.

    SessionStarted(flow="signup")
    SessionEnded(reason="completed", flow="signup")
    FieldSet(name="city", value="Lisbon")
    OptedOut() / OptedIn()
    HandoverRequested(flow="support", step="human")
    FlowEntered(flow="football")
    FlowFailed(details={"action": "football.fixtures", "error": "..."})
    StepEntered(flow="signup", step="ask_email")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Event:
    kind: ClassVar[str] = "event"

    @property
    def data(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SessionStarted(Event):
    kind: ClassVar[str] = "session_started"
    flow: str


@dataclass(frozen=True, slots=True)
class SessionEnded(Event):
    kind: ClassVar[str] = "session_ended"
    reason: str
    flow: str | None = None


@dataclass(frozen=True, slots=True)
class FieldSet(Event):
    kind: ClassVar[str] = "set_contact_field"
    name: str
    value: Any


@dataclass(frozen=True, slots=True)
class OptedOut(Event):
    kind: ClassVar[str] = "opt_out"


@dataclass(frozen=True, slots=True)
class OptedIn(Event):
    kind: ClassVar[str] = "opt_in"


@dataclass(frozen=True, slots=True)
class HandoverRequested(Event):
    kind: ClassVar[str] = "handover"
    flow: str | None = None
    step: str | None = None


@dataclass(frozen=True, slots=True)
class FlowEntered(Event):
    kind: ClassVar[str] = "flow_entered"
    flow: str


@dataclass(frozen=True, slots=True)
class FlowFailed(Event):
    """A template, action or message limit failed; the turn went on without it."""

    kind: ClassVar[str] = "error"
    details: dict = field(default_factory=dict)

    @property
    def data(self) -> dict:
        return dict(self.details)


@dataclass(frozen=True, slots=True)
class StepEntered(Event):
    """The turn entered a step (the flow simulator shows the path; nothing is stored for real contacts)."""

    kind: ClassVar[str] = "step_entered"
    flow: str
    step: str


EVENT_TYPES: tuple[type[Event], ...] = (SessionStarted, SessionEnded, FieldSet, OptedOut, OptedIn,
                                        HandoverRequested, FlowEntered, FlowFailed, StepEntered)
