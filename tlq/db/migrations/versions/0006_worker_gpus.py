"""workers.gpus: the GPUs a `tlq worker --gpus` owns, one pool process each (JSON: index, uuid, name, memory).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workers", sa.Column("gpus", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("workers", "gpus")
