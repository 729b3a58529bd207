"""Helpers shared by the inbox tests (test client) and the browser tests."""

from __future__ import annotations

import html
import re

from sqlalchemy import delete, select

from tests.helpers import say  # noqa: F401 - re-exported for the inbox tests

PASSWORD = "correct horse 42"
TEMPLATES = [
    {"name": "order_update", "language": "en_US", "category": "UTILITY", "status": "APPROVED",
     "components": [{"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"},
                    {"type": "BODY", "text": "Hi {{1}}, your order {{2}} ships on {{3}}."},
                    {"type": "FOOTER", "text": "Reply STOP to opt out"}]},
    {"name": "welcome_back", "language": "en_US", "category": "MARKETING", "status": "APPROVED",
     "components": [{"type": "BODY", "text": "Welcome back, {{first_name}}!"}]},
    {"name": "still_pending", "language": "en_US", "category": "MARKETING", "status": "PENDING",
     "components": [{"type": "BODY", "text": "not approved"}]},
]


def make_operator(app, name: str, role: str = "agent", password: str = PASSWORD) -> int:
    from crm.base.extensions import db
    from crm.base.operators import create_operator

    with app.app_context():
        operator = create_operator(name, role, password)
        db.session.commit()
        return operator.id


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return html.unescape(found.group(1))


def login(client, name: str, password: str = PASSWORD):
    token = csrf_of(client.get("/login").get_data(as_text=True))
    return client.post("/login", data={"name": name, "password": password, "csrf_token": token})


def post_form(client, path: str, data: dict | None = None, follow: bool = False):
    """POST a form with the session's CSRF token (read from the inbox page)."""
    token = csrf_of(client.get("/inbox/account").get_data(as_text=True))
    return client.post(path, data={**(data or {}), "csrf_token": token}, follow_redirects=follow)


def contact_id(app, wa_id: str) -> int:
    from crm.base.extensions import db
    from crm.base.models import Contact

    with app.app_context():
        return db.session.execute(select(Contact.id).where(Contact.wa_id == wa_id)).scalar_one()


def install_templates(app, rows: list[dict] = TEMPLATES) -> None:
    """Templates in the template store, as a sync would leave them."""
    from crm.base.extensions import db
    from crm.base.templates import MessageTemplate

    with app.app_context():
        db.session.execute(delete(MessageTemplate))
        db.session.add_all([MessageTemplate(**row) for row in rows])
        db.session.commit()
