"""Reading what users type: normalised keywords, numbers, dates, e-mail addresses, phone numbers.

Pure functions, shared by the flow definition (keyword clashes) and the engine (answers).
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date, datetime
from typing import Any

EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
PHONE_RE = re.compile(r"\+?\d{7,15}")
DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y", "%d %B %Y", "%d %b %Y")

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")


def normalize(text: str | None) -> str:
    """Trim, case-fold, drop punctuation, collapse spaces: 'Hi!' -> 'hi'."""
    if not text:
        return ""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", _PUNCT.sub(" ", text)).strip()


def parse_number(text: Any) -> float | None:
    """A finite number, or None: 'NaN', 'inf' and '1e999' are not answers to a number question."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        try:
            number = float(text)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    if not isinstance(text, str):
        return None
    cleaned = text.strip().replace(" ", "")
    if cleaned.count(",") == 1 and "." not in cleaned:
        cleaned = cleaned.replace(",", ".")
    try:
        number = float(cleaned)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_date(text: str | None) -> date | None:
    if not text:
        return None
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    return None


def is_email(text: str | None) -> bool:
    return bool(text and EMAIL_RE.fullmatch(text.strip()))


def is_phone(text: str | None) -> bool:
    return bool(text and PHONE_RE.fullmatch(re.sub(r"[\s\-().]", "", text)))
