"""tlq_instance: one random id per database, made with the schema; workers.memory_bytes.

A checkpoint records the instance id with its job id, so a job resumes only from a checkpoint its own database
wrote: a recreated database (or two databases sharing one artifacts directory) reuses job ids, never this id.
A worker records the memory each of its jobs may use, which submit compares with a job's estimate.

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
    op.add_column("workers", sa.Column("memory_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("workers", "memory_bytes")
    op.drop_table("tlq_instance")
