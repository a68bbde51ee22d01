"""model lines: versions and rounds name their line

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 01:20:00

``versions.line`` and ``rounds.line``: the model line ([lines]) a version belongs to and a
round trains. A coordinator with several lines keeps one chain of versions, one open
round and one saved state per line. Rows written before this belong to ``main``, the
default line.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("versions", "rounds"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("line", sa.String(length=64), nullable=False, server_default="main")
            )
            batch.create_index(f"ix_{table}_line", ["line"])


def downgrade() -> None:
    for table in ("rounds", "versions"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_line")
            batch.drop_column("line")
