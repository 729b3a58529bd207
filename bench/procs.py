"""CPU accounting for the end-to-end benchmarks (Linux /proc, standard library only).

    python3 bench/procs.py snapshot ROOT_PID FILE     # CPU ticks of the benchmark's processes, and the host's
    python3 bench/procs.py memory ROOT_PID                 # RSS and PSS of each of the stack's processes
    python3 bench/procs.py annotate BEFORE AFTER RUN_JSON OUT_JSONL
        # adds to wabench's JSON line: CPU ms per reply by process class, the CPU other people's
        # processes used during the run (foreign_cpu_pct, of all cores; steal_cpu_pct: the part the
        # hypervisor gave to other machines) and the load average

"Ours" is every live descendant of ROOT_PID (children reaped along the way are counted in their
parent's cutime/cstime) plus the PostgreSQL backends serving the benchmark database. Whatever
else the host ran in the same window is "foreign": on a shared machine that is the noise.
"""

from __future__ import annotations

import json
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")
CLASSES = (  # (substring of the command line, class), first match wins
    ("--echo-bot", "echo-bot"), ("wabench.py", "wabench"), ("fake_apifootball", "fake-apifootball"),
    ("crm.app.server", "web"), ("gunicorn", "web"), ("crm.app.worker low", "football"),
    ("crm.app.worker", "reply-worker"),
    ("scheduler.py", "scheduler"), ("redis-server", "redis"), ("honcho", "honcho-logs"), ("postgres", "postgres"),
)
STACK = ("web", "reply-worker", "football", "scheduler", "redis", "postgres", "honcho-logs")
BENCH_DB = os.environ.get("BENCH_DB_NAME", "crm_bench")


def _stat(pid: str):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    # fields[0] is the state (field 3 of stat): utime 14, stime 15, cutime 16, cstime 17
    return int(fields[1]), sum(int(x) for x in fields[11:15]), cmd


def classify(cmd: str) -> str:
    for needle, name in CLASSES:
        if needle in cmd:
            return name
    return "other"


def snapshot(root: int) -> dict:
    procs = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _ticks, _cmd) in procs.items():
        children.setdefault(ppid, []).append(pid)
    ours, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in ours:
            ours.add(pid)
            todo.extend(children.get(pid, []))
    by_pid = {pid: (classify(procs[pid][2]), procs[pid][1]) for pid in ours}
    for pid, (_ppid, ticks, cmd) in procs.items():  # the benchmark database's backends
        if pid not in ours and cmd.startswith("postgres:") and f" {BENCH_DB} " in cmd:
            by_pid[pid] = ("postgres", ticks)
    with open("/proc/stat") as f:
        cpu = [int(x) for x in f.readline().split()[1:]]
    busy = sum(cpu[:8]) - cpu[3] - cpu[4]  # user..steal minus idle and iowait (guest is inside user)
    steal = cpu[7] if len(cpu) > 7 else 0  # a virtual machine's CPU the hypervisor gave to others
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    return {"host_busy": busy, "steal": steal, "procs": {str(p): v for p, v in by_pid.items()}, "load1": float(load),
            "cores": os.cpu_count()}


def annotate(before: dict, after: dict, run: dict) -> dict:
    by_class: dict[str, int] = {}
    for pid, (name, ticks) in after["procs"].items():
        by_class[name] = by_class.get(name, 0) + ticks - before["procs"].get(pid, (name, 0))[1]
    ours = sum(by_class.values())
    host = after["host_busy"] - before["host_busy"]
    wall = max(run.get("wall_s") or 0.0, 1e-9)
    replies = max(run.get("answered") or 0, 1)
    run["cpu_ms_per_reply"] = {k: round(v * 1000 / HZ / replies, 2) for k, v in sorted(by_class.items())}
    run["stack_cpu_ms_per_reply"] = round(sum(v for k, v in by_class.items() if k in STACK) * 1000 / HZ / replies, 2)
    run["echo_cpu_ms_per_reply"] = round(by_class.get("echo-bot", 0) * 1000 / HZ / replies, 2)
    # wabench's window (first POST to last reply) is shorter than the snapshot window; the
    # foreign share is computed over the snapshot window, measured by the host's own clock.
    window = max((after.get("t", 0) - before.get("t", 0)), wall)
    run["foreign_cpu_pct"] = round(max(0, host - ours) / HZ / window / after["cores"] * 100, 1)
    # of which steal: the hypervisor ran other machines on our cores
    steal = after.get("steal", 0) - before.get("steal", 0)
    run["steal_cpu_pct"] = round(steal / HZ / window / after["cores"] * 100, 1)
    run["load1_before"], run["load1_after"] = before["load1"], after["load1"]
    return run


def memory(root: int) -> list[tuple[str, int, str, float, float]]:
    """(class, pid, command, RSS MB, PSS MB) for the stack's processes (PSS: shared pages split
    between the processes sharing them: what a memory limit adds up)."""
    out = []
    snap = snapshot(root)
    for pid, (name, _ticks) in snap["procs"].items():
        if name not in STACK or name == "postgres":
            continue
        values = {}
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("Rss", "Pss"):
                        values[key] = int(rest.split()[0]) / 1024
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:60]
        except OSError:
            continue
        out.append((name, int(pid), cmd, values.get("Rss", 0.0), values.get("Pss", 0.0)))
    return sorted(out)


def main(argv: list[str]) -> int:
    import time

    if argv[0] == "snapshot":
        snap = snapshot(int(argv[1]))
        snap["t"] = time.monotonic()
        with open(argv[2], "w") as f:
            json.dump(snap, f)
        return 0
    if argv[0] == "memory":
        rows = memory(int(argv[1]))
        print("memory per process (MB):  class  pid  RSS  PSS  command")
        for name, pid, cmd, rss, pss in rows:
            if "python" in cmd or "redis" in cmd:
                print(f"  {name:13s} {pid:7d} {rss:6.1f} {pss:6.1f}  {cmd}")
        by: dict[str, list[float]] = {}
        for name, _pid, _cmd, rss, pss in rows:
            by.setdefault(name, [0.0, 0.0, 0])
            by[name][0] += rss
            by[name][1] += pss
            by[name][2] += 1
        print("  totals: " + "; ".join(f"{k} {int(v[2])} proc RSS {v[0]:.0f} PSS {v[1]:.0f}" for k, v in by.items()))
        return 0
    if argv[0] == "annotate":
        before, after = (json.load(open(p)) for p in argv[1:3])
        lines = open(argv[3]).read().splitlines()
        run = annotate(before, after, json.loads(lines[-1]))
        with open(argv[4], "a") as f:
            f.write(json.dumps(run) + "\n")
        print(f"  {run.get('label')}: foreign CPU {run['foreign_cpu_pct']} % (steal {run['steal_cpu_pct']} %),"
              f" load {run['load1_before']}"
              f" -> {run['load1_after']}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
