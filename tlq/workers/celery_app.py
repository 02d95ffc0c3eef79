"""The Celery app at module level, for Celery's own command line and for Flower to attach to:

    celery -A tlq.workers.celery_app inspect ping
    celery -A tlq.workers.celery_app inspect active
    celery -A tlq.workers.celery_app events
    celery -A tlq.workers.celery_app flower

It is built by the factory the workers use (``create_app``), from the same settings (the ``TLQ_*`` variables),
so it reaches the same broker. This is the one module-level app in tlq, and it holds nothing else: tlq's own
commands and workers build theirs and pass them down. Importing it reads the settings and opens no connection.
Start workers with `tlq worker`, not `celery worker`: only tlq's registers, reports in and recovers jobs.
"""

from __future__ import annotations

from tlq.config import Settings
from tlq.workers.app import create_app

app = create_app(Settings.load())
