"""Flow documents: a validated schema (pydantic) loaded from YAML or JSON.

Errors name the file, the line, the step and the field at fault, e.g.::

    flows/examples/welcome.yaml:14: step 'menu' field 'options[0].next': unknown step 'nowhere'

Loading is bounded work: a document is at most ``MAX_FLOW_BYTES``, YAML anchors and
aliases are refused (a few hundred bytes of aliases expand to gigabytes), nesting is
at most ``MAX_NESTING`` deep, and regex conditions compile with RE2, which matches in
linear time (no backreferences or lookaround: such a pattern is refused here).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import re2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.text import normalize
from integrations.storable import clean_text
from integrations.whatsapp import messages as wa

NAME_RE = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
DEFAULT_EXPIRED = object()  # marker: the flow did not set expired_message
MAX_FLOW_BYTES = 512 * 1024
MAX_NESTING = 64


@lru_cache(maxsize=1024)
def condition_regex(pattern: str):
    """A condition's pattern compiled with RE2 (linear-time matching), case-insensitive.

    Raises ValueError naming what RE2 refused (backreferences, lookaround, huge repeats).
    """
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"bad regex {pattern!r}: {reason} (conditions use RE2 syntax: "
                         "no backreferences or lookaround)") from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Option(Strict):
    id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1)
    description: str | None = None
    next: str | None = None


class Row(Strict):
    id: str = Field(min_length=1, max_length=200)
    title: str = Field(min_length=1)
    description: str | None = None


class TextMsg(Strict):
    type: Literal["text"] = "text"
    text: str = Field(min_length=1)
    preview_url: bool = False


class ButtonsMsg(Strict):
    type: Literal["buttons"]
    text: str = Field(min_length=1)
    buttons: list[Row] = Field(min_length=1)
    header: str | None = None
    footer: str | None = None


class ListMsg(Strict):
    type: Literal["list"]
    text: str = Field(min_length=1)
    button: str = "Choose"
    rows: list[Row] = Field(min_length=1)
    header: str | None = None
    footer: str | None = None


class MediaMsg(Strict):
    type: Literal["image", "audio", "video", "document", "sticker"]
    link: str | None = None
    media_id: str | None = None
    caption: str | None = None
    filename: str | None = None


class TemplateMsg(Strict):
    type: Literal["template"]
    name: str
    language: str = "en_US"
    components: list[dict] = Field(default_factory=list)


class LocationMsg(Strict):
    type: Literal["location"]
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class ContactsMsg(Strict):
    type: Literal["contacts"]
    contacts: list[dict] = Field(min_length=1)


MessageSpec = Annotated[
    Union[TextMsg, ButtonsMsg, ListMsg, MediaMsg, TemplateMsg, LocationMsg, ContactsMsg],
    Field(discriminator="type"),
]


def _text_shorthand(value: Any) -> Any:
    if isinstance(value, str):
        return {"type": "text", "text": value}
    if isinstance(value, dict) and "type" not in value and "text" in value:
        return {"type": "text", **value}
    return value


class Condition(Strict):
    """All operators given must hold. Subject: ``var``, ``field`` or (default) the reply text."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    var: str | None = None
    field: str | None = None
    equals: str | None = None
    contains: str | None = None
    regex: str | None = None
    lt: float | None = None
    lte: float | None = None
    gt: float | None = None
    gte: float | None = None
    eq: float | None = None
    is_: Literal["email", "phone", "date", "number"] | None = Field(default=None, alias="is")
    exists: bool | None = None
    reply_id: str | list[str] | None = None
    type: str | list[str] | None = None

    @model_validator(mode="after")
    def _one_operator(self):
        ops = ("equals", "contains", "regex", "lt", "lte", "gt", "gte", "eq", "is_", "exists", "reply_id", "type")
        if all(getattr(self, op) is None for op in ops):
            raise ValueError("a condition needs at least one operator "
                             "(equals, contains, regex, lt, lte, gt, gte, eq, is, exists, reply_id, type)")
        if self.var and self.field:
            raise ValueError("a condition tests either 'var' or 'field', not both")
        return self

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value):
        if value is not None:
            condition_regex(value)
        return value


class Case(Strict):
    when: Condition
    next: str


