"""ledger, history, order locks, idempotency keys, inbox, outbox

Revision ID: 0001
Revises: 
Create Date: 2026-11-22 17:00:31.791274
"""

from alembic import op
import sqlalchemy as sa

import bridge.store.models


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('idempotency_keys',
    sa.Column('caller', sa.String(length=255), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('refund_id', sa.String(length=40), nullable=True),
    sa.Column('response_status', sa.Integer(), nullable=True),
    sa.Column('response_body', sa.JSON(), nullable=True),
    sa.Column('response_headers', sa.JSON(), nullable=True),
    sa.Column('created_at', bridge.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('caller', 'key', name=op.f('pk_idempotency_keys'))
    )
    op.create_table('inbox_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('webhook_id', sa.String(length=255), nullable=False),
    sa.Column('dedupe_key', sa.String(length=300), nullable=False),
    sa.Column('ridendine_refund_id', sa.String(length=255), nullable=False),
    sa.Column('external_order_id', sa.String(length=255), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('raw_body', sa.LargeBinary(), nullable=False),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('refund_id', sa.String(length=40), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', bridge.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('received_at', bridge.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('processed_at', bridge.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox_events')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_inbox_events_dedupe_key')),
    sa.UniqueConstraint('webhook_id', name=op.f('uq_inbox_events_webhook_id'))
    )
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbox_events_external_order_id'), ['external_order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbox_events_refund_id'), ['refund_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbox_events_ridendine_refund_id'), ['ridendine_refund_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbox_events_state'), ['state'], unique=False)

    op.create_table('order_locks',
    sa.Column('order_id', sa.String(length=255), nullable=False),
    sa.Column('created_at', bridge.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('order_id', name=op.f('pk_order_locks'))
    )
    op.create_table('outbox_jobs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('dedupe_key', sa.String(length=300), nullable=False),
    sa.Column('refund_id', sa.String(length=40), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', bridge.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('locked_until', bridge.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('locked_by', sa.String(length=128), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', bridge.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', bridge.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('done_at', bridge.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outbox_jobs')),
    sa.UniqueConstraint('dedupe_key', name='uq_outbox_jobs_dedupe_key')
    )
    with op.batch_alter_table('outbox_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_jobs_due', ['state', 'next_attempt_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_jobs_refund_id'), ['refund_id'], unique=False)

    op.create_table('refunds',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('order_id', sa.String(length=255), nullable=False),
    sa.Column('ridendine_order_id', sa.String(length=255), nullable=True),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('refunded_amount_cents', sa.BigInteger(), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('reason_comments', sa.Text(), nullable=True),
    sa.Column('requested_by', sa.String(length=32), nullable=False),
    sa.Column('requested_by_user', sa.String(length=255), nullable=True),
    sa.Column('items', sa.JSON(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('ridendine_refund_id', sa.String(length=255), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('needs_review', sa.Boolean(), nullable=False),
    sa.Column('review_reason', sa.Text(), nullable=True),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('created_at', bridge.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', bridge.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', bridge.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refunds')),
    sa.UniqueConstraint('ridendine_refund_id', name=op.f('uq_refunds_ridendine_refund_id'))
    )
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refunds_order_id'), ['order_id'], unique=False)
        batch_op.create_index('ix_refunds_order_status', ['order_id', 'status'], unique=False)

    op.create_table('refund_status_changes',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('refund_id', sa.String(length=40), nullable=False),
    sa.Column('from_status', sa.String(length=16), nullable=True),
    sa.Column('to_status', sa.String(length=16), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('at', bridge.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['refund_id'], ['refunds.id'], name=op.f('fk_refund_status_changes_refund_id_refunds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refund_status_changes'))
    )
    with op.batch_alter_table('refund_status_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_refund_status_changes_refund_id'), ['refund_id'], unique=False)




def downgrade() -> None:
    
    with op.batch_alter_table('refund_status_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refund_status_changes_refund_id'))

    op.drop_table('refund_status_changes')
    with op.batch_alter_table('refunds', schema=None) as batch_op:
        batch_op.drop_index('ix_refunds_order_status')
        batch_op.drop_index(batch_op.f('ix_refunds_order_id'))

    op.drop_table('refunds')
    with op.batch_alter_table('outbox_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_jobs_refund_id'))
        batch_op.drop_index('ix_outbox_jobs_due')

    op.drop_table('outbox_jobs')
    op.drop_table('order_locks')
    with op.batch_alter_table('inbox_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbox_events_state'))
        batch_op.drop_index(batch_op.f('ix_inbox_events_ridendine_refund_id'))
        batch_op.drop_index(batch_op.f('ix_inbox_events_refund_id'))
        batch_op.drop_index(batch_op.f('ix_inbox_events_external_order_id'))

    op.drop_table('inbox_events')
    op.drop_table('idempotency_keys')

