"""Conversation tests for flows: transcripts run against the real engine.

A transcript file (``*.test.yaml``) lists tests; each is a conversation with a
test contact: what the user says or presses, what the bot must answer, and
the state expected afterwards. The runner feeds the steps to ``engine.handle``
one turn at a time with a session it keeps in memory and the real action
registry, exactly as the reply worker would, but nothing is stored and nothing
is sent. The format is described in docs/flow-tests.md.

    summary = run_transcripts(["flows/examples"], actions, engine_settings, expired_message,
                              fixture, click.echo)

The same ``Conversation`` drives ``flask flows chat``. The runner reads files
and nothing else; actions that need a database get the optional fixture, which
seeds rows for them and rolls them back after every test.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows import document as d
from flows import engine
from flows.store import load_files
from flows.text import normalize
from integrations.whatsapp.inbound import describe

TRANSCRIPT_SUFFIXES = d.TRANSCRIPT_SUFFIXES
OPEN = ("active", "handover")
CONTEXT_LINES = 20  # lines of the exchange shown before the first difference


# --- the file format --------------------------------------------------------

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, populate_by_name=True)


class ContactSpec(Strict):
    name: str | None = None
    wa_id: str = "15550000001"
    fields: dict[str, Any] = Field(default_factory=dict)
    opted_out: bool = False


MessageType = Literal["text", "buttons", "list", "image", "audio", "video", "document", "sticker", "template",
                      "location", "contacts"]


class BotMessage(Strict):
    """One message the bot must send. A bare string is a text message with exactly that text."""

    type: MessageType | None = None
    text: str | None = None
    text_re: str | None = Field(default=None, alias="text~")
    buttons: list[str] | None = None
    rows: list[str] | None = None
    button: str | None = None
    header: str | None = None
    footer: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value):
        return {"text": value} if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _consistent(self):
        if self.text is not None and self.text_re is not None:
            raise ValueError("give 'text' or 'text~', not both")
        if self.buttons is not None and (self.rows is not None or self.button is not None):
            raise ValueError("a message has 'buttons' or a list ('rows', 'button'), not both")
        if self.kind not in ("buttons", "list") and (self.buttons is not None or self.rows is not None):
            raise ValueError(f"a {self.kind!r} message has no buttons or rows")
        if not self.model_fields_set:
            raise ValueError("say what the message holds: text, text~, buttons, rows or type")
        return self

    @field_validator("text_re")
    @classmethod
    def _compiles(cls, value):
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regex {value!r}: {exc}") from None
        return value

    @property
    def kind(self) -> str:
        if self.type:
            return self.type
        if self.buttons is not None:
            return "buttons"
        if self.rows is not None or self.button is not None:
            return "list"
        return "text"


class Expect(Strict):
    """State after the turn. ``vars`` and ``fields`` list only the names to check (dotted paths work)."""

    status: Literal["none", "active", "handover", "ended"] | None = None
    flow: str | None = None
    step: str | None = None
    end_reason: str | None = None
    vars: dict[str, Any] | None = None
    fields: dict[str, Any] | None = None
    opted_out: bool | None = None


INPUTS = ("user", "press", "message", "start", "expire")


class CaseStep(Strict):
    user: str | None = Field(default=None, min_length=1)
    press: str | None = Field(default=None, min_length=1)
    message: dict[str, Any] | None = None
    start: str | None = None
    expire: bool | None = None
    bot: list[BotMessage] | None = None
    expect: Expect | None = None

    @model_validator(mode="after")
    def _one_input(self):
        given = [k for k in INPUTS if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"one input per step, not {' and '.join(given)}")
        if not given and self.bot is not None:
            raise ValueError("'bot' answers an input: add user, press, message, start or expire")
        if not given and self.expect is None:
            raise ValueError("a step needs an input (user, press, message, start, expire) or 'expect'")
        if self.expire is False:
            raise ValueError("write 'expire: true' (or leave it out)")
        if self.message is not None and not isinstance(self.message.get("type"), str):
            raise ValueError("a message needs its WhatsApp 'type' (image, location, reaction, ...)")
        return self

    @property
    def input(self) -> str | None:
        return next((k for k in INPUTS if getattr(self, k) is not None), None)


Rows = dict[str, list[dict[str, Any]]]


class Case(Strict):
    name: str = Field(min_length=1)
    contact: ContactSpec | None = None
    data: Rows = Field(default_factory=dict)
    fail: list[str] = Field(default_factory=list)
    steps: list[CaseStep] = Field(min_length=1)


class TranscriptDoc(Strict):
    flow: str | None = None
    flows: list[str] = Field(default_factory=lambda: ["."], min_length=1)
    contact: ContactSpec = Field(default_factory=ContactSpec)
    data: Rows = Field(default_factory=dict)
    tests: list[Case] = Field(min_length=1)


class TranscriptError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Transcript:
    doc: TranscriptDoc
    path: str
    raw: dict
    lines: dict[tuple, int]

    def line(self, *loc) -> int:
        return d._where(self.raw, loc, self.lines)[1] or 1

    def where(self, loc: tuple, message: str) -> str:
        path, line = d._where(self.raw, loc, self.lines)
        return f"{self.path}:{line or 1}: {_describe(self.raw, path)}: {message}"

    @property
    def flow_paths(self) -> list[str]:
        base = Path(self.path).parent
        return [str(base / p) for p in self.doc.flows]

    def contact(self, case: Case) -> dict:
        spec = self.doc.contact.model_dump()
        if case.contact is not None:
            spec.update(case.contact.model_dump(include=case.contact.model_fields_set))
        return {"wa_id": spec["wa_id"], "name": spec["name"] or "", "fields": dict(spec["fields"]),
                "opted_out": spec["opted_out"]}

    def data(self, case: Case) -> Rows:
        out: Rows = {k: list(v) for k, v in self.doc.data.items()}
        for table, rows in case.data.items():
            out.setdefault(table, []).extend(rows)
        return out


def _describe(raw: Any, path: tuple) -> str:
    where = ""
    if len(path) >= 2 and path[0] == "tests" and isinstance(path[1], int):
        try:
            name = raw["tests"][path[1]].get("name")
        except (IndexError, AttributeError, KeyError, TypeError):
            name = None
        where = f"test {name!r}" if name else f"tests[{path[1]}]"
        path = path[2:]
        if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
            where += f" step {path[1] + 1}"
            path = path[2:]
    dotted = ""
    for part in path:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else str(part))
    if dotted:
        return f"{where} field {dotted!r}".strip()
    return where or "file"


TEXT_KEYS = {"user", "press", "start", "text", "text~", "button", "header", "footer", "name", "flow", "wa_id"}
TEXT_LISTS = {"bot", "buttons", "rows", "fail", "flows"}
TYPED = {"data", "vars", "fields", "message"}  # values there keep their YAML types


def _as_written(value: Any, path: tuple, scalars: dict[tuple, str]) -> Any:
    """Text fields as typed: `press: Yes` is the button "Yes", not true; `user: 007` is "007"."""
    if isinstance(value, dict):
        return {k: v if k in TYPED else _as_written(v, path + (k,), scalars) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_written(v, path + (i,), scalars) for i, v in enumerate(value)]
    if isinstance(value, str) or value is None or path not in scalars or not path:
        return value
    key = path[-1]
    if key in TEXT_KEYS or (isinstance(key, int) and len(path) > 1 and path[-2] in TEXT_LISTS):
        return scalars[path]
    return value


def parse_transcript(text: str, filename: str = "<transcript>") -> Transcript:
    """Parse and validate one transcript file; TranscriptError lists every problem as 'file:line: ...'."""
    scalars: dict[tuple, str] = {}
    try:
        raw, lines = d._compose_lines(text, scalars)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise TranscriptError([f"{filename}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(raw, dict):
        raise TranscriptError([f"{filename}:1: a transcript is a mapping with 'tests' (and flow, flows, "
                               "contact, data)"])
    raw = _as_written(raw, (), scalars)
    try:
        doc = TranscriptDoc.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "string_type":
                msg += " (put it in quotes)"
            path, line = d._where(raw, loc, lines)
            if err["type"] in ("extra_forbidden", "missing"):  # the key itself is not in the data
                parent, line = d._where(raw, loc[:-1], lines)
                path = parent + (loc[-1],)
                line = lines.get(path, line)
                if err["type"] == "extra_forbidden":
                    msg = "unknown field"
            problems.append(f"{filename}:{line or 1}: {_describe(raw, path)}: {msg}")
        raise TranscriptError(problems) from None
    loaded = Transcript(doc, filename, raw, lines)
    problems, names = [], {}
    for i, case in enumerate(doc.tests):
        if case.name in names:
            problems.append(loaded.where(("tests", i, "name"), f"a test called {case.name!r} is already "
                                                               f"at line {names[case.name]}"))
        names.setdefault(case.name, loaded.line("tests", i))
    if problems:
        raise TranscriptError(problems)
    return loaded


def transcript_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.name.endswith(TRANSCRIPT_SUFFIXES))
        else:
            files.append(path)
    return files


# --- messages as lines ------------------------------------------------------

def parts(message: dict) -> dict:
    """The parts of a WhatsApp message object that transcripts talk about."""
    kind = message.get("type")
    if kind == "text":
        return {"type": "text", "text": message["text"]["body"]}
    if kind == "interactive":
        inter = message["interactive"]
        out = {"text": inter.get("body", {}).get("text", ""), "header": (inter.get("header") or {}).get("text"),
               "footer": (inter.get("footer") or {}).get("text")}
        if inter.get("type") == "button":
            buttons = [b["reply"] for b in inter["action"]["buttons"]]
            return {**out, "type": "buttons", "buttons": [b["title"] for b in buttons],
                    "ids": [b["id"] for b in buttons]}
        rows = [r for s in inter["action"]["sections"] for r in s["rows"]]
        return {**out, "type": "list", "button": inter["action"].get("button"), "rows": [r["title"] for r in rows],
                "ids": [r["id"] for r in rows], "descriptions": [r.get("description") for r in rows]}
    body = message.get(kind) or {}
    if kind == "template":
        return {"type": kind, "text": body.get("name")}
    if kind == "location":
        return {"type": kind, "text": body.get("name") or f"{body.get('latitude')},{body.get('longitude')}"}
    if kind == "contacts":
        names = [(c.get("name") or {}).get("formatted_name", "") for c in message.get("contacts", [])]
        return {"type": kind, "text": ", ".join(names)}
    return {"type": kind, "text": body.get("caption") or body.get("link") or body.get("id") or ""}


def render(p: dict, detail: bool = False) -> list[str]:
    """A message as transcript lines; ``detail`` adds row descriptions and option ids (for chat)."""
    kind = p.get("type")
    lines = []
    if p.get("header"):
        lines.append(f"[header] {p['header']}")
    text = p.get("text") or ""
    if kind in ("text", "buttons", "list"):
        lines += text.split("\n") if text else [""]
    else:
        lines.append(f"[{kind}] {text}".rstrip())
    ids = p.get("ids") or []
    if kind == "buttons":
        for n, title in enumerate(p.get("buttons") or [], 1):
            suffix = f"  (id {ids[n - 1]})" if detail and n <= len(ids) else ""
            lines.append(f"[{n}] {title}{suffix}")
    if kind == "list":
        lines.append(f"≡ {p.get('button') or ''}".rstrip())
        descriptions = p.get("descriptions") or []
        for n, title in enumerate(p.get("rows") or [], 1):
            line = f"  {n}. {title}"
            if detail and n <= len(descriptions) and descriptions[n - 1]:
                line += f" — {descriptions[n - 1]}"
            if detail and n <= len(ids):
                line += f"  (id {ids[n - 1]})"
            lines.append(line)
    if p.get("footer"):
        lines.append(f"[footer] {p['footer']}")
    return lines


def bot_lines(p: dict, detail: bool = False, prefix: str = "bot:  ") -> list[str]:
    pad = " " * len(prefix)
    return [((prefix if i == 0 else pad) + line).rstrip() for i, line in enumerate(render(p, detail))]


def _text_matches(spec: BotMessage, text: str) -> bool:
    if spec.text is not None:
        return text == spec.text
    if spec.text_re is not None:
        return re.search(spec.text_re, text, re.DOTALL) is not None
    return True


def differences(spec: BotMessage, actual: dict) -> list[str]:
    """What differs between an expected message and an actual one (empty: they match)."""
    out = []
    if actual["type"] != spec.kind:
        out.append(f"a {spec.kind} message was expected, the bot sent a {actual['type']} message")
    if not _text_matches(spec, actual.get("text") or ""):
        if spec.text is not None:
            out.append("the text differs")
        else:
            shown = "its text~ pattern" if "\n" in spec.text_re or len(spec.text_re) > 60 else f"/{spec.text_re}/"
            out.append(f"the text does not match {shown}")
    for attr in ("buttons", "rows", "button", "header", "footer"):
        wanted = getattr(spec, attr)
        if wanted is not None and actual.get(attr) != wanted:
            out.append(f"the {attr} differ" if attr in ("buttons", "rows") else f"the {attr} differs")
    return out


def expected_parts(spec: BotMessage, actual: dict | None) -> dict:
    """The expected message for a diff: the actual one with every part the spec states replaced,
    so that only real differences show."""
    out = dict(actual) if actual else {}
    out["type"] = spec.kind
    text = (actual or {}).get("text") or ""
    if spec.text is not None:
        out["text"] = spec.text
    elif spec.text_re is not None and not _text_matches(spec, text):
        out["text"] = f"~/{spec.text_re}/"
    elif actual is None:
        out["text"] = ""
    for attr in ("buttons", "rows", "button", "header", "footer"):
        if getattr(spec, attr) is not None:
            out[attr] = getattr(spec, attr)
    if spec.kind != "list":
        out.pop("rows", None)
        out.pop("button", None)
    if spec.kind != "buttons":
        out.pop("buttons", None)
    return out


# --- driving the engine ------------------------------------------------------

class _Trace(dict):
    """A flow's step index that records every step the engine looks up (the path of a turn)."""

    def __init__(self, steps: dict, flow: str, path: list):
        super().__init__(steps)
        self.flow, self.path = flow, path

    def __getitem__(self, key):
        self.path.append((self.flow, key))
        return dict.__getitem__(self, key)


