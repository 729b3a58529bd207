"""Values every database we support can hold, made so at the edge (never at commit time).

PostgreSQL refuses text holding NUL (``\\x00``), no UTF-8 encoder takes a lone surrogate
(``\\ud800``), and JSON has no NaN or infinity: one such value in a row makes its whole
transaction fail, again on every retry. These helpers turn anything into something storable:

* ``clean_text``: lone surrogates become U+FFFD, NUL characters are removed;
* ``storable``: JSON types only (str keys, finite numbers), with ``clean_text`` on every string,
  nesting cut at ``MAX_DEPTH``.

Pure: no Flask, database or Redis here (the flow engine uses it too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` without NUL characters and with every lone surrogate replaced by U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return text


def clip(text: str | None, limit: int) -> str | None:
    """``clean_text`` then at most ``limit`` characters (None stays None)."""
    if text is None:
        return None
    text = clean_text(text)
    return text if len(text) <= limit else text[:limit]


def finite(number: float) -> bool:
    return math.isfinite(number)


def storable(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data that PostgreSQL and SQLite both accept.

    Strings are cleaned, NaN and infinities become None, dates become ISO strings, other
    objects their ``str``; containers deeper than ``MAX_DEPTH`` (or cyclic) become None.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() and math.isfinite(float(value)) else None
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, Mapping):
        return {clean_text(k if isinstance(k, str) else str(k)): storable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [storable(v, depth + 1) for v in value]
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return clean_text(value.decode("utf-8", "replace"))
    return clean_text(str(value))
