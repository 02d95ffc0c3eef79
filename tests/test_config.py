import json
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


@pytest.mark.parametrize("password", ["Xk3@9fQz/7Lm", "hnq:tzr#2z9@xq7"])
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


# (variable, Settings attribute, a good value and what it reads as, bad values, the start of the message)
WORKER_SETTINGS = [
    (
        "TLQ_VISIBILITY_TIMEOUT",
        "visibility_timeout_s",
        ("2", 2.0),
        ("abc", "0", "-3", "nan", "inf"),
        "is not a number of seconds above 0; set it to, say, 3600",
    ),
    (
        "TLQ_MODEL_CACHE",
        "model_cache",
        ("5", 5),
        ("abc", "-1", "2.5", "nan"),
        r"is not a whole number of models, 0 or more; set it to, say, 2 \(0 keeps none\)",
    ),
    (
        "TLQ_FEATURE_CACHE_MB",
        "feature_cache_mb",
        ("0.5", 0.5),
        ("abc", "-1", "nan", "inf"),
        r"is not a number of megabytes, 0 or more; set it to, say, 2048 \(0 turns the cache off\)",
    ),
]


@pytest.mark.parametrize(("variable", "name", "good", "bad", "message"), WORKER_SETTINGS, ids=lambda v: str(v))
def test_worker_settings_come_from_the_environment_and_bad_ones_name_the_fix(variable, name, good, bad, message):
    from tlq.config import SettingsError

    settings = Settings.load(environ={variable: good[0]})
    assert getattr(settings, name) == good[1]
    assert settings.sources[name] == variable
    assert Settings.load(environ=settings.as_env()) == settings  # a child process gets the same value
    for value in bad:
        with pytest.raises(SettingsError, match=rf"^{variable}='{value}' {message}$"):
            Settings.load(environ={variable: value})


def test_worker_settings_keep_their_defaults(tmp_path):
    settings = Settings.load(home=tmp_path, environ={"TLQ_MODEL_CACHE": " ", "TLQ_FEATURE_CACHE_MB": ""})
    assert (settings.visibility_timeout_s, settings.model_cache, settings.feature_cache_mb) == (None, 2, 2048.0)
    child = settings.as_env()
    assert child["TLQ_VISIBILITY_TIMEOUT"] == ""  # unset in the child too, whatever the parent's environment says
    assert (child["TLQ_MODEL_CACHE"], child["TLQ_FEATURE_CACHE_MB"]) == ("2", "2048")
    assert Settings.load(environ=child) == settings
    assert Settings.load(environ={"TLQ_MODEL_CACHE": "0", "TLQ_FEATURE_CACHE_MB": "0"}).feature_cache_mb == 0


def test_tlq_config_shows_the_worker_settings_and_their_sources(tmp_path):
    from click.testing import CliRunner

    from tlq.cli.main import cli

    env = {"TLQ_HOME": str(tmp_path), "TLQ_VISIBILITY_TIMEOUT": "", "TLQ_MODEL_CACHE": "", "TLQ_FEATURE_CACHE_MB": ""}
    defaults = json.loads(CliRunner().invoke(cli, ["config", "--json"], env=env).stdout)
    assert defaults["visibility_timeout_s"] == {"value": "unset (Redis's 1 h)", "source": "default"}
    assert defaults["model_cache"] == {"value": "2", "source": "default"}
    assert defaults["feature_cache_mb"] == {"value": "2048", "source": "default"}
    assert defaults["stale_after_s"] == {"value": "60", "source": "default"}
    env |= {"TLQ_VISIBILITY_TIMEOUT": "2.5", "TLQ_MODEL_CACHE": "0", "TLQ_FEATURE_CACHE_MB": "512"}
    env |= {"TLQ_STALE_AFTER": "30", "TLQ_STALL_AFTER": "120.5"}
    result = CliRunner().invoke(cli, ["config", "--json"], env=env)
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout)
    assert described["visibility_timeout_s"] == {"value": "2.5", "source": "TLQ_VISIBILITY_TIMEOUT"}
    assert described["model_cache"] == {"value": "0", "source": "TLQ_MODEL_CACHE"}
    assert described["feature_cache_mb"] == {"value": "512", "source": "TLQ_FEATURE_CACHE_MB"}
    assert described["stale_after_s"] == {"value": "30", "source": "TLQ_STALE_AFTER"}
    assert described["stall_after_s"] == {"value": "120.5", "source": "TLQ_STALL_AFTER"}
    assert described["db_outage_s"]["source"] == "default"
    text = CliRunner().invoke(cli, ["config"], env=env).output
    assert "feature_cache_mb     512  (TLQ_FEATURE_CACHE_MB)" in text.splitlines()


@pytest.mark.parametrize("variable", ["TLQ_VISIBILITY_TIMEOUT", "TLQ_MODEL_CACHE", "TLQ_FEATURE_CACHE_MB"])
def test_a_bad_worker_setting_is_one_line_and_exit_2(tmp_path, variable):
    from click.testing import CliRunner

    from tlq.cli.main import cli

    result = CliRunner().invoke(cli, ["config"], env={"TLQ_HOME": str(tmp_path), variable: "abc"})
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"Error: {variable}='abc' is not a ")


