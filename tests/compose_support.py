"""Reading docker-compose.yml as docker compose would: YAML anchors, then ${VAR} interpolation."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.support import REPO

COMPOSE = REPO / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


def dotenv(path: Path = REPO / ".env.example") -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} in every string of ``value``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return ""

    return _VARIABLE.sub(replace, value)


def load_compose(env: dict[str, str] | None = None, raw: bool = False) -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    return data if raw else interpolate(data, dotenv() if env is None else env)


def tlq_args(service: dict) -> list[str]:
    """The arguments the `tlq` entry point gets in a service built from this repo's image."""
    command = service.get("command", ["worker"])
    return command.split() if isinstance(command, str) else list(command)
