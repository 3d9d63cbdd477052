"""refunds.order_paid_cents: what the order's customer paid, known when the refund was recorded

Revision ID: 0003_paid_amount
Revises: 0002_refund_policy
Create Date: 2026-12-03 06:20:00

The worker computes the order's payment_status from it instead of reading the order from
Directus again (docs/performance.md). Refunds recorded before this revision have none: for them
the order is read as before.
"""

from alembic import op
import sqlalchemy as sa


revision = "0003_paid_amount"
down_revision = "0002_refund_policy"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("refunds") as batch_op:
        batch_op.add_column(sa.Column("order_paid_cents", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refunds") as batch_op:
        batch_op.drop_column("order_paid_cents")
