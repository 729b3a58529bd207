"""/healthz: 200 when the database and Redis answer, 503 naming what is down."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy import text

from crm.base.extensions import db, get_redis

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    checks = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "down"
        db.session.rollback()
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"down: {type(exc).__name__}"
    down = [name for name, state in checks.items() if state != "ok"]
    body = {"status": "ok" if not down else "down", "checks": checks}
    if down:
        body["down"] = down
    return jsonify(body), 503 if down else 200


def init_app(app) -> None:
    app.register_blueprint(bp)
