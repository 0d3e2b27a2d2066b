"""knowledge base

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 16:00:00.000000

The search index depends on the database: an FTS5 table ``kb_fts`` (rowid = article id,
the current version's text) on SQLite; on PostgreSQL a generated column
``kb_article_version.kb_fts_document`` (the weighted tsvector of title, keywords and body)
with a GIN index. Neither is in the models; maild.knowledge keeps kb_fts in step.
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa
import maild.models


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

PG_DOCUMENT = ("setweight(to_tsvector('simple', title), 'A') || setweight(to_tsvector('simple', keywords), 'B') "
               "|| to_tsvector('simple', body)")


def upgrade() -> None:
    op.create_table('kb_article',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=200), nullable=True),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('current_version', sa.Integer(), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=True),
    sa.Column('language', sa.String(length=20), nullable=False),
    sa.Column('created_at', maild.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', maild.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('published_at', maild.models.UtcDateTime(timezone=True), nullable=True),
    sa.Column('times_linked', sa.Integer(), server_default='0', nullable=False),
    sa.Column('times_sent', sa.Integer(), server_default='0', nullable=False),
    sa.Column('times_resolved', sa.Integer(), server_default='0', nullable=False),
    sa.Column('helpful_yes', sa.Integer(), server_default='0', nullable=False),
    sa.Column('helpful_no', sa.Integer(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['subject_id'], ['subject.id'], name=op.f('fk_kb_article_subject_id_subject')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kb_article')),
    sa.UniqueConstraint('number', name=op.f('uq_kb_article_number')),
    sa.UniqueConstraint('slug', name=op.f('uq_kb_article_slug'))
    )
    op.create_table('kb_article_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=500), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('keywords', sa.String(length=1000), nullable=False),
    sa.Column('created_at', maild.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('author', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['kb_article.id'],
                            name=op.f('fk_kb_article_version_article_id_kb_article')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kb_article_version')),
    sa.UniqueConstraint('article_id', 'version', name=op.f('uq_kb_article_version_article_id'))
    )
    op.create_table('kb_case_link',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('article_id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('linked_at', maild.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('sent', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['article_id'], ['kb_article.id'], name=op.f('fk_kb_case_link_article_id_kb_article')),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_kb_case_link_case_id_cases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_kb_case_link')),
    sa.UniqueConstraint('article_id', 'case_id', name=op.f('uq_kb_case_link_article_id'))
    )
    with op.batch_alter_table('kb_case_link', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_kb_case_link_case_id'), ['case_id'], unique=False)

    if op.get_bind().dialect.name == 'sqlite':
        op.execute("CREATE VIRTUAL TABLE kb_fts USING fts5(title, keywords, body, "
                   "tokenize = 'unicode61 remove_diacritics 0')")
    else:
        op.execute(f"ALTER TABLE kb_article_version ADD COLUMN kb_fts_document tsvector "
                   f"GENERATED ALWAYS AS ({PG_DOCUMENT}) STORED")
        op.execute("CREATE INDEX kb_fts_gin ON kb_article_version USING gin (kb_fts_document)")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite':
        op.execute("DROP TABLE kb_fts")
    with op.batch_alter_table('kb_case_link', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_kb_case_link_case_id'))

    op.drop_table('kb_case_link')
    op.drop_table('kb_article_version')  # drops kb_fts_document and kb_fts_gin with it
    op.drop_table('kb_article')
