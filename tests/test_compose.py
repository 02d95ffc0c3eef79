"""docker-compose.yml and the Dockerfile hold together: services, health, volumes, GPUs, secrets, commands,
and a default that lets no one in (no port on all interfaces, no secret in argv, no superuser, no placeholder)."""

import os
import re
import subprocess
from urllib.parse import urlsplit

import click
import pytest

from tests.compose_support import (
    COMPOSE,
    SECRETS,
    dependencies,
    dotenv,
    interpolate,
    load_compose,
    published_ports,
    size_in_bytes,
    tlq_args,
)
from tests.support import REPO
from tlq.cli.main import cli

TLQ_SERVICES = ("cpu-worker", "gpu-worker", "tlq", "ui")
CHECK_SECRETS = REPO / "scripts" / "compose" / "check-secrets.sh"
# Secrets as a user would choose them (openssl rand -hex 24), each distinct so a leak says which one.
GOOD_SECRETS = {name: f"{i}f3a9c1e07b2d4865a0c9e1f7b3d5a2c4e6" for i, name in enumerate(SECRETS)}


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
    assert set(services) == {"secrets-check", "redis", "postgres", "cpu-worker", "gpu-worker", "flower", "tlq", "ui"}
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert services["flower"]["profiles"] == ["monitoring"]
    assert services["tlq"]["profiles"] == ["cli"]
    assert "profiles" not in services["cpu-worker"]  # `docker compose up --scale cpu-worker=4` starts it
    assert "profiles" not in services["ui"]  # `docker compose up` starts the dashboard too
    assert "container_name" not in services["cpu-worker"]  # a fixed name would forbid --scale
    assert "profiles" not in services["secrets-check"]  # it gates every profile


