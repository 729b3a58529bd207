"""Shared extension objects: SQLAlchemy, Migrate, Redis and the RQ queues (names in crm.base.keys).

Bound to an app by ``init_app``; read inside an app context with ``get_redis``, ``get_queue``
and ``get_settings``.
"""

from __future__ import annotations

import functools
import os
import threading
import time

from flask import Flask, current_app
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession
from redis import Redis
from redis.commands.core import Script
from rq import Queue
from sqlalchemy import MetaData, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, DisconnectionError, PendingRollbackError

from crm.base import keys

naming = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
HELD = "crm.held_connection"  # AppSession.info: the unit of work's pooled Connection


class AppSession(FlaskSession):
    """``db.session``'s class: a unit of work (a webhook delivery, a contact served, a request)
    may hold one pooled ``Connection`` (``held_connection``) from its first statement run by
    ``crm.base.hot_sql`` until the session closes (the app context's teardown), and commit
    what only those statements wrote on the driver's connection directly.

    The session's own transactions then run on that same connection (``get_bind``), so the
    statements of ``hot_sql`` and of the ORM always share one database transaction, and
    ``commit``/``rollback`` end both. Why: SQLAlchemy's session checks a connection out of the
    pool and back in for every transaction and builds its transaction objects around it.
    Sampled with py-spy (``--gil``) under ``bench/cpu_split.sh sqlite`` load, that was 12-19 % of
    the web's and the reply processes' Python time, for one to three short transactions each.

    When the session closes, a clean connection (rolled back, as the pool would) is kept as the
    thread's spare and the thread's next unit of work takes it back without the pool (a web
    thread serves one webhook after another, a reply thread one contact after another); one
    idle for ``IDLE_PING_AFTER`` or from another engine or pool goes back to the pool instead,
    so a connection that sat idle is still pinged at checkout. Checking out and in was another
    ~8 % of a web process's Python time (py-spy ``--gil``).
    """

    def get_bind(self, mapper=None, clause=None, bind=None, **kwargs):
        """The unit of work's held connection (checked out, or the thread's spare taken, now):
        every transaction of a unit of work, the session's or ``hot_sql``'s, uses that one."""
        if bind is not None:
            return bind
        return self.held_connection()

    def held_connection(self):
        """The unit of work's connection, checked out of the pool at its first use. After the
        database dropped it (``invalidate``), nothing more runs on it until a rollback."""
        held = self.info.get(HELD)
        if held is None:
            engine = self._db.engine
            held = self.info[HELD] = _take_spare(engine) or engine.connect()
        elif held.invalidated:
            raise PendingRollbackError("the connection was lost in this transaction; roll back first")
        return held

    def commit(self) -> None:
        if HELD not in self.info or self.get_transaction() is not None or self.new or self.dirty or self.deleted:
            super().commit()  # the session's transaction (on the held connection when there is one)
            return
        held = self.held_connection()
        fairy = held.connection
        try:
            fairy.dbapi_connection.commit()
        except held.dialect.loaded_dbapi.Error as exc:
            raise driver_error(held, "COMMIT", exc, fairy) from exc

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            held = self.info.get(HELD)
            if held is not None and (held.invalidated or not _rolled_back(held)):
                self._release()  # its transaction went with it: the next use checks out another

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._release()

    def _release(self) -> None:
        held = self.info.pop(HELD, None)
        if held is None:
            return
        if not (held.closed or held.invalidated or held.in_transaction()) and _rolled_back(held):
            _spares.spare = _Spare(held, self._db.engine.pool)  # an older spare goes back to the pool
            return
        held.close()  # back to the pool, which rolls back whatever was left open


def _rolled_back(held) -> bool:
    """Roll the driver's connection back (what the pool does to a connection given back); False
    when it is dead, and then invalidated (the pool replaces it)."""
    try:
        held.connection.dbapi_connection.rollback()
        return True
    except Exception as exc:
        held.invalidate(exc)
        return False


def driver_error(conn, statement: str, exc: Exception, fairy, cursor=None) -> DBAPIError:
    """The driver's error ``exc`` on ``conn`` as SQLAlchemy's exception (parameters hidden), the
    connection invalidated when the database dropped it, as ``Connection.execute`` does."""
    dialect = conn.dialect
    invalidated = dialect.is_disconnect(exc, fairy, cursor)
    if invalidated:
        conn.invalidate(exc)
    return DBAPIError.instance(statement, None, exc, dialect.loaded_dbapi.Error, hide_parameters=True,
                               connection_invalidated=invalidated, dialect=dialect)


class _Spare:
    """A thread's spare connection (``AppSession``), given back to the pool when it is replaced or
    its thread ends; never by a forked child (the connection is its parent's)."""

    __slots__ = ("conn", "pool", "since", "pid")

    def __init__(self, conn, pool):
        self.conn, self.pool, self.since, self.pid = conn, pool, time.monotonic(), os.getpid()

    def __del__(self):
        if self.conn is not None and self.pid == os.getpid():
            try:
                self.conn.close()
            except Exception:  # noqa: S110 - at a thread's end there is no one to tell
                pass


_spares = threading.local()


