"""tlq_instance: one random id per database, made with the schema.

A checkpoint records it with its job id, so a job resumes only from a checkpoint its own database wrote: a
recreated database (or two databases sharing one artifacts directory) reuses job ids, never this id.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import datetime as dt
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "tlq_instance",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tlq_instance")),
    )
    op.bulk_insert(table, [{"id": uuid.uuid4().hex, "created_at": dt.datetime.now(dt.UTC)}])


def downgrade() -> None:
    op.drop_table("tlq_instance")
