"""The reply runtime: what happens between a stored webhook and a sent answer.

    intake     store what the webhook receives (exactly once)
    wake       the one way to schedule work for a contact (queue ``high``)
    contact    serving a contact: lock, deliver the outbox, answer one message, requeue
    turns      run the engine for one message and persist its events
    sessions   open, find and end flow sessions (the one way to end one)
    delivery   ordered, retried sends of a contact's outbox
    recovery   re-wake contacts whose work stalled
    expiry     idle sessions end and the user is told
"""

from crm.base import keys
from crm.base.schedules import Schedule, add_schedules


def init_app(app) -> None:
    """The runtime's periodic work: idle-session cleanup and stalled-work recovery."""
    settings = app.config["SETTINGS"]
    add_schedules(
        app,
        Schedule("sessions-cleanup", settings.session_cleanup_cron, "crm.replies.expiry.cleanup_job", keys.LOW, 600),
        Schedule("recover-stalled", "* * * * *", "crm.replies.recovery.recover_stalled", keys.DEFAULT, 120),
    )
