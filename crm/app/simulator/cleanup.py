"""Test contacts the simulator made, and left: deleted with their conversations once idle.

Every simulator run (and every reset) makes a fresh test contact (``runs.new_contact``), and
none was ever deleted: a team that tries its flows every day piles up contacts, messages,
sessions and audit lines that no page shows (test contacts are left out of stats, contact
lists and the inbox). Once a day (``SIMULATOR_CLEANUP_CRON``) the test contacts nobody has
written as for ``SIMULATOR_KEEP_DAYS`` are deleted with everything that names them, a batch
per transaction. Real contacts are never touched: the query asks for ``is_test`` first.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, select

from crm.base.extensions import db, get_settings
from crm.base.models import Contact, Message, utcnow
from crm.base.operators import AuditEvent, OperatorRead
from flows.models import FlowSession
from football.models import TeamFollow

log = logging.getLogger(__name__)
JOB = "crm.app.simulator.cleanup.purge_idle_test_contacts"
BATCH = 200  # contacts per transaction

# what names a contact, deleted before the contact itself (messages before the sessions they name)
_DEPENDENTS = ((Message, Message.contact_id), (FlowSession, FlowSession.contact_id),
               (OperatorRead, OperatorRead.contact_id), (TeamFollow, TeamFollow.contact_id),
               (AuditEvent, AuditEvent.contact_id))


def purge_idle_test_contacts(now=None, batch: int = BATCH) -> int:
    """Delete the test contacts idle for ``SIMULATOR_KEEP_DAYS`` and what they wrote and got.
    Returns how many contacts were deleted."""
    now = now or utcnow()
    idle_since = now - timedelta(days=get_settings().simulator_keep_days)
    deleted = 0
    while True:
        ids = db.session.execute(
            select(Contact.id).where(Contact.is_test.is_(True), Contact.last_seen_at < idle_since)
            .order_by(Contact.id).limit(batch)).scalars().all()
        if not ids:
            break
        for model, column in _DEPENDENTS:
            db.session.execute(delete(model).where(column.in_(ids)).execution_options(synchronize_session=False))
        db.session.execute(delete(Contact).where(Contact.id.in_(ids), Contact.is_test.is_(True))
                           .execution_options(synchronize_session=False))
        db.session.commit()
        deleted += len(ids)
    if deleted:
        log.info("deleted %s simulator test contact(s) idle since %sZ", deleted,
                 idle_since.isoformat(timespec="seconds"), extra={"event": "simulator.cleanup"})
    return deleted
