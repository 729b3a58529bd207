"""The reply path's statements, run on the DBAPI cursor of the unit of work's connection.

That connection is the one ``db.session`` holds for the app context (``AppSession`` in
``crm.base.extensions``): checked out at the first statement, committed on directly while only
these statements wrote, and shared with the session's own transactions when there are any.

``execute(stmt, params)`` does what ``db.session.execute(stmt, params)`` does for a prebuilt
Core statement (the webhook's inserts, a turn's reads and writes, delivery's updates), in the
session's transaction, with SQLAlchemy's own SQL and type conversions, but without its
per-execution machinery: the statement is compiled and expanded once per dialect (and, for an
INSERT or UPDATE, per set of parameter names), then each call only converts the parameters, runs the cursor and
converts the rows. Errors come out as SQLAlchemy's exceptions (``DBAPIError.instance``, with
the parameters hidden), and a connection the database dropped is invalidated, as
``Connection.execute`` does. A statement that needs SQLAlchemy's execution context (Python-side
column defaults to compute, ORM entities) goes through ``db.session.execute``; so does every
statement while ORM changes wait to be flushed (after flushing them, as autoflush would).

Why not only ``db.session.execute``: sampled with py-spy (``--gil``) in a reply process under
``bench/cpu_split.sh`` load, SQLAlchemy's execution path held 45 % of the process's Python time,
spread thin over its session, connection, execution-context, parameter and result layers,
for ~8 short statements per reply.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.sql.dml import UpdateBase

from crm.base.extensions import db, driver_error


class HotResult:
    """The part of SQLAlchemy's ``Result`` the reply path uses."""

    __slots__ = ("rows", "rowcount")

    def __init__(self, rows: list, rowcount: int):
        self.rows, self.rowcount = rows, rowcount

    def __iter__(self):
        return iter(self.rows)

    def first(self):
        return self.rows[0] if self.rows else None

    def one(self):
        if len(self.rows) != 1:
            raise (NoResultFound if not self.rows else MultipleResultsFound)(
                f"expected one row, got {len(self.rows)}")
        return self.rows[0]

    def scalar(self):
        return self.rows[0][0] if self.rows else None

    def scalar_one(self):
        return self.one()[0]

    def scalar_one_or_none(self):
        if len(self.rows) > 1:
            raise MultipleResultsFound(f"expected at most one row, got {len(self.rows)}")
        return self.rows[0][0] if self.rows else None


class _Plan:
    """A statement compiled and expanded for one dialect: what each execution needs."""

    __slots__ = ("sql", "names", "constants", "processors", "row", "types", "converters")

    def __init__(self, stmt, dialect, params: dict):
        # an INSERT or UPDATE without explicit values writes the columns it is given
        compiled = stmt.compile(dialect=dialect, column_keys=list(params) if isinstance(stmt, UpdateBase) else None)
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise _NeedsContext
        state = compiled.construct_expanded_state(params)
        self.sql = state.statement
        self.names = state.positiontup  # None for a named paramstyle (psycopg)
        processors = dict(state.processors)  # those of expanded IN lists
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors.setdefault(name, process)
        # the statement's own values (constants, expanded IN lists), converted once
        self.constants = {name: processors[name](value) if name in processors and value is not None else value
                          for name, value in state.parameters.items() if name not in params}
        self.processors = [(name, processors[name]) for name in params if name in processors]
        columns = list(stmt.exported_columns)  # a SELECT's columns, or a DML statement's RETURNING
        self.row = namedtuple("Row", [c.key for c in columns], rename=True) if columns else None
        self.types = [c.type.dialect_impl(dialect) for c in columns]
        self.converters: list | None = None  # known at the first rows: they depend on the driver's types

    def convert(self, dialect, description, rows: list) -> list:
        """The driver's rows as named tuples of SQLAlchemy's Python values."""
        if self.converters is None:
            self.converters = [impl.result_processor(dialect, column[1])
                               for impl, column in zip(self.types, description, strict=True)]
        make, converters = self.row._make, self.converters
        if not any(converters):
            return [make(row) for row in rows]
        return [make([convert(value) if convert is not None and value is not None else value
                      for convert, value in zip(converters, row, strict=True)]) for row in rows]


