"""Operator sign-in for the inbox pages: session cookie, CSRF, lockout, logout.

* Session: Flask's signed cookie (``SECRET_KEY``) holds only a random session id; the id
  lives in Redis (``crm:operator:session:<sid>`` -> operator id, sliding 12-hour expiry), so
  logging out, or disabling an operator, ends the session on the server too. Cookie flags:
  HttpOnly, SameSite=Lax, Secure (``SESSION_COOKIE_SECURE``, on by default; browsers accept
  secure cookies from http://localhost and 127.0.0.1, so local runs work).
* CSRF: Flask-WTF's ``CSRFProtect`` rather than our own: a well-kept implementation of a
  per-session token that also checks the Referer on HTTPS and reads the token from a form
  field or an ``X-CSRFToken`` header. Its app-wide check is off (``WTF_CSRF_CHECK_DEFAULT``):
  the webhook and ``/api`` are not cookie-authenticated and must not need a token; the
  inbox and sign-in blueprints call ``csrf.protect()`` on every POST.
* Lockout: 5 failed sign-ins for one account from one address lock that pair for 15
  minutes (counted in Redis); a sign-in for an unknown name costs the same password hash.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from functools import wraps
from pathlib import Path

from flask import Blueprint, Flask, flash, g, jsonify, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect

from crm.base import keys
from crm.base.extensions import db, get_redis
from crm.base.models import utcnow
from crm.base.operators import Actor, Operator, audit, authenticate

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)
csrf = CSRFProtect()

SESSION_TTL = timedelta(seconds=keys.OPERATOR_SESSION_TTL)


# Pages only load what the app serves: no inline script, no framing (clickjacking), no caching of
# pages that show conversations.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
}


@bp.after_request
def page_headers(response):
    """after_request of the sign-in and inbox blueprints."""
    response.headers.update(PAGE_HEADERS)
    if request.endpoint != "inbox.static":
        response.headers["Cache-Control"] = "no-store"
    return response


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, but a request without a session cookie (every webhook,
    every API call) gets its empty session without Flask first building the cookie's signer
    (itsdangerous serializer and key derivation), which Flask does on every request."""

    def open_session(self, app: Flask, request):
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    settings = app.config["SETTINGS"]
    app.session_interface = CookieSessions()
    app.secret_key = settings.secret_key or _instance_secret(app)
    app.config.update(
        SESSION_COOKIE_NAME="crm_session", SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.session_cookie_secure, PERMANENT_SESSION_LIFETIME=SESSION_TTL,
        # The token is valid as long as the session: an inbox left open all day still sends.
        WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None,
    )
    csrf.init_app(app)
    app.register_blueprint(bp)


def _instance_secret(app: Flask) -> str:
    """Without SECRET_KEY: one random key kept in instance/secret_key, shared by the processes of
    this host (set SECRET_KEY when more than one host serves the inbox)."""
    path = Path(app.instance_path) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="ascii") as out:  # the first process writes it
            path.chmod(0o600)
            out.write(secrets.token_hex(32))
    except FileExistsError:
        pass
    return path.read_text(encoding="ascii").strip()


# -- the signed-in operator ---------------------------------------------------------------------
def signed_in() -> Operator | None:
    """The operator of this request's session cookie (cached on ``g``), or None."""
    if "me" in g:
        return g.me
    g.me = None
    sid = session.get("sid")
    if isinstance(sid, str):
        operator_id = get_redis().getex(keys.operator_session(sid), ex=SESSION_TTL)  # sliding expiry
        if operator_id is not None:
            operator = db.session.get(Operator, int(operator_id))
            if operator is not None and operator.active:
                g.me = operator
                g.actor = Actor(operator.name, operator.id, "web", operator.role)
                g.operator = operator.name
    return g.me


def require_operator():
    """before_request of the inbox: sign-in first, then the CSRF token of every POST."""
    if request.endpoint == "inbox.static":  # the sign-in page's style and the script hold no data
        return None
    if signed_in() is None:
        if request.method == "GET" and not request.path.endswith("/poll"):
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return jsonify(error="sign in first"), 401
    if request.method == "POST":
        csrf.protect()
    return None


def admin_only(view):
    @wraps(view)
    def wrapper(*args, **kwargs):
        if not g.me.is_admin:
            return render_template("inbox/message.html", title="Admins only",
                                   message="Only an admin may do this."), 403
        return view(*args, **kwargs)

    return wrapper


@bp.errorhandler(CSRFError)
def csrf_failed(exc: CSRFError):
    return render_template("inbox/login.html", error=f"The form could not be accepted ({exc.description}). "
                           "Reload the page and try again.", name=""), 400


# -- routes -------------------------------------------------------------------------------------
def safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no //host) may follow a sign-in."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("inbox.index")


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if signed_in() is not None:
            return redirect(safe_next(request.args.get("next")))
        return render_template("inbox/login.html", name="", error=None)
    csrf.protect()
    name = (request.form.get("name") or "").strip()[:64]
    password = request.form.get("password") or ""
    address = request.remote_addr or "-"
    redis, key = get_redis(), keys.login_failures(name, address)
    failures = int(redis.get(key) or 0)
    if failures >= keys.LOGIN_FAILURES_MAX:
        minutes = max(1, -(-redis.ttl(key) // 60))
        log.warning("sign-in refused: locked", extra={"event": "operator.login_locked", "operator": name})
        return render_template("inbox/login.html", name=name, error=(
            f"Too many failed sign-ins for this account from your address. Try again in {minutes} min.")), 429
    if not name or not password:
        return render_template("inbox/login.html", name=name, error="Enter your name and password."), 400
    operator = authenticate(name, password)
    if operator is None:
        pipe = redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, keys.LOGIN_LOCKOUT_TTL)
        pipe.execute()
        log.warning("sign-in failed", extra={"event": "operator.login_failed", "operator": name})
        return render_template("inbox/login.html", name=name, error="Wrong name or password."), 401
    redis.delete(key)
    session.clear()  # a new session (and CSRF token) at every sign-in: no fixation
    sid = secrets.token_urlsafe(32)
    redis.set(keys.operator_session(sid), operator.id, ex=SESSION_TTL)
    session["sid"], session.permanent = sid, True
    operator.last_login_at = utcnow()
    audit("login", actor=Actor(operator.name, operator.id, "web", operator.role))
    db.session.commit()
    return redirect(safe_next(request.args.get("next")))


@bp.post("/logout")
def logout():
    csrf.protect()
    operator, sid = signed_in(), session.get("sid")
    if isinstance(sid, str):
        get_redis().delete(keys.operator_session(sid))
    if operator is not None:
        audit("logout")
        db.session.commit()
    session.clear()
    flash("Signed out.")
    return redirect(url_for("auth.login"))