def _failing(name: str) -> Callable:
    def fail(params, context):
        raise RuntimeError(f"{name} failed because the transcript asked it to ('fail:')")

    return fail


class Conversation:
    """A test contact talking to the flows: the reply worker's turn, in memory.

    Keeps the session between turns the way the database does (an ended session is
    gone: the next message starts from nothing), applies contact field and opt-out
    effects to the contact, and records the steps each turn went through.
    """

    def __init__(self, library: engine.Library, contact: dict, settings: engine.EngineSettings | None = None,
                 actions: Mapping[str, Callable] | None = None,
                 expired_message: str | None = None):
        self.path: list[tuple[str, str]] = []
        self.library = copy.copy(library)
        self.library.steps = {name: _Trace(steps, name, self.path) for name, steps in library.steps.items()}
        self.contact = {"id": 0, "wa_id": "", "name": "", "opted_out": False, **contact}
        self.contact["fields"] = dict(contact.get("fields") or {})
        self.settings = settings or engine.EngineSettings()
        self.actions = dict(actions or {})
        self.expired_message = expired_message
        self.session = engine.Session()
        self.end_reason: str | None = None
        self.sent: list[dict] = []  # every bot message so far
        self.errors: list[dict] = []  # error effects of the last turn

    # inputs
    def say(self, text: str) -> engine.Turn:
        return self.receive({"type": "text", "text": {"body": text}})

    def receive(self, message: dict) -> engine.Turn:
        """A WhatsApp message object as Meta posts it (``type`` and its object)."""
        kind, text, reply_id = describe(message)
        return self._turn(lambda s: engine.handle(self.library, s, engine.Inbound(kind, text, reply_id, message),
                                                  self.contact, self.settings, self.actions))

    def press(self, choice: str) -> engine.Turn:
        """Tap a button or list row of the last interactive message: by title, id or number."""
        last = self.last_interactive()
        if last is None:
            raise LookupError(f"nothing to press {choice!r} on: the bot has sent no buttons or list")
        p = parts(last)
        titles, ids = p.get("buttons") or p.get("rows") or [], p["ids"]
        index = _find(choice, titles, ids)
        if index is None:
            raise LookupError(f"no button or row {choice!r} in the last {p['type']} message "
                              f"({', '.join(titles)})")
        kind = "button_reply" if p["type"] == "buttons" else "list_reply"
        return self.receive({"type": "interactive",
                             "interactive": {"type": kind, kind: {"id": ids[index], "title": titles[index]}}})

    def start(self, flow: str) -> engine.Turn:
        """Start a flow without a message, as an operator does."""
        return self._turn(lambda s: engine.start_flow(self.library, s, flow, self.contact, self.settings,
                                                      self.actions))

    def expire(self) -> list[dict]:
        """The contact goes quiet until the idle cleanup ends the session: an active one after
        SESSION_IDLE_MINUTES, with the expiry notice (none for an opted-out contact); a handover
        after HANDOVER_IDLE_HOURS, silently."""
        self.path.clear()
        self.errors = []
        s = self.session
        if s.status == "handover":
            self.session = engine.Session(s.flow, s.step, "ended", s.vars)
            self.end_reason = "handover_idle"
            return []
        if s.status != "active":
            return []
        flow = self.library.flows.get(s.flow or "")
        own = flow.expired_message if flow is not None else d.DEFAULT_EXPIRED
        text = self.expired_message if own is d.DEFAULT_EXPIRED else own
        self.session = engine.Session(s.flow, s.step, "ended", s.vars)
        self.end_reason = "idle"
        if not text or self.contact.get("opted_out"):
            return []
        messages = [{"type": "text", "text": {"body": text, "preview_url": False}}]
        self.sent += messages
        return messages

    def reset(self, contact: dict | None = None) -> None:
        self.session, self.end_reason, self.errors = engine.Session(), None, []
        self.path.clear()
        if contact is not None:
            self.contact = {**self.contact, **contact, "fields": dict(contact.get("fields") or {})}

    # state
    def last_interactive(self) -> dict | None:
        return next((m for m in reversed(self.sent) if m.get("type") == "interactive"), None)

    def steps(self) -> list[str]:
        return [f"{flow}.{step}" for flow, step in self.path]

    def _turn(self, run: Callable[[engine.Session], engine.Turn]) -> engine.Turn:
        current = self.session if self.session.status in OPEN else engine.Session()
        self.path.clear()
        turn = run(current)
        self.session = turn.session
        ends = [e.data.get("reason") for e in turn.effects if e.kind == "session_ended"]
        if turn.session.status == "ended":
            self.end_reason = ends[-1] if ends else "completed"
        else:
            self.end_reason = None
        for effect in turn.effects:
            if effect.kind == "set_contact_field":
                self.contact["fields"][effect.data["name"]] = effect.data["value"]
            elif effect.kind in ("opt_out", "opt_in"):
                self.contact["opted_out"] = effect.kind == "opt_out"
        self.errors = [e.data for e in turn.effects if e.kind == "error"]
        self.sent += turn.messages
        return turn


