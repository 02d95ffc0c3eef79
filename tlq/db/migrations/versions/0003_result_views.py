"""Views for plain-SQL queries of results: metric_summary (one row per job and metric) and job_results (one row
per job with its final metrics).

A later migration that rebuilds the jobs or metrics table (``batch_alter_table`` on SQLite) must drop these
views first and create them again after.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Metrics the built-in tasks record, each a column of job_results; every metric is in metric_summary.
RESULT_METRICS = (
    "val_acc",
    "best_val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "accuracy",
    "images_per_second",
    "target_prob",
    "success_rate",
    "robust_acc",
)

METRIC_SUMMARY = """
CREATE VIEW metric_summary AS
SELECT m.job_id AS job_id,
       m.name AS name,
       (SELECT f.value FROM metrics f WHERE f.job_id = m.job_id AND f.name = m.name
        ORDER BY f.step DESC, f.id DESC LIMIT 1) AS final_value,
       MAX(m.value) AS max_value,
       MIN(m.value) AS min_value,
       COUNT(*) AS points,
       MAX(m.step) AS last_step,
       MAX(m.epoch) AS last_epoch,
       MAX(m.time) AS updated_at
FROM metrics m
GROUP BY m.job_id, m.name
"""


def _job_results(dialect: str) -> str:
    if dialect == "postgresql":
        seconds = "EXTRACT(EPOCH FROM j.finished_at - j.started_at)"
    else:
        seconds = "(julianday(j.finished_at) - julianday(j.started_at)) * 86400.0"
    metric_columns = ",\n       ".join(
        f"(SELECT s.final_value FROM metric_summary s WHERE s.job_id = j.id AND s.name = '{name}') AS {name}"
        for name in RESULT_METRICS
    )
    return f"""
CREATE VIEW job_results AS
SELECT j.id AS job_id,
       j.task AS task,
       j.backbone AS backbone,
       j.status AS status,
       j.name AS name,
       j.group_id AS group_id,
       j.params AS params,
       j.tags AS tags,
       j.attempts AS attempts,
       j.created_at AS created_at,
       j.started_at AS started_at,
       j.finished_at AS finished_at,
       {seconds} AS seconds,
       (SELECT MAX(e.epoch) FROM metrics e WHERE e.job_id = j.id) AS epochs,
       {metric_columns}
FROM jobs j
"""


def upgrade() -> None:
    op.execute(METRIC_SUMMARY)
    op.execute(_job_results(op.get_bind().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW job_results")
    op.execute("DROP VIEW metric_summary")
