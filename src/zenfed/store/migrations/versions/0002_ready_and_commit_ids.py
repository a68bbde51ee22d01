"""participants that asked for work; versions named by commit, with their content hash

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 04:00:00

``participants.polled_at``: when a participant first asked for a task (only those are
sampled). ``versions.content``: the tensors' hash; a version's id is now its commit id
(parent, round, content), so two commits with equal tensors are two versions. Before
this revision the id *was* the content hash: existing rows get ``content = id``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("participants") as batch:
        batch.add_column(sa.Column("polled_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("content", sa.String(length=64), nullable=True))
    op.execute("UPDATE versions SET content = id WHERE content IS NULL")
    # Participants enrolled before this revision keep being sampled, as they were.
    op.execute("UPDATE participants SET polled_at = enrolled_at WHERE polled_at IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("content")
    with op.batch_alter_table("participants") as batch:
        batch.drop_column("polled_at")
