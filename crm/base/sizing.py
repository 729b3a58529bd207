"""How many processes this machine holds: web workers and threads, reply processes.

Pure functions of what the kernel reports (cores we may run on, the cgroup's CPU quota and
memory limit) plus the environment's overrides, so that the web server (``crm.app.server``) and the reply
worker pool size themselves the same way and the rules are table-tested.

* Cores: the CPUs this process may run on, capped by a cgroup CPU quota (v2 ``cpu.max``,
  v1 ``cpu.cfs_quota_us``).
* Memory: the smallest cgroup limit on the way from our cgroup to the root (v2 ``memory.max``,
  v1 ``memory.limit_in_bytes``). Containers often report the host's cores (Heroku's shared
  dynos say 8 whatever their size; the smallest has 512 MB), so memory caps the counts:
  each of our processes holds about ``PROCESS_MB`` and the plan uses ``MEMORY_SHARE`` of
  the limit, counting the master/supervisor process as one of them.
* Web: one web worker process per core with ``WEB_THREADS`` threads (the webhook is short
  and mostly waits on the database and Redis; threads cover the waits). Not fewer: on SQLite
  one thread per process spent 6 % less CPU per reply (``bench/cpu_split.sh sqlite``,
  alternated twice: 5.45-5.85 against 5.78-6.28 ms, 2 threads as 4), but Granian hands a
  request's body to the app as it arrives, so one client sending its body slowly holds a
  thread as long as it likes, and with one thread that is the whole process
  (``tests/test_sizing.py``).
* Reply processes: one per core, each serving contacts from ``REPLY_THREADS`` threads (a turn
  waits on the Graph API, the database and Redis; threads cover the waits, and a thread costs a
  few MB where a process costs ``PROCESS_MB``). Measured with ``bench/cpu_split.sh`` (2 cores,
  fake Graph API answering at once): 4 processes x 1 thread spent 8.1 ms CPU per reply and
  answered 193/s, 2 processes x 4 threads 5.3 ms and 264/s: more processes than cores mostly
  buys contention. With a Graph API answering after 100 ms (``bench/graph_latency.sh``)
  threads are what keeps replies moving: 20/s with 4 x 1, 39/s with 2 x 4, 77/s with 2 x 8.

``WEB_CONCURRENCY``, ``WEB_THREADS``, ``WORKER_PROCESSES`` and ``WORKER_THREADS`` override the
computed values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROCESS_MB = 85  # measured resident size of one app process (web worker or reply process)
MEMORY_SHARE = 0.8  # leave room for growth and the platform: Heroku stops a dyno past its quota
WEB_THREADS = 4
REPLY_PROCESSES_PER_CORE = 1
REPLY_THREADS = 4
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class Machine:
    cores: int
    memory_bytes: int | None  # None: no limit found

    def describe(self) -> str:
        memory = "no memory limit" if self.memory_bytes is None else f"{self.memory_bytes // 2**20} MB"
        return f"{self.cores} core(s), {memory}"


@dataclass(frozen=True)
class Plan:
    web_processes: int
    web_threads: int
    reply_processes: int
    reply_threads: int


class SizingError(ValueError):
    pass


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def own_cgroups(text: str | None) -> dict[str, str]:
    """``/proc/self/cgroup`` -> {controller: path}; the cgroup v2 line is under ``""``."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _hierarchy, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            out[controller] = path
    return out


def _ancestors(path: str) -> list[str]:
    """'/a/b' -> ['a/b', 'a', '']: our cgroup first, then every parent up to the root."""
    parts = [p for p in path.split("/") if p]
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _candidates(root: Path, mount: str, own: str | None) -> list[Path]:
    base = root / mount if mount else root
    dirs = [base / rel for rel in _ancestors(own)] if own else []
    return dirs + [base]  # in a cgroup namespace our cgroup is mounted as the root


def memory_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> int | None:
    """The smallest memory limit in bytes that applies to this process, or None."""
    own = own_cgroups(_read(self_cgroup))
    limits = []
    for directory in _candidates(root, "", own.get("")):  # cgroup v2
        value = _read(directory / "memory.max")
        if value and value.isdigit():
            limits.append(int(value))
    for directory in _candidates(root, "memory", own.get("memory")):  # cgroup v1
        value = _read(directory / "memory.limit_in_bytes")
        if value and value.isdigit():
            limits.append(int(value))
    limits = [v for v in limits if 0 < v < UNLIMITED]
    return min(limits) if limits else None


def cpu_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The smallest CPU quota in cores (``cpu.max`` 150000 100000 -> 1.5), or None."""
    own = own_cgroups(_read(self_cgroup))
    quotas = []
    for directory in _candidates(root, "", own.get("")):
        fields = (_read(directory / "cpu.max") or "").split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit() and int(fields[1]):
            quotas.append(int(fields[0]) / int(fields[1]))
    for mount in ("cpu", "cpu,cpuacct"):
        for directory in _candidates(root, mount, own.get("cpu")):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            if quota and period and quota.isdigit() and period.isdigit() and int(period):
                quotas.append(int(quota) / int(period))  # "-1" (no quota) is not all digits
    quotas = [q for q in quotas if q > 0]
    return min(quotas) if quotas else None


def usable_cores(affinity: int, quota: float | None) -> int:
    cores = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, cores)


def detect(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> Machine:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
    return Machine(usable_cores(affinity, cpu_quota(root, self_cgroup)), memory_limit(root, self_cgroup))


def processes_in_memory(memory_bytes: int | None) -> int | None:
    """How many app processes (children) fit beside their master, or None without a limit."""
    if memory_bytes is None:
        return None
    total = int(memory_bytes * MEMORY_SHARE / (PROCESS_MB * 2**20))
    return max(1, total - 1)


def default_plan(machine: Machine) -> Plan:
    fit = processes_in_memory(machine.memory_bytes)

    def cap(n: int) -> int:
        return max(1, n if fit is None else min(n, fit))

    return Plan(web_processes=cap(machine.cores), web_threads=WEB_THREADS,
                reply_processes=cap(REPLY_PROCESSES_PER_CORE * machine.cores), reply_threads=REPLY_THREADS)


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SizingError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 1:
        raise SizingError(f"{name} must be at least 1, got {value}")
    return value


def plan(env: Mapping[str, str] | None = None, machine: Machine | None = None) -> Plan:
    """The computed defaults with ``WEB_CONCURRENCY``, ``WEB_THREADS``, ``WORKER_PROCESSES`` and
    ``WORKER_THREADS`` applied."""
    env = os.environ if env is None else env
    base = default_plan(machine or detect())
    return Plan(web_processes=_positive(env, "WEB_CONCURRENCY", base.web_processes),
                web_threads=_positive(env, "WEB_THREADS", base.web_threads),
                reply_processes=_positive(env, "WORKER_PROCESSES", base.reply_processes),
                reply_threads=_positive(env, "WORKER_THREADS", base.reply_threads))
