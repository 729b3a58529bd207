"""Metrics of every process of the deployment, summed through Redis, for ``/metrics``.

prometheus-client counts in each process. ``PROMETHEUS_MULTIPROC_DIR`` adds processes up only
when they share a disk; dynos and containers do not. So every process that records metrics
pushes its own samples (every ``crm_*`` counter, histogram and summary) to Redis, and
``/metrics`` on any web process reads the sum:

    crm:metrics:instances          sorted set: instance id -> time of its last push
    crm:metrics:instance:<id>      hash: sample -> this instance's count (absolute, not a delta)
    crm:metrics:retired            hash: sample -> the final counts of instances that ended
    crm:metrics:meta               hash: family -> [type, help]

An *instance* is one run of one process (host, pid and a random part: a restarted process, or a
dyno that reuses pid 1, is a new instance). It writes its whole set of counts every
``METRICS_PUSH_SECONDS`` from a timer thread, once more when it exits, and then moves them into
``retired`` ("retires"). An instance that stopped pushing for ``6 x METRICS_PUSH_SECONDS`` (a
crashed or killed process, a dead dyno) is retired by the next push or scrape of any process. A
move into ``retired`` is one Lua script, so the total never changes by it.

How counters behave, as Prometheus expects of a counter:

* The total never goes down when a process restarts or dies: its last pushed counts stay in the
  sum (in ``retired``); a new process adds from zero under a new instance id. What a process
  counted after its last push and before a crash (at most ``METRICS_PUSH_SECONDS``) is lost.
* Every scrape first pushes the scraping process's own counts, then reads everything in one
  script, so two scrapes answered by different web processes never see a smaller total.
* An instance retired while it was still alive (paused or cut off from Redis longer than the
  limit) notices on its next push, keeps what was retired as a baseline and carries on under a
  new id: nothing is counted twice.
* A real reset (Redis lost its data) shows as one drop; Prometheus' ``rate`` / ``increase``
  treat a drop as a counter reset, which is right then.
* Histogram buckets, ``_count`` and ``_sum`` are summed like counters (``_sum`` is rounded to
  12 significant digits so that the order of float additions never makes it wobble down). ``_created``
  samples are left out. Gauges are not shared (none are defined; ``crm_queue_depth`` is read from
  Redis at scrape time).
* ``retired`` holds one entry per label set ever seen (like Prometheus' own series) and no TTL;
  instance hashes expire after a week without a push (only if every process was down that long).

Cost (``REDIS_URL=... .venv/bin/python bench/metrics_push_bench.py``): a push of this project's
111 samples (the metrics filled with realistic label sets) took 2.1 ms of the pushing thread's
CPU, half of it prometheus-client's own ``collect``; at one push per 5 s that is 0.04 % of a
core (measured on the shared 2-core box under load). Nothing is added to the reply path: the
push runs on its own thread, prometheus-client's ``inc``/``observe`` are unchanged. A scrape
costs one push plus one read script.

Uses keys computed inside Lua scripts: fine on a single Redis (Heroku Redis, ours), not on
Redis Cluster.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import defaultdict

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.metrics_core import Metric
from redis import Redis
from redis.commands.core import Script

from crm.base import keys
from crm.base import metrics as _metrics  # noqa: F401 - every crm_* metric defined before the first push

log = logging.getLogger(__name__)

FAMILY_PREFIX = "crm_"
SUMMED_TYPES = ("counter", "histogram", "summary")
KEY_INSTANCES, KEY_INSTANCE, KEY_RETIRED, KEY_META = (
    keys.METRICS_INSTANCES, keys.METRICS_INSTANCE, keys.METRICS_RETIRED, keys.METRICS_META)
INSTANCE_TTL = keys.METRICS_INSTANCE_TTL
STALE_PUSHES = 6  # an instance is dead after this many missed pushes
SUM_DIGITS = 12  # significant digits of a summed _sum

# Shared by the scripts: move one instance's counts into retired (KEYS[1] instances, KEYS[2]
# retired, ARGV[2] the instance key prefix).
_RETIRE_FN = """
local function retire(id)
  local key = ARGV[2] .. id
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    redis.call('HINCRBYFLOAT', KEYS[2], flat[i], flat[i + 1])
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
end
local function retire_stale(cutoff)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff)) do retire(id) end
end
"""

# Retire one instance (ARGV[3]) now: a clean exit.
_RETIRE = _RETIRE_FN + """
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then retire(ARGV[3]) end
return 1
"""

# Push one instance's counts. ARGV: stale cutoff, key prefix, id, now, ttl, must_exist ('1' after
# its first push), then sample/value pairs. Returns 0, writing nothing, when the instance was
# retired meanwhile. Retires the instances that stopped pushing.
_PUSH = _RETIRE_FN + """
retire_stale(ARGV[1])
if ARGV[6] == '1' and not redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 0 end
local key = ARGV[2] .. ARGV[3]
for i = 7, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', key, ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
return 1
"""

# Everything a scrape needs, read at one instant: retired, meta, then every live instance.
_READ = """
local out = {redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  table.insert(out, redis.call('HGETALL', ARGV[1] .. id))
end
return out
"""

_scripts: dict[str, Script] = {}


def _script(redis: Redis, name: str, source: str) -> Script:
    if name not in _scripts:
        _scripts[name] = redis.register_script(source)
    return _scripts[name]


def new_instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def sample_key(family: str, mtype: str, sample: str, labels: dict) -> str:
    return json.dumps([family, mtype, sample, sorted(labels.items())], separators=(",", ":"))


def local_samples(registry: CollectorRegistry = REGISTRY) -> tuple[dict[str, float], dict[str, list]]:
    """This process's own ``crm_*`` counter/histogram/summary samples, and their families' meta."""
    values: dict[str, float] = {}
    meta: dict[str, list] = {}
    for family in registry.collect():
        if not family.name.startswith(FAMILY_PREFIX) or family.type not in SUMMED_TYPES:
            continue
        meta[family.name] = [family.type, family.documentation]
        created = family.name + "_created"
        for s in family.samples:
            if s.name != created:
                values[sample_key(family.name, family.type, s.name, s.labels)] = float(s.value)
    return values, meta


def _decode(flat: list) -> dict[str, float]:
    out = {}
    for i in range(0, len(flat) - 1, 2):
        key = flat[i].decode() if isinstance(flat[i], bytes) else flat[i]
        try:
            out[key] = float(flat[i + 1])
        except (TypeError, ValueError):
            continue
    return out


class Pusher:
    """Pushes this process's counts to Redis: on a timer thread (``start``) and before a scrape."""

    def __init__(self, redis: Redis, interval: float, registry: CollectorRegistry = REGISTRY):
        self.redis, self.interval, self.registry = redis, float(interval), registry
        self.pid = os.getpid()
        self.instance = new_instance_id()
        self.baseline: dict[str, float] = {}  # counts already handed over under earlier ids
        self.pushed: dict[str, float] | None = None  # what the current id holds in Redis
        self.retired = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0

    @property
    def stale_after(self) -> float:
        return max(STALE_PUSHES * self.interval, 0.5)

    def own(self) -> tuple[dict[str, float], dict[str, list]]:
        values, meta = local_samples(self.registry)
        return {k: v - self.baseline.get(k, 0.0) for k, v in values.items()}, meta

    def push(self, redis: Redis | None = None) -> None:
        """Write this instance's counts (and retire dead instances). Raises on Redis errors."""
        redis = redis or self.redis
        with self._lock:
            if self.retired:
                return
            for _ in range(3):
                own, meta = self.own()
                now = time.time()
                args: list = [now - self.stale_after, KEY_INSTANCE, self.instance, now, INSTANCE_TTL,
                              "1" if self.pushed is not None else "0"]
                for key, value in own.items():
                    args += [key, repr(value)]
                if _script(redis, "push", _PUSH)(keys=[KEY_INSTANCES, KEY_RETIRED], args=args, client=redis):
                    self.pushed = own
                    if meta:
                        redis.hset(KEY_META, mapping={k: json.dumps(v) for k, v in meta.items()})
                    return
                self._handed_over()

    def _handed_over(self) -> None:
        """Our counts were retired while we were alive: keep them as a baseline, take a new id."""
        for key, value in (self.pushed or {}).items():
            self.baseline[key] = self.baseline.get(key, 0.0) + value
        log.warning("metrics instance %s is no longer in Redis (no push for %.0f s, or Redis lost its data); "
                    "continuing as a new one", self.instance, self.stale_after,
                    extra={"event": "metrics.instance_retired"})
        self.instance, self.pushed = new_instance_id(), None

    def retire(self) -> None:
        """Final push, then hand the counts over to ``retired`` (at exit)."""
        self._stop.set()
        try:
            self.push()
            with self._lock:
                self.retired = True
                _script(self.redis, "retire", _RETIRE)(
                    keys=[KEY_INSTANCES, KEY_RETIRED], args=[0, KEY_INSTANCE, self.instance], client=self.redis)
        except Exception:  # Redis gone at exit: the instance is retired when stale
            log.warning("metrics: final push failed", exc_info=True, extra={"event": "metrics.push_failed"})

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics-push", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.push()
                self._failures = 0
            except Exception:  # Redis down: try again next time, say so once in a while
                self._failures += 1
                if self._failures in (1, 10) or self._failures % 100 == 0:
                    log.warning("metrics push to Redis failed (%d in a row)", self._failures, exc_info=True,
                                extra={"event": "metrics.push_failed"})


_pusher: Pusher | None = None
_pusher_lock = threading.Lock()


def start_pusher(app) -> Pusher | None:
    """Push this process's metrics every METRICS_PUSH_SECONDS until it exits (web and worker
    processes call this once; 0 turns the Redis store off)."""
    global _pusher
    interval = app.config["SETTINGS"].metrics_push_seconds
    if interval <= 0:
        return None
    with _pusher_lock:
        if _pusher is None or _pusher.pid != os.getpid() or _pusher._thread is None:
            _pusher = _new_pusher(app.extensions["redis"], interval)
            _pusher.start()
        return _pusher


def _passive_pusher(app) -> Pusher:
    """This process's pusher; one that serves /metrics without a timer (tests, a CLI) pushes at
    each scrape."""
    global _pusher
    interval = app.config["SETTINGS"].metrics_push_seconds
    with _pusher_lock:
        if _pusher is None or _pusher.pid != os.getpid():
            _pusher = _new_pusher(app.extensions["redis"], interval)
        elif _pusher._thread is None:
            _pusher.interval = interval  # the app serving this scrape decides when an instance is dead
        return _pusher


@atexit.register
def _retire_at_exit() -> None:
    if _pusher is not None and _pusher.pid == os.getpid() and _pusher._thread is not None:
        _pusher.retire()


_fork_baseline: tuple[int, dict[str, float]] | None = None  # (pid, counts inherited from the parent)


def _after_fork_in_child() -> None:
    """A forked child (RQ's scheduler process, a web worker forked by its server) pushes nothing unless it
    starts its own pusher; what the parent had counted stays the parent's."""
    global _pusher, _fork_baseline
    if _pusher is not None:
        _fork_baseline = (os.getpid(), local_samples(_pusher.registry)[0])
        _pusher = None


def _new_pusher(redis: Redis, interval: float) -> Pusher:
    pusher = Pusher(redis, interval)
    if _fork_baseline is not None and _fork_baseline[0] == os.getpid():
        pusher.baseline = dict(_fork_baseline[1])
    return pusher


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- scrape -----------------------------------------------------------------------------------

class _Families:
    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self):
        return self.metrics


