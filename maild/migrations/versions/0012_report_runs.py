"""scheduled reports sent, one row per report and period

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-23 18:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from maild.models import UtcDateTime

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'report_run',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('period', sa.String(length=20), nullable=False),
        sa.Column('sent_at', UtcDateTime(timezone=True), nullable=False),
        sa.Column('recipients', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_report_run')),
        sa.UniqueConstraint('name', 'period', name=op.f('uq_report_run_name')),
    )


def downgrade() -> None:
    op.drop_table('report_run')