def _find(choice: str, titles: list[str], ids: list[str]) -> int | None:
    for candidates in (titles, ids):
        if choice in candidates:
            return candidates.index(choice)
    wanted = normalize(choice)
    for i, title in enumerate(titles):
        if wanted and normalize(title) == wanted:
            return i
    if choice.strip().isdigit() and 1 <= int(choice) <= len(titles):
        return int(choice) - 1
    return None


def state(conv: Conversation) -> dict:
    s = conv.session
    return {"status": s.status, "flow": s.flow, "step": s.step, "end_reason": conv.end_reason,
            "vars": s.vars, "fields": conv.contact["fields"], "opted_out": conv.contact["opted_out"]}


MISSING = object()


def _lookup(data: Any, dotted: str) -> Any:
    if isinstance(data, Mapping) and dotted in data:
        return data[dotted]
    value = data
    for part in dotted.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return str(value)  # a StrEnum (the session status) as its text
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _show(value: Any) -> str:
    if value is MISSING:
        return "(missing)"
    return yaml.safe_dump(_plain(value), allow_unicode=True, default_flow_style=True, width=10**6).strip() \
        .removesuffix("\n...").removesuffix("...").strip()


def state_differences(expect: Expect, conv: Conversation) -> list[tuple[str, Any, Any]]:
    """(what, expected, actual) for every expectation that does not hold."""
    now = state(conv)
    out = []
    for key in ("status", "flow", "step", "end_reason", "opted_out"):
        wanted = getattr(expect, key)
        if key in expect.model_fields_set and wanted != now[key]:
            out.append((key, wanted, now[key]))
    for key in ("vars", "fields"):
        for name, wanted in (getattr(expect, key) or {}).items():
            actual = _lookup(now[key], name)
            if _plain(wanted) != _plain(None if actual is MISSING and wanted is None else actual):
                out.append((f"{key}.{name}", wanted, actual))
    return out