def test_redis_persists_never_evicts_and_needs_a_password(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    # The password reaches redis-server through a config file redis-start.sh writes from the environment
    # (tests/integration/test_compose_scripts.py starts a real redis-server that way and is refused without it).
    assert redis["entrypoint"] == ["sh", "/usr/local/bin/redis-start.sh"]
    assert "./scripts/compose/redis-start.sh:/usr/local/bin/redis-start.sh:ro" in redis["volumes"]
    assert redis["environment"]["REDIS_PASSWORD"] == dotenv()["REDIS_PASSWORD"]
    assert redis["environment"]["REDISCLI_AUTH"] == dotenv()["REDIS_PASSWORD"]  # for the healthcheck's redis-cli


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


def test_gpu_worker_reserves_every_gpu_and_runs_one_process_per_gpu(compose):
    service = compose["services"]["gpu-worker"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == "all"
    args = tlq_args(service)
    assert args[args.index("--queues") + 1] == "gpu" and args[args.index("--gpus") + 1] == "all"
    assert "--concurrency" not in args  # --gpus sets it: one pool process per GPU
    assert service["build"]["args"]["TORCH_INDEX"].startswith("https://download.pytorch.org/whl/cu")


def test_stop_grace_covers_the_workers_shutdown(compose):
    for name in ("cpu-worker", "gpu-worker"):
        grace = compose["services"][name]["stop_grace_period"]
        assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= 15, name


def test_every_tlq_command_parses_with_tlqs_own_cli(compose):
    for name in TLQ_SERVICES:
        path = parse_tlq(tlq_args(compose["services"][name]))
        assert path[1] in ("worker", "jobs", "ui"), name
    dockerfile = (REPO / "Dockerfile").read_text()
    cmd = re.search(r"^CMD \[(.*)\]$", dockerfile, re.M).group(1)
    assert parse_tlq([a.strip().strip('"') for a in cmd.split(",")]) == ["tlq", "worker"]
    assert re.search(r"^ENTRYPOINT \[\"tlq\"\]$", dockerfile, re.M)
    assert re.search(r"^USER tlq$", dockerfile, re.M)  # never root


def worker_params(service: dict) -> dict:
    """The parameters tlq's own `worker` command reads from a service's command line."""
    ctx = cli.make_context("tlq", tlq_args(service))
    name, command, rest = ctx.command.resolve_command(ctx, [*getattr(ctx, "_protected_args", []), *ctx.args])
    return command.make_context(name, rest, parent=ctx).params


@pytest.mark.parametrize(("name", "queue"), [("cpu-worker", "cpu"), ("gpu-worker", "gpu")])
def test_each_worker_service_consumes_only_its_own_queue_one_job_at_a_time(compose, name, queue):
    from tlq.cli.workers import parse_queues
    from tlq.errors import BadInput

    params = worker_params(compose["services"][name])
    assert parse_queues(params["queues"], has_gpu=True) == [queue]  # never both: a GPU job on the CPU worker
    assert params["events"]  # Flower sees the tasks
    # One job in memory per CPU worker; one per GPU on the GPU worker (--gpus sets its pool to the GPUs it owns).
    assert params["concurrency"] == 1 and (params["gpus"] == "all") == (queue == "gpu")
    if queue == "gpu":  # started on a host without a GPU, it stops at once, saying why
        with pytest.raises(BadInput, match="this machine has no CUDA GPU"):
            parse_queues(params["queues"], has_gpu=False)


def test_no_secret_is_written_in_the_compose_file():
    raw = COMPOSE.read_text()
    secrets = dotenv()
    for key in SECRETS:
        assert secrets[key] not in raw
    for url in re.findall(r"(?:redis|postgresql)://(?:\$\{[^}]*\}|[^\s\"'$])+", raw):
        password = re.match(r"\w+://[^:/@]*:([^@]*)@", url)
        assert password and password.group(1).startswith("${"), url
    for value in re.findall(r"^\s*\w*(?:PASSWORD|AUTH):\s*(\S+)", raw, re.M):
        assert value.startswith("${"), value
    for key in SECRETS:  # a missing secret stops compose, never falls back to a default
        with pytest.raises(KeyError, match=key):
            load_compose(env={k: v for k, v in GOOD_SECRETS.items() if k != key})


def test_the_services_environment_points_tlq_at_redis_and_postgres(compose):
    from tlq.config import Settings

    env = compose["services"]["cpu-worker"]["environment"]
    settings = Settings.load(environ=env)
    assert settings.broker_url == f"redis://:{dotenv()['REDIS_PASSWORD']}@redis:6379/0"
    assert settings.database_url == f"postgresql+psycopg://tlq_app:{dotenv()['TLQ_DB_PASSWORD']}@postgres:5432/tlq"
    described = str(settings.describe())
    assert dotenv()["TLQ_DB_PASSWORD"] not in described and dotenv()["REDIS_PASSWORD"] not in described


# --- a deployment that lets no one in ---------------------------------------------------------------------------


def test_nothing_is_published_beyond_this_host_by_default(compose):
    raw = load_compose(raw=True)
    networks = compose.get("networks", {})
    for name, service in compose["services"].items():
        for port, raw_port in zip(published_ports(service), published_ports(raw["services"][name]), strict=True):
            assert port["host_ip"] in ("127.0.0.1", "::1"), f"{name} publishes {port} on all interfaces"
            # Opening it wider is a choice the user makes: a variable whose default is loopback.
            assert re.fullmatch(r"127\.0\.0\.1|::1|\$\{\w+:-(127\.0\.0\.1|::1)\}", raw_port["host_ip"]), name
            assert any(not networks[n].get("internal") for n in service["networks"]), f"{name}: internal only"
    assert published_ports(compose["services"]["flower"]) == [{"host_ip": "127.0.0.1", "target": "5555"}]
    for name in ("redis", "postgres"):  # reachable from the other services only
        assert "ports" not in compose["services"][name], name
        assert compose["services"][name]["networks"] and all(
            networks[n].get("internal") is True for n in compose["services"][name]["networks"]
        ), name


def test_the_dashboard_is_published_on_this_host_only_and_asks_for_its_token(compose):
    from tlq.ui.security import is_local

    ui = compose["services"]["ui"]
    assert published_ports(ui) == [{"host_ip": "127.0.0.1", "target": "8765"}]
    assert load_compose(raw=True)["services"]["ui"]["ports"] == ["127.0.0.1:8765:8765"]  # no variable opens it
    args = tlq_args(ui)
    host, port = args[args.index("--host") + 1], args[args.index("--port") + 1]
    assert parse_tlq(args) == ["tlq", "ui"] and port == "8765"
    # Bound beyond its container's loopback, `tlq ui` starts only with a token (tests/ui/test_security.py), and
    # compose refuses to start without one: no default, no placeholder (secrets-check).
    assert not is_local(host) and ui["environment"]["TLQ_UI_TOKEN"] == dotenv()["TLQ_UI_TOKEN"]
    raw = load_compose(raw=True)["services"]["ui"]["environment"]
    with pytest.raises(KeyError, match="TLQ_UI_TOKEN"):
        interpolate(raw, {k: v for k, v in GOOD_SECRETS.items() if k != "TLQ_UI_TOKEN"})
    assert ui["environment"]["TLQ_DATABASE_URL"] == compose["services"]["cpu-worker"]["environment"]["TLQ_DATABASE_URL"]
    assert "TLQ_UI_TOKEN" not in compose["services"]["cpu-worker"]["environment"]  # the workers never see it


def test_flower_asks_for_a_password_it_reads_from_its_environment(compose):
    flower = compose["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == f"admin:{dotenv()['FLOWER_PASSWORD']}"
    assert not any("auth" in arg or "broker" in arg for arg in flower["command"])  # nothing secret in argv
    assert str(flower["environment"].get("FLOWER_UNAUTHENTICATED_API", "false")).lower() in ("false", "0")
    raw = load_compose(raw=True)["services"]["flower"]["environment"]
    with pytest.raises(KeyError, match="FLOWER_PASSWORD"):  # required: no password, no Flower
        interpolate(raw, {k: v for k, v in GOOD_SECRETS.items() if k != "FLOWER_PASSWORD"})


def test_tlq_connects_as_a_role_that_owns_its_database_not_as_the_superuser(compose):
    postgres = compose["services"]["postgres"]["environment"]
    superuser = postgres.get("POSTGRES_USER", "postgres")
    for name in TLQ_SERVICES:
        url = urlsplit(compose["services"][name]["environment"]["TLQ_DATABASE_URL"])
        assert url.username != superuser, name
        assert url.username == postgres["TLQ_DB_USER"], name  # the role postgres-init.sh creates
        assert url.password == dotenv()["TLQ_DB_PASSWORD"] != dotenv()["POSTGRES_PASSWORD"], name
        assert url.path == f"/{postgres['POSTGRES_DB']}", name
    assert (
        "./scripts/compose/postgres-init.sh:/docker-entrypoint-initdb.d/10-tlq-app.sh:ro"
        in compose["services"]["postgres"]["volumes"]
    )


def run_check_secrets(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(CHECK_SECRETS)], env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True
    )


def test_the_placeholders_of_env_example_stop_the_stack():
    result = run_check_secrets(dotenv())
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: {name} is still the placeholder from .env.example; put a fresh one in .env "
        "(openssl rand -hex 24) and run docker compose up again"
        for name in SECRETS
    ]
    chosen = run_check_secrets(GOOD_SECRETS)
    assert (chosen.returncode, chosen.stdout, chosen.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "is not set"),
        ("Change-Me-2024-0123456789", "is still the placeholder from .env.example"),
        ("changeme0123456789abcdef", "is still the placeholder from .env.example"),
        ("s3cret", "is shorter than 16 characters"),
        ("0123456789abcde", "is shorter than 16 characters"),
        ("p@ss/word0123456789", "holds a character other than letters, digits and . _ ~ -"),
        ("with space 0123456789", "holds a character other than letters, digits and . _ ~ -"),
    ],
)
@pytest.mark.parametrize("name", SECRETS)
def test_a_weak_secret_is_refused_in_one_line_naming_it_and_the_fix(name, value, reason):
    result = run_check_secrets({**GOOD_SECRETS, name: value})
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {name} {reason}") and line.endswith(
        "put a fresh one in .env (openssl rand -hex 24) and run docker compose up again"
    )


