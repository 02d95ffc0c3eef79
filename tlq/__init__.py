"""tlq: a transfer-learning job queue.

The package follows the path of a job: ``tlq.cli`` submits it, ``tlq.workers`` runs it, ``tlq.plugins`` holds
the backbones and tasks that do the work, and ``tlq.db`` stores jobs, metrics and artifacts.
"""

__version__ = "0.1.0"
