#!/usr/bin/env bash
# CPU time per reply, split by process (web, reply workers, football worker, scheduler, Redis,
# database), read from /proc/<pid>/stat around one wabench run of 20 users x 20 messages.
#
#   bash bench/cpu_split.sh sqlite        # or postgres
set -euo pipefail
cd "$(dirname "$0")/.."
KIND="${1:-sqlite}"; W="${WABENCH:-../shared/tools/wabench.py}"
source bench/_stack.sh
C="--target $T --app-secret bench-secret --graph-token bench-token"
python3 "$W" $C -c 20 -m 3 --concurrency 20 --timeout 60 --label warm >/dev/null
snapshot() {  # name ticks, for the stack's processes, Redis and PostgreSQL
  for p in $(pgrep -f 'gunicorn wsgi|crm.app.worker|scheduler.py|redis-server|postgres|honcho' || true); do
    [ -r "/proc/$p/stat" ] || continue
    cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-60)
    case "$cmd" in
      *gunicorn*) n=web;; *"crm.app.worker low"*) n=football;; *crm.app.worker*) n=reply-worker;;
      *scheduler.py*) n=scheduler;; *redis-server*) n=redis;; *postgres*) n=postgres;; *honcho*) n=honcho-logs;; *) n=other;;
    esac
    awk -v n="$n" -v p="$p" '{sub(/^.*\) /, ""); print n, p, $12 + $13}' "/proc/$p/stat"
  done
}
snapshot >/tmp/cpu_before
python3 "$W" $C -c 20 -m 20 --concurrency 20 --timeout 60 --label "$KIND cpu" | grep -E "answered|latency|replies/s|host cpu"
snapshot >/tmp/cpu_after
python3 - "$(getconf CLK_TCK)" <<'PY'
import sys
hz = int(sys.argv[1]); replies = 400
def read(path):
    return {(n, p): int(t) for n, p, t in (line.split() for line in open(path))}
before, after = read("/tmp/cpu_before"), read("/tmp/cpu_after")
by = {}
for key, ticks in after.items():
    by[key[0]] = by.get(key[0], 0) + ticks - before.get(key, 0)
total = sum(by.values())
for name, ticks in sorted(by.items(), key=lambda kv: -kv[1]):
    print(f"  {name:13s} {ticks * 1000 / hz / replies:6.1f} ms CPU per reply")
print(f"  {'total':13s} {total * 1000 / hz / replies:6.1f} ms CPU per reply")
PY
