"""Telling an outage (the database or Redis is away) from a bad message, and logging it once.

An outage is never the message's fault: the work is retried later and nothing is set aside.
``OutageLog`` writes one line when a dependency goes away and one when it is back, not one
per request or job in between.
"""

from __future__ import annotations

import logging
import threading
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import (
    DataError,
    DisconnectionError,
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
)

OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError, InterfaceError, DisconnectionError, RedisConnectionError, RedisTimeoutError,
    ConnectionError, TimeoutError,
)
# The database refused the statement itself (a table missing during a deploy, a server
# error): not the message's fault either, so never a reason to set a message aside.
SERVER_ERRORS = (ProgrammingError, InternalError)
# The database refused a value (NUL, a lone surrogate, a number JSON cannot hold, ...).
DATA_ERRORS = (DataError, UnicodeError, ValueError)


def _chain(exc: BaseException | None):
    for _ in range(6):
        if exc is None:
            return
        yield exc
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says a dependency is away or refused the work itself,
    rather than that the input is bad."""
    return any(isinstance(e, OUTAGE_ERRORS + SERVER_ERRORS) for e in _chain(exc))


def is_bad_data(exc: BaseException) -> bool:
    """Whether the database refused a value we tried to store (the input's fault)."""
    return not is_outage(exc) and any(isinstance(e, DATA_ERRORS) for e in _chain(exc))


def dependency(exc: BaseException) -> str:
    text = f"{type(exc).__module__}.{type(exc).__name__}"
    return "redis" if "redis" in text else "database"


class OutageLog:
    """One log line per state change of each dependency, per process."""

    def __init__(self, logger: logging.Logger):
        self.log, self.down_since = logger, {}
        self._lock = threading.Lock()

    def down(self, what: str, exc: BaseException) -> None:
        with self._lock:
            if what in self.down_since:
                return
            self.down_since[what] = time.monotonic()
        self.log.error("%s is unreachable (%s); retrying", what, type(exc).__name__,
                       extra={"event": f"outage.{what}.down"})

    def up(self, what: str) -> None:
        if what not in self.down_since:  # the common case, on every webhook: no lock taken
            return
        with self._lock:
            since = self.down_since.pop(what, None)
        if since is not None:
            self.log.warning("%s is back after %.0f s", what, time.monotonic() - since,
                             extra={"event": f"outage.{what}.up"})
