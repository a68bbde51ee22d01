"""updates keep their whole metadata; only the newest version keeps its server state

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 06:00:00

``updates.meta``: the update's metadata in its one plain form (``Update.metadata``), so a
restart replays every field (``record_epsilon`` was lost before). ``versions.
server_state_sha256`` becomes nullable: the coordinator's state (``CoordinatorState.
to_bytes``) is kept for the newest version only, not once per round.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("meta", sa.JSON(), nullable=True))
    with op.batch_alter_table("versions") as batch:
        batch.alter_column("server_state_sha256", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.alter_column(
            "server_state_sha256", existing_type=sa.String(length=64), nullable=False
        )
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("meta")
