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


SECRETS = ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "TLQ_DB_PASSWORD", "FLOWER_PASSWORD", "TLQ_UI_TOKEN")
_SIZE = re.compile(r"(?i)^(?P<number>\d+(?:\.\d+)?)(?P<unit>[bkmg]?)b?$")


def size_in_bytes(text: str) -> int:
    """Compose's memory sizes: ``512m``, ``8g``, ``1024k``, ``1073741824``."""
    match = _SIZE.match(str(text).strip())
    if not match:
        raise ValueError(f"not a compose memory size: {text!r}")
    return int(float(match.group("number")) * 1024 ** "bkmg".index(match.group("unit").lower() or "b"))


def published_ports(service: dict) -> list[dict]:
    """A service's ``ports``, short syntax (``[HOST_IP:][HOST_PORT:]CONTAINER_PORT``) or long, as dicts."""
    ports = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.append({"host_ip": entry.get("host_ip", ""), "target": entry["target"]})
            continue
        parts = str(entry).rsplit(":", 2)
        host_ip = parts[0].strip("[]") if len(parts) == 3 else ""  # no host ip: all interfaces
        ports.append({"host_ip": host_ip, "target": parts[-1]})
    return ports


def dependencies(compose: dict, name: str) -> dict[str, str]:
    """Every service ``name`` waits on, directly or through others, with the condition it waits for."""
    found: dict[str, str] = {}
    todo = [name]
    while todo:
        depends = compose["services"][todo.pop()].get("depends_on", {})
        if isinstance(depends, list):
            depends = {other: {"condition": "service_started"} for other in depends}
        for other, how in depends.items():
            if other not in found:
                found[other] = how.get("condition", "service_started")
                todo.append(other)
    return found
