"""One JSON object per log line, with secrets scrubbed."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from flask import g, has_app_context
from rq import get_current_job

_SECRETS: set[str] = set()
_CONTEXT_FIELDS = ("event", "contact_id", "job_id", "request_id", "operator", "flow", "step", "ms")


def register_secrets(*values: str) -> None:
    """Values that must never appear in a log line (tokens, app secret)."""
    _SECRETS.update(v for v in values if v and len(v) >= 4)


# Statement parameters are hidden by SQLAlchemy (hide_parameters); PostgreSQL's own error
# DETAIL line quotes the failing key or row ("Key (wa_id)=(+1555...) already exists").
_PG_DETAIL = re.compile(r"^(DETAIL:\s+).+$", re.M)


def hide_values(text: str) -> str:
    """A database error's text without the stored values PostgreSQL quotes in it."""
    return _PG_DETAIL.sub(r"\1(values hidden)", text) if "DETAIL:" in text else text


def scrub(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _context(record: logging.LogRecord) -> None:
    """Remember the request id (web) and job id (RQ worker) current when the record was made.

    Stored under private names: callers (RQ among them) pass ``job_id`` in ``extra``, and
    logging refuses to overwrite an attribute the record already has.
    """
    record._crm_request_id = g.get("request_id") if has_app_context() else None
    job = get_current_job()
    record._crm_job_id = job.id if job is not None else None


_base_factory = logging.getLogRecordFactory()


def _record_factory(*args, **kwargs) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    _context(record)
    return record


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": hide_values(record.getMessage()),
        }
        for key in _CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is None and key in ("request_id", "job_id"):
                value = getattr(record, f"_crm_{key}", None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = hide_values(self.formatException(record.exc_info))
        return scrub(json.dumps(entry, default=str))


def configure_logging(level: str) -> None:
    logging.setLogRecordFactory(_record_factory)  # request and job ids on every record, when made
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    # Replace plain console handlers (e.g. from basicConfig); keep others (pytest's capture).
    root.handlers = [h for h in root.handlers if type(h) is not logging.StreamHandler] + [handler]
    root.setLevel(level)
    # urllib3 logs full URLs; the football API key travels in the query string.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
