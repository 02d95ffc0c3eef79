"""The environment every layer above the database works in: the settings, the job database and the installed
plugins (tasks and backbone providers, read from their entry points once)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from tlq.config import Settings

if TYPE_CHECKING:
    from tlq.db import Database


@dataclass(frozen=True)
class Environment:
    """What plugins can reach at submit and at run time: the settings and the job database."""

    settings: Settings

    @cached_property
    def db(self) -> Database:
        from tlq.db import Database

        return Database(self.settings.database_url)

    @cached_property
    def tasks(self):
        """The installed tasks, read from their entry points once for this environment."""
        from tlq.plugins.registry import task_registry

        return task_registry()

    @cached_property
    def backbones(self):
        """The installed backbone providers, read from their entry points once for this environment."""
        from tlq.plugins.registry import backbone_providers

        return backbone_providers()
