"""Inbox pages at scale: the conversation list and a 500-message thread, median of 5 renders.

    DATABASE_URL=sqlite:////tmp/inbox.sqlite3 .venv/bin/python bench/inbox_bench.py
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/crm_bench .venv/bin/python bench/inbox_bench.py

Seeds 10 000 contacts and 100 000 messages (one contact has 600 of them, 40 contacts wait for a
person, 30 are held by operators, every contact has a flow session and a few status updates),
then times whole requests through the app (sign-in, Jinja, queries) with Flask's test client.
Target: each page under 200 ms. The CPU column is this process's CPU time (the app and, on
SQLite, the database): on a shared machine the wall time also counts waiting for a core.
The database is migrated and emptied first (use a scratch database; --reuse keeps it);
Redis defaults to redis://127.0.0.1:6379/14 (REDIS_URL).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PNID = "100000000000001"


def seed(contacts: int, messages: int, thread: int) -> int:
    """Fill the tables; returns the id of the contact with the long thread."""
    from sqlalchemy import insert

    from crm.base.extensions import db
    from crm.base.models import Contact, Message, utcnow
    from crm.base.operators import AuditEvent
    from flows.models import FlowSession

    rng = random.Random(7)
    now = utcnow()
    rows = []
    for i in range(1, contacts + 1):
        seen = now - timedelta(minutes=rng.randint(0, 60 * 24 * 30))
        rows.append({"id": i, "wa_id": f"27{i:09d}", "profile_name": f"Person {i}", "custom_fields": {"n": i},
                     "opted_out": i % 97 == 0, "blocked": i % 211 == 0, "first_seen_at": seen - timedelta(days=3),
                     "last_seen_at": seen, "last_inbound_at": seen})
    for start in range(0, len(rows), 5000):
        db.session.execute(insert(Contact), rows[start:start + 5000])
    big = 1
    # the long thread first, then the rest spread over every contact
    per_contact = [thread] + [0] * (contacts - 1)
    for _ in range(messages - thread):
        per_contact[rng.randrange(1, contacts)] += 1
    batch, mid = [], 0
    statuses = ("sent", "delivered", "read", "read", "failed")
    for cid, count in enumerate(per_contact, start=1):
        base = now - timedelta(hours=count + 1)
        for k in range(count):
            mid += 1
            inbound = k % 2 == 0
            at = base + timedelta(hours=k)
            status = "received" if inbound else statuses[mid % len(statuses)]
            text = f"message {k} of contact {cid}"
            batch.append({
                "contact_id": cid, "direction": "in" if inbound else "out", "type": "text", "text": text,
                "payload": {"type": "text", "text": {"body": text}}, "phone_number_id": PNID,
                "wa_message_id": f"wamid.{mid}", "status": status, "created_at": at, "attempts": 0 if inbound else 1,
                "processed_at": at if inbound else None, "origin": None if inbound else "flow",
                "sent_at": None if inbound else at, "delivered_at": at if status in ("delivered", "read") else None,
                "read_at": at if status == "read" else None,
                "error_code": 131026 if status == "failed" else None,
                "error_title": "Message undeliverable" if status == "failed" else None,
                "callback_id": None if inbound else f"cb-{mid}"})
            if len(batch) == 10_000:
                db.session.execute(insert(Message), batch)
                batch = []
    if batch:
        db.session.execute(insert(Message), batch)
    sessions = []
    for i in range(1, contacts + 1):
        waiting, held = i % 250 == 0, i % 333 == 0
        status = "handover" if waiting or held else ("active" if i % 3 else "ended")
        sessions.append({"contact_id": i, "flow_name": "handover" if status == "handover" else "welcome",
                         "flow_version": 1, "step_id": "menu", "status": status, "state": {"vars": {"topic": "x"}},
                         "started_at": now - timedelta(hours=2), "last_activity_at": now - timedelta(hours=1),
                         "expires_at": None, "handover_claimed_by": "Bo" if held and not waiting else None,
                         "version": 1, "end_reason": "completed" if status == "ended" else None,
                         "ended_at": now - timedelta(hours=1) if status == "ended" else None})
    for start in range(0, len(sessions), 5000):
        db.session.execute(insert(FlowSession), sessions[start:start + 5000])
    db.session.execute(insert(AuditEvent), [
        {"at": now - timedelta(minutes=30), "operator": "bot", "via": "flow", "action": "handover",
         "contact_id": i, "target": "handover", "detail": {"step": "hand_over"}}
        for i in range(250, contacts + 1, 250)])
    db.session.commit()
    return big


def timed(client, path: str, runs: int) -> tuple[float, float, int]:
    """Median wall time and median CPU time of this process (ms), and the page size. On a busy
    machine the wall time includes waiting for a core; the CPU time does not."""
    client.get(path)  # warm-up: templates compiled, statement caches filled
    wall, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        response = client.get(path)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
        assert response.status_code == 200, response.status_code
    return statistics.median(wall), statistics.median(cpu), len(response.data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--thread", type=int, default=600, help="messages of the longest thread (500 shown)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="keep the data of a previous run (same sizes)")
    args = parser.parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DATABASE_URL", "sqlite:////tmp/inbox_bench.sqlite3")
    from flask_migrate import upgrade

    from crm.app import create_app
    from crm.base.extensions import db
    from crm.base.operators import create_operator

    app = create_app()
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        started = time.perf_counter()
        big = 1
        if not args.reuse:
            for table in reversed(db.metadata.sorted_tables):
                db.session.execute(table.delete())
            db.session.commit()
            app.extensions["redis"].flushdb()
            big = seed(args.contacts, args.messages, args.thread)
            create_operator("Bo", "admin", "benchmark password")
            db.session.commit()
        if db.engine.dialect.name == "postgresql":
            db.session.execute(db.text("ANALYZE"))
            db.session.commit()
        else:
            db.session.execute(db.text("ANALYZE"))
        from sqlalchemy import func, select

        from crm.base.models import Message

        last = db.session.execute(select(func.max(Message.id)).where(Message.contact_id == big)).scalar_one()
        print(f"seeded {args.contacts} contacts, {args.messages} messages in {time.perf_counter() - started:.1f}s "
              f"({db.engine.dialect.name})")
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert client.post("/login", data={"name": "Bo", "password": "benchmark password",
                                       "csrf_token": token}).status_code == 302
    rows = [("inbox list (/inbox/)", "/inbox/"),
            ("list, search 'Person 12'", "/inbox/?q=Person+12"),
            ("list, filter waiting", "/inbox/?filter=waiting"),
            (f"thread of 500 of {args.thread} messages (/inbox/c/{big})", f"/inbox/c/{big}"),
            (f"poll with the thread open (/inbox/poll?c={big})", f"/inbox/poll?c={big}&after={last}&t=")]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; medians of {args.runs}")
    print(f"{'page':58} {'wall ms':>8} {'CPU ms':>8} {'KiB':>6}")
    for label, path in rows:
        wall, cpu, size = timed(client, path, args.runs)
        print(f"{label:58} {wall:8.1f} {cpu:8.1f} {size / 1024:6.0f}")


if __name__ == "__main__":
    main()
