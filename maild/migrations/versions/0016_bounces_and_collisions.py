"""bounces, suppressed addresses, and inbound messages whose Message-ID collides

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08 02:10:00.000000

Two new tables (bounce, suppression) and one nullable column (inbound_message.collides_with),
added with a plain ALTER on both databases: no table is copied.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import maild.models

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'bounce',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('received_at', maild.models.UtcDateTime(timezone=True), nullable=False),
        sa.Column('inbound_id', sa.Integer(), nullable=False),
        sa.Column('outbound_id', sa.Integer(), nullable=True),
        sa.Column('case_id', sa.Integer(), nullable=True),
        sa.Column('original_message_id', sa.String(length=998), nullable=True),
        sa.Column('recipient', sa.String(length=320), nullable=True),
        sa.Column('action', sa.String(length=20), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=True),
        sa.Column('diagnostic', sa.Text(), nullable=True),
        sa.Column('hard', sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_bounce_case_id_cases')),
        sa.ForeignKeyConstraint(['inbound_id'], ['inbound_message.id'],
                                name=op.f('fk_bounce_inbound_id_inbound_message')),
        sa.ForeignKeyConstraint(['outbound_id'], ['outbound_message.id'],
                                name=op.f('fk_bounce_outbound_id_outbound_message')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_bounce')),
    )
    op.create_index(op.f('ix_bounce_case_id'), 'bounce', ['case_id'], unique=False)
    op.create_index(op.f('ix_bounce_inbound_id'), 'bounce', ['inbound_id'], unique=False)
    op.create_index(op.f('ix_bounce_recipient'), 'bounce', ['recipient'], unique=False)
    op.create_table(
        'suppression',
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('hard_bounces', sa.Integer(), nullable=False),
        sa.Column('last_bounce_at', maild.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column('suppressed_at', maild.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('lifted_at', maild.models.UtcDateTime(timezone=True), nullable=True),
        sa.Column('lifted_by', sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint('email', name=op.f('pk_suppression')),
    )
    op.execute("ALTER TABLE inbound_message ADD COLUMN collides_with INTEGER")


def downgrade() -> None:
    op.execute("ALTER TABLE inbound_message DROP COLUMN collides_with")
    op.drop_table('suppression')
    op.drop_index(op.f('ix_bounce_recipient'), table_name='bounce')
    op.drop_index(op.f('ix_bounce_inbound_id'), table_name='bounce')
    op.drop_index(op.f('ix_bounce_case_id'), table_name='bounce')
    op.drop_table('bounce')
