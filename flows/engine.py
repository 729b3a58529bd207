"""The conversation engine: a pure function of (flows, session, inbound message).

    turn = handle(library, session, inbound, contact, settings, actions)

returns the new session state, the WhatsApp message objects to send (in
order) and the side effects for the caller to perform (contact field updates,
opt-out, handover). No database, Redis or HTTP here; actions that need I/O
are callables the caller passes in.

Everything the engine saves (answers, set variables, action results, contact
fields) goes through ``integrations.storable.storable`` first, so a turn can
always be committed; templates render with bounded work (``flows.templating``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from crm.base.config import Settings
from crm.base.enums import EndReason, SessionStatus
from flows import document as d
from flows import events as ev
from flows import templating
from flows.text import is_email, is_phone, normalize, parse_date, parse_number
from integrations.storable import clean_text, storable
from integrations.whatsapp import messages as wa

MAX_STEPS_PER_TURN = 100
PAGE_SIZE = 9  # rows per page when options spill over 10: 9 + "More"
MORE_PREFIX = "__more__:"
MEDIA_TYPES = {"image", "audio", "voice", "video", "document", "sticker"}


# --- inputs and outputs -----------------------------------------------------

@dataclass
class Inbound:
    type: str = "text"
    text: str | None = None
    reply_id: str | None = None
    payload: dict = field(default_factory=dict)


@dataclass
class Session:
    flow: str | None = None
    step: str | None = None
    status: str = "none"  # none | active | handover | ended
    vars: dict = field(default_factory=dict)
    waiting: dict | None = None  # {"attempts": n, "page": p}
    flow_version: int | None = None

    def to_state(self) -> dict:
        return {"vars": self.vars, "waiting": self.waiting}

    @classmethod
    def from_row(cls, flow, step, status, state, flow_version=None) -> Session:
        state = state or {}
        return cls(flow=flow, step=step, status=status, vars=dict(state.get("vars") or {}),
                   waiting=state.get("waiting"), flow_version=flow_version)


@dataclass
class Turn:
    session: Session
    messages: list[dict] = field(default_factory=list)
    events: list[ev.Event] = field(default_factory=list)

    @property
    def effects(self) -> list[ev.Event]:
        return self.events

    def effect(self, kind: str | type[ev.Event]) -> ev.Event | None:
        """The first event of a type (or of a ``kind`` name), or None."""
        if isinstance(kind, str):
            return next((e for e in self.events if e.kind == kind), None)
        return next((e for e in self.events if isinstance(e, kind)), None)


@dataclass(frozen=True)
class EngineSettings:
    main_menu_flow: str = Settings.default("main_menu_flow")
    menu_keywords: tuple[str, ...] = Settings.default("menu_keywords")
    cancel_keywords: tuple[str, ...] = Settings.default("cancel_keywords")
    optout_keywords: tuple[str, ...] = Settings.default("optout_keywords")
    optin_keywords: tuple[str, ...] = Settings.default("optin_keywords")
    cancel_message: str = "OK, stopped. Send 'menu' whenever you want to start again."
    nothing_to_cancel_message: str = "There is nothing to stop. Send 'menu' to see what I can do."
    optout_message: str = "You will not get any more messages from us. Send 'start' to subscribe again."
    optin_message: str = "Welcome back! Send 'menu' to see what I can do."
    invalid_end_message: str = "Sorry, I could not understand. Send 'menu' to start again."
    retry_text: str = "Sorry, that is not a valid answer."

    @classmethod
    def from_settings(cls, s) -> EngineSettings:
        return cls(main_menu_flow=s.main_menu_flow, menu_keywords=s.menu_keywords,
                   cancel_keywords=s.cancel_keywords, optout_keywords=s.optout_keywords,
                   optin_keywords=s.optin_keywords)


class Library:
    """The active flows, indexed for trigger matching."""

    def __init__(self, flows: list[d.FlowDoc], versions: Mapping[str, int] | None = None):
        self.flows = {f.name: f for f in flows}
        self.versions = dict(versions or {})
        ordered = sorted(flows, key=lambda f: (-f.triggers.priority, f.name))
        self.keywords: dict[str, d.FlowDoc] = {}
        self.reply_ids: dict[str, d.FlowDoc] = {}
        for f in ordered:
            for word in f.triggers.keywords:
                self.keywords.setdefault(normalize(word), f)
            for reply_id in f.triggers.reply_ids:
                self.reply_ids.setdefault(reply_id, f)
        self.catch_all = next((f for f in ordered if f.triggers.catch_all), None)
        # Plain dicts: pydantic's private attributes are slow to read on every step.
        self.steps = {f.name: {s.id: s for s in f.steps} for f in flows}
        self.follow = {f.name: f.follow() for f in flows}

    def next_of(self, flow: d.FlowDoc, step) -> str | None:
        return d.next_step(step, self.follow[flow.name])

    def match(self, norm: str | None, reply_id: str | None) -> d.FlowDoc | None:
        if reply_id and reply_id in self.reply_ids:
            return self.reply_ids[reply_id]
        if norm and norm in self.keywords:
            return self.keywords[norm]
        return None


# --- templating -------------------------------------------------------------

@lru_cache(maxsize=4096)
def _compile(source: str):
    return templating.environment.from_string(source)


class Renderer:
    """Renders template *sources* from flow documents, once. Values typed by users
    are data in the context and are never compiled as templates."""

    def __init__(self, contact: dict, session: Session, errors: list[ev.Event], message: dict | None = None):
        self.contact, self.session, self.errors = contact, session, errors
        self.message = message or {}

    def __call__(self, source: str) -> str:
        if "{" not in source:
            return source
        context = {**self.session.vars, "vars": self.session.vars, "contact": self.contact,
                   "message": self.message}
        try:
            text, cut = templating.render(_compile(source), context)
        except Exception as exc:  # a template bug must not kill the turn
            if templating.must_propagate(exc):  # a job timeout is not a template bug
                raise
            self.errors.append(ev.FlowFailed({"template": source[:200], "error": str(exc)[:500]}))
            return ""
        if cut:
            self.errors.append(ev.FlowFailed({"template": source[:200], "error":
                                              f"output longer than {templating.MAX_OUTPUT} characters: cut"}))
        return text

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        return value


# --- the turn ---------------------------------------------------------------

class _Run:
    def __init__(self, library: Library, session: Session, inbound: Inbound, contact: dict,
                 settings: EngineSettings, actions: Mapping[str, Callable]):
        self.library, self.inbound, self.settings, self.actions = library, inbound, settings, actions
        self.session = Session(session.flow, session.step, session.status, dict(session.vars),
                               dict(session.waiting) if session.waiting else None, session.flow_version)
        self.contact = {**contact, "fields": dict(contact.get("fields") or {})}
        self.turn = Turn(self.session)
        self.render = Renderer(self.contact, self.session, self.turn.events,
                               {"text": inbound.text, "type": inbound.type, "reply_id": inbound.reply_id})

    # outputs
    def say(self, message: dict) -> None:
        self.turn.messages.append(message)

    def say_text(self, source: str | None) -> None:
        if source:
            text = self.render(source)
            if text.strip():
                self.say(wa.text(text[: wa.TEXT_MAX]))

    def end(self, reason: str, text: str | None = None) -> None:
        self.say_text(text)
        self.session.status, self.session.waiting = SessionStatus.ENDED, None
        self.turn.events.append(ev.SessionEnded(reason, self.session.flow))

    # entry
    def handle(self) -> Turn:
        s, inbound, settings = self.session, self.inbound, self.settings
        textual = inbound.type in ("text", "button", "button_reply", "list_reply") and inbound.text
        norm = normalize(inbound.text) if textual else ""
        pressed = normalize(inbound.reply_id) if inbound.reply_id else ""
        if inbound.type == "system":
            # WhatsApp's notice about the user (a new number), not the user writing: it answers no
            # question, starts no flow and gets no reply (the runtime applies the change itself)
            return self.turn
        if self.contact.get("opted_out"):
            if norm in settings.optin_keywords or pressed in settings.optin_keywords:
                self.turn.events.append(ev.OptedIn())
                self.contact["opted_out"] = False
                self.say_text(settings.optin_message)
            return self.turn
        if (norm and norm in settings.optout_keywords) or (pressed and pressed in settings.optout_keywords):
            # STOP is STOP: typed or pressed, in any state, a handover included.
            if s.status in (SessionStatus.ACTIVE, SessionStatus.HANDOVER):
                self.end(EndReason.STOPPED)
            self.turn.events.append(ev.OptedOut())
            self.say_text(settings.optout_message)
            return self.turn
        if s.status == SessionStatus.HANDOVER:
            if inbound.type == "text" and norm and self._may_leave_handover():
                if norm in settings.cancel_keywords:
                    self.end(EndReason.CANCELLED, settings.cancel_message)
                    return self.turn
                if norm in settings.menu_keywords and settings.main_menu_flow in self.library.flows:
                    return self.start(self.library.flows[settings.main_menu_flow], EndReason.RESTARTED)
            return self.turn  # a human owns the conversation: the bot stays silent
        if inbound.type == "text" and norm:
            if norm in settings.cancel_keywords:
                if s.status == SessionStatus.ACTIVE:
                    self.end(EndReason.CANCELLED, settings.cancel_message)
                else:  # an answer all the same: silence reads as a bot that is down
                    self.say_text(settings.nothing_to_cancel_message)
                return self.turn
            if norm in settings.menu_keywords and settings.main_menu_flow in self.library.flows:
                return self.start(self.library.flows[settings.main_menu_flow], EndReason.RESTARTED)
        if s.status == SessionStatus.ACTIVE and s.flow in self.library.flows:
            flow = self.library.flows[s.flow]
            step = self.library.steps[flow.name].get(s.step or "")
            if isinstance(step, d.QuestionStep):
                trigger = self.library.match(None, inbound.reply_id) if inbound.reply_id else None
                if trigger is not None and not self._matches_option(flow, step):
                    return self.start(trigger, EndReason.INTERRUPTED)
                self.answer(flow, step)
                return self.turn
        elif s.status == SessionStatus.ACTIVE:
            # The flow was deleted or deactivated under the session.
            self.end(EndReason.FLOW_UNAVAILABLE)
        matched = self.library.match(norm, inbound.reply_id) or self.library.catch_all
        if matched is not None:
            return self.start(matched, EndReason.RESTARTED)
        return self.turn

    def _may_leave_handover(self) -> bool:
        """Whether the menu/cancel keywords end this handover: a flow's handover step says (yes by
        default); a conversation an operator took over stays theirs until they resolve it (or it
        idles out after HANDOVER_IDLE_HOURS; STOP always works)."""
        step = self.library.steps.get(self.session.flow or "", {}).get(self.session.step or "")
        return isinstance(step, d.HandoverStep) and step.exit_keywords

    def start(self, flow: d.FlowDoc, previous_end: str) -> Turn:
        s = self.session
        if s.status in (SessionStatus.ACTIVE, SessionStatus.HANDOVER):
            self.turn.events.append(ev.SessionEnded(previous_end, s.flow))
        s.flow, s.status, s.vars, s.waiting = flow.name, SessionStatus.ACTIVE, {}, None
        s.flow_version = self.library.versions.get(flow.name)
        self.turn.events.append(ev.SessionStarted(flow.name))
        self.run(flow, flow.start_step)
        return self.turn

    # stepping
    def run(self, flow: d.FlowDoc, step_id: str | None) -> None:
        s = self.session
        for _ in range(MAX_STEPS_PER_TURN):
            if step_id is None:
                self.end(EndReason.COMPLETED)
                return
            step = self.library.steps[flow.name][step_id]
            s.step = step_id
            self.turn.events.append(ev.StepEntered(flow.name, step_id))
            if isinstance(step, d.SendStep):
                for msg in step.messages:
                    self._send_spec(msg)
                step_id = self.library.next_of(flow, step)
            elif isinstance(step, d.QuestionStep):
                s.waiting = {"attempts": 0, "page": 0}
                self.ask(step)
                return
            elif isinstance(step, d.SetStep):
                for name, value in step.variables.items():
                    s.vars[name] = storable(self.render.value(value))
                for name, value in step.contact_fields.items():
                    rendered = storable(self.render.value(value))
                    self.contact["fields"][name] = rendered
                    self.turn.events.append(ev.FieldSet(name, rendered))
                step_id = self.library.next_of(flow, step)
            elif isinstance(step, d.RouteStep):
                step_id = next((c.next for c in step.cases if self.holds(c.when)), step.default)
            elif isinstance(step, d.ActionStep):
                step_id = self.call_action(flow, step)
            elif isinstance(step, d.EnterFlowStep):
                target = self.library.flows.get(step.flow)
                if target is None:
                    self.end(EndReason.FLOW_UNAVAILABLE)
                    return
                s.flow, s.flow_version = target.name, self.library.versions.get(target.name)
                self.turn.events.append(ev.FlowEntered(target.name))
                flow, step_id = target, target.start_step
            elif isinstance(step, d.HandoverStep):
                self.say_text(step.text)
                s.status, s.waiting = SessionStatus.HANDOVER, None
                self.turn.events.append(ev.HandoverRequested(flow.name, step.id))
                return
            elif isinstance(step, d.EndStep):
                self.end(EndReason.COMPLETED, step.text)
                return
        self.turn.events.append(ev.FlowFailed({"error": f"more than {MAX_STEPS_PER_TURN} steps in one turn"}))
        self.end(EndReason.LOOP)

    def _send_spec(self, spec) -> None:
        try:
            self.say(d.render_message(spec, self.render))
        except wa.MessageLimitError as exc:
            self.turn.events.append(ev.FlowFailed({"step": self.session.step, "error": str(exc)}))

    def call_action(self, flow: d.FlowDoc, step: d.ActionStep) -> str | None:
        fn = self.actions.get(step.action)
        params = self.render.value(step.params)
        try:
            if fn is None:
                raise LookupError(f"no action named {step.action!r}")
            result = fn(params, {"contact": self.contact, "vars": self.session.vars})
        except Exception as exc:  # actions are outside code
            if templating.must_propagate(exc):  # a job timeout is not the action's failure
                raise
            self.turn.events.append(ev.FlowFailed({"action": step.action, "error": str(exc)[:500]}))
            if step.save_as:
                self.session.vars[step.save_as] = None
            return step.on_error or self.library.next_of(flow, step)
        if isinstance(result, dict) and isinstance(result.get("contact_fields"), Mapping):
            result = dict(result)
            for name, value in storable(result.pop("contact_fields")).items():
                self.contact["fields"][name] = value
                self.turn.events.append(ev.FieldSet(name, value))
        if step.save_as:
            self.session.vars[step.save_as] = storable(result)
        return self.library.next_of(flow, step)

    # questions
    def options(self, step: d.QuestionStep) -> list[dict]:
        if step.options_from:
            raw = _lookup(self.session.vars, step.options_from) or []
            out = []
            for item in raw if isinstance(raw, list) else []:
                if isinstance(item, dict) and item.get("id") is not None and item.get("title"):
                    out.append({"id": str(item["id"])[: wa.ROW_ID_MAX], "title": str(item["title"]),
                                "description": item.get("description"), "next": None})
            return out
        return [{"id": o.id, "title": self.render(o.title),
                 "description": self.render(o.description) if o.description else None, "next": o.next}
                for o in step.options]

    def ask(self, step: d.QuestionStep, body: str | None = None) -> None:
        text = body if body is not None else self.render(step.text)
        if step.expect != "choice":
            self.say(wa.text(text[: wa.TEXT_MAX] or "?"))
            return
        options = self.options(step)
        if not options:
            self.say(wa.text(text[: wa.TEXT_MAX] or "?"))
            return
        header = self.render(step.header) if step.header else None
        footer = self.render(step.footer) if step.footer else None
        if len(options) <= wa.BUTTONS_MAX and all(len(o["title"]) <= wa.BUTTON_TITLE_MAX for o in options):
            self.say(wa.buttons(text[: wa.INTERACTIVE_BODY_MAX],
                                [(o["id"], o["title"]) for o in options], header, footer))
            return
        page = (self.session.waiting or {}).get("page", 0)
        rows, more = _page(options, page)
        items = [{"id": o["id"], "title": _clip(o["title"], wa.ROW_TITLE_MAX),
                  "description": _clip(o["description"], wa.ROW_DESCRIPTION_MAX)} for o in rows]
        if more:
            items.append({"id": f"{MORE_PREFIX}{page + 1}", "title": "More…", "description": None})
        self.say(wa.list_message(text[: wa.LIST_BODY_MAX], _clip(self.render(step.button), wa.LIST_BUTTON_MAX) or "",
                                 [{"rows": items}], header, footer))

    def _matches_option(self, flow: d.FlowDoc, step: d.QuestionStep) -> bool:
        if step.expect != "choice" or not self.inbound.reply_id:
            return False
        rid = self.inbound.reply_id
        return rid.startswith(MORE_PREFIX) or any(o["id"] == rid for o in self.options(step))

    def answer(self, flow: d.FlowDoc, step: d.QuestionStep) -> None:
        s, inbound = self.session, self.inbound
        waiting = s.waiting = s.waiting if s.waiting is not None else {"attempts": 0, "page": 0}
        if step.expect == "choice" and inbound.reply_id and inbound.reply_id.startswith(MORE_PREFIX):
            try:
                waiting["page"] = int(inbound.reply_id[len(MORE_PREFIX):])
            except ValueError:
                waiting["page"] = 0
            self.ask(step)
            return
        ok, value, chosen = self.validate(step)
        if ok:
            if step.save_as:
                s.vars[step.save_as] = storable(value)
                if chosen is not None:
                    s.vars[f"{step.save_as}_title"] = storable(chosen["title"])
            s.waiting = None
            self.run(flow, (chosen or {}).get("next") or self.library.next_of(flow, step))
            return
        waiting["attempts"] = waiting.get("attempts", 0) + 1
        if waiting["attempts"] >= step.max_attempts:
            s.waiting = None
            if step.on_invalid:
                self.run(flow, step.on_invalid)
            else:
                self.end(EndReason.INVALID, self.settings.invalid_end_message)
            return
        retry = self.render(step.retry_text) if step.retry_text else self.settings.retry_text
        if step.expect == "choice":
            self.ask(step, body=f"{retry}\n\n{self.render(step.text)}")
        else:
            self.say(wa.text(f"{retry}\n\n{self.render(step.text)}"[: wa.TEXT_MAX]))

    def validate(self, step: d.QuestionStep) -> tuple[bool, Any, dict | None]:
        inbound, expect = self.inbound, step.expect
        text = (inbound.text or "").strip()
        if expect == "any":
            return True, text or inbound.payload.get(inbound.type) or inbound.type, None
        if expect == "choice":
            options = self.options(step)
            if inbound.reply_id:
                hit = next((o for o in options if o["id"] == inbound.reply_id), None)
                return (hit is not None), (hit or {}).get("id"), hit
            norm = normalize(text)
            hit = next((o for o in options if normalize(o["title"]) == norm), None)
            if hit is None and norm.isdigit():
                page = (self.session.waiting or {}).get("page", 0)
                rows, _ = _page(options, page) if len(options) > wa.LIST_ROWS_MAX else (options, False)
                index = int(norm) - 1
                hit = rows[index] if 0 <= index < len(rows) else None
            return (hit is not None), (hit or {}).get("id"), hit
        if expect == "media":
            if inbound.type in MEDIA_TYPES:
                media = dict(inbound.payload.get("audio" if inbound.type == "voice" else inbound.type) or {})
                media["type"] = inbound.type
                return True, media, None
            return False, None, None
        if expect == "location":
            if inbound.type == "location":
                return True, dict(inbound.payload.get("location") or {}), None
            return False, None, None
        if inbound.type not in ("text", "button", "button_reply", "list_reply") or not text:
            return False, None, None
        if expect == "text":
            return True, text, None
        if expect == "number":
            number = parse_number(text)
            if number is None or (step.min is not None and number < step.min) or (
                    step.max is not None and number > step.max):
                return False, None, None
            return True, int(number) if number.is_integer() else number, None
        if expect == "email":
            return is_email(text), text.lower(), None
        if expect == "phone":
            return is_phone(text), re.sub(r"[\s\-().]", "", text), None
        if expect == "date":
            parsed = parse_date(text)
            return parsed is not None, parsed.isoformat() if parsed else None, None
        return False, None, None

    # conditions
    def holds(self, cond: d.Condition) -> bool:
        inbound = self.inbound
        if cond.var:
            subject = _lookup(self.session.vars, cond.var)
        elif cond.field:
            subject = _lookup(self.contact.get("fields") or {}, cond.field)
        else:
            subject = inbound.text
        if cond.exists is not None and (subject not in (None, "", [], {})) != cond.exists:
            return False
        text = "" if subject is None else str(subject)
        if cond.equals is not None and normalize(text) != normalize(self.render(cond.equals)):
            return False
        if cond.contains is not None:
            needle = normalize(self.render(cond.contains))
            if not needle or f" {needle} " not in f" {normalize(text)} ":
                return False
        if cond.regex is not None and not d.condition_regex(cond.regex).fullmatch(clean_text(text.strip())):
            return False
        if any(v is not None for v in (cond.lt, cond.lte, cond.gt, cond.gte, cond.eq)):
            number = parse_number(subject)
            if number is None:
                return False
            for bound, test in ((cond.lt, number.__lt__), (cond.lte, number.__le__), (cond.gt, number.__gt__),
                                (cond.gte, number.__ge__), (cond.eq, number.__eq__)):
                if bound is not None and not test(bound):
                    return False
        if cond.is_ is not None:
            check = {"email": is_email, "phone": is_phone, "date": lambda t: parse_date(t) is not None,
                     "number": lambda t: parse_number(t) is not None}[cond.is_]
            if not check(text):
                return False
        if cond.reply_id is not None:
            wanted = [cond.reply_id] if isinstance(cond.reply_id, str) else cond.reply_id
            if inbound.reply_id not in wanted:
                return False
        if cond.type is not None:
            wanted = [cond.type] if isinstance(cond.type, str) else cond.type
            if inbound.type not in wanted and not ("media" in wanted and inbound.type in MEDIA_TYPES):
                return False
        return True


def _lookup(data: Mapping, dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _page(options: list[dict], page: int) -> tuple[list[dict], bool]:
    """Rows for ``page`` and whether a "More" row follows. Up to 10 rows fit one page."""
    if len(options) <= wa.LIST_ROWS_MAX:
        return options, False
    start = page * PAGE_SIZE
    if start >= len(options):
        start, page = 0, 0
    rest = options[start:]
    if len(rest) <= wa.LIST_ROWS_MAX:
        return rest, False
    return rest[:PAGE_SIZE], True


def handle(library: Library, session: Session, inbound: Inbound, contact: dict,
           settings: EngineSettings | None = None, actions: Mapping[str, Callable] | None = None) -> Turn:
    """Run one turn. Pure: the result depends only on the arguments (and the actions passed)."""
    return _Run(library, session, inbound, contact, settings or EngineSettings(), actions or {}).handle()


def start_flow(library: Library, session: Session, flow_name: str, contact: dict,
               settings: EngineSettings | None = None, actions: Mapping[str, Callable] | None = None) -> Turn:
    """Start ``flow_name`` for a contact without an inbound message (an operator's request).

    The open session, if any, ends as "replaced". Pure, like ``handle``.
    """
    run = _Run(library, session, Inbound(type="system", text=""), contact, settings or EngineSettings(),
               actions or {})
    return run.start(library.flows[flow_name], EndReason.REPLACED)
