"""What every subcommand shares: the settings in force and, on demand, the job database."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # loaded by the first command that runs, not by `tlq --help`
    from tlq.config import Settings


@dataclass
class CliState:
    settings: Settings
    _env: object = field(default=None, repr=False)

    @classmethod
    def from_flags(cls, home, database_url, broker_url, artifacts_dir) -> CliState:
        from tlq.config import Settings

        return cls(Settings.load(home, database_url, broker_url, artifacts_dir))

    @cached_property
    def env(self):
        from tlq.env import Environment

        return Environment(self.settings)

    @cached_property
    def client(self):
        from tlq.client import Client

        return Client(env=self.env)


pass_state = click.make_pass_decorator(CliState)
