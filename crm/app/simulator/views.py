"""``/simulator``: the page, and the JSON it talks to (fetch(); the page polls ``state`` every 2 s).

Every route needs an operator signed in (``crm.app.auth``); every POST carries the session's
CSRF token (header ``X-CSRFToken``). Errors are ``{"error": "..."}`` with a 4xx status.
"""

from __future__ import annotations

from flask import g, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from crm.app.api import ApiError
from crm.app.auth import page_headers, require_operator
from crm.app.simulator import bp, runs
from crm.base.extensions import db

bp.before_request(require_operator)
bp.after_request(page_headers)  # the inbox's CSP, no framing, no caching


def _error(message: str, status: int):
    db.session.rollback()
    return jsonify(error=message[:1].upper() + message[1:]), status


@bp.errorhandler(ApiError)
def api_error(exc: ApiError):
    return _error(exc.message, exc.status if 400 <= exc.status < 500 else 400)


@bp.errorhandler(CSRFError)
def csrf_error(exc: CSRFError):
    return _error(f"the request could not be accepted ({exc.description}); reload the page", 400)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    return _error(exc.description or exc.name, exc.code or 400)


def _body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise runs.SimulatorError(400, "the request body must be a JSON object")
    return data


def _contact():
    """The operator's current test contact; the first message of a new tester starts a run."""
    return runs.current_contact(g.me) or runs.new_contact(g.me)


@bp.get("/")
def page():
    return render_template("simulator/simulator.html", flows=runs.flow_choices(), state=runs.state(g.me))


@bp.get("/poll")  # (a path ending in /poll: without sign-in, 401 rather than a redirect)
def state():
    return jsonify(runs.state(g.me))


@bp.post("/send")
def send():
    runs.say(_contact(), _body().get("text"))
    return jsonify(runs.state(g.me))


@bp.post("/press")
def press():
    data = _body()
    contact = runs.current_contact(g.me)
    if contact is None:
        raise runs.SimulatorError(409, "start a chat first")
    runs.press(contact, data.get("message_id"), data.get("reply_id"))
    return jsonify(runs.state(g.me))


@bp.post("/reset")
def reset():
    runs.restart(g.me, _body().get("flow"))
    return jsonify(runs.state(g.me))