# --- database rows for actions ------------------------------------------------

_WHEN = re.compile(r"^(now|today)((?:\s*[+-]\s*\d+\s*[mhd])*)(?:\s+(\d{1,2}):(\d{2}))?$")
_OFFSET = re.compile(r"([+-])\s*(\d+)\s*([mhd])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def when(text: str, now: datetime) -> datetime | None:
    """'now', 'now-90m', 'today+1d 15:00' (UTC, naive) relative to ``now``; None if not that form."""
    match = _WHEN.match(text.strip())
    if not match:
        return None
    base = now if match.group(1) == "now" else now.replace(hour=0, minute=0, second=0, microsecond=0)
    for sign, amount, unit in _OFFSET.findall(match.group(2) or ""):
        base += (1 if sign == "+" else -1) * timedelta(**{_UNITS[unit]: int(amount)})
    if match.group(3) is not None:
        base = base.replace(hour=int(match.group(3)), minute=int(match.group(4)), second=0, microsecond=0)
    return base


def row_values(table, row: dict, now: datetime) -> dict:
    """A seeded row with relative times ('today+1d 15:00') and ISO strings turned into datetimes."""
    out = {}
    for name, value in row.items():
        column = table.c[name]
        try:
            python_type = column.type.python_type
        except NotImplementedError:
            python_type = None
        if isinstance(value, str) and python_type is datetime:
            value = when(value, now) or datetime.fromisoformat(value).replace(tzinfo=None)
        elif isinstance(value, str) and python_type is date:
            moment = when(value, now)
            value = moment.date() if moment else date.fromisoformat(value)
        out[name] = value
    return out


class SetupError(RuntimeError):
    """A test's contact or data could not be set up."""


class NoDatabase:
    """Runs tests without a database: 'data:' is refused, actions that need one fail."""

    schema = None

    @contextmanager
    def case(self, data: Rows, contact: dict) -> Iterator[dict]:
        yield {**contact, "id": 1}


class DatabaseFixture:
    """Each test in a transaction that is rolled back: its contact as a row (through ``add_contact``)
    and its 'data:' rows, for actions that read or write the database."""

    def __init__(self, session, metadata, add_contact: Callable[[Any, dict], int] | None = None,
                 clock: Callable[[], datetime] | None = None):
        self.session, self.metadata, self.add_contact = session, metadata, add_contact
        self.clock = clock or (lambda: datetime.now(UTC).replace(tzinfo=None))  # naive UTC, like the models
        self.schema = {t.name: set(t.c.keys()) for t in metadata.sorted_tables}

    @contextmanager
    def case(self, data: Rows, contact: dict) -> Iterator[dict]:
        self.session.rollback()
        try:
            try:
                contact_id = self.add_contact(self.session, contact) if self.add_contact else 1
                now = self.clock()
                for table in self.metadata.sorted_tables:  # parents before children
                    for row in data.get(table.name, []):
                        self.session.execute(table.insert().values(**row_values(table, row, now)))
                self.session.flush()
            except Exception as exc:  # reported as the test's failure
                raise SetupError(f"could not seed the test's data: {_first_line(exc)}") from exc
            yield {**contact, "id": contact_id}
        finally:
            self.session.rollback()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# --- running ---------------------------------------------------------------------------

@dataclass
class Outcome:
    path: str
    line: int
    name: str
    passed: bool
    report: list[str] = field(default_factory=list)


@dataclass
class Summary:
    outcomes: list[Outcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    visited: set[tuple[str, str]] = field(default_factory=set)
    coverage: dict[str, tuple[int, list[str]]] = field(default_factory=dict)  # flow: (steps, never visited)

    @property
    def ok(self) -> bool:
        return not self.problems and all(o.passed for o in self.outcomes)


def _input_line(step: CaseStep) -> str:
    if step.user is not None:
        return f"user: {step.user}"
    if step.press is not None:
        return f"press: {step.press}"
    if step.start is not None:
        return f"start: {step.start}"
    if step.expire:
        return "(the session idles out)"
    if step.message is not None:
        kind, text, _ = describe(step.message)
        return f"user: [{kind}] {text or ''}".rstrip()
    return "(no input)"


class _Failed(Exception):
    def __init__(self, lines: list[str]):
        self.lines = lines


def run_case(loaded: Transcript, index: int, library: engine.Library, actions: Mapping[str, Callable],
             settings: engine.EngineSettings, expired_message: str | None, fixture=None,
             visited: set | None = None) -> Outcome:
    case = loaded.doc.tests[index]
    outcome = Outcome(loaded.path, loaded.line("tests", index), case.name, True)
    fixture = fixture or NoDatabase()
    acts = dict(actions)
    for name in case.fail:
        acts[name] = _failing(name)
    history: list[str] = []  # the exchange so far, as lines
    try:
        with fixture.case(loaded.data(case), loaded.contact(case)) as contact:
            conv = Conversation(library, contact, settings, acts, expired_message)
            for j, step in enumerate(case.steps):
                _run_step(loaded, index, j, step, conv, history)
                if visited is not None:
                    visited.update(conv.path)
    except _Failed as failed:
        outcome.passed, outcome.report = False, failed.lines
    except SetupError as exc:
        outcome.passed, outcome.report = False, [str(exc)]
    return outcome


def _run_step(loaded: Transcript, i: int, j: int, step: CaseStep, conv: Conversation, history: list[str]) -> None:
    where = f"step {j + 1} (line {loaded.line('tests', i, 'steps', j)})"
    before = len(conv.sent)
    try:
        if step.user is not None:
            conv.say(step.user)
        elif step.press is not None:
            conv.press(step.press)
        elif step.message is not None:
            conv.receive(step.message)
        elif step.start is not None:
            conv.start(step.start)
        elif step.expire:
            conv.expire()
    except LookupError as exc:
        raise _Failed([f"{where}: {exc}", *_indent(history[-CONTEXT_LINES:])]) from None
    except Exception as exc:  # a crash in the engine or an action fails this test only
        raise _Failed([f"{where}: the turn raised {type(exc).__name__}: {_first_line(exc)}"]) from None
    actual = [parts(m) for m in conv.sent[before:]]
    said = [_input_line(step)] if step.input else []
    if step.bot is not None:
        problem = _compare(step.bot, actual)
        if problem:
            expected_lines = history + said
            for k, spec in enumerate(step.bot):
                match = actual[k] if k < len(actual) else None
                ok = match is not None and not differences(spec, match)
                expected_lines += bot_lines(match if ok else expected_parts(spec, match))
            actual_lines = history + said + [x for p in actual for x in bot_lines(p)]
            diff = difflib.unified_diff(expected_lines, actual_lines, "expected", "actual", n=CONTEXT_LINES,
                                        lineterm="")
            report = [f"{where}: {problem}", *_indent(list(diff))]
            report += _errors(conv)
            raise _Failed(report)
    history += said + [x for p in actual for x in bot_lines(p)]
    if step.expect is not None:
        wrong = state_differences(step.expect, conv)
        if wrong:
            lines = [f"{where}: the state after the turn differs"]
            for what, wanted, got in wrong:
                lines += [f"  - {what}: {_show(wanted)}", f"  + {what}: {_show(got)}"]
            lines += _errors(conv)
            raise _Failed(lines)


def _errors(conv: Conversation) -> list[str]:
    """The turn's error effects (a failing action, a broken template), one line each."""
    out = []
    for error in conv.errors:
        what = error.get("action") or error.get("step") or "template"
        first = (str(error.get("error") or "").strip().splitlines() or ["?"])[0]
        out.append(f"  flow error ({what}): {first}")
    return out


def _compare(specs: list[BotMessage], actual: list[dict]) -> str | None:
    for k, spec in enumerate(specs):
        if k >= len(actual):
            break
        problems = differences(spec, actual[k])
        if problems:
            return f"bot message {k + 1}: {'; '.join(problems)}"
    if len(specs) != len(actual):
        return (f"{len(specs)} bot message{'s' if len(specs) != 1 else ''} expected, "
                f"the bot sent {len(actual)}")
    return None


def _indent(lines: list[str]) -> list[str]:
    return ["    " + line for line in lines]


def load_library(paths: list[str]) -> engine.Library:
    """The flows a transcript runs against (flow files only; transcripts are skipped)."""
    loaded = load_files(paths)
    problems = d.check_library([x.doc for x in loaded])
    if problems:
        raise d.FlowError(problems)
    return engine.Library([x.doc for x in loaded])


def check(loaded: Transcript, library: engine.Library, actions: Mapping[str, Callable], schema) -> list[str]:
    """Problems a transcript has with its flows, actions and (if any) database, as 'file:line: ...'."""
    doc, problems = loaded.doc, []
    if doc.flow is not None and doc.flow not in library.flows:
        problems.append(loaded.where(("flow",), f"no flow named {doc.flow!r} in {', '.join(doc.flows)}"))

    def check_data(data: Rows, loc: tuple) -> None:
        for table, rows in data.items():
            if schema is None:
                problems.append(loaded.where(loc + (table,), "'data' needs a database (run `flask flows test`)"))
            elif table not in schema:
                problems.append(loaded.where(loc + (table,), f"no table named {table!r}"))
            else:
                for r, row in enumerate(rows):
                    unknown = sorted(set(row) - schema[table])
                    if unknown:
                        problems.append(loaded.where(loc + (table, r, unknown[0]),
                                                     f"table {table!r} has no column {unknown[0]!r}"))

    check_data(doc.data, ("data",))
    for i, case in enumerate(doc.tests):
        check_data(case.data, ("tests", i, "data"))
        for k, name in enumerate(case.fail):
            if name not in actions:
                problems.append(loaded.where(("tests", i, "fail", k), f"no action named {name!r}"))
        for j, step in enumerate(case.steps):
            if step.start is not None and step.start not in library.flows:
                problems.append(loaded.where(("tests", i, "steps", j, "start"), f"no flow named {step.start!r}"))
            if step.expect is not None and step.expect.flow is not None and step.expect.flow not in library.flows:
                problems.append(loaded.where(("tests", i, "steps", j, "expect", "flow"),
                                             f"no flow named {step.expect.flow!r}"))
    return problems


def run_transcripts(paths: list[str], actions: Mapping[str, Callable], settings: engine.EngineSettings,
                    expired_message: str | None = None, fixture=None,
                    echo: Callable[[str], None] = print) -> Summary:
    """Run every transcript under ``paths``; print one line per test and a report for each failure."""
    summary = Summary()
    fixture = fixture or NoDatabase()
    files = transcript_files(paths)
    if not files:
        summary.problems.append(f"no transcripts (*.test.yaml) in {', '.join(paths)}")
    libraries: dict[tuple, engine.Library | None] = {}
    tested: dict[str, engine.Library] = {}
    runnable = []
    for path in files:
        try:
            loaded = parse_transcript(path.read_text(encoding="utf-8"), str(path))
        except TranscriptError as exc:
            summary.problems += exc.problems
            continue
        except OSError as exc:
            summary.problems.append(f"{path}: cannot read: {exc.strerror}")
            continue
        key = tuple(str(Path(p).resolve()) for p in loaded.flow_paths)
        if key not in libraries:
            try:
                libraries[key] = load_library(loaded.flow_paths)
            except d.FlowError as exc:
                libraries[key] = None
                summary.problems += exc.problems
        library = libraries[key]
        if library is None:
            summary.problems.append(f"{path}:1: its flows have problems (above)")
            continue
        problems = check(loaded, library, actions, fixture.schema)
        if problems:
            summary.problems += problems
            continue
        if loaded.doc.flow:
            tested[loaded.doc.flow] = library
        runnable.append((loaded, library))
    for problem in summary.problems:
        echo(problem)
    for loaded, library in runnable:
        for i in range(len(loaded.doc.tests)):
            outcome = run_case(loaded, i, library, actions, settings, expired_message, fixture, summary.visited)
            summary.outcomes.append(outcome)
            echo(f"{'ok  ' if outcome.passed else 'FAIL'}  {outcome.path}:{outcome.line}  {outcome.name}")
            for line in outcome.report:
                echo("      " + line)
    for name in sorted(tested):
        flow = tested[name].flows[name]
        missed = [s.id for s in flow.steps if (name, s.id) not in summary.visited]
        summary.coverage[name] = (len(flow.steps), missed)
        seen = len(flow.steps) - len(missed)
        echo(f"steps {name}: {seen}/{len(flow.steps)} visited"
             + (f"; never: {', '.join(missed)}" if missed else ""))
    passed = sum(o.passed for o in summary.outcomes)
    failed = len(summary.outcomes) - passed
    tail = f", {len(summary.problems)} problem{'s' if len(summary.problems) != 1 else ''}" if summary.problems else ""
    echo(f"{passed} passed, {failed} failed{tail}")
    return summary
