"""The scripts docker-compose.yml mounts into the Redis and PostgreSQL images, run here against the real
redis-server and the local PostgreSQL (there is no Docker engine on the test machines)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.compose_support import load_compose
from tests.support import PG_ADMIN_URL, REPO

pytestmark = pytest.mark.integration

SCRIPTS = REPO / "scripts" / "compose"
SECRET = "7c1e9a0b5d3f8e2a4c6b0d9f1e3a5c7b9d2f4a6c"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_redis_starts_with_its_password_in_a_file_not_on_its_command_line(tmp_path):
    import redis

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "seen"  # the arguments and environment redis-server is started with
    # What the image's entrypoint does when not root (exec "$@"), recording what `ps` and /proc would show first:
    # redis-server soon overwrites its own argv with a title, so its /proc entries alone would prove little.
    _shim(bin_dir, "docker-entrypoint.sh", f'printf "%s\\n" "$@" > {seen}; env >> {seen}; exec "$@"')
    conf = tmp_path / "run" / "redis.conf"
    port = _free_port()
    command = load_compose()["services"]["redis"]["command"]
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "REDIS_PASSWORD": SECRET,
        "REDISCLI_AUTH": SECRET,
        "TLQ_REDIS_CONF": str(conf),
    }
    server = subprocess.Popen(
        ["sh", str(SCRIPTS / "redis-start.sh"), *command, "--port", str(port), "--dir", str(tmp_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, password=SECRET, socket_timeout=2)
        for _ in range(100):
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail("redis-server did not start")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=2).set("k", "v")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        # The secret is neither in redis-server's arguments nor in its environment; the file is the owner's.
        assert seen.read_text().splitlines()[:2] == ["redis-server", str(conf)]
        assert SECRET not in seen.read_text()
        assert SECRET.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_redis_start_refuses_to_run_without_a_password(tmp_path):
    result = subprocess.run(
        ["sh", str(SCRIPTS / "redis-start.sh"), "redis-server"],
        env={"PATH": os.environ["PATH"], "TLQ_REDIS_CONF": str(tmp_path / "redis.conf")},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "set REDIS_PASSWORD in .env" in result.stderr
    assert not (tmp_path / "redis.conf").exists()


@pytest.fixture
def scratch_role(services):
    """A fresh database and the name of a role to create in it, both dropped afterwards."""
    import sqlalchemy as sa

    from tlq.config import normalize_database_url

    suffix = uuid.uuid4().hex[:10]
    database, role = f"tlq_init_{suffix}", f"tlq_app_{suffix}"
    admin = sa.create_engine(normalize_database_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    yield database, role
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        conn.execute(sa.text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


def test_postgres_init_makes_tlq_an_owner_not_a_superuser(tmp_path, scratch_role):
    import sqlalchemy as sa

    from tlq.db.engine import Database

    database, role = scratch_role
    postgres = load_compose()["services"]["postgres"]["environment"]
    assert postgres["TLQ_DB_USER"] == "tlq_app" and postgres["POSTGRES_DB"] == "tlq"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    argv_log = tmp_path / "psql-argv"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PGHOST": "127.0.0.1",  # the image runs it over the socket; here the local server
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": database,
        "TLQ_DB_USER": role,
        "TLQ_DB_PASSWORD": SECRET,
    }
    real_psql = shutil.which("psql")
    _shim(bin_dir, "psql", f'printf "%s\\n" "$@" >> {argv_log}; exec {real_psql} "$@"')  # records what `ps` shows
    result = subprocess.run(["sh", str(SCRIPTS / "postgres-init.sh")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert argv_log.exists() and SECRET not in argv_log.read_text()

    admin = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
    with admin.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin, rolpassword "
                "FROM pg_authid WHERE rolname = :role"
            ),
            {"role": role},
        ).one()
        owner = conn.execute(
            sa.text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        ).scalar()
        public_connect = conn.execute(
            sa.text("SELECT has_database_privilege('public', current_database(), 'CONNECT')")
        ).scalar()
    admin.dispose()
    assert row[:6] == (False, False, False, False, False, True)
    assert row.rolpassword.startswith("SCRAM-SHA-256$") and SECRET not in row.rolpassword
    assert owner == role
    assert public_connect is False  # other roles cannot even connect

    # As that role, tlq builds its whole schema, and can do nothing a superuser or a CREATEDB role could.
    url = f"postgresql://{role}:{SECRET}@127.0.0.1:5432/{database}"
    Database(url).ensure_schema()
    app = sa.create_engine(
        f"postgresql+psycopg://{role}:{SECRET}@127.0.0.1:5432/{database}", isolation_level="AUTOCOMMIT"
    )
    with app.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar() == 0
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            conn.execute(sa.text(f'CREATE DATABASE "{database}_more"'))
    app.dispose()
