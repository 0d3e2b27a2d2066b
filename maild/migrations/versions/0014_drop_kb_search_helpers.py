"""drop the knowledge-base search helpers suggestions no longer use

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26 09:30:00.000000

Suggestions now rank titles and keywords, and pick a message's rarest words, from an index
each process keeps in memory (maild.kbindex). The database no longer needs what it kept for
them: PostgreSQL's ``kb_fts_headings`` column (a GIN-indexed tsvector written with every
article version, migration 0013) and SQLite's ``kb_fts_terms`` fts5vocab table (0011).
Downgrading builds both again.
"""

from __future__ import annotations

from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


PG_HEADINGS = "setweight(to_tsvector('simple', title), 'A') || setweight(to_tsvector('simple', keywords), 'B')"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE kb_article_version DROP COLUMN IF EXISTS kb_fts_headings")  # and its index
    else:
        op.execute("DROP TABLE IF EXISTS kb_fts_terms")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE kb_article_version ADD COLUMN kb_fts_headings tsvector "
                   f"GENERATED ALWAYS AS ({PG_HEADINGS}) STORED")
        op.execute("CREATE INDEX kb_fts_headings_gin ON kb_article_version USING gin (kb_fts_headings)")
    else:
        op.execute("CREATE VIRTUAL TABLE kb_fts_terms USING fts5vocab(kb_fts, 'row')")
