"""Alembic environment: runs our migrations on the connection the Database hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from zenfed.store.db import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    """Online migrations on a given connection, or on one made from the configured URL."""
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as connection:
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()


run()
