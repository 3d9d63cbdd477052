"""refund policy: an admin's decision on a waiting refund, and its reminder

Revision ID: 0002_refund_policy
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import bridge.store.models

revision = "0002_refund_policy"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("decided_by", sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column("decided_at", bridge.store.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("decision_comment", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("reminded_at", bridge.store.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_column("reminded_at")
        batch_op.drop_column("decision_comment")
        batch_op.drop_column("decided_at")
        batch_op.drop_column("decided_by")
