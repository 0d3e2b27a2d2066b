"""knowledge-base term counts (SQLite)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23 17:20:00.000000

On SQLite, an fts5vocab table over ``kb_fts`` tells in how many articles each term occurs,
so suggestions can search by a message's rarest (most telling) words instead of its most
common ones, which match half the knowledge base and cost a ranking of every match.
PostgreSQL needs nothing here.
"""

from __future__ import annotations

from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        op.execute("CREATE VIRTUAL TABLE kb_fts_terms USING fts5vocab(kb_fts, 'row')")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        op.execute("DROP TABLE kb_fts_terms")
