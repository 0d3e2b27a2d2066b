"""case numbers from a sequence on PostgreSQL, so workers never wait for (or deadlock on) a counter row

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has one writer: the counter row stays
    op.execute("CREATE SEQUENCE case_number_seq")
    # Continue from the numbers the counter row already handed out.
    op.execute("SELECT setval('case_number_seq', GREATEST((SELECT value FROM counter WHERE name = 'case'), 0) + 1, "
               "false)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("UPDATE counter SET value = (SELECT last_value FROM case_number_seq) WHERE name = 'case'")
    op.execute("DROP SEQUENCE case_number_seq")
