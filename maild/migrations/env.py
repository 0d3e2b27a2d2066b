"""Alembic environment: migrations always run on the engine maild hands in, never from an ini file."""

from __future__ import annotations

from alembic import context

from maild.db import in_models
from maild.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
        include_name=in_models,  # the per-database search index is not in the models
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
