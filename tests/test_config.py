from pathlib import Path

import pytest

from tlq.config import Settings, mask_secrets_in, mask_url, normalize_broker_url, normalize_database_url


def test_defaults_need_no_server(tmp_path):
    settings = Settings.load(environ={"TLQ_HOME": str(tmp_path)})
    assert settings.database_url == f"sqlite:///{tmp_path / 'tlq.sqlite'}"
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    assert settings.artifacts_dir == tmp_path / "artifacts"
    assert settings.broker_is_embedded


def test_flags_beat_environment_which_beats_defaults(tmp_path):
    env = {"TLQ_HOME": str(tmp_path), "TLQ_BROKER_URL": "redis://127.0.0.1:6379/0"}
    settings = Settings.load(database_url="postgresql://u@h/db", environ=env)
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.broker_url == "redis://127.0.0.1:6379/0"
    assert settings.sources == {
        "home": "TLQ_HOME",
        "database_url": "flag",
        "broker_url": "TLQ_BROKER_URL",
        "artifacts_dir": "default",
    }


def test_plain_postgres_urls_map_to_the_shipped_driver():
    assert normalize_database_url("postgresql://a@b/c") == "postgresql+psycopg://a@b/c"
    assert normalize_database_url("postgres://a@b/c") == "postgresql+psycopg://a@b/c"
    assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"
    assert normalize_broker_url("sqlite:////tmp/b.db") == "sqla+sqlite:////tmp/b.db"
    assert normalize_broker_url("sqla+postgresql://a@b/c") == "sqla+postgresql+psycopg://a@b/c"


# (URL, what it must read once masked, pieces of its password that must not show). The password is hidden
# as SQLAlchemy or kombu would read it, and never partly: a raw "/", "@", ":" or "?" in it hides more.
TRICKY_URLS = [
    ("postgresql+psycopg://tlq:s3cret@db:5432/tlq", "postgresql+psycopg://tlq:***@db:5432/tlq", ["s3cret"]),
    ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0", ["hunter2"]),
    ("sqla+sqlite:////x/broker.sqlite", "sqla+sqlite:////x/broker.sqlite", []),
    ("sqlite:////home/me@corp/tlq.sqlite", "sqlite:////home/me@corp/tlq.sqlite", []),
    ("redis://:p@ss/word@host:6379/0", "redis://:***@host:6379/0", ["p@ss", "ss/word", "word"]),
    ("postgresql://u:p/w@h/db", "postgresql://u:***@h/db", ["p/w", "w@h"]),
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db", ["ss@h", "p@ss"]),
    ("redis://:a:b@h:6379/0", "redis://:***@h:6379/0", ["a:b", ":b@"]),
    ("redis://:pa?ss@h:6379/0", "redis://:***@h:6379/0", ["pa?ss", "?ss"]),
    (
        "rediss://user:pw@h/0?ssl_cert_reqs=required",
        "rediss://user:***@h/0?ssl_cert_reqs=required",  # kombu drops the query; tlq keeps it, less secrets
        ["pw@"],
    ),
    (
        "postgresql://u:p%40ss@h/db?password=x&sslmode=verify-full",
        "postgresql://u:***@h/db?password=***&sslmode=verify-full",
        ["p%40ss", "p@ss", "=x"],
    ),
    ("redis+socket:///tmp/r.sock?password=sekrit", "redis+socket:///tmp/r.sock?password=***", ["sekrit"]),
    ("sqla+postgresql+psycopg://u:pw@h/db", "sqla+postgresql+psycopg://u:***@h/db", ["pw@"]),
    (
        "sentinel://:pw1@h1:26379;sentinel://:pw2@h2:26379",
        "sentinel://:***@h1:26379/;sentinel://:***@h2:26379/",
        ["pw1", "pw2"],
    ),
    ("postgresql://u:pw@h:notaport/db", "postgresql://***@h:notaport/db", ["pw"]),  # unparseable: still hidden
]


@pytest.mark.parametrize(("url", "masked", "secrets"), TRICKY_URLS, ids=[u for u, _, _ in TRICKY_URLS])
def test_passwords_are_masked_whatever_they_hold(url, masked, secrets):
    assert mask_url(url) == masked
    assert not [s for s in secrets if s in mask_url(url)]


