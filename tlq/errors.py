"""Errors that carry a one-line message naming the problem and the fix."""


class BadInput(ValueError):
    """Input that cannot work: the message says what is wrong and what to do instead.

    Raised at submit, it becomes exit code 2 with nothing queued; raised in a worker, it fails the job with
    the message as its recorded reason, and the worker lives on.
    """


class JobCancelled(Exception):
    """Raised inside a running job at its next step after `tlq cancel`."""


class JobTimedOut(Exception):
    """Raised inside a running job at its next step once its ``--timeout`` has passed."""
