"""A reply process serves several contacts at once from its threads (``WORKER_THREADS``), so a
slow Graph API holds back one turn, not the process; a warm shutdown lets every thread finish."""

from __future__ import annotations

import threading
import time

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select

from crm.base.extensions import db
from crm.base.models import Message
from tests.helpers import (
    ECHO,
    FakeGraph,
    envelope,
    import_examples,
    message,
    post_webhook,
    spawn_workers,
    terminate,
    wait_for,
)

pytestmark = pytest.mark.slow
USERS = ["9701", "9702", "9703", "9704"]


class SlowGraph(FakeGraph):
    """The fake Graph API on a threaded server, answering each message send after ``delay``
    seconds; counts the sends in flight at once (read receipts are answered at once)."""

    def __init__(self, server, delay: float):
        super().__init__(server)
        self.delay, self.in_flight, self.most_at_once = delay, 0, 0
        self.release = threading.Event()  # set: sends are answered without waiting

    def handle(self, request):
        if b'"status"' in request.data:  # a read receipt
            return super().handle(request)
        with self.lock:
            self.in_flight += 1
            self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            self.release.wait(self.delay)
            return super().handle(request)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def slow_graph():
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    yield SlowGraph(server, delay=20.0)
    server.clear()
    server.stop()


def test_one_process_serves_contacts_at_once_and_finishes_them_all_on_sigterm(make_app, slow_graph):
    """Four contacts write to one reply process of four threads while each send hangs on the Graph
    API: all four turns are under way at once. A SIGTERM then lets each thread finish its turn:
    every contact gets its one reply, the process exits 0, nothing stays locked."""
    app = make_app(WHATSAPP_API_URL=slow_graph.server.url_for("").rstrip("/"), WHATSAPP_READ_TIMEOUT=30,
                   WORKER_THREADS=4)
    import_examples(app, ECHO)
    (proc,) = spawn_workers(app, 1, burst=False)
    redis = app.extensions["redis"]
    try:
        client = app.test_client()
        for wa_id in USERS:
            assert post_webhook(client, envelope([message(wa_id, body=f"hi {wa_id}")])).status_code == 200
        assert wait_for(lambda: slow_graph.in_flight == len(USERS), 30), \
            f"sends in flight at once: {slow_graph.most_at_once} of {len(USERS)}"
        proc.send_signal(15)  # a deploy, while four replies are on their way
        time.sleep(0.5)
        assert proc.poll() is None  # it waits for the turns in hand
        slow_graph.release.set()
        code = terminate(proc)
    finally:
        slow_graph.release.set()
        terminate(proc)
    assert code == 0, proc.stderr.read()
    for wa_id in USERS:
        assert slow_graph.texts(wa_id) == [f"echo hi {wa_id}"]
    with app.app_context():
        rows = db.session.execute(select(Message.direction, Message.status, Message.processed_at)).all()
    assert sorted((r.direction, r.status) for r in rows) == [("in", "received")] * 4 + [("out", "sent")] * 4
    assert all(r.processed_at is not None for r in rows if r.direction == "in")
    assert not any(redis.scan_iter("crm:lock:contact:*")) and not any(redis.scan_iter("crm:queued:*"))
    assert redis.llen("crm:contacts:ready") == 0


def test_rq_gets_a_redis_client_of_its_own(make_app):
    """RQ raises its client's socket timeout for its long BLPOP: never on the connections the
    app's threads use (a command there keeps its 5 s), and a connection those threads opened
    never reaches RQ's BLPOP (it timed out every few seconds: 'Redis connection timeout')."""
    from crm.app.worker import build_worker

    app = make_app()
    shared = app.extensions["redis"].connection_pool
    worker = build_worker(app, ["high", "default"])
    assert worker.connection.connection_pool is not shared
    assert all(q.connection is worker.connection for q in worker.queues)
    assert worker.connection.connection_pool.connection_kwargs["socket_timeout"] > worker.dequeue_timeout
    assert shared.connection_kwargs["socket_timeout"] == 5


def _blpops(redis) -> int:
    return int(redis.info("commandstats").get("cmdstat_blpop", {}).get("calls", 0))


def _six_waiting(app, prefix: str) -> list[str]:
    """Six contacts, each with one message waiting on the ready list (the echo flow answers)."""
    import_examples(app, ECHO)
    client = app.test_client()
    senders = [f"{prefix}{n:02d}" for n in range(6)]
    for wa_id in senders:
        assert post_webhook(client, envelope([message(wa_id, body=f"hi {wa_id}")])).status_code == 200
    return senders


def _all_answered_once(app, graph, senders: list[str]) -> None:
    for wa_id in senders:
        assert graph.texts(wa_id) == [f"echo hi {wa_id}"]
    redis = app.extensions["redis"]
    assert not any(redis.scan_iter("crm:lock:contact:*")) and not any(redis.scan_iter("crm:queued:*"))


def test_a_reply_thread_takes_the_next_contact_in_the_round_trip_that_frees_the_last(app, graph):
    """Six contacts wait on the ready list; one reply thread serves them all, taking each next one
    in the script that frees the last (``finish``), not with a BLPOP of its own per contact."""
    from crm.app.worker import ReadyThreads

    senders = _six_waiting(app, "98")
    before = _blpops(app.extensions["redis"])
    threads = ReadyThreads(app, 1)
    threads.start()
    try:
        assert wait_for(lambda: all(graph.texts(wa_id) for wa_id in senders), 30)
    finally:
        threads.stop()
    _all_answered_once(app, graph, senders)
    # the first pop, then one that found the list empty (and at most one more while stopping)
    assert _blpops(app.extensions["redis"]) - before <= 3


def test_the_main_thread_also_takes_the_next_contact_in_the_round_trip_that_frees_the_last(make_app, graph):
    """A reply process of one thread (RQ's main thread alone) with six contacts waiting serves
    them all after one BLPOP: each next one comes with the script that frees the last."""
    app = make_app(WORKER_THREADS=1)
    senders = _six_waiting(app, "97")
    before = _blpops(app.extensions["redis"])
    (proc,) = spawn_workers(app, 1, burst=False)
    try:
        assert wait_for(lambda: all(graph.texts(wa_id) for wa_id in senders), 60)
    finally:
        code = terminate(proc)
    assert code == 0, proc.stderr.read()
    _all_answered_once(app, graph, senders)
    assert _blpops(app.extensions["redis"]) - before <= 3  # the first pop, then RQ's wait on an empty list