def test_the_worker_takes_the_broker_and_cache_settings(tmp_path):
    from tlq.workers.app import create_app, transport_options

    redis = "redis://127.0.0.1:6379/0"
    assert "visibility_timeout" not in transport_options(redis, None)
    options = transport_options(redis, 2.0)
    assert options["visibility_timeout"] == 2.0
    assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (1, 1)
    assert transport_options("sqla+sqlite:////x/broker.sqlite", 2.0) == {"connect_args": {"timeout": 30}}
    settings = Settings.load(
        home=tmp_path, broker_url=redis, environ={"TLQ_VISIBILITY_TIMEOUT": "30", "TLQ_MODEL_CACHE": "5"}
    )
    app = create_app(settings)
    assert app.conf.broker_transport_options["visibility_timeout"] == 30.0
    assert app.conf.broker_transport_options["unacked_restore_interval"] == 10
    assert app.tlq_runtime.model_cache.capacity == 5


README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_documented_in_the_readme_and_shown_by_tlq_config(name, tmp_path):
    field = Settings.model_fields[name]
    rows = [line for line in README.read_text().splitlines() if line.startswith(f"| `{field.alias}` |")]
    assert rows, f"README's Configuration section has no row for {field.alias}"
    if isinstance(field.default, int | float):  # the table says the default
        assert f" {Settings.load(home=tmp_path, environ={}).describe()[name]['value']} |" in rows[0]
    assert name in Settings.load(home=tmp_path, environ={}).describe()


def test_only_the_given_environment_counts(tmp_path, monkeypatch):
    """``environ`` replaces os.environ; a .env file, a bad variable outside ``environ`` and TLQ_* variables that
    name no setting change nothing."""
    monkeypatch.setenv("TLQ_STALE_AFTER", "abc")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TLQ_DB_OUTAGE_S=5\nTLQ_HOME=/elsewhere\n")
    unrelated = {"TLQ_DB_PASSWORD": "x", "TLQ_GPU": "0", "TLQ_home": "/lowercase", "TLQ_STALE_AFTER_S": "bad"}
    settings = Settings.load(home=tmp_path, environ=unrelated)
    assert settings == Settings.load(home=tmp_path, environ={})
    assert (settings.stale_after_s, settings.db_outage_s, settings.home) == (60.0, 120.0, tmp_path.resolve())
    monkeypatch.delenv("TLQ_STALE_AFTER")
    monkeypatch.setenv("TLQ_DB_OUTAGE_S", "7")
    assert Settings.load(home=tmp_path).db_outage_s == 7.0  # without environ=, os.environ


def test_settings_are_frozen_hashable_picklable_and_equal_whatever_their_source(tmp_path):
    import pickle

    from pydantic import ValidationError

    by_flag = Settings.load(home=tmp_path, environ={})
    by_variable = Settings.load(environ={"TLQ_HOME": str(tmp_path)})
    assert by_flag.sources["home"] == "flag" and by_variable.sources["home"] == "TLQ_HOME"
    assert by_flag == by_variable and hash(by_flag) == hash(by_variable)
    assert by_flag != Settings.load(home=tmp_path, environ={"TLQ_MODEL_CACHE": "3"})
    with pytest.raises(ValidationError):
        by_flag.model_cache = 3
    assert pickle.loads(pickle.dumps(by_flag)).sources == by_flag.sources


def test_a_value_pydantic_refuses_is_one_line_naming_the_flag_or_variable(tmp_path):
    from tlq.config import SettingsError

    with pytest.raises(SettingsError, match=r"^--home='a\\x00b' cannot be used: embedded null byte$"):
        Settings.load(home="a\0b", environ={})
    with pytest.raises(SettingsError, match=r"^TLQ_ARTIFACTS_DIR='x\\x00' cannot be used: embedded null byte$"):
        Settings.load(home=tmp_path, environ={"TLQ_ARTIFACTS_DIR": "x\0"})


# A password holding a byte the locale could not decode: os.environ keeps it as a lone surrogate ("\udcff"). With a
# raw "/" the URL is also one that encode_password rewrites.
UNDECODABLE = ("postgresql://tlq:s3cr\udcffet@db/tlq", "postgresql://tlq:s3cr\udcffet/x@db/tlq")


@pytest.mark.parametrize("url", UNDECODABLE)
def test_a_url_that_cannot_be_used_is_refused_in_one_line_with_its_password_masked(url, tmp_path):
    from tlq.config import SettingsError

    for given in ({"environ": {"TLQ_DATABASE_URL": url}}, {"environ": {"TLQ_BROKER_URL": url}}, {"database_url": url}):
        with pytest.raises(SettingsError) as refused:
            Settings.load(home=tmp_path, **{"environ": {}} | given)
        message = str(refused.value)
        assert "s3cr" not in message and "***" in message and "\n" not in message
        assert message.split("=")[0] in ("TLQ_DATABASE_URL", "TLQ_BROKER_URL", "--database-url")
        assert message.endswith(
            "cannot be used: its user or password holds a byte that is not UTF-8 text; write it in UTF-8"
        )
    assert "s3cr" not in mask_url(url) and "s3cr" not in mask_secrets_in(f"could not connect to {url}")
    sqlite = f"sqlite:///{tmp_path}/caf\udce9/tlq.sqlite"  # such a byte in a path is one SQLite opens
    assert Settings.load(home=tmp_path, environ={"TLQ_DATABASE_URL": sqlite}).database_url == sqlite


def test_a_home_under_a_user_that_does_not_exist_is_one_line(tmp_path):
    from tlq.config import SettingsError

    with pytest.raises(SettingsError, match=r"^--home='~no_such_tlq_user/x' cannot be used: .*home directory"):
        Settings.load(home="~no_such_tlq_user/x", environ={})
    with pytest.raises(SettingsError, match=r"^TLQ_ARTIFACTS_DIR='~no_such_tlq_user' cannot be used: "):
        Settings.load(home=tmp_path, environ={"TLQ_ARTIFACTS_DIR": "~no_such_tlq_user"})
