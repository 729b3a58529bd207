"""test contacts: contacts.is_test marks the flow simulator's contacts

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 22:30:00

Simulator contacts are real rows that the real runtime answers; the flag keeps them out of
stats, handovers, contact lists and the inbox, and sends their messages to a sink instead of
the Graph API.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_test', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index('ix_contacts_is_test', ['is_test'], unique=False)


def downgrade():
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index('ix_contacts_is_test')
        batch_op.drop_column('is_test')
