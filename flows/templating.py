"""Flow templates (Jinja2) with bounded work: no template can exhaust memory or a worker.

Jinja's sandbox keeps templates away from Python internals, but not from the machine:
``{{ "x" * 10**9 }}`` allocates a gigabyte and three nested loops run for hours. Here
every render has limits, checked *before* anything large is allocated:

* output: at most ``MAX_OUTPUT`` characters (a WhatsApp text); longer output is cut;
* values: no string, list or dict built by an operator, filter or method may exceed
  ``MAX_VALUE`` items (``*``, ``+``, ``~``, ``%``, ``replace``, ``center``, ``indent``,
  ``join``, ``format`` ... are checked up front), integers stay under ``MAX_INT_BITS``,
  format widths and precisions under ``MAX_WIDTH``;
* work: ``range`` yields at most ``MAX_RANGE`` numbers, and every loop iteration, call,
  filter and operator is charged to a budget of ``MAX_STEPS`` per render (large values
  cost more), so nested loops and recursive macros stop;
* ``lipsum`` is gone and lists/dicts cannot be modified (immutable sandbox).

A limit raises ``TemplateLimitError`` (an ordinary template error for the engine).

Exceptions that are not template errors pass through the engine's error handling:
anything that is not an ``Exception`` (KeyboardInterrupt, SystemExit) and a job
timeout. RQ's ``JobTimeoutException`` derives from ``Exception`` (``rq.timeouts.
BaseTimeoutException(Exception)``), so it is recognised by class name, without
importing RQ: the engine stays pure.
"""

from __future__ import annotations

import itertools
import re
import types
from contextvars import ContextVar
from typing import Any

from jinja2 import ChainableUndefined, Environment, nodes
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

MAX_OUTPUT = 4096
MAX_VALUE = 65_536
MAX_INT_BITS = 8192
MAX_WIDTH = 4096
MAX_RANGE = 1000
MAX_STEPS = 100_000
CHARS_PER_STEP = 256  # a value's size is charged at one step per this many items
TIMEOUT_CLASS_NAMES = frozenset({"JobTimeoutException", "BaseTimeoutException"})  # rq.timeouts


class TemplateLimitError(Exception):
    """A template tried to do more work or build a larger value than a render allows."""


def must_propagate(exc: BaseException) -> bool:
    """Whether an exception caught around a render or a flow action must be re-raised:
    anything not an ``Exception``, and job timeouts (recognised by class name)."""
    if not isinstance(exc, Exception):
        return True
    return any(cls.__name__ in TIMEOUT_CLASS_NAMES for cls in type(exc).__mro__)


# --- the work budget of the render in progress -------------------------------

class _Budget:
    __slots__ = ("steps",)

    def __init__(self):
        self.steps = 0


_budget: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)
_SIZED = (str, bytes, list, tuple, dict, set, frozenset)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, _SIZED) else 0


def _charge(*values: Any) -> None:
    budget = _budget.get()
    if budget is None:
        return
    size = 0
    for value in values:
        if isinstance(value, _SIZED):
            size += len(value)
    budget.steps += 1 + size // CHARS_PER_STEP
    if budget.steps > MAX_STEPS:
        raise TemplateLimitError(f"the template does too much work (more than {MAX_STEPS} steps)")


def _tick() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.steps += 1
        if budget.steps > MAX_STEPS:
            raise TemplateLimitError(f"the template does too much work (more than {MAX_STEPS} steps)")


def _limit(value: Any, what: str = "value") -> Any:
    if _size(value) > MAX_VALUE:
        raise TemplateLimitError(f"{what} would be longer than {MAX_VALUE}")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise TemplateLimitError(f"{what} would be an integer over {MAX_INT_BITS} bits")
    return value


def _expect_at_most(n: Any, limit: int, what: str) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and n > limit:
        raise TemplateLimitError(f"{what} {n} is over the limit of {limit}")


# --- checks made before an operation allocates --------------------------------

_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?[a-zA-Z%]")
_DIGITS = re.compile(r"\d+")


def _check_percent(fmt: Any) -> None:
    """printf-style formats: widths and precisions at most MAX_WIDTH, no ``*``."""
    if not isinstance(fmt, str) or "%" not in fmt:
        return
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for part in (width, precision):
            if part == "*":
                raise TemplateLimitError("'*' widths are not allowed in templates")
            if part and int(part) > MAX_WIDTH:
                raise TemplateLimitError(f"format width {part} is over the limit of {MAX_WIDTH}")


