"""the reply path's queues as partial indexes: waiting inbound, unsent outbound, open sessions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 13:20:00

Each turn looks up a contact's oldest waiting inbound message, its oldest unsent outbound one
and its open flow session. The indexes hold only those rows, in id order per contact, and the
queries repeat their conditions as constants (crm.base.models.WAITING, UNSENT;
flows.models.OPEN), so the plans use them whatever the table statistics say. They replace the
(contact_id, direction, processed_at|status) indexes, which served only these lookups.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# written out, not imported: a migration keeps meaning what it meant when it was written
WAITING = "direction = 'in' AND processed_at IS NULL"
UNSENT = "direction = 'out' AND status IN ('queued', 'sending')"
OPEN = "status IN ('active', 'handover')"


def upgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_waiting', ['contact_id', 'id'], unique=False,
                              sqlite_where=sa.text(WAITING), postgresql_where=sa.text(WAITING))
        batch_op.create_index('ix_messages_unsent', ['contact_id', 'id'], unique=False,
                              sqlite_where=sa.text(UNSENT), postgresql_where=sa.text(UNSENT))
        batch_op.drop_index('ix_messages_inbox')
        batch_op.drop_index('ix_messages_outbox')
    with op.batch_alter_table('flow_sessions', schema=None) as batch_op:
        batch_op.create_index('ix_flow_sessions_open_contact', ['contact_id', 'id'], unique=False,
                              sqlite_where=sa.text(OPEN), postgresql_where=sa.text(OPEN))


def downgrade():
    with op.batch_alter_table('flow_sessions', schema=None) as batch_op:
        batch_op.drop_index('ix_flow_sessions_open_contact')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.create_index('ix_messages_outbox', ['contact_id', 'direction', 'status'], unique=False)
        batch_op.create_index('ix_messages_inbox', ['contact_id', 'direction', 'processed_at'], unique=False)
        batch_op.drop_index('ix_messages_unsent')
        batch_op.drop_index('ix_messages_waiting')
