"""a regional coordinator's round ends by forwarding its aggregate to the root

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 02:45:00

``rounds.forwarded_sha256``: the blob of the update a regional coordinator (``zenfed
serve --upstream``) sent the root for this round (a record: the update's payload and
metadata), so a restart sends the very same bytes again if the root never acknowledged
them. A round so closed has the status ``forwarded``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("forwarded_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("forwarded_sha256")
