"""customer satisfaction surveys

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 12:00:00.000000
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import maild.models


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('csat_requested_at', maild.models.UtcDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('csat_score', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('csat_comment', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('csat_at', maild.models.UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('csat_at')
        batch_op.drop_column('csat_comment')
        batch_op.drop_column('csat_score')
        batch_op.drop_column('csat_requested_at')