class _NeedsContext(Exception):
    """The statement needs SQLAlchemy's execution context: run it through the session."""


_plans: dict[tuple, _Plan | None] = {}
# The reply path's statements are module constants: a few dozen plans. A caller that builds a
# statement per call would fill the cache for ever; past this many, new ones are not kept.
MAX_PLANS = 512


_CONNECTION = "crm.hot_sql.connection"


def _connection(session):
    """The connection to run on: the unit of work's held connection (``AppSession``) while the
    session has no transaction of its own, else that transaction's, looked up once per
    transaction (kept in the session's ``info``): ``Session.connection()`` costs ~5 us."""
    transaction = session.get_transaction()
    if transaction is None:
        return session.held_connection()
    kept = session.info.get(_CONNECTION)
    if kept is not None and kept[0] is transaction:
        return kept[1]
    conn = session.connection()
    session.info[_CONNECTION] = (transaction, conn)
    return conn


def execute(stmt, params: dict[str, Any] | None = None) -> HotResult:
    """Run a prebuilt Core statement in the session's transaction (see the module's docstring)."""
    params = params or {}
    session = db.session()  # the scope's own Session: through the scoped proxy, each use is a lookup
    if session.new or session.dirty or session.deleted:
        return session.execute(stmt, params)  # autoflush first, as SQLAlchemy would
    conn = _connection(session)
    dialect = conn.dialect
    key = (stmt, dialect.name, tuple(params) if isinstance(stmt, UpdateBase) else None)
    plan = _plans.get(key, False)
    if plan is False:
        try:
            plan = _Plan(stmt, dialect, params)
        except _NeedsContext:
            plan = None
        if len(_plans) < MAX_PLANS:
            _plans[key] = plan
    if plan is None:
        return session.execute(stmt, params)
    values = dict(plan.constants)
    values.update(params)
    for name, process in plan.processors:
        if values[name] is not None:
            values[name] = process(values[name])
    args = values if plan.names is None else [values[name] for name in plan.names]
    fairy = conn.connection
    cursor = fairy.cursor()
    try:
        cursor.execute(plan.sql, args)
        description = cursor.description
        rows = cursor.fetchall() if description is not None else []
        rowcount = cursor.rowcount
    except dialect.loaded_dbapi.Error as exc:
        raise driver_error(conn, plan.sql, exc, fairy, cursor) from exc
    finally:
        cursor.close()
    if rows and plan.row is not None:
        rows = plan.convert(dialect, description, rows)
    return HotResult(rows, rowcount)


_IDLE = 0  # psycopg's pq.TransactionStatus.IDLE: no transaction open on the connection


def execute_alone(stmt, params: dict[str, Any] | None = None) -> HotResult:
    """Run a prebuilt Core statement as a transaction of its own, and commit it.

    On PostgreSQL, when the session's transaction has sent nothing yet, the statement runs in
    psycopg's autocommit mode: one round trip instead of three, as psycopg sends BEGIN and
    COMMIT each on its own. The connection leaves autocommit before anything else may use it
    (or is invalidated, should that fail). Otherwise (SQLite, or a transaction under way) the
    statement runs in the session's transaction and that is committed.
    """
    session = db.session()
    if not (session.new or session.dirty or session.deleted):
        conn = _connection(session)
        raw = conn.connection.dbapi_connection
        if conn.dialect.name == "postgresql" and raw.info.transaction_status == _IDLE:
            raw.autocommit = True
            try:
                result = execute(stmt, params)
            finally:
                try:
                    raw.autocommit = False
                except Exception as exc:  # a broken connection: never hand it out in autocommit
                    conn.invalidate(exc)
            if conn.invalidated:  # the statement was committed; the connection is gone
                session.rollback()
            else:
                session.commit()  # ends the session's transaction; psycopg has nothing left to commit
            return result
    result = execute(stmt, params)
    session.commit()
    return result