def test_tlq_config_never_shows_a_password(tmp_path):
    from click.testing import CliRunner

    from tlq.cli.main import cli

    env = {
        "TLQ_HOME": str(tmp_path),
        "TLQ_DATABASE_URL": "postgresql://tlq:p@ss/w0rd@db/tlq?password=x9",
        "TLQ_BROKER_URL": "rediss://:hun:ter@2@redis:6379/0?ssl_cert_reqs=required",
    }
    result = CliRunner().invoke(cli, ["config", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert "postgresql+psycopg://tlq:***@db/tlq?password=***" in result.output
    assert "rediss://:***@redis:6379/0?ssl_cert_reqs=required" in result.output
    for piece in ("p@ss", "w0rd", "x9", "hun", "ter@2"):
        assert piece not in result.output, piece


@pytest.mark.parametrize("password", ["Xk3@9fQz/7Lm", "hun:ter#2z9@xq7"])
def test_a_password_with_a_raw_at_or_slash_reaches_the_server_whole(tmp_path, pg_url, password):
    """SQLAlchemy ends a password at its first "@" and kombu at its first "/": they connected to a host named
    after the rest of it, and the error quoted that piece ("failed to resolve host '9fQz'")."""
    from click.testing import CliRunner
    from kombu import Connection
    from sqlalchemy.engine import make_url

    from tlq.cli.main import cli

    database_url = pg_url.replace("postgres@", f"postgres:{password}@", 1)
    broker_url = f"redis://:{password}@127.0.0.1:6379/0"
    settings = Settings.load(home=tmp_path, database_url=database_url, broker_url=broker_url, environ={})
    assert make_url(settings.database_url).password == password
    assert (make_url(settings.database_url).host, make_url(settings.database_url).database) == (
        "127.0.0.1",
        pg_url.rsplit("/", 1)[1],
    )
    assert Connection(settings.broker_url).password == password
    assert Connection(settings.broker_url).hostname == "127.0.0.1"
    env = {"TLQ_HOME": str(tmp_path), "TLQ_DATABASE_URL": database_url, "TLQ_BROKER_URL": broker_url}
    result = CliRunner().invoke(cli, ["jobs"], env=env)
    assert result.exit_code == 0, result.output  # it reached the database
    result = CliRunner().invoke(cli, ["config"], env=env)
    for piece in password.replace("#", "@").replace(":", "@").replace("/", "@").split("@"):
        assert piece not in result.output, piece


def test_urls_inside_error_text_are_masked():
    text = (
        "OperationalError: connection to 'postgresql://tlq:s3cr/et@db:5432/tlq' failed (dsn: host=db "
        "password=hunter2 user=tlq); broker redis://:x@y@r:6379/0. See https://sqlalche.me/e/20/e3q8"
    )
    assert mask_secrets_in(text) == (
        "OperationalError: connection to 'postgresql://tlq:***@db:5432/tlq' failed (dsn: host=db "
        "password=*** user=tlq); broker redis://:***@r:6379/0. See https://sqlalche.me/e/20/e3q8"
    )
    assert mask_secrets_in("nothing secret here: job 7 failed") == "nothing secret here: job 7 failed"


def test_child_environment_round_trips(tmp_path):
    settings = Settings.load(home=tmp_path, environ={})
    again = Settings.load(environ=settings.as_env())
    assert again == settings
    assert isinstance(again.home, Path)


def test_reliability_timings_come_from_the_environment_and_bad_ones_name_the_fix():
    import pytest

    from tlq.config import SettingsError

    settings = Settings.load(environ={"TLQ_STALE_AFTER": "5", "TLQ_DB_OUTAGE_S": "30"})
    assert (settings.stale_after_s, settings.db_outage_s, settings.stall_after_s) == (5.0, 30.0, 900.0)
    assert Settings.load(environ=settings.as_env()) == settings
    for bad in ("abc", "0", "-3", "nan", "inf"):
        with pytest.raises(SettingsError, match=rf"TLQ_STALE_AFTER='{bad}' is not a number of seconds above 0"):
            Settings.load(environ={"TLQ_STALE_AFTER": bad})


def test_a_bad_timing_is_one_line_and_exit_2(tmp_path):
    from click.testing import CliRunner

    from tlq.cli.main import cli

    result = CliRunner().invoke(cli, ["jobs"], env={"TLQ_HOME": str(tmp_path), "TLQ_DB_OUTAGE_S": "soon"})
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: TLQ_DB_OUTAGE_S='soon' is not a number of seconds above 0; set it to, say, 120"
    )
