"""Stats: message counts per day, reply latency percentiles, sessions, failed sends."""

from __future__ import annotations

from datetime import timedelta

from flask import jsonify
from sqlalchemy import func, select

from crm.app.api import arg_int, bp
from crm.base.extensions import db
from crm.base.models import Contact, Message, utcnow
from flows.models import FlowSession


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return round(ordered[rank], 1)


# The flow simulator's test contacts are left out of every figure.
TEST_CONTACTS = select(Contact.id).where(Contact.is_test.is_(True)).scalar_subquery()
REAL_MESSAGES, REAL_SESSIONS = Message.contact_id.not_in(TEST_CONTACTS), FlowSession.contact_id.not_in(TEST_CONTACTS)


@bp.get("/stats")
def stats():
    days = arg_int("days", 7, 1, 90)
    now = utcnow()
    since = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    day = func.date(Message.created_at)
    per_day: dict[str, dict] = {}
    for d, direction, count in db.session.execute(
            select(day, Message.direction, func.count()).where(Message.created_at >= since, REAL_MESSAGES)
            .group_by(day, Message.direction)):
        per_day.setdefault(str(d), {"date": str(d), "inbound": 0, "outbound": 0})[
            "inbound" if direction == "in" else "outbound"] = count
    # webhook -> first reply accepted: on the reply's row (on the inbound row before 2026-12-07)
    latencies = list(db.session.execute(
        select(Message.reply_ms).where(Message.reply_ms.is_not(None), Message.created_at >= since,
                                       REAL_MESSAGES)).scalars())
    failed = db.session.execute(
        select(Message.error_code, func.min(Message.error_title), func.count())
        .where(Message.direction == "out", Message.status == "failed", Message.created_at >= since, REAL_MESSAGES)
        .group_by(Message.error_code)).all()
    expired = db.session.execute(select(func.count()).select_from(FlowSession).where(
        FlowSession.status == "expired", FlowSession.ended_at >= since, REAL_SESSIONS)).scalar_one()
    active = dict(db.session.execute(select(FlowSession.status, func.count()).where(
        FlowSession.status.in_(("active", "handover")), REAL_SESSIONS).group_by(FlowSession.status)).all())
    return jsonify(
        since=since.isoformat() + "Z", days=sorted(per_day.values(), key=lambda r: r["date"]),
        reply_latency_ms={"count": len(latencies), "p50": percentile(latencies, 50),
                          "p95": percentile(latencies, 95), "p99": percentile(latencies, 99),
                          "max": max(latencies) if latencies else None},
        sessions={"active": active.get("active", 0), "handover": active.get("handover", 0), "expired": expired},
        failed_sends=[{"error_code": code, "error_title": title, "count": count}
                      for code, title, count in sorted(failed, key=lambda r: -r[2])],
    )