def test_the_superuser_and_tlq_share_no_password():
    result = run_check_secrets({**GOOD_SECRETS, "TLQ_DB_PASSWORD": GOOD_SECRETS["POSTGRES_PASSWORD"]})
    assert result.returncode == 1 and "TLQ_DB_PASSWORD is the PostgreSQL superuser's password too" in result.stderr


def test_every_service_waits_for_the_secrets_check(compose):
    check = compose["services"]["secrets-check"]
    assert check["entrypoint"] == ["sh", "/check-secrets.sh"]
    assert check["volumes"] == ["./scripts/compose/check-secrets.sh:/check-secrets.sh:ro"]
    assert {name: check["environment"][name] for name in SECRETS} == {name: dotenv()[name] for name in SECRETS}
    for name in set(compose["services"]) - {"secrets-check"}:
        assert dependencies(compose, name).get("secrets-check") == "service_completed_successfully", name


def test_no_secret_is_on_any_command_line():
    """`ps` shows every process's arguments to every user of the host, and `docker inspect` shows these."""
    compose = load_compose(env=GOOD_SECRETS)
    for name, service in compose["services"].items():
        argv = {
            "command": service.get("command"),
            "entrypoint": service.get("entrypoint"),
            "healthcheck": service.get("healthcheck", {}).get("test"),
            "build args": (service.get("build") or {}).get("args"),  # kept in the image's history
        }
        for secret_name, secret in GOOD_SECRETS.items():
            for where, value in argv.items():
                assert secret not in str(value), f"{secret_name} is in {name}'s {where}"


def test_every_service_has_a_memory_limit(compose):
    for name, service in compose["services"].items():
        limit = size_in_bytes(service["deploy"]["resources"]["limits"]["memory"])
        assert limit >= 16 * 2**20, name
    for name in ("cpu-worker", "gpu-worker"):
        assert size_in_bytes(compose["services"][name]["deploy"]["resources"]["limits"]["memory"]) >= 2**31, name
    redis = compose["services"]["redis"]
    maxmemory = size_in_bytes(redis["command"][redis["command"].index("--maxmemory") + 1])
    # Under its container's limit, so a full broker refuses writes (noeviction) rather than being killed.
    assert maxmemory < size_in_bytes(redis["deploy"]["resources"]["limits"]["memory"])


def test_env_is_never_committed_nor_sent_to_a_docker_build():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0

    assert ignored(".env") and ignored(".env.production")
    assert not ignored(".env.example")
    assert ".env" in (REPO / ".dockerignore").read_text().split()
