"""Monitoring: /metrics (Prometheus), rq-dashboard at /rq (basic auth), request ids in logs."""

from __future__ import annotations

import base64
import hmac
import uuid

import rq_dashboard
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from rq_dashboard.web import setup_rq_connection

from crm.base.extensions import redis_url_with_options
from crm.base.keys import QUEUE_NAMES
from crm.base.metrics_store import scrape_registry

bp = Blueprint("monitoring", __name__)


class QueueDepth:
    """Jobs waiting per queue, read from Redis when scraped."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self):
        family = GaugeMetricFamily("crm_queue_depth", "Jobs waiting in each RQ queue", labels=["queue"])
        for name in QUEUE_NAMES:
            try:
                family.add_metric([name], self.app.extensions["queues"][name].count)
            except Exception:  # Redis down: leave the sample out, /healthz says why
                continue
        yield family


@bp.get("/metrics")
def metrics():
    registry = scrape_registry(current_app._get_current_object())  # every process, through Redis
    queues = CollectorRegistry()
    queues.register(QueueDepth(current_app._get_current_object()))
    return Response(generate_latest(registry) + generate_latest(queues), mimetype=CONTENT_TYPE_LATEST)


def dashboard_allowed(header: str | None) -> bool:
    """HTTP basic auth: RQ_DASHBOARD_USERNAME/PASSWORD, or any user name with an operator token."""
    settings = current_app.config["SETTINGS"]
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    if settings.rq_dashboard_password:
        return (hmac.compare_digest(user.encode(), settings.rq_dashboard_username.encode())
                and hmac.compare_digest(password.encode(), settings.rq_dashboard_password.encode()))
    return any(hmac.compare_digest(password.encode(), t.encode()) for t in settings.operator_api_tokens)


def protect_dashboard():
    if request.blueprint == "rq_dashboard" and not dashboard_allowed(request.headers.get("Authorization")):
        return Response("authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="rq dashboard"'})
    return None


def assign_request_id():
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming[:64] if incoming.replace("-", "").isalnum() else uuid.uuid4().hex


def echo_request_id(response):
    if "request_id" in g:
        response.headers["X-Request-ID"] = g.request_id
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url_with_options(app.config["SETTINGS"])
    setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
    app.before_request(protect_dashboard)  # app level: the dashboard's blueprint is shared between apps
    app.before_request(assign_request_id)
    app.after_request(echo_request_id)
