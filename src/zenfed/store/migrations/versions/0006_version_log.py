"""the version log: each version's manifest, each update's signed request

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 23:40:00

``versions.manifest`` (JSON) and ``versions.manifest_sha256``: the version's manifest
(``zenfed.protocol.manifest``) and its digest, which the next version's manifest names.
``updates.signature`` (JSON): the signed request that carried the upload (method, path
with query, timestamp, nonce, body sha256, Ed25519 signature), so what a participant sent
can be shown to be its own. Rows written before this have none (NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("manifest", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("manifest_sha256", sa.String(length=64), nullable=True))
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("signature", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("signature")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("manifest_sha256")
        batch.drop_column("manifest")
