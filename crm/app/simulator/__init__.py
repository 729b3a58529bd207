"""The flow simulator (``/simulator``): chat with the bot as a test contact, no WhatsApp needed.

It runs the real runtime: a typed message or a pressed button is stored by the real intake
and answered by the real ``serve_contact`` (run in the request, so the page gets the answer at
once), with the real engine, actions and expiry rules. Only the last hop differs: messages
to test contacts (``contacts.is_test``) go to a sink instead of the Graph API. Test
contacts are left out of stats, handovers, contact lists and the inbox.
"""

from __future__ import annotations

from flask import Blueprint, Flask

from crm.app.simulator.cleanup import JOB
from crm.base import keys
from crm.base.schedules import Schedule, add_schedules

bp = Blueprint("simulator", __name__, url_prefix="/simulator", template_folder="templates",
               static_folder="static")


def init_app(app: Flask) -> None:
    """The simulator page (sign-in comes from the inbox, ``crm.app.auth``), and the daily
    deletion of the test contacts it left (``crm.app.simulator.cleanup``)."""
    app.register_blueprint(bp)
    add_schedules(app, Schedule("simulator-cleanup", app.config["SETTINGS"].simulator_cleanup_cron, JOB, keys.LOW,
                                600))


from crm.app.simulator import views  # noqa: E402,F401 - routes register on bp
