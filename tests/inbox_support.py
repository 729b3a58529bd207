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
    """Approved templates for the picker: in the template store when it is installed, else in the
    stand-in table the inbox reads until then (drop it with ``remove_templates``)."""
    from crm.app.inbox.message_templates import STAND_IN
    from crm.base.extensions import db

    with app.app_context():
        try:
            from crm.base.templates import MessageTemplate  # the template store, once merged
        except ImportError:
            MessageTemplate = None  # noqa: N806
        if MessageTemplate is not None:
            db.session.execute(delete(MessageTemplate))
            for row in rows:
                db.session.add(MessageTemplate(**row))
        else:
            STAND_IN.create(db.engine, checkfirst=True)
            db.session.execute(delete(STAND_IN))
            db.session.execute(STAND_IN.insert(), rows)
        db.session.commit()


def remove_templates(app) -> None:
    """Drop the stand-in table (it is not part of the migrated schema)."""
    from crm.app.inbox.message_templates import STAND_IN, from_store
    from crm.base.extensions import db

    if from_store is None:
        with app.app_context():
            db.session.remove()
            STAND_IN.drop(db.engine, checkfirst=True)