class StepBase(Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")


class SendStep(StepBase):
    type: Literal["send"]
    messages: list[MessageSpec] = Field(min_length=1)
    next: str | None = None

    @field_validator("messages", mode="before")
    @classmethod
    def _shorthand(cls, value):
        return [_text_shorthand(v) for v in value] if isinstance(value, list) else value


Expect = Literal["text", "number", "email", "phone", "date", "choice", "media", "location", "any"]


class QuestionStep(StepBase):
    type: Literal["question"]
    text: str = Field(min_length=1)
    expect: Expect = "text"
    options: list[Option] = Field(default_factory=list)
    options_from: str | None = None  # variable holding [{id, title, description?}]
    button: str = "Choose"
    header: str | None = None
    footer: str | None = None
    save_as: str | None = None
    min: float | None = None
    max: float | None = None
    retry_text: str | None = None
    max_attempts: int = Field(default=3, ge=1, le=10)
    on_invalid: str | None = None
    next: str | None = None

    @model_validator(mode="after")
    def _choice_has_options(self):
        if self.expect == "choice" and not self.options and not self.options_from:
            raise ValueError("a 'choice' question needs 'options' or 'options_from'")
        if self.expect != "choice" and (self.options or self.options_from):
            raise ValueError("'options' only go with expect: choice")
        return self


class SetStep(StepBase):
    type: Literal["set"]
    variables: dict[str, Any] = Field(default_factory=dict)
    contact_fields: dict[str, Any] = Field(default_factory=dict)
    next: str | None = None


class RouteStep(StepBase):
    type: Literal["route"]
    cases: list[Case] = Field(default_factory=list)
    default: str


class ActionStep(StepBase):
    type: Literal["action"]
    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    save_as: str | None = None
    next: str | None = None
    on_error: str | None = None


class EnterFlowStep(StepBase):
    type: Literal["flow"]
    flow: str


class HandoverStep(StepBase):
    type: Literal["handover"]
    text: str | None = None
    # The user may leave the handover with the menu or cancel keywords (STOP always works).
    exit_keywords: bool = True


class EndStep(StepBase):
    type: Literal["end"]
    text: str | None = None


Step = Annotated[
    Union[SendStep, QuestionStep, SetStep, RouteStep, ActionStep, EnterFlowStep, HandoverStep, EndStep],
    Field(discriminator="type"),
]


FALLS_THROUGH = (SendStep, QuestionStep, SetStep, ActionStep)


def next_step(step, follow: dict[str, str]) -> str | None:
    """Where a step goes when it does not say: the following step in the list."""
    if not isinstance(step, FALLS_THROUGH):
        return None
    return step.next or follow.get(step.id)


class Triggers(Strict):
    keywords: list[str] = Field(default_factory=list)
    reply_ids: list[str] = Field(default_factory=list)
    catch_all: bool = False
    priority: int = 0


class FlowSettings(Strict):
    idle_minutes: float | None = Field(default=None, gt=0)
    expired_message: str | None = None


class FlowDoc(Strict):
    name: str = Field(pattern=NAME_RE)
    description: str = ""
    triggers: Triggers = Field(default_factory=Triggers)
    settings: FlowSettings = Field(default_factory=FlowSettings)
    start: str | None = None
    steps: list[Step] = Field(min_length=1)
    @property
    def start_step(self) -> str:
        return self.start or self.steps[0].id

    def follow(self) -> dict[str, str]:
        """Each step id mapped to the id of the step after it in the list."""
        return {a.id: b.id for a, b in zip(self.steps, self.steps[1:], strict=False)}

    @property
    def expired_message(self):
        """The flow's own expiry text, None for none, DEFAULT_EXPIRED when not set."""
        if "expired_message" in self.settings.model_fields_set:
            return self.settings.expired_message
        return DEFAULT_EXPIRED


# --- semantic checks --------------------------------------------------------

def _targets(step) -> list[tuple[tuple, str]]:
    """(path within the step, target step id) for every jump a step can make."""
    out: list[tuple[tuple, str]] = []
    for attr in ("next", "on_invalid", "on_error", "default"):
        target = getattr(step, attr, None)
        if target:
            out.append(((attr,), target))
    for i, option in enumerate(getattr(step, "options", None) or []):
        if option.next:
            out.append((("options", i, "next"), option.next))
    for i, case in enumerate(getattr(step, "cases", None) or []):
        out.append((("cases", i, "next"), case.next))
    return out


def _static(text: str | None) -> bool:
    return text is not None and "{{" not in text and "{%" not in text


def _check_limits(step) -> list[tuple[tuple, str]]:
    problems = []

    def check(path, fn):
        try:
            fn()
        except wa.MessageLimitError as exc:
            problems.append((path, str(exc)))

    if isinstance(step, QuestionStep) and step.expect == "choice" and step.options:
        short = all(len(o.title) <= wa.BUTTON_TITLE_MAX for o in step.options)
        if _static(step.text) and len(step.options) <= 3 and short:
            check(("text",), lambda: wa.buttons(step.text, [(o.id, o.title) for o in step.options]))
        for i, option in enumerate(step.options):
            if _static(option.title) and len(option.title) > wa.ROW_TITLE_MAX:
                problems.append((("options", i, "title"),
                                 f"option title is {len(option.title)} characters; the limit is {wa.ROW_TITLE_MAX}"))
            desc = option.description
            if desc and _static(desc) and len(desc) > wa.ROW_DESCRIPTION_MAX:
                problems.append((("options", i, "description"),
                                 f"option description is longer than {wa.ROW_DESCRIPTION_MAX} characters"))
    if isinstance(step, QuestionStep) and step.button and len(step.button) > wa.LIST_BUTTON_MAX:
        problems.append((("button",), f"list button label is longer than {wa.LIST_BUTTON_MAX} characters"))
    for attr in ("text",):
        value = getattr(step, attr, None)
        if (isinstance(step, (QuestionStep, HandoverStep, EndStep)) and isinstance(value, str) and _static(value)
                and len(value) > wa.TEXT_MAX):
            problems.append(((attr,), f"text is {len(value)} characters; the limit is {wa.TEXT_MAX}"))
    for i, msg in enumerate(getattr(step, "messages", None) or []):
        if all(_static(t) for t in _message_texts(msg)):
            check(("messages", i), lambda msg=msg: render_message(msg, lambda s: s))
    return problems


def _message_texts(msg) -> list[str]:
    texts = [getattr(msg, a) for a in ("text", "caption", "header", "footer", "button", "link", "media_id")
             if getattr(msg, a, None)]
    for row in getattr(msg, "buttons", None) or getattr(msg, "rows", None) or []:
        texts += [row.id, row.title] + ([row.description] if row.description else [])
    return texts


def semantic_problems(doc: FlowDoc) -> list[tuple[tuple, str]]:
    """Checks pydantic cannot express: ids, jumps, reachability, WhatsApp limits."""
    problems: list[tuple[tuple, str]] = []
    ids: dict[str, int] = {}
    for i, step in enumerate(doc.steps):
        if step.id in ids:
            first = ids[step.id]
            problems.append((("steps", i, "id"), f"duplicate step id {step.id!r} (first used by steps[{first}])"))
        else:
            ids[step.id] = i
    if doc.start and doc.start not in ids:
        problems.append((("start",), f"unknown step {doc.start!r}"))
    graph: dict[str, list[str]] = {}
    follow = doc.follow()
    for i, step in enumerate(doc.steps):
        graph.setdefault(step.id, [])
        implicit = next_step(step, follow)
        if implicit and not getattr(step, "next", None):
            graph[step.id].append(implicit)
        for path, target in _targets(step):
            if target not in ids:
                problems.append((("steps", i) + path, f"unknown step {target!r}"))
            else:
                graph[step.id].append(target)
        for path, message in _check_limits(step):
            problems.append((("steps", i) + path, message))
    if doc.start_step in ids:
        seen, todo = {doc.start_step}, deque([doc.start_step])
        while todo:
            for target in graph.get(todo.popleft(), []):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        for i, step in enumerate(doc.steps):
            if step.id not in seen:
                problems.append((("steps", i, "id"), f"step {step.id!r} is unreachable from {doc.start_step!r}"))
    return problems


# --- rendering of message specs (shared by the validator and the engine) ----

def render_message(msg, render) -> dict:
    """A message spec as a WhatsApp message object; ``render`` fills in templates."""
    r = lambda v: render(v) if v else v
    if isinstance(msg, TextMsg):
        return wa.text(r(msg.text), msg.preview_url)
    if isinstance(msg, ButtonsMsg):
        return wa.buttons(r(msg.text), [(b.id, r(b.title)) for b in msg.buttons], r(msg.header), r(msg.footer))
    if isinstance(msg, ListMsg):
        rows = [{"id": x.id, "title": r(x.title), "description": r(x.description)} for x in msg.rows]
        return wa.list_message(r(msg.text), r(msg.button), [{"rows": rows}], r(msg.header), r(msg.footer))
    if isinstance(msg, MediaMsg):
        return wa.media(msg.type, id=r(msg.media_id), link=r(msg.link), caption=r(msg.caption),
                        filename=r(msg.filename))
    if isinstance(msg, TemplateMsg):
        return wa.template(msg.name, msg.language, msg.components or None)
    if isinstance(msg, LocationMsg):
        return wa.location(msg.latitude, msg.longitude, r(msg.name), r(msg.address))
    if isinstance(msg, ContactsMsg):
        return wa.contacts(msg.contacts)
    raise TypeError(f"unknown message spec {type(msg).__name__}")


# --- loading with line numbers ----------------------------------------------

class FlowError(ValueError):
    """A flow document is invalid; ``problems`` are formatted 'file:line: ...' strings."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class FlowLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases, and with nesting at most MAX_NESTING.

    An alias makes the composed document a graph: walking it as a tree (as the line
    bookkeeping does) is exponential, the "billion laughs". Flows do not need them.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "YAML anchors and aliases (&name, *name) are not "
                                              "allowed in flow documents", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_NESTING} levels deep",
                                                  event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose_lines(text: str, scalars: dict[tuple, str] | None = None) -> tuple[Any, dict[tuple, int]]:
    """Load YAML (or JSON, a subset of it) keeping the line of every value (and, into ``scalars``,
    the source text of every unquoted scalar: YAML reads `Yes` as true and `007` as 7)."""
    lines: dict[tuple, int] = {}
    loader = FlowLoader("")

    def build(node, path):
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                lines.setdefault(path + (key,), key_node.start_mark.line + 1)
                out[key] = build(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(child, path + (i,)) for i, child in enumerate(node.value)]
        if scalars is not None and isinstance(node, yaml.ScalarNode) and node.style is None:
            scalars[path] = node.value
        return loader.construct_object(node, deep=True)

    node = yaml.compose(text, Loader=FlowLoader)
    return (build(node, ()) if node is not None else None), lines


@dataclass
class LoadedFlow:
    doc: FlowDoc
    source: str
    source_format: str
    path: str


def _where(data: Any, loc: tuple, lines: dict[tuple, int]) -> tuple[tuple, int | None]:
    """Map a pydantic/semantic location onto the data path (skipping union tags) and its line."""
    path: tuple = ()
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node, path = node[part], path + (part,)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node, path = node[part], path + (part,)
    while path and path not in lines:
        path = path[:-1]
    return path, lines.get(path)


def _describe(data: Any, path: tuple) -> str:
    step = ""
    if len(path) >= 2 and path[0] == "steps" and isinstance(data, dict):
        try:
            step_id = data["steps"][path[1]].get("id")
        except (IndexError, AttributeError, KeyError, TypeError):
            step_id = None
        step = f"step {step_id!r} " if step_id else f"steps[{path[1]}] "
        path = path[2:]
    dotted = ""
    for part in path:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else str(part))
    return f"{step}field {dotted!r}" if dotted else (step.strip() or "document")


# --- error wording (what a flow author reads) ---------------------------------

_YAML_CONTEXT = {"while scanning a quoted scalar": "the quoted text that starts here is not closed"}


def _yaml_problem(exc: yaml.YAMLError, filename: str) -> str:
    """'file:line: ...' at the line and column where the problem starts.

    A scanner error's context mark is the start of the token it could not finish (an unclosed
    quote: where it opened) and its problem mark is where it gave up, often the end of the file;
    a parser error's problem mark is the unexpected token and its context mark the collection
    around it. Both places are named.
    """
    context: str = getattr(exc, "context", None) or ""
    problem: str = getattr(exc, "problem", None) or str(exc)
    context_mark, problem_mark = getattr(exc, "context_mark", None), getattr(exc, "problem_mark", None)
    if problem_mark is None:
        return f"{filename}:1: not valid YAML: {exc}"
    if context_mark is not None and isinstance(exc, yaml.scanner.ScannerError):
        start, other = context_mark, problem_mark
        text, other_text = _YAML_CONTEXT.get(context, context), problem
    else:
        start, other = problem_mark, context_mark
        text, other_text = problem, context
    if context_mark is None and context:
        text = f"{context}: {text}"
    if other is not None and (other.line, other.column) != (start.line, start.column):
        text += f" ({other_text} at line {other.line + 1}, column {other.column + 1})"
    return f"{filename}:{start.line + 1}: not valid YAML at column {start.column + 1}: {text}"


def _tags(union) -> list[str]:
    """The ``type`` values a discriminated union of models accepts, in declaration order."""
    members = get_args(get_args(union)[0])
    return [tag for model in members for tag in get_args(model.model_fields["type"].annotation)]


def _pydantic_problem(err: Mapping[str, Any]) -> tuple[tuple, str]:
    """(location, message) for one pydantic error, in the words of docs/flows.md."""
    loc, msg = tuple(err["loc"]), err["msg"].removeprefix("Value error, ")
    kind = "step" if "messages" not in loc[-2:] else "message"
    union = Step if kind == "step" else MessageSpec
    if err["type"] == "union_tag_not_found":
        extra = ", or a plain string for a text message" if kind == "message" else ""
        msg = f"{kind} needs a `type` (one of: {', '.join(_tags(union))}{extra})"
    elif err["type"] == "union_tag_invalid":
        tag = (err.get("ctx") or {}).get("tag")
        msg = f"unknown {kind} type {tag!r} (one of: {', '.join(_tags(union))})"
        loc += ("type",)
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    return loc, msg


def _unstorable(value: Any, path: tuple) -> tuple | None:
    """The path of the first string (key or value) that a database cannot store, if any."""
    if isinstance(value, str):
        return path if clean_text(value) != value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and clean_text(key) != key:
                return path
            found = _unstorable(item, path + (key,))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _unstorable(item, path + (i,))
            if found is not None:
                return found
    return None


def parse_flow(text: str, filename: str = "<flow>") -> LoadedFlow:
    """Parse and validate one flow document. Raises FlowError with every problem found."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_FLOW_BYTES:
        raise FlowError([f"{filename}:1: the document is {size} bytes; a flow may be at most "
                         f"{MAX_FLOW_BYTES // 1024} KiB"])
    fmt = "json" if filename.endswith(".json") or text.lstrip().startswith("{") else "yaml"
    try:
        if fmt == "json":
            json.loads(text)
        data, lines = _compose_lines(text)
    except json.JSONDecodeError as exc:
        raise FlowError([f"{filename}:{exc.lineno}: not valid JSON at column {exc.colno}: {exc.msg}"]) from None
    except RecursionError:
        raise FlowError([f"{filename}:1: nested more than {MAX_NESTING} levels deep"]) from None
    except yaml.YAMLError as exc:
        raise FlowError([_yaml_problem(exc, filename)]) from None
    if not isinstance(data, dict):
        raise FlowError([f"{filename}:1: a flow document is a mapping with name, triggers, settings and steps"])
    bad = _unstorable(data, ())
    if bad is not None:
        path, line = _where(data, bad, lines)
        raise FlowError([f"{filename}:{line or 1}: {_describe(data, path)}: text holds a NUL character or an "
                         "unpaired surrogate, which cannot be stored"])
    try:
        doc = FlowDoc.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc, msg = _pydantic_problem(err)
            path, line = _where(data, loc, lines)
            where = path
            if err["type"] == "extra_forbidden":  # the unknown key itself is not in the model
                where = _where(data, tuple(err["loc"])[:-1], lines)[0] + (err["loc"][-1],)
            problems.append(f"{filename}:{line or 1}: {_describe(data, where)}: {msg}")
        raise FlowError(problems) from None
    problems = []
    for loc, message in semantic_problems(doc):
        path, line = _where(data, loc, lines)
        problems.append(f"{filename}:{line or 1}: {_describe(data, path)}: {message}")
    if problems:
        raise FlowError(problems)
    return LoadedFlow(doc=doc, source=text, source_format=fmt, path=filename)


