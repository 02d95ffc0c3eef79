"""The job database: SQLAlchemy models, the engine factory, migrations and the queries the other layers use."""

from tlq.db.engine import Database
from tlq.db.models import Artifact, Attempt, Job, JobGroup, JobStatus, Metric, WorkerRecord

__all__ = ["Database", "Artifact", "Attempt", "Job", "JobGroup", "JobStatus", "Metric", "WorkerRecord"]
