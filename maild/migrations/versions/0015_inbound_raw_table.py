"""keep each inbound message's bytes in a table of their own (inbound_raw)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-27 11:30:00.000000

Intake updates an inbound_message row twice (its claim, its outcome). SQLite writes a changed
row out whole, overflow pages included, so with the bytes in the row each message's 17 KB
was written twice more, to the WAL and again when it was checkpointed. Both directions move
the bytes, never drop them. Downgrading leaves SQLite's raw column nullable (SQLite cannot
add a NOT NULL column to a table holding rows); PostgreSQL's is NOT NULL again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'inbound_raw',
        sa.Column('inbound_id', sa.Integer(), nullable=False),
        sa.Column('raw', sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(['inbound_id'], ['inbound_message.id'],
                                name=op.f('fk_inbound_raw_inbound_id_inbound_message'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('inbound_id', name=op.f('pk_inbound_raw')),
    )
    op.execute("INSERT INTO inbound_raw (inbound_id, raw) SELECT id, raw FROM inbound_message")
    # A plain ALTER on both databases (SQLite 3.35 and later): alembic's batch mode would copy
    # inbound_message and drop the original, and dropping it would cascade to inbound_raw.
    op.execute("ALTER TABLE inbound_message DROP COLUMN raw")


def downgrade() -> None:
    op.execute("ALTER TABLE inbound_message ADD COLUMN raw " + ("BYTEA" if _postgres() else "BLOB"))
    op.execute("UPDATE inbound_message SET raw = (SELECT raw FROM inbound_raw WHERE inbound_id = inbound_message.id)")
    if _postgres():
        op.execute("ALTER TABLE inbound_message ALTER COLUMN raw SET NOT NULL")
    op.drop_table('inbound_raw')


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"
