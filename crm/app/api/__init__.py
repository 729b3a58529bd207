"""The operator API under ``/api/`` (JSON, bearer tokens: ``OPERATOR_API_TOKENS`` or an operator's
personal token).

Errors are ``{"error": {"status": ..., "message": ...}}``; bad input is 400/404/409/422,
never 500. ``/api/openapi.json`` describes every route (``crm.app.api.openapi``).
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from crm.base.operators import Actor, current_actor, operator_for_token, personal_tokens_exist

bp = Blueprint("api", __name__, url_prefix="/api")
PUBLIC = {"api.openapi"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: list | dict | None = None):
        super().__init__(message)
        self.status, self.message, self.details = status, message, details


def operator_for(token: str | None) -> str | None:
    """The operator a token from OPERATOR_API_TOKENS belongs to (its position, never the token), or None."""
    if not token:
        return None
    for i, known in enumerate(current_app.config["SETTINGS"].operator_api_tokens):
        if hmac.compare_digest(token.encode(), known.encode()):
            return f"operator-{i + 1}"
    return None


def actor_for(token: str) -> Actor | None:
    """Who a bearer token speaks for: a shared token (full access, as before) or a personal one."""
    name = operator_for(token)
    if name is not None:
        return Actor(name, None, "api", "admin")
    found = operator_for_token(token) if token else None
    if found is None:
        return None
    operator, _token = found
    return Actor(operator.name, operator.id, "api", operator.role)


@bp.before_request
def authenticate():
    if request.endpoint in PUBLIC:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    actor = actor_for(token.strip()) if scheme.lower() == "bearer" else None
    if actor is None:
        if not current_app.config["SETTINGS"].operator_api_tokens and not personal_tokens_exist():
            message = "no operator tokens are configured (set OPERATOR_API_TOKENS)"
        else:
            message = "a valid 'Authorization: Bearer <token>' header is required"
        response = error_response(401, message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="operator api"'
        return response
    g.actor, g.operator = actor, actor.name
    return None


def require_admin() -> None:
    if not current_actor().is_admin:
        raise ApiError(403, "only an admin may do this")


def error_response(status: int, message: str, details=None):
    body = {"error": {"status": status, "message": message}}
    if details:
        body["error"]["details"] = details
    response = jsonify(body)
    response.status_code = status
    return response


@bp.errorhandler(ApiError)
def api_error(exc: ApiError):
    return error_response(exc.status, exc.message, exc.details)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    return error_response(exc.code or 500, exc.description or exc.name)


def body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def arg_int(name: str, default: int, lo: int, hi: int) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be a whole number") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"query parameter {name!r} must be between {lo} and {hi}")
    return value


def arg_bool(name: str) -> bool | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in {"true", "1", "yes"}:
        return True
    if raw.lower() in {"false", "0", "no"}:
        return False
    raise ApiError(400, f"query parameter {name!r} must be true or false")


def arg_time(name: str) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"query parameter {name!r} must be an ISO 8601 time") from None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def stamp(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


from crm.app.api import contacts, failed, flows, openapi, stats, templates  # noqa: E402,F401 - routes register on bp


def init_app(app) -> None:
    app.register_blueprint(bp)
