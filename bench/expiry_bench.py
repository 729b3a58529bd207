"""Idle-session expiry at scale: N idle sessions expired by one cleanup run.

    DATABASE_URL=sqlite:////tmp/expiry.sqlite3 .venv/bin/python bench/expiry_bench.py --sessions 100000
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/crm_bench .venv/bin/python bench/expiry_bench.py

The database is migrated and emptied first (use a scratch database). Reports the cleanup's
database time (the expiry and the notice rows) separately from enqueueing the delivery jobs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    from flask_migrate import upgrade
    from sqlalchemy import insert

    from crm.app import create_app
    from crm.base.extensions import db
    from crm.base.models import Contact, Message, utcnow
    from crm.replies.expiry import expire_idle_sessions
    from flows.models import FlowSession

    app = create_app()
    with app.app_context():
        upgrade(directory=str(Path(__file__).resolve().parent.parent / "migrations"))
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(table.delete())
        db.session.commit()
        app.extensions["redis"].flushdb()
        now = utcnow()
        old = now - timedelta(minutes=30)
        for start in range(0, args.sessions, 10_000):
            ids = range(start + 1, min(start + 10_000, args.sessions) + 1)
            db.session.execute(insert(Contact), [
                {"id": i, "wa_id": f"27{i:09d}", "custom_fields": {}, "opted_out": False, "blocked": False,
                 "first_seen_at": old, "last_seen_at": old, "last_inbound_at": old} for i in ids])
            db.session.execute(insert(Message), [
                {"contact_id": i, "direction": "in", "type": "text", "text": "hi", "payload": {},
                 "phone_number_id": "100000000000001", "wa_message_id": f"wamid.{i}", "status": "received",
                 "created_at": old, "processed_at": old, "attempts": 0} for i in ids])
            db.session.execute(insert(FlowSession), [
                {"contact_id": i, "flow_name": "welcome", "flow_version": 1, "step_id": "menu", "status": "active",
                 "state": {"vars": {}}, "started_at": old, "last_activity_at": old,
                 "expires_at": old + timedelta(minutes=15), "version": 1} for i in ids])
            db.session.commit()
        if db.engine.dialect.name == "postgresql":
            db.session.execute(db.text("ANALYZE"))
            db.session.commit()
        started = time.perf_counter()
        summary = expire_idle_sessions(now=now)
        total = time.perf_counter() - started
        dialect = db.engine.dialect.name
    print(f"{dialect}: {summary['expired']} sessions expired, {summary['notices']} notices; "
          f"database time {summary['db_seconds']:.1f} s, total with enqueueing {total:.1f} s")


if __name__ == "__main__":
    main()