def _take_spare(engine):
    """The thread's spare connection when it may serve a unit of work on ``engine``, else None."""
    spare = getattr(_spares, "spare", None)
    if spare is None:
        return None
    _spares.spare = None
    conn, spare.conn = spare.conn, None  # the spare no longer gives it back
    if (spare.pid == os.getpid() and spare.pool is engine.pool and conn.engine is engine
            and not (conn.closed or conn.invalidated) and time.monotonic() - spare.since < IDLE_PING_AFTER):
        return conn
    if spare.pid == os.getpid():
        conn.close()
    return None


def _forget_spares() -> None:  # a forked child: its parent's connections are not its own
    global _spares
    _spares = threading.local()


os.register_at_fork(after_in_child=_forget_spares)


db = SQLAlchemy(metadata=MetaData(naming_convention=naming), session_options={"class_": AppSession})
migrate = Migrate()



def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    # WAL lets the web process and the workers read while one of them writes;
    # NORMAL is durable across application crashes (not power loss) in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# A pooled connection idle this long is pinged before use; one in steady use is not.
IDLE_PING_AFTER = 10.0


def _ping_if_idle(dbapi_connection, record, _proxy):
    """SQLAlchemy's pessimistic disconnect handling (its documented checkout-event recipe),
    only for a connection that has been idle for ``IDLE_PING_AFTER`` seconds.

    ``pool_pre_ping`` pings on every checkout, and the Session checks a connection out for
    every transaction: three pings per reply turn on PostgreSQL. A server restart while a
    connection is in steady use still surfaces as a disconnect error there, which SQLAlchemy
    answers by refreshing the pool, and which the webhook (503, Meta re-delivers) and the
    reply runtime (an outage: the turn is retried) already ride out.
    """
    now = time.monotonic()
    idle_since, record.info["used_at"] = record.info.get("used_at"), now
    if idle_since is not None and now - idle_since < IDLE_PING_AFTER:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        # out of the transaction psycopg opened for the ping: a statement that is a transaction
        # of its own may then run in autocommit (crm.base.hot_sql.execute_alone)
        dbapi_connection.rollback()
    except Exception as exc:  # the pool replaces the connection and tries again (three times)
        raise DisconnectionError() from exc


def redis_options(settings) -> dict:
    """Keyword arguments for ``Redis.from_url(settings.redis_url, ...)``, used by every client.

    ``rediss://`` is Redis over TLS, with the server's certificate verified. Heroku Key-Value
    Store presents a self-signed certificate: with REDIS_TLS_VERIFY=0 it is accepted (the
    connection is still encrypted). RQ's worker scheduler copies these from the connection.
    """
    options = {"socket_connect_timeout": 2, "socket_timeout": 5, "health_check_interval": 30}
    if settings.redis_url.startswith("rediss://") and not settings.redis_tls_verify:
        options["ssl_cert_reqs"] = None  # redis-py: no verification, and no hostname check
    return options


def redis_url_with_options(settings) -> str:
    """``settings.redis_url`` carrying the TLS choice, for libraries that only take a URL
    (rq-dashboard opens its own connections from it)."""
    url = settings.redis_url
    if url.startswith("rediss://") and not settings.redis_tls_verify and "ssl_cert_reqs=" not in url:
        url += ("&" if "?" in url else "?") + "ssl_cert_reqs=none"
    return url


def init_app(app: Flask) -> None:
    settings = app.config["SETTINGS"]
    db.init_app(app)
    migrate.init_app(app, db, directory=str(app.config["MIGRATIONS_DIR"]), render_as_batch=True)
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _sqlite_pragmas)
        else:  # a server may drop idle connections; an SQLite file cannot
            event.listen(db.engine, "checkout", _ping_if_idle)
    redis = redis_client(settings)
    app.extensions["redis"] = redis
    app.extensions["queues"] = queues_on(redis)


def redis_client(settings) -> Redis:
    """A Redis client with a connection pool of its own (the app's, or RQ's in a worker)."""
    return Redis.from_url(settings.redis_url, **redis_options(settings))


def queues_on(redis: Redis, names=keys.QUEUE_NAMES) -> dict[str, Queue]:
    """The RQ queues ``names`` on the client ``redis``, each with its job timeout."""
    return {name: Queue(name, connection=redis, default_timeout=keys.QUEUE_TIMEOUT[name]) for name in names}


@functools.lru_cache(maxsize=64)
def redis_script(redis: Redis, source: str) -> Script:
    """A Lua script of ours on ``redis``, registered once per client: ``register_script``
    hashes the source and builds the object each time, ~3 % of a reply process's Python time
    when done per call (py-spy ``--gil``, 2026-12-07)."""
    return redis.register_script(source)


def get_redis() -> Redis:
    return current_app.extensions["redis"]


def get_queue(name: str) -> Queue:
    return current_app.extensions["queues"][name]


def get_settings():
    return current_app.config["SETTINGS"]


def contains_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with LIKE's wildcards escaped (use escape="\\")."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def dialect_insert(table):
    """INSERT with ON CONFLICT support for the current database."""
    if db.engine.dialect.name == "postgresql":
        return postgresql_insert(table)
    return sqlite_insert(table)
