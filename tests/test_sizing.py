"""Process sizing from cores, cgroup limits and the environment (fake cgroup trees in tmp_path)."""

from __future__ import annotations

import pytest

from crm.base import sizing
from crm.base.sizing import Machine, Plan

MB = 2**20
GB = 2**30
V2_SELF = "0::/user.slice/app.scope\n"
V1_SELF = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"


def write(root, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    return root, tmp_path / "self_cgroup"


@pytest.mark.parametrize(("self_text", "files", "memory", "quota"), [
    # cgroup v2: our own cgroup's limit
    (V2_SELF, {"user.slice/app.scope/memory.max": "536870912", "user.slice/app.scope/cpu.max": "150000 100000"},
     512 * MB, 1.5),
    # v2: no limit anywhere
    (V2_SELF, {"user.slice/app.scope/memory.max": "max", "user.slice/app.scope/cpu.max": "max 100000"}, None, None),
    # v2: a parent's limit is smaller than ours: the smallest applies
    (V2_SELF, {"user.slice/app.scope/memory.max": "max", "user.slice/memory.max": str(GB)}, GB, None),
    # v2 inside a cgroup namespace: our cgroup is the mount's root ("0::/")
    ("0::/\n", {"memory.max": "1073741824", "cpu.max": "200000 100000"}, GB, 2.0),
    # cgroup v1 (Docker): memory and cpu,cpuacct hierarchies
    (V1_SELF, {"memory/docker/abc/memory.limit_in_bytes": "536870912",
               "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
               "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}, 512 * MB, 0.5),
    # v1: "no limit" is a huge number, no quota is -1
    (V1_SELF, {"memory/memory.limit_in_bytes": "9223372036854771712", "cpu/cpu.cfs_quota_us": "-1",
               "cpu/cpu.cfs_period_us": "100000"}, None, None),
    # nothing mounted, no /proc/self/cgroup
    (None, {}, None, None),
    # garbage is ignored, not fatal
    ("not a cgroup file", {"memory.max": "lots", "cpu.max": "1 0"}, None, None),
])
def test_cgroup_limits(tree, self_text, files, memory, quota):
    root, self_cgroup = tree
    if self_text is not None:
        self_cgroup.write_text(self_text)
    for rel, text in files.items():
        write(root, rel, text)
    assert sizing.memory_limit(root, self_cgroup) == memory
    assert sizing.cpu_quota(root, self_cgroup) == quota


@pytest.mark.parametrize(("affinity", "quota", "cores"), [
    (8, None, 8), (8, 1.5, 2), (2, 4.0, 2), (4, 0.2, 1), (1, None, 1),
])
def test_usable_cores(affinity, quota, cores):
    assert sizing.usable_cores(affinity, quota) == cores


@pytest.mark.parametrize(("machine", "plan"), [
    # this benchmark box: 2 cores, no memory limit -> the sizes the benchmarks run
    (Machine(2, None), Plan(2, 4, 2, 4)),
    (Machine(1, None), Plan(1, 4, 1, 4)),
    # Heroku Basic / Standard-1X: reports 8 cores, holds 512 MB -> memory decides (0.8 * 512 / 85 = 4, minus the master)
    (Machine(8, 512 * MB), Plan(3, 4, 3, 4)),
    # Standard-2X: 8 cores reported, 1 GB
    (Machine(8, GB), Plan(8, 4, 8, 4)),
    # Performance-M: 2 dedicated cores, 2.5 GB -> cores decide
    (Machine(2, 2560 * MB), Plan(2, 4, 2, 4)),
    # a tiny container still runs one of each
    (Machine(4, 128 * MB), Plan(1, 4, 1, 4)),
])
def test_default_plan(machine, plan):
    assert sizing.default_plan(machine) == plan


def test_environment_overrides_the_computed_values():
    machine = Machine(8, 512 * MB)
    env = {"WEB_CONCURRENCY": "5", "WEB_THREADS": "8", "WORKER_PROCESSES": "6", "WORKER_THREADS": "16"}
    assert sizing.plan(env, machine) == Plan(5, 8, 6, 16)
    assert sizing.plan({"WORKER_PROCESSES": " "}, machine) == Plan(3, 4, 3, 4)  # empty = computed


@pytest.mark.parametrize(("name", "value", "message"), [
    ("WORKER_PROCESSES", "four", "WORKER_PROCESSES must be a whole number"),
    ("WEB_CONCURRENCY", "0", "WEB_CONCURRENCY must be at least 1"),
    ("WEB_THREADS", "-2", "WEB_THREADS must be at least 1"),
    ("WORKER_THREADS", "0", "WORKER_THREADS must be at least 1"),
])
def test_bad_overrides_name_the_variable(name, value, message):
    with pytest.raises(sizing.SizingError, match=message):
        sizing.plan({name: value}, Machine(2, None))


def test_detect_reads_this_machine():
    machine = sizing.detect()
    assert machine.cores >= 1
    assert machine.memory_bytes is None or machine.memory_bytes > 0
    assert "core(s)" in machine.describe()


def test_the_web_server_sizes_itself_from_the_machine():
    from crm.app.server import options

    expected = sizing.default_plan(sizing.detect())
    conf = options({})
    assert (conf["workers"], conf["blocking_threads"]) == (expected.web_processes, expected.web_threads)
    conf = options({"WEB_CONCURRENCY": "3", "WEB_THREADS": "2"})
    assert (conf["workers"], conf["blocking_threads"]) == (3, 2)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_client_sending_its_body_slowly_does_not_hold_the_web_process(make_app):
    """One web process with its default threads: a request whose body trickles in holds one
    thread (Granian hands the body to the app as it arrives), and the others keep answering.
    With one thread per process the process stopped answering (measured: /healthz timed out)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import requests

    from tests.helpers import ROOT, free_port

    app = make_app()
    port = free_port()
    env = {**os.environ, **app.config["TEST_ENV"], "PYTHONPATH": str(ROOT), "PORT": str(port),
           "WEB_CONCURRENCY": "1", "LOG_LEVEL": "WARNING", "WEB_HOST": "127.0.0.1"}
    env.pop("WEB_THREADS", None)
    web = subprocess.Popen([sys.executable, "-m", "crm.app.server"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    slow: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        slow += [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for s in slow:  # headers and 10 of 100 000 announced bytes, then nothing
            s.sendall(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"X-Hub-Signature-256: sha256=00\r\nContent-Length: 100000\r\n\r\n" + b"{" * 10)
        time.sleep(0.5)
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    finally:
        for s in slow:
            s.close()
        web.terminate()
        web.wait(30)
