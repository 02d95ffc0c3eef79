"""docker-compose.yml and the Dockerfile hold together: services, health, volumes, GPUs, secrets, commands."""

import re

import click
import pytest

from tests.compose_support import COMPOSE, dotenv, interpolate, load_compose, tlq_args
from tests.support import REPO
from tlq.cli.main import cli

TLQ_SERVICES = ("cpu-worker", "gpu-worker", "tlq")


@pytest.fixture(scope="module")
def compose():
    return load_compose()


def parse_tlq(args: list[str]) -> list[str]:
    """Parses ``args`` with tlq's own CLI, down to the leaf command (nothing runs); returns the command path."""
    ctx = cli.make_context("tlq", list(args))
    path = ["tlq"]
    while isinstance(ctx.command, click.Group):
        # (click keeps a group's subcommand and its arguments in _protected_args until click 9)
        name, command, rest = ctx.command.resolve_command(ctx, [*getattr(ctx, "_protected_args", []), *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
        path.append(name)
    return path


def test_services_and_profiles(compose):
    services = compose["services"]
    assert set(services) == {"redis", "postgres", "cpu-worker", "gpu-worker", "flower", "tlq"}
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert services["flower"]["profiles"] == ["monitoring"]
    assert services["tlq"]["profiles"] == ["cli"]
    assert "profiles" not in services["cpu-worker"]  # `docker compose up --scale cpu-worker=4` starts it
    assert "container_name" not in services["cpu-worker"]  # a fixed name would forbid --scale


def test_redis_persists_never_evicts_and_needs_a_password(compose):
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--requirepass") + 1] == dotenv()["REDIS_PASSWORD"]


def test_healthchecks_gate_everything_that_needs_the_services(compose):
    services = compose["services"]
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"], name
    for name in TLQ_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == depends["postgres"]["condition"] == "service_healthy", name
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_workers_and_cli_share_artifacts_and_the_weights_cache(compose):
    for name in TLQ_SERVICES:
        service = compose["services"][name]
        assert {"artifacts:/artifacts", "hf-cache:/hf-cache"} <= set(service["volumes"]), name
        assert service["environment"]["TLQ_ARTIFACTS_DIR"] == "/artifacts"
        assert service["environment"]["HF_HOME"] == "/hf-cache"
    assert {"artifacts", "hf-cache", "redis-data", "postgres-data"} <= set(compose["volumes"])


def test_gpu_worker_reserves_one_gpu_and_runs_one_process(compose):
    service = compose["services"]["gpu-worker"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
    args = tlq_args(service)
    assert args[args.index("--queues") + 1] == "gpu" and args[args.index("--concurrency") + 1] == "1"
    assert service["build"]["args"]["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")


def test_stop_grace_covers_the_workers_shutdown(compose):
    for name in ("cpu-worker", "gpu-worker"):
        grace = compose["services"][name]["stop_grace_period"]
        assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= 15, name


def test_every_tlq_command_parses_with_tlqs_own_cli(compose):
    for name in TLQ_SERVICES:
        path = parse_tlq(tlq_args(compose["services"][name]))
        assert path[1] in ("worker", "jobs"), name
    dockerfile = (REPO / "Dockerfile").read_text()
    cmd = re.search(r"^CMD \[(.*)\]$", dockerfile, re.M).group(1)
    assert parse_tlq([a.strip().strip('"') for a in cmd.split(",")]) == ["tlq", "worker"]
    assert re.search(r"^ENTRYPOINT \[\"tlq\"\]$", dockerfile, re.M)
    assert re.search(r"^USER tlq$", dockerfile, re.M)  # never root


def test_a_renamed_flag_would_be_caught():
    with pytest.raises(click.UsageError, match="No such option"):
        parse_tlq(["worker", "--queue", "cpu"])


def test_no_secret_is_written_in_the_compose_file():
    raw = COMPOSE.read_text()
    secrets = dotenv()
    for key in ("REDIS_PASSWORD", "POSTGRES_PASSWORD"):
        assert secrets[key] not in raw
    for url in re.findall(r"(?:redis|postgresql)://(?:\$\{[^}]*\}|[^\s\"'$])+", raw):
        password = re.match(r"\w+://[^:/@]*:([^@]*)@", url)
        assert password and password.group(1).startswith("${"), url
    for value in re.findall(r"^\s*\w*PASSWORD:\s*(\S+)", raw, re.M):
        assert value.startswith("${"), value
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):  # a missing secret stops compose, not a default
        interpolate(load_compose(raw=True)["services"]["redis"]["command"], {})


def test_the_services_environment_points_tlq_at_redis_and_postgres(compose):
    from tlq.config import Settings

    env = compose["services"]["cpu-worker"]["environment"]
    settings = Settings.load(environ=env)
    assert settings.broker_url == f"redis://:{dotenv()['REDIS_PASSWORD']}@redis:6379/0"
    assert settings.database_url.startswith("postgresql+psycopg://tlq:") and settings.database_url.endswith(
        "@postgres:5432/tlq"
    )
    assert dotenv()["POSTGRES_PASSWORD"] not in str(settings.describe())
