"""``GET|POST /webhooks/whatsapp``: Meta's verification handshake and event intake.

The handshake is a Flask view. The POST, which every message makes, is answered by
``DeliveryIntake``, a WSGI middleware in front of Flask's request handling (the way Flask's
documentation adds middleware: ``app.wsgi_app = ...``): in an application context, with the
request id and the metrics Flask's hooks give other requests, but without building a request
and a response object and running every blueprint's hooks. Measured on this machine: a POST
through this app's Flask stack cost 255 us of CPU before its view ran (155 us of it Flask's
own), an application context 16 us.

POST order: signature on the raw body, then JSON, then shape. Only a failure to
*store* an event answers 5xx (Meta re-delivers it); anything we can read but do
not understand answers 200 with a warning in the log. Every input costs bounded
work: the body is at most ``MAX_BODY`` bytes, the signature is compared as bytes
(any header answers 401, never 500), JSON nested deeper than ``MAX_DEPTH`` or not
JSON per RFC 8259 (``NaN``, ``Infinity``) answers 400, and what the parser returns
is storable as it is (``integrations.whatsapp.inbound``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time

from flask import Blueprint, g, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_input_stream

from crm.app.monitoring import request_id
from crm.base import metrics
from crm.base.extensions import get_settings
from crm.base.outages import OutageLog, dependency, is_bad_data, is_outage
from crm.replies.intake import store_inbound, store_statuses, store_template_updates
from integrations.whatsapp.inbound import InboundMessage, parse_webhook

log = logging.getLogger(__name__)
bp = Blueprint("whatsapp_webhook", __name__)
PATH = "/webhooks/whatsapp"
OUTAGES = OutageLog(log)

# Meta's webhook deliveries are at most 3 MB ("payloads can be up to 3MB", WhatsApp Cloud API
# webhooks overview; a delivery batches up to 1 000 updates). A larger cap than the app's
# MAX_CONTENT_LENGTH: a delivery refused with 413 is re-sent for days and never stored.
MAX_BODY = 3 * 1024 * 1024
MAX_DEPTH = 64  # Meta's envelopes nest about 8 deep
OK_BODY = b'{"status":"ok"}\n'  # what jsonify({"status": "ok"}) gives, without the JSON provider per webhook


def valid_signature(secret: str, body: bytes, header: str | None) -> bool:
    """HMAC-SHA256 of the raw body, compared as bytes: a header with any characters is just wrong."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, header[len("sha256="):].strip().encode("utf-8", "replace"))


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON number (RFC 8259)")


def _number(text: str) -> float | str:
    """A JSON number too large for a float (1e400) stays its text: infinity cannot be stored."""
    value = float(text)
    return value if math.isfinite(value) else text