TRANSCRIPT_SUFFIXES = (".test.yaml", ".test.yml", ".test.json")  # conversation tests (flows.transcripts)


def flow_files(paths: list[str]) -> list[Path]:
    """Flow files: the files named, and in folders every .yaml/.yml/.json file but transcripts."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json")
                            and not p.name.endswith(TRANSCRIPT_SUFFIXES))
        else:
            files.append(path)
    return files


def check_library(flows: list[FlowDoc]) -> list[str]:
    """Checks across flows: enter-flow targets exist, one catch-all, no keyword clash."""
    names = {f.name for f in flows}
    problems = []
    catch_all = [f.name for f in flows if f.triggers.catch_all]
    if len(catch_all) > 1:
        problems.append(f"more than one catch-all flow: {', '.join(catch_all)}")
    for flow in flows:
        for step in flow.steps:
            if isinstance(step, EnterFlowStep) and step.flow not in names:
                problems.append(f"flow {flow.name!r} step {step.id!r} field 'flow': unknown flow {step.flow!r}")
    owners: dict[tuple[str, int], str] = {}
    for flow in flows:
        for word in flow.triggers.keywords:
            key = (normalize(word), flow.triggers.priority)
            if key in owners and owners[key] != flow.name:
                problems.append(f"keyword {word!r} starts both {owners[key]!r} and {flow.name!r} "
                                f"at priority {flow.triggers.priority}")
            owners[key] = flow.name
    return problems