def _check_spec(spec: str) -> None:
    """str.format specs: no number in a spec above MAX_WIDTH (covers width and precision)."""
    for digits in _DIGITS.findall(spec):
        if len(digits) > 6 or int(digits) > MAX_WIDTH:
            raise TemplateLimitError(f"format width {digits[:12]} is over the limit of {MAX_WIDTH}")


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        count = text.count(old) if old else len(text) + 1
        if len(text) + count * (len(new) - len(old)) > MAX_VALUE:
            raise TemplateLimitError(f"replace would make a text longer than {MAX_VALUE}")


def _check_join(separator: Any, items: Any) -> list:
    items = list(itertools.islice(items, MAX_VALUE + 1))
    if len(items) > MAX_VALUE:
        raise TemplateLimitError(f"join of more than {MAX_VALUE} items")
    total = len(separator) * max(len(items) - 1, 0) if isinstance(separator, str) else 0
    total += sum(len(i) for i in items if isinstance(i, str))
    if total > MAX_VALUE:
        raise TemplateLimitError(f"join would make a text longer than {MAX_VALUE}")
    return items


def _check_str_method(owner: str, name: str, args: tuple, kwargs: dict) -> tuple:
    """Pre-checks for the str methods that can build a text much larger than their input."""
    if name in ("center", "ljust", "rjust", "zfill"):
        _expect_at_most(args[0] if args else kwargs.get("width"), MAX_VALUE, "width")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and owner.count("\t") * size > MAX_VALUE:
            raise TemplateLimitError(f"expandtabs would make a text longer than {MAX_VALUE}")
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1])
    elif name == "join" and args:
        args = (_check_join(owner, args[0]), *args[1:])
    return args


def _filter_checks(name: str, args: tuple, kwargs: dict) -> None:
    """Pre-checks for the built-in filters that can amplify their input."""
    value = args[0] if args else None
    rest = args[1:]
    if name == "center":
        _expect_at_most(rest[0] if rest else kwargs.get("width"), MAX_VALUE, "width")
    elif name == "indent":
        width = rest[0] if rest else kwargs.get("width", 4)
        if isinstance(value, str) and isinstance(width, int):
            if (value.count("\n") + 1) * width > MAX_VALUE:
                raise TemplateLimitError(f"indent would make a text longer than {MAX_VALUE}")
        elif isinstance(value, str) and isinstance(width, str):
            if (value.count("\n") + 1) * len(width) > MAX_VALUE:
                raise TemplateLimitError(f"indent would make a text longer than {MAX_VALUE}")
    elif name == "replace" and len(rest) >= 2:
        _check_replace(str(value) if value is not None else "", rest[0], rest[1])
    elif name == "format":
        _check_percent(value)
    elif name in ("batch", "slice"):
        _expect_at_most(rest[0] if rest else kwargs.get("linecount", kwargs.get("slices")), MAX_VALUE, name)
    elif name == "join":
        separator = rest[0] if rest else kwargs.get("d", "")
        if isinstance(separator, str) and isinstance(value, (list, tuple)):
            _check_join(separator, [i if isinstance(i, str) else "" for i in value])
    elif name == "wordwrap":
        _expect_at_most(rest[0] if rest else kwargs.get("width"), MAX_VALUE, "width")


CHECKED_FILTERS = frozenset({"center", "indent", "replace", "format", "batch", "slice", "join", "wordwrap"})


def _bounded_filter(name: str, fn):
    checked = name in CHECKED_FILTERS

    def bounded(*args, **kwargs):
        _charge(*args[:2])  # the value (after a context, for the filters that take one)
        if checked:
            _filter_checks(name, tuple(a for a in args if not _is_jinja_context(a)), kwargs)
        result = fn(*args, **kwargs)
        _charge(result)
        return _limit(result, f"the result of '{name}'")

    bounded.__dict__.update(getattr(fn, "__dict__", {}))  # keeps Jinja's pass_context / pass_eval_context marks
    bounded.__name__ = getattr(fn, "__name__", name)
    bounded.__doc__ = fn.__doc__
    return bounded


def _is_jinja_context(value: Any) -> bool:
    return isinstance(value, (Context, EvalContext, Environment))


