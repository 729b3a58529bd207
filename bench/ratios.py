"""Medians of the stack's runs next to the echo bot's runs of the same benchmark, and their ratios.

    python3 bench/ratios.py RESULTS.jsonl KIND

Labels are "<KIND> <scenario>" for the stack and "echo <scenario>" for wabench's echo bot
(the harness floor). Each row: the median of the repetitions, the ratio, the issue's target,
and for every repetition the CPU that other processes on the host used during it (foreign)
and the 1-minute load average, so a figure taken on a busy machine can be told apart.
"""

from __future__ import annotations

import json
import statistics
import sys

# scenario, what, how to read it from a run, target (ratio stack/echo), "max" or "min"
ROWS = [
    ("a2", "p50 latency ms", lambda r: r["latency_ms"]["p50"], 6.0, "max"),
    ("b", "replies/s", lambda r: r["replies_per_s"], {"sqlite": 0.30, "postgres": 0.20}, "min"),
    ("b", "p99 latency ms", lambda r: r["latency_ms"]["p99"], None, None),
    ("c", "slowest ms", lambda r: r["latency_ms"]["max"], 6.0, "max"),
    ("d", "p50 latency ms", lambda r: r["latency_ms"]["p50"], None, None),
    # every process of the stack (web, reply workers, football, scheduler, Redis, database, honcho)
    # against the echo bot's process, both read from /proc: stays true on a shared machine
    ("cpu", "CPU ms per reply, by process", None, 6.0, "max"),
    # wabench's figure: the whole host's CPU minus wabench's own (the method; anything
    # else running on the host lands in it, see the foreign column)
    ("cpu", "host CPU ms per reply", lambda r: r["host_cpu_ms_per_reply"], None, None),
]


def scenario(label: str) -> tuple[str, str]:
    who, _, rest = label.partition(" ")
    return who, rest.split()[0] if rest else ""


def main(path: str, kind: str) -> int:
    runs = [json.loads(line) for line in open(path) if line.strip()]
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault(scenario(run.get("label") or ""), []).append(run)
    print(f"\n{kind}: medians of {max((len(v) for v in groups.values()), default=0)} run(s); "
          f"ratio = stack / echo bot")
    print(f"| scenario | metric | {kind} | echo bot | ratio | target | foreign CPU % per run (stack; echo) | load1 |")
    print("|---|---|---|---|---|---|---|---|")
    failed = 0
    for name, what, read, target, sense in ROWS:
        ours, echo = groups.get((kind, name), []), groups.get(("echo", name), [])
        if not ours:
            continue
        if read is None:
            mine = statistics.median(r["stack_cpu_ms_per_reply"] for r in ours)
            floor = statistics.median(r["echo_cpu_ms_per_reply"] for r in echo) if echo else None
        else:
            mine = statistics.median(read(r) for r in ours)
            floor = statistics.median(read(r) for r in echo) if echo else None
        ratio = mine / floor if floor else None
        goal = target.get(kind) if isinstance(target, dict) else target
        verdict = ""
        if goal is not None and ratio is not None:
            ok = ratio <= goal if sense == "max" else ratio >= goal
            failed += not ok
            verdict = f"{'≤' if sense == 'max' else '≥'} {goal} {'ok' if ok else 'MISSED'}"
        noise = (",".join(f"{r.get('foreign_cpu_pct', '?')}" for r in ours) + "; "
                 + ",".join(f"{r.get('foreign_cpu_pct', '?')}" for r in echo))
        loads = ",".join(f"{r.get('load1_before', '?')}" for r in ours)
        print(f"| {name} | {what} | {mine:.1f} | {'' if floor is None else f'{floor:.1f}'} | "
              f"{'' if ratio is None else f'{ratio:.2f}'} | {verdict} | {noise} | {loads} |")
    if (kind, "cpu") in groups:
        split: dict[str, list[float]] = {}
        for run in groups[(kind, "cpu")]:
            for k, v in run["cpu_ms_per_reply"].items():
                split.setdefault(k, []).append(v)
        ranked = sorted(split.items(), key=lambda kv: -max(kv[1]))
        print("CPU ms per reply by process (medians): "
              + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in ranked))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
