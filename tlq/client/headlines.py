"""What each installed task ranks its jobs by: the headline metric it declares and whether higher or lower is
better."""

from __future__ import annotations


def headline_metrics(registry) -> dict[str, tuple[str, str]]:
    """The headline metric and its goal (``max`` or ``min``) of each task in ``registry`` (an Environment's, read
    once) that declares one; a task that fails to load is left out (its own commands say why)."""
    from tlq.errors import BadInput

    found = {}
    for name in registry.names():
        try:
            plugin = registry.get(name)
        except BadInput:
            continue
        if plugin.headline:
            found[name] = (plugin.headline, plugin.headline_goal)
    return found
