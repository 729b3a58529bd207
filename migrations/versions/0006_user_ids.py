"""contacts known by Meta's business-scoped user id: wa_id nullable, user_id unique

A WhatsApp user with a username may reach us without a phone number: the
contact then has only a user id (BSUID). Contacts are matched user id first.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    # A user id stored twice before it was unique stays on the oldest contact only.
    op.execute(
        "UPDATE contacts SET user_id = NULL WHERE user_id IS NOT NULL AND id NOT IN "
        "(SELECT keep FROM (SELECT MIN(id) AS keep FROM contacts WHERE user_id IS NOT NULL "
        "GROUP BY user_id) AS firsts)"
    )
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.alter_column('wa_id', existing_type=sa.String(length=32), nullable=True)
        batch_op.create_unique_constraint(batch_op.f('uq_contacts_user_id'), ['user_id'])


def downgrade():
    # Contacts without a phone number cannot exist in the old schema.
    op.execute("DELETE FROM contacts WHERE wa_id IS NULL AND id NOT IN (SELECT contact_id FROM messages)")
    op.execute("UPDATE contacts SET wa_id = 'user:' || id WHERE wa_id IS NULL")
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_contacts_user_id'), type_='unique')
        batch_op.alter_column('wa_id', existing_type=sa.String(length=32), nullable=False)
