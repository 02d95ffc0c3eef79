from pathlib import Path

from tlq.config import Settings, mask_url, normalize_broker_url, normalize_database_url


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


def test_passwords_are_masked():
    assert mask_url("postgresql+psycopg://tlq:s3cret@db:5432/tlq") == "postgresql+psycopg://tlq:***@db:5432/tlq"
    assert mask_url("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert mask_url("sqla+sqlite:////x/broker.sqlite") == "sqla+sqlite:////x/broker.sqlite"
    settings = Settings.load(
        database_url="postgresql://tlq:s3cret@db/tlq", broker_url="redis://:hunter2@r:6379/0", environ={}
    )
    described = str(settings.describe())
    assert "s3cret" not in described and "hunter2" not in described


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
