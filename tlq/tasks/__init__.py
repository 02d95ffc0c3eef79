"""Built-in tasks, each one module registered through the ``tlq.tasks`` entry points."""