def parse_json(body: bytes):
    """The body as JSON per RFC 8259, nested at most MAX_DEPTH deep. Raises ValueError."""
    try:
        payload = json.loads(body, parse_constant=_not_json, parse_float=_number)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    # Containers cannot nest deeper than the body has opening brackets: a delivery (~20) is not
    # walked (the walk was 3 % of a web process's Python time, py-spy --gil under load).
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and nesting_exceeds(payload, MAX_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return payload


def nesting_exceeds(value, limit: int) -> bool:
    """Whether containers nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


@bp.get(PATH)
def verify():
    """Meta's subscription handshake: echo hub.challenge when hub.verify_token is ours."""
    settings = get_settings()
    if not settings.whatsapp_verify_token:
        reason = "WHATSAPP_VERIFY_TOKEN is not set"
    elif request.args.get("hub.mode") != "subscribe":
        reason = "hub.mode is not 'subscribe'"
    elif not hmac.compare_digest(request.args.get("hub.verify_token", "").encode(),
                                 settings.whatsapp_verify_token.encode()):
        reason = "hub.verify_token does not match WHATSAPP_VERIFY_TOKEN"
    else:
        return request.args.get("hub.challenge", ""), 200, {"Content-Type": "text/plain"}
    log.warning("webhook verification refused: %s", reason, extra={"event": "webhook.verify_refused"})
    return f"webhook verification refused: {reason}\n", 403, {"Content-Type": "text/plain"}


OUTCOMES = {200: "ok", 400: "malformed", 401: "bad_signature", 413: "too_large", 500: "error", 503: "unavailable"}


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode() + b"\n"


class DeliveryIntake:
    """WSGI middleware: ``POST /webhooks/whatsapp`` answered by ``receive``; anything else goes
    on to ``next_app`` (Flask's request handling)."""

    def __init__(self, app, next_app):
        self.app, self.next_app = app, next_app

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.next_app(environ, start_response)
        rid = request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        with self.app.app_context():
            g.request_id = rid  # on every log line of this delivery (crm.base.logs)
            try:
                status, body = receive(environ)
            except Exception:  # a bug of ours: Meta re-delivers, the log says why
                log.exception("webhook delivery failed", extra={"event": "webhook.error"})
                status, body = 500, _error("internal error")
            metrics.WEBHOOK_REQUESTS.labels(OUTCOMES[status]).inc()
        start_response(f"{status} {HTTP_STATUS_CODES[status]}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("X-Request-ID", rid)])
        return [body]


def receive(environ) -> tuple[int, bytes]:
    """One delivery from Meta: (HTTP status, body) after checking, parsing and storing it."""
    received_at = time.time()
    settings = get_settings()
    if not settings.whatsapp_app_secret:
        log.error("webhook POST refused: set WHATSAPP_APP_SECRET to accept Meta's webhooks",
                  extra={"event": "webhook.no_secret"})
        return 503, _error("webhook secret not configured")
    # Werkzeug refuses a larger Content-Length at once and reads a chunked body only up to the
    # limit (a cut body then fails the signature): the body is never longer than MAX_BODY.
    try:
        body = get_input_stream(environ, max_content_length=MAX_BODY).read()
    except RequestEntityTooLarge:
        return 413, _error("payload too large")
    except ClientDisconnected:  # the body ended before its Content-Length
        return 400, _error("body cut short")
    if not valid_signature(settings.whatsapp_app_secret, body, environ.get("HTTP_X_HUB_SIGNATURE_256")):
        log.warning("webhook signature missing or wrong", extra={"event": "webhook.bad_signature"})
        return 401, _error("invalid signature")
    try:
        payload = parse_json(body)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        log.warning("webhook body is not JSON: %s", str(exc)[:200], extra={"event": "webhook.bad_json"})
        return 400, _error("body is not JSON")

    parsed = parse_webhook(payload)
    for warning in parsed.warnings:
        log.warning("webhook: %s", warning, extra={"event": "webhook.unexpected_shape"})
    try:
        try:
            stored = store_inbound(parsed.messages, received_at)
        except Exception as exc:
            if not is_bad_data(exc):
                raise
            stored = store_one_by_one(parsed.messages, received_at)
        store_statuses(parsed.statuses)
        try:
            store_template_updates(parsed.templates)
        except Exception as exc:
            if not is_bad_data(exc):
                raise
            log.exception("template status update refused by the database; skipped",
                          extra={"event": "webhook.template_refused"})
    except Exception as exc:  # the database or Redis is down: make Meta re-deliver
        if is_outage(exc):
            OUTAGES.down(dependency(exc), exc)
        else:
            log.exception("webhook event could not be stored", extra={"event": "webhook.store_failed"})
        return 503, _error("unavailable")
    OUTAGES.up("database")
    OUTAGES.up("redis")
    metrics.webhook_processed(len(parsed.messages), sum(1 for s in stored if s.new),
                              len(parsed.statuses), len(parsed.templates))
    return 200, OK_BODY


def store_one_by_one(messages: list[InboundMessage], received_at: float) -> list:
    """A delivery whose batch could not be stored: store each message on its own, so one that
    the database refuses never takes the others down with it (nor makes Meta retry forever).
    A message refused even alone is stored as an ``unsupported`` placeholder with the reason."""
    stored = []
    for m in messages:
        try:
            stored += store_inbound([m], received_at)
        except Exception as exc:
            if not is_bad_data(exc):
                raise
            log.exception("message %s could not be stored as sent; storing a placeholder", m.wa_message_id,
                          extra={"event": "webhook.message_refused"})
            stored += store_inbound([placeholder(m, exc)], received_at)
    return stored


def placeholder(m: InboundMessage, exc: Exception) -> InboundMessage:
    return InboundMessage(
        phone_number_id=m.phone_number_id, wa_id=m.wa_id, wa_message_id=m.wa_message_id, type="unsupported",
        payload={"type": "unsupported", "id": m.wa_message_id, "refused": f"{type(exc).__name__}"},
        timestamp=m.timestamp, user_id=m.user_id)


def init_app(app) -> None:
    app.register_blueprint(bp)  # GET: the handshake
    app.wsgi_app = DeliveryIntake(app, app.wsgi_app)  # POST: deliveries
