"""Monitoring: /metrics (Prometheus), rq-dashboard at /rq, request ids in logs.

``/metrics`` wants ``Authorization: Bearer <METRICS_TOKEN or an operator token>`` unless
``METRICS_PUBLIC=1``. rq-dashboard 0.9.0 is hardened around its blueprint:

* HTTP basic auth (``dashboard_allowed``);
* its state-changing routes (delete, empty, requeue, compact) answer only POST, and only
  from its own pages (same ``Origin``, or jQuery's ``X-Requested-With`` header): a GET link
  or another site's form cannot requeue or delete jobs. Deleting and emptying are off
  unless ``RQ_DASHBOARD_ALLOW_DELETE=1``;
* its pages are never framed (``X-Frame-Options: DENY``);
* its client-side templates (underscore.js) print job data with ``<%= %>``, which does
  not escape: a job's exception text (which can hold what a user wrote) became HTML on
  the job page, a stored XSS. ``DashboardTemplates`` serves those templates with every
  ``<%= %>`` turned into the escaping ``<%- %>``.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from urllib.parse import urlsplit

import rq_dashboard
from flask import Blueprint, Flask, Response, current_app, g, request
from jinja2 import BaseLoader, ChoiceLoader, PackageLoader, TemplateNotFound
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from rq_dashboard.web import setup_rq_connection

from crm.base.extensions import redis_url_with_options
from crm.base.keys import QUEUE_NAMES
from crm.base.metrics_store import scrape_registry
from crm.replies.wake import pending

bp = Blueprint("monitoring", __name__)


class QueueDepth:
    """Jobs waiting per RQ queue, and contacts waiting on the ready list (queue "ready"), read
    from Redis when scraped."""

    def __init__(self, app: Flask):
        self.app = app

    def collect(self):
        family = GaugeMetricFamily("crm_queue_depth", "Jobs waiting in each RQ queue; contacts waiting for a "
                                   "reply worker (ready)", labels=["queue"])
        depths = [(name, lambda q=self.app.extensions["queues"][name]: q.count) for name in QUEUE_NAMES]
        depths.append(("ready", lambda: pending(self.app.extensions["redis"])))
        for name, read in depths:
            try:
                family.add_metric([name], read())
            except Exception:  # Redis down: leave the sample out, /healthz says why
                continue
        yield family


def metrics_allowed(header: str | None) -> bool:
    """``METRICS_PUBLIC=1``, or a bearer token: METRICS_TOKEN or one of the operator tokens."""
    settings = current_app.config["SETTINGS"]
    if settings.metrics_public:
        return True
    if not header or not header.lower().startswith("bearer "):
        return False
    given = header[7:].strip().encode("utf-8", "replace")
    tokens = [t for t in (settings.metrics_token, *settings.operator_api_tokens) if t]
    return any(hmac.compare_digest(given, t.encode()) for t in tokens)


@bp.get("/metrics")
def metrics():
    if not metrics_allowed(request.headers.get("Authorization")):
        return Response("a bearer token is required (METRICS_TOKEN or an operator token)\n", 401,
                        {"WWW-Authenticate": 'Bearer realm="metrics"'})
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


# rq-dashboard's routes that change something, and those of them that delete.
DASHBOARD_WRITES = frozenset({"rq_dashboard.delete_job_view", "rq_dashboard.requeue_job_view",
                              "rq_dashboard.requeue_all", "rq_dashboard.empty_queue",
                              "rq_dashboard.compact_queue"})
DASHBOARD_DELETES = frozenset({"rq_dashboard.delete_job_view", "rq_dashboard.empty_queue"})


def _from_dashboard_page() -> bool:
    """A request sent by the dashboard's own scripts: same-origin, which a cross-site form is not."""
    origin = request.headers.get("Origin")
    if origin:
        return urlsplit(origin).netloc == request.host
    return request.headers.get("X-Requested-With") == "XMLHttpRequest"


def protect_dashboard():
    if request.blueprint != "rq_dashboard":
        return None
    if not dashboard_allowed(request.headers.get("Authorization")):
        return Response("authentication required\n", 401, {"WWW-Authenticate": 'Basic realm="rq dashboard"'})
    if request.endpoint in DASHBOARD_WRITES:
        if request.method != "POST":
            return Response("use POST\n", 405, {"Allow": "POST"})
        if not _from_dashboard_page():
            return Response("cross-site request refused\n", 403)
        if request.endpoint in DASHBOARD_DELETES and not current_app.config["SETTINGS"].rq_dashboard_allow_delete:
            return Response("deleting jobs is off: set RQ_DASHBOARD_ALLOW_DELETE=1\n", 403)
    return None


def frame_dashboard(response):
    if request.blueprint == "rq_dashboard":
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    return response


_RAW_JQUERY_ESCAPED = re.compile(r"<%=\s*\$\('<div/>'\)\.text\((.+?)\)\.html\(\)\s*%>")


def escape_client_templates(source: str) -> str:
    """underscore.js templates: every interpolation escaped (``<%- %>``); the ones the
    dashboard already escaped through jQuery become plain escaped ones (not twice)."""
    source = _RAW_JQUERY_ESCAPED.sub(lambda m: f"<%- {m.group(1)} %>", source)
    return source.replace("<%=", "<%-")


class DashboardTemplates(BaseLoader):
    """rq-dashboard's own page templates, with ``escape_client_templates`` applied."""

    def __init__(self):
        self.package = PackageLoader("rq_dashboard", "templates")

    def get_source(self, environment, template):
        if not (template.startswith("rq_dashboard/") and template.endswith(".html")):
            raise TemplateNotFound(template)
        source, filename, uptodate = self.package.get_source(environment, template)
        return escape_client_templates(source), filename, uptodate


def request_id(incoming: str) -> str:
    """The caller's X-Request-ID when it is a plain one (letters, digits, dashes; first 64), else a new id."""
    return incoming[:64] if incoming.replace("-", "").isalnum() else secrets.token_hex(16)


def assign_request_id():
    g.request_id = request_id(request.headers.get("X-Request-ID", ""))


def echo_request_id(response):
    if "request_id" in g:
        response.headers["X-Request-ID"] = g.request_id
    return response


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.config["RQ_DASHBOARD_REDIS_URL"] = redis_url_with_options(app.config["SETTINGS"])
    setup_rq_connection(app)
    app.config["RQ_DASHBOARD_DISABLE_DELETE"] = not app.config["SETTINGS"].rq_dashboard_allow_delete
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
    # The app's loader is asked before any blueprint's: the escaped templates win.
    app.jinja_loader = ChoiceLoader([DashboardTemplates(), *([app.jinja_loader] if app.jinja_loader else [])])
    app.before_request(protect_dashboard)  # app level: the dashboard's blueprint is shared between apps
    app.after_request(frame_dashboard)
    app.before_request(assign_request_id)
    app.after_request(echo_request_id)
