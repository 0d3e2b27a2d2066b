"""articles suggested in acknowledgements, customers' ratings of articles by mail, and on
PostgreSQL a GIN-indexed tsvector of titles and keywords alone (suggestions search it first)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 01:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from maild.models import UtcDateTime

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


PG_HEADINGS = "setweight(to_tsvector('simple', title), 'A') || setweight(to_tsvector('simple', keywords), 'B')"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Its own index: the full document's index cannot tell a title match from a body
        # match, so a search limited to titles would still visit every body match.
        op.execute(f"ALTER TABLE kb_article_version ADD COLUMN kb_fts_headings tsvector "
                   f"GENERATED ALWAYS AS ({PG_HEADINGS}) STORED")
        op.execute("CREATE INDEX kb_fts_headings_gin ON kb_article_version USING gin (kb_fts_headings)")
    with op.batch_alter_table('kb_case_link') as batch:
        batch.add_column(sa.Column('suggested', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column('message_id', sa.String(length=998), nullable=True))
        batch.add_column(sa.Column('helpful', sa.Boolean(), nullable=True))
        batch.add_column(sa.Column('rated_at', UtcDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('rating_comment', sa.Text(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE kb_article_version DROP COLUMN kb_fts_headings")  # and its index
    with op.batch_alter_table('kb_case_link') as batch:
        for column in ('rating_comment', 'rated_at', 'helpful', 'message_id', 'suggested'):
            batch.drop_column(column)
