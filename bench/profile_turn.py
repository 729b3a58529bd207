"""Where one reply's CPU goes: the webhook and the reply worker, profiled in this process.

    .venv/bin/python bench/profile_turn.py [--turns 300] [--database sqlite|postgres] [--top 25]

Starts a private redis-server and wabench's fake Graph API (``--serve-only``), builds the app
on a scratch database, then for ``--turns`` messages from one contact: the signed webhook
POST (Flask test client) and the reply worker's work (our RQ ``SimpleWorker``,
exactly what a reply process runs). Prints, per side, CPU ms per turn, SQL statements and
Redis commands per turn, and the functions with the most cumulative time (cProfile).
Nothing here is timed against a target: it shows where to look.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import procs  # noqa: E402 - bench/procs.py: per-process CPU from /proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_ticks() -> int:
    """CPU ticks of every PostgreSQL and Redis server process on the host (bench/procs.py reads them)."""
    me = str(os.getpid())  # our own command line may say "postgres" (--database postgres)
    stats = (procs._stat(pid) for pid in os.listdir("/proc") if pid.isdigit() and pid != me)
    return sum(ticks for stat in stats if stat is not None
               for _ppid, ticks, cmd in [stat] if procs.classify(cmd) in ("postgres", "redis"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--sort", default="cumulative", help="cProfile order: cumulative, tottime, ...")
    parser.add_argument("--text", default="hi")
    parser.add_argument("--show-sql", action="store_true", help="print the SQL of the last turn")
    parser.add_argument("--show-redis", action="store_true", help="print the Redis commands of the last turn")
    parser.add_argument("--no-profile", action="store_true", help="wall and CPU time only (no cProfile overhead)")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="crm-profile-")
    procs = []
    rport, gport = free_port(), free_port()
    procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no",
                                   "--dir", tmp], stdout=subprocess.DEVNULL))
    procs.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "wabench.py"), "--serve-only",
                                   "--graph-port", str(gport), "--duration", "3600"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    pg_name = None
    if args.database == "postgres":
        pg_name = f"crm_profile_{os.getpid()}"
        subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
                        f"CREATE DATABASE {pg_name}"], check=True)
        url = f"postgresql://postgres@127.0.0.1:5432/{pg_name}"
    else:
        url = f"sqlite:///{tmp}/profile.sqlite3"
    os.environ.update({"DATABASE_URL": url, "REDIS_URL": f"redis://127.0.0.1:{rport}/0",
                       "WHATSAPP_API_URL": f"http://127.0.0.1:{gport}", "WHATSAPP_APP_SECRET": "s",
                       "WHATSAPP_ACCESS_TOKEN": "t", "WHATSAPP_PHONE_NUMBER_ID": "100000000000001",
                       "WHATSAPP_VERIFY_TOKEN": "v", "LOG_LEVEL": "WARNING"})
    try:
        return profile(args, rport)
    finally:
        for p in procs:
            p.terminate()
        if pg_name:
            subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
                            f"DROP DATABASE IF EXISTS {pg_name} WITH (FORCE)"])
        shutil.rmtree(tmp, ignore_errors=True)


def profile(args, rport: int) -> int:
    import hashlib
    import hmac

    import redis
    from flask_migrate import upgrade
    from sqlalchemy import event

    from crm.app import create_app
    from crm.app.worker import build_worker
    from crm.base.extensions import db
    from flows.document import flow_files, parse_flow
    from flows.store import import_flows

    for _ in range(100):
        try:
            redis.Redis(port=rport).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    app = create_app()
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        import_flows([parse_flow(p.read_text(), str(p)) for p in flow_files([str(ROOT / "flows" / "examples")])])
    statements, last = [0], []

    def count(_conn, _cursor, statement, *_rest):
        statements[0] += 1
        last.append(" ".join(statement.split())[:160])

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", count)
    # The reply path runs its statements on the cursor (crm.base.hot_sql): count them there too.
    from crm.base import hot_sql
    run_hot = hot_sql.execute

    def counted(stmt, params=None):
        statements[0] += 1
        last.append(stmt)  # made text only for --show-sql: compiling it here would cost more than running it
        return run_hot(stmt, params)

    hot_sql.execute = counted
    client, r = app.test_client(), redis.Redis(port=rport)
    worker = build_worker(app, ["high", "default"])

    def post(i: int) -> None:
        body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "W", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "1555", "phone_number_id": "100000000000001"},
                "contacts": [{"profile": {"name": "Ana"}, "wa_id": "27820000001"}],
                "messages": [{"from": "27820000001", "id": f"wamid.{uuid.uuid4().hex}",
                              "timestamp": str(int(time.time())), "type": "text",
                              "text": {"body": args.text}}]}}]}]}).encode()
        sig = "sha256=" + hmac.new(b"s", body, hashlib.sha256).hexdigest()
        assert client.post("/webhooks/whatsapp", data=body, content_type="application/json",
                           headers={"X-Hub-Signature-256": sig}).status_code == 200

    worker.register_birth()
    logging.getLogger("rq.worker").setLevel(logging.WARNING)

    def work() -> None:  # one pass of RQ's work loop: take the job, run it with its bookkeeping
        while (found := worker.dequeue_job_and_maintain_ttl(None)) is not None:  # serves the ready list
            worker.execute_job(*found)

    for i in range(20):  # warm up: flows cached, connections open
        post(i)
        work()
    sides = {"webhook": (post, cProfile.Profile(), [0.0, 0, 0, 0.0]), "worker": (lambda i: work(), cProfile.Profile(),
                                                                           [0.0, 0, 0, 0.0])}
    servers = server_ticks()
    for i in range(args.turns):
        for name, (fn, prof, acc) in sides.items():
            last.clear()
            monitor = None
            if args.show_redis and i == args.turns - 1:  # redis-cli MONITOR around the last turn
                monitor = subprocess.Popen(["redis-cli", "-p", str(rport), "monitor"], stdout=subprocess.PIPE,
                                           text=True)
                time.sleep(0.3)
            cmds = int(r.info("stats")["total_commands_processed"])
            stmts = statements[0]
            t0, w0 = time.process_time(), time.perf_counter()
            if not args.no_profile:
                prof.enable()
            fn(i)
            if not args.no_profile:
                prof.disable()
            acc[0] += time.process_time() - t0
            acc[3] += time.perf_counter() - w0
            acc[1] += statements[0] - stmts
            acc[2] += int(r.info("stats")["total_commands_processed"]) - cmds - 1  # minus our INFO
            if monitor is not None:
                time.sleep(0.3)
                monitor.terminate()
                seen = [line.split("]", 1)[-1].strip()[:140] for line in monitor.communicate()[0].splitlines()[1:]]
                print(f"-- {name}: the last turn's Redis commands", *seen[:-1], sep="\n  ")
            if args.show_sql and i == args.turns - 1:
                print(f"-- {name}: the last turn's SQL", *(" ".join(str(s).split())[:160] for s in last), sep="\n  ")
    servers = server_ticks() - servers
    print(f"\n== database and Redis servers: {servers / os.sysconf('SC_CLK_TCK') / args.turns * 1000:.2f} ms CPU "
          "per turn (webhook and worker together; other users of the host's servers count too)")
    for name, (_fn, prof, acc) in sides.items():
        n = args.turns
        print(f"\n== {name}: {acc[0] / n * 1000:.2f} ms CPU, {acc[3] / n * 1000:.2f} ms wall per turn, "
              f"{acc[1] / n:.1f} SQL statements, {acc[2] / n:.1f} Redis commands per turn")
        if not args.no_profile:
            pstats.Stats(prof).sort_stats(args.sort).print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