def _order(key: tuple) -> tuple:
    sample, labels = key
    suffix = 0 if sample.endswith("_bucket") else 1 if sample.endswith(("_count", "_total")) else 2
    le = dict(labels).get("le")
    rest = tuple((k, v) for k, v in labels if k != "le")
    return rest, suffix, float(le) if le is not None else 0.0, sample


def deployment_families(app, redis: Redis | None = None) -> list[Metric]:
    """Every process's ``crm_*`` counters, histograms and summaries, summed (reads Redis)."""
    redis = redis or app.extensions["redis"]
    pusher = _passive_pusher(app)  # this process's timer pusher when it has one
    pusher.push(redis)
    parts = _script(redis, "read", _READ)(keys=[KEY_INSTANCES, KEY_RETIRED, KEY_META], args=[KEY_INSTANCE],
                                          client=redis)
    totals: dict[str, float] = defaultdict(float)
    for i, part in enumerate(parts):
        if i == 1:
            continue
        for key, value in _decode(part).items():
            totals[key] += value
    meta = {name: json.loads(raw) for name, raw in _decode_meta(parts[1]).items()}
    _values, local_meta = local_samples(REGISTRY)
    meta.update(local_meta)
    samples: dict[str, dict[tuple, float]] = defaultdict(dict)
    for key, value in totals.items():
        try:
            family, mtype, sample, labels = json.loads(key)
        except (ValueError, TypeError):
            continue
        meta.setdefault(family, [mtype, family])
        samples[family][(sample, tuple(tuple(x) for x in labels))] = value
    out = []
    for family in sorted(meta):
        mtype, doc = meta[family]
        metric = Metric(family, doc, mtype)
        for sample, labels in sorted(samples.get(family, {}), key=_order):
            value = samples[family][(sample, labels)]
            if sample.endswith("_sum"):
                value = float(f"{value:.{SUM_DIGITS}g}")
            metric.add_sample(sample, dict(labels), value)
        out.append(metric)
    return out


def _decode_meta(flat: list) -> dict[str, str]:
    out = {}
    for i in range(0, len(flat) - 1, 2):
        key, value = flat[i], flat[i + 1]
        out[key.decode() if isinstance(key, bytes) else key] = value.decode() if isinstance(value, bytes) else value
    return out


def this_host_registry():
    """What /metrics showed before the Redis store: this host's processes (multiprocess directory)
    or this process alone."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def scrape_registry(app):
    """The registry /metrics exposes: the whole deployment through Redis, or (store off, or Redis
    unreadable) this host's processes."""
    if app.config["SETTINGS"].metrics_push_seconds <= 0:
        return this_host_registry()
    try:
        return _Families(deployment_families(app))
    except Exception:  # Redis down: this host's view beats a 500
        log.warning("metrics: Redis unreadable, /metrics shows this host only", exc_info=True,
                    extra={"event": "metrics.redis_unreadable"})
        return this_host_registry()
