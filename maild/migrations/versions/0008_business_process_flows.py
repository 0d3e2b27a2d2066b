"""business process flows

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 09:00:00.000000
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import maild.models


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing cases get no stage: they count as being at the first stage of their process.
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('case_type', sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column('stage', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('stage_entered_at', maild.models.UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('stage_entered_at')
        batch_op.drop_column('stage')
        batch_op.drop_column('case_type')