class _BoundedFormatter(SandboxedFormatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        _check_spec(format_spec)
        _charge(value)
        return _limit(super().format_field(value, format_spec), "a formatted field")


class _BoundedEscapeFormatter(SandboxedEscapeFormatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        _check_spec(format_spec)
        _charge(value)
        return _limit(super().format_field(value, format_spec), "a formatted field")


# --- the environment ------------------------------------------------------------

LOOP_GUARD = "_bounded_loop"
CONCAT = "_bounded_concat"


def _bounded_range(*args: Any) -> range:
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:
        count = MAX_RANGE + 1
    if count > MAX_RANGE:
        raise TemplateLimitError(f"range of {count if count <= 10**12 else 'too many'} numbers; "
                                 f"the limit is {MAX_RANGE}")
    return numbers


def _bounded_loop(iterable: Any):
    for item in iterable:
        _tick()
        yield item


def _bounded_concat(*parts: Any) -> str:
    texts = [p if isinstance(p, str) else str(p) for p in parts]
    total = sum(len(t) for t in texts)
    if total > MAX_VALUE:
        raise TemplateLimitError(f"'~' would make a text longer than {MAX_VALUE}")
    _charge(*texts)
    return "".join(texts)


class _Guards(NodeTransformer):
    """Every ``for`` iterates through the loop guard; every ``~`` goes through the concat guard."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        loop = self.generic_visit(node)
        assert isinstance(loop, nodes.For)
        loop.iter = nodes.Call(nodes.Name(LOOP_GUARD, "load"), [loop.iter], [], None, None, lineno=loop.lineno)
        return loop

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        concat = self.generic_visit(node)
        assert isinstance(concat, nodes.Concat)
        return nodes.Call(nodes.Name(CONCAT, "load"), list(concat.nodes), [], None, None, lineno=concat.lineno)


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox with the limits described in the module docstring."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.globals.pop("lipsum", None)
        self.globals["range"] = _bounded_range
        self.globals[LOOP_GUARD] = _bounded_loop
        self.globals[CONCAT] = _bounded_concat
        self.filters = {name: _bounded_filter(name, fn) for name, fn in self.filters.items()}

    def _parse(self, source, name, filename):
        tree = super()._parse(source, name, filename)
        tree = _Guards().visit(tree)
        tree.set_environment(self)
        return tree

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        _charge(left, right)
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_VALUE:
                    raise TemplateLimitError(f"'*' would make a value longer than {MAX_VALUE}")
            if isinstance(left, int) and isinstance(right, int) and (
                    left.bit_length() + right.bit_length() > MAX_INT_BITS):
                raise TemplateLimitError(f"'*' would make an integer over {MAX_INT_BITS} bits")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 and (
                    (left.bit_length() - 1) * right > MAX_INT_BITS):
                raise TemplateLimitError(f"'**' would make an integer over {MAX_INT_BITS} bits")
        elif operator == "%":
            _check_percent(left)
        return _limit(super().call_binop(context, operator, left, right), f"the result of '{operator}'")

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(__obj, "__self__", None)
        _charge(owner, *args)
        if isinstance(owner, str):
            args = _check_str_method(owner, getattr(__obj, "__name__", ""), args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        _charge(result)
        return _limit(result, "the result of a call")

    def wrap_str_format(self, value: Any):
        """``str.format`` / ``format_map`` through a formatter that checks every field's spec."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or \
                value.__name__ not in ("format", "format_map") or not isinstance(value.__self__, str):
            return None
        owner, name = value.__self__, value.__name__
        formatter = _BoundedEscapeFormatter(self, escape=owner.escape) if isinstance(owner, Markup) \
            else _BoundedFormatter(self)

        def bounded_format(*args: Any, **kwargs: Any) -> str:
            if name == "format_map":
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one mapping")
                mapping = args[0]
                args, kwargs = (), mapping
            return type(owner)(_limit(formatter.vformat(owner, args, kwargs), "a formatted text"))

        return bounded_format


environment = BoundedEnvironment(autoescape=False, undefined=ChainableUndefined, keep_trailing_newline=True)


def render(template, context: dict) -> tuple[str, bool]:
    """Render a compiled template within the limits: (text, whether the output was cut)."""
    token = _budget.set(_Budget())
    try:
        parts: list[str] = []
        size, cut = 0, False
        # Template.generate without its per-chunk wrapper: the same calls, fewer frames.
        stream = template.root_render_func(template.new_context(context))
        try:
            for chunk in stream:
                size += len(chunk)
                if size > MAX_OUTPUT:
                    parts.append(chunk[: len(chunk) - (size - MAX_OUTPUT)])
                    cut = True
                    break
                parts.append(chunk)
        except Exception:  # noqa: BLE001 - re-raised by Jinja with the template's line numbers
            template.environment.handle_exception()
        finally:
            stream.close()
        return "".join(parts), cut
    finally:
        _budget.reset(token)
