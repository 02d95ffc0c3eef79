"""Entry-point registries for tasks and backbone providers, in the manner of timm's model registry.

Names are listed with fnmatch filters, and an unknown name is answered with the names that exist.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from tlq.errors import BadInput

T = TypeVar("T")

TASKS_GROUP = "tlq.tasks"
BACKBONES_GROUP = "tlq.backbones"


class Registry(Generic[T]):
    """Plugins of one kind, loaded lazily from an entry-point group.

    Args:
        group: The entry-point group, such as ``tlq.tasks``.
        kind: What a plugin is called in messages ("task", "backbone provider").
        hint: The command that lists the plugins, named in errors.
        check: ``check(name, plugin)`` raises ValueError for a plugin that must not be used (a task whose
            name differs from its entry point's, say); the message reaches the user as BadInput.
    """

    def __init__(self, group: str, kind: str, hint: str, check: Callable[[str, T], None] | None = None) -> None:
        self.group = group
        self.kind = kind
        self.hint = hint
        self.check = check
        self._entry_points: dict[str, EntryPoint] | None = None
        self._loaded: dict[str, T] = {}
        self._extra: dict[str, Callable[[], T]] = {}

    def _points(self) -> dict[str, EntryPoint]:
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group)}
        return self._entry_points

    def register(self, name: str, factory: Callable[[], T]) -> None:
        """Adds a plugin without an entry point (for tests of pure logic)."""
        self._extra[name] = factory

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted, optionally filtered by an fnmatch pattern such as ``'vgg*'``."""
        names = sorted(set(self._points()) | set(self._extra))
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def get(self, name: str) -> T:
        """The plugin registered as ``name``; an unknown name raises BadInput listing the close matches."""
        if name in self._loaded:
            return self._loaded[name]
        if name in self._extra:
            plugin = self._extra[name]()
        elif name in self._points():
            try:
                plugin = self._points()[name].load()
            except Exception as exc:  # a broken third-party plugin must not take the CLI down
                raise BadInput(
                    f"the {self.kind} '{name}' failed to load ({exc}); reinstall the package that provides it"
                ) from exc
        else:
            raise BadInput(unknown_name_message(self.kind, name, self.names(), self.hint))
        if self.check is not None:
            try:
                self.check(name, plugin)
            except ValueError as exc:
                raise BadInput(f"the {self.kind} '{name}' cannot be used: {exc}") from exc
        self._loaded[name] = plugin
        return plugin


def unknown_name_message(kind: str, name: str, known: list[str], hint: str) -> str:
    """One line saying ``name`` is unknown, with the closest known names and the command that lists them."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    suggestion = f"did you mean {', '.join(close)}? " if close else ""
    return f"unknown {kind} '{name}'; {suggestion}run `{hint}` to list them"


def task_registry() -> Registry:
    """A fresh registry of the installed tasks."""
    from tlq.plugins.task import check_task

    return Registry(TASKS_GROUP, "task", "tlq tasks", check=check_task)


def backbone_providers() -> Registry:
    """A fresh registry of the installed backbone providers (timm models, job:ID models, ...)."""
    return Registry(BACKBONES_GROUP, "backbone provider", "tlq backbones")
