"""a version records the weight each included update had

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 21:00:00

``versions.weights``: beside ``participants`` (now exactly the updates combined into the
version: a flagged or dropped one is not listed), the weight each had in the aggregate,
in the same order, so a version can be recomputed from its row. Rows written before this
have none (NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("weights", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("weights")
