"""/metrics for the whole deployment: processes on "different machines" (separate processes with
their own PROMETHEUS_MULTIPROC_DIR, or none) push through Redis; the web process shows the sums,
and counters never go down when a process exits, dies or restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from crm.base import metrics
from crm.base import metrics_store as ms
from tests.helpers import ROOT
from tests.test_api import metric

PUSH = 0.2  # seconds; a process is dead after 6 missed pushes (1.2 s)


@pytest.fixture
def database_url(sqlite_url):
    """Metrics never touch the database: one backend is enough."""
    return sqlite_url


SCRAPE_TOKEN = "metrics-scrape-token"  # /metrics wants a bearer token


@pytest.fixture
def mapp(make_app, graph):
    return make_app(METRICS_PUSH_SECONDS=PUSH, METRICS_TOKEN=SCRAPE_TOKEN)


def child(app, requests: int, latencies: str = "", multiproc_dir=None, hang: bool = False) -> subprocess.Popen:
    env = {**os.environ, **app.config["TEST_ENV"], "PYTHONPATH": str(ROOT), "METRICS_PUSH_SECONDS": str(PUSH)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if multiproc_dir is not None:
        multiproc_dir.mkdir(exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    args = [sys.executable, str(ROOT / "tests" / "metrics_child.py"), str(requests), latencies]
    return subprocess.Popen(args + (["--hang"] if hang else []), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def scrape(app) -> str:
    response = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert response.status_code == 200
    return response.get_data(as_text=True)


def ok_requests(app) -> float:
    return metric(scrape(app), "crm_webhook_requests_total", outcome="ok")


def test_processes_on_different_machines_are_summed(mapp, tmp_path):
    before = scrape(mapp)
    one = child(mapp, 3, "0.02,0.2", multiproc_dir=tmp_path / "host-a")
    two = child(mapp, 4, "3", multiproc_dir=None)
    finish(one)
    finish(two)
    after = scrape(mapp)
    delta = lambda name, **labels: metric(after, name, **labels) - metric(before, name, **labels)  # noqa: E731
    assert delta("crm_webhook_requests_total", outcome="ok") == 7
    assert delta("crm_reply_latency_seconds_bucket", le="0.025") == 1
    assert delta("crm_reply_latency_seconds_bucket", le="0.25") == 2
    assert delta("crm_reply_latency_seconds_bucket", le="+Inf") == 3
    assert delta("crm_reply_latency_seconds_count") == 3
    assert delta("crm_reply_latency_seconds_sum") == pytest.approx(3.22)
    assert "# TYPE crm_reply_latency_seconds histogram" in after and "_created" not in after
    # the web process's own samples are in the sum too (the test process is the web here)
    metrics.WEBHOOK_REQUESTS.labels("ok").inc(5)
    assert ok_requests(mapp) == metric(after, "crm_webhook_requests_total", outcome="ok") + 5
    with mapp.app_context():  # both children ended cleanly: retired at once, nothing live but us
        redis = mapp.extensions["redis"]
        assert redis.zcard(ms.KEY_INSTANCES) == 1 and redis.hlen(ms.KEY_RETIRED) > 0


def test_counters_survive_a_killed_process_and_its_restart(mapp):
    seen = [ok_requests(mapp)]
    hung = child(mapp, 6, hang=True)
    assert hung.stdout.readline().strip() == "pushed"
    seen.append(ok_requests(mapp))
    assert seen[-1] - seen[0] == 6
    hung.send_signal(signal.SIGKILL)  # no exit hook: its last push stays until it is declared dead
    hung.wait(10)
    seen.append(ok_requests(mapp))
    with mapp.app_context():
        redis = mapp.extensions["redis"]
        assert redis.zcard(ms.KEY_INSTANCES) == 2  # the dead one and the web
        time.sleep(PUSH * ms.STALE_PUSHES + 0.3)
        seen.append(ok_requests(mapp))  # this scrape retires the dead instance
        assert redis.zcard(ms.KEY_INSTANCES) == 1
    restarted = child(mapp, 2)  # the same process started again: a new instance, counting from zero
    finish(restarted)
    seen.append(ok_requests(mapp))
    assert seen == sorted(seen), seen  # never down
    assert seen[-1] - seen[0] == 8


def totals(redis, family: str) -> float:
    """What every scrape adds up for ``family``: retired plus every live instance."""
    total = 0.0
    keys = [ms.KEY_RETIRED] + [ms.KEY_INSTANCE + i.decode() for i in redis.zrange(ms.KEY_INSTANCES, 0, -1)]
    for key in keys:
        for field, value in redis.hgetall(key).items():
            if f'"{family}"' in field.decode():
                total += float(value)
    return total


def test_an_instance_retired_while_alive_counts_nothing_twice(mapp):
    registry = CollectorRegistry()
    counter = Counter("crm_test_things_total", "things", registry=registry)
    with mapp.app_context():
        redis = mapp.extensions["redis"]
        pusher = ms.Pusher(redis, PUSH, registry)
        counter.inc(3)
        pusher.push()
        first = pusher.instance
        # another process judged it dead (it was paused longer than the limit) and retired it
        ms._script(redis, "retire", ms._RETIRE)(keys=[ms.KEY_INSTANCES, ms.KEY_RETIRED],
                                                args=[0, ms.KEY_INSTANCE, first], client=redis)
        assert totals(redis, "crm_test_things") == 3
        counter.inc(2)
        pusher.push()  # notices, keeps 3 as its baseline and carries on under a new id
        assert pusher.instance != first and pusher.baseline and totals(redis, "crm_test_things") == 5
        counter.inc(1)
        pusher.push()
        assert totals(redis, "crm_test_things") == 6
        pusher.retire()
        assert totals(redis, "crm_test_things") == 6 and redis.zscore(ms.KEY_INSTANCES, pusher.instance) is None
        counter.inc(1)
        pusher.push()  # after its exit hook a pusher writes nothing more
        assert totals(redis, "crm_test_things") == 6


def test_without_redis_metrics_shows_this_host(make_app, graph):
    make_app()
    metrics.SESSIONS_EXPIRED.inc()
    down = make_app(REDIS_URL="redis://127.0.0.1:1/0", METRICS_PUSH_SECONDS=PUSH, METRICS_TOKEN=SCRAPE_TOKEN)
    text = scrape(down)
    assert metric(text, "crm_sessions_expired_total") >= 1
    off = make_app(METRICS_PUSH_SECONDS=0, METRICS_TOKEN=SCRAPE_TOKEN)
    assert metric(scrape(off), "crm_sessions_expired_total") >= 1
    with off.app_context():
        assert off.extensions["redis"].exists(ms.KEY_INSTANCES) == 0  # the store is off: nothing written
