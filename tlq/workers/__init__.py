"""Running jobs: the Celery app factory, the thin Celery task, and the plain function that executes a job."""
