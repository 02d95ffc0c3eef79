"""workers.current_job_id goes: a worker's current jobs are the running jobs that name it.

The column held one job (the last claimed) for a worker that may run several at once, and cost two UPDATEs per
job (at its claim and at its end); `tlq workers` now reads the running jobs instead.

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
    with op.batch_alter_table("workers") as batch:  # no view reads the workers table
        batch.drop_column("current_job_id")


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("current_job_id", sa.Integer(), nullable=True))
