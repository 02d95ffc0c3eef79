"""Leases and attempts: a token per claim on the job row, the attempt history, sends that must be confirmed,
progress apart from heartbeats, when a cancel was asked for, and a token per worker life.

Columns are only added (no table is rebuilt), so the views of 0003 stay as they are.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JOB_COLUMNS = (
    ("sending_since", sa.DateTime(timezone=True)),
    ("lease", sa.String(32)),
    ("claimed_at", sa.DateTime(timezone=True)),
    ("progress_at", sa.DateTime(timezone=True)),
    ("process_id", sa.Integer()),
    ("cancel_requested_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    for name, type_ in JOB_COLUMNS:
        op.add_column("jobs", sa.Column(name, type_, nullable=True))
    op.add_column("workers", sa.Column("instance", sa.String(32), nullable=True))
    op.create_table(
        "job_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("lease", sa.String(32), nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_attempts_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_attempts")),
        sa.UniqueConstraint("lease", name=op.f("uq_job_attempts_lease")),
    )
    op.create_index(op.f("ix_job_attempts_job_id"), "job_attempts", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_job_attempts_job_id"), table_name="job_attempts")
    op.drop_table("job_attempts")
    op.drop_column("workers", "instance")
    for name, _ in reversed(JOB_COLUMNS):
        op.drop_column("jobs", name)
