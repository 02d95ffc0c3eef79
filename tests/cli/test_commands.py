"""The CLI surface: listings, configuration, and a --help that stays light."""

import json
import subprocess
import sys

from click.testing import CliRunner

from tests.support import figure
from tlq.cli.main import cli


def invoke(home, *args, **env):
    runner = CliRunner()
    base = {"TLQ_HOME": str(home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    return runner.invoke(cli, [str(a) for a in args], env=base | env, catch_exceptions=False)


def test_help_does_not_import_torch_or_timm():
    code = (
        "import json, sys, time; t = time.perf_counter()\n"
        "from tlq.cli.main import cli\n"
        "try:\n    cli.main(['--help'], prog_name='tlq')\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'timm') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'seconds': time.perf_counter() - t}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    *help_lines, last = out.splitlines()
    loaded = json.loads(last)
    figure("tlq --help in a fresh process", seconds=loaded["seconds"])
    assert loaded["heavy"] == []
    listed = {line.split()[0] for line in help_lines[help_lines.index("Commands:") + 1 :] if line.strip()}
    assert {"submit", "run", "worker", "jobs", "show", "wait", "results", "tasks", "backbones"} <= listed


def test_help_does_not_import_the_settings_model_or_the_database_layer():
    """`tlq --help` builds no settings and reaches no database: pydantic-settings and SQLAlchemy, a third of the
    time a fresh `tlq --help` took, load only for a command that runs."""
    code = (
        "import sys\nfrom tlq.cli.main import cli\n"
        "try:\n    cli.main(['--help'], prog_name='tlq')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('pydantic_settings', 'tlq.config', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "[]"


def test_tasks_json_lists_parameters(home):
    result = invoke(home, "tasks", "--json")
    tasks = {t["name"]: t for t in json.loads(result.stdout)}
    params = {p["name"]: p for p in tasks["feature-extract"]["params"]}
    assert params["data"]["required"] and params["data"]["flag"] == "--data"
    assert params["batch_size"]["default"] is None and "16 on a CPU" in params["batch_size"]["help"]
    assert params["precision"]["type"] == "auto|fp32|bf16"


def test_backbones_filter_like_timm(home):
    rows = json.loads(invoke(home, "backbones", "--architectures", "--filter", "vgg1*", "--json").stdout)
    names = [r["name"] for r in rows]
    assert "vgg16" in names and "vgg19" in names and all(n.startswith("vgg1") for n in names)
    assert all(r["source"] == "timm" for r in rows)
    tags = [r["name"] for r in json.loads(invoke(home, "backbones", "--filter", "vgg1*", "--json").stdout)]
    assert "vgg16.tv_in1k" in tags and all(n.startswith("vgg1") and "." in n for n in tags)


def test_task_help_is_generated_from_the_parameter_model(home):
    text = invoke(home, "submit", "feature-extract", "--help").stdout
    for flag in (
        "--backbone",
        "--weights",
        "--no-pretrained",
        "--device",
        "--priority",
        "--wait",
        "--json",
        "--data",
        "--batch-size",
        "--precision",
    ):
        assert flag in text


def test_config_masks_passwords_and_names_sources(home):
    result = invoke(
        home,
        "config",
        "--json",
        TLQ_DATABASE_URL="postgresql://tlq:topsecret@db:5432/tlq",
        TLQ_BROKER_URL="redis://:alsosecret@redis:6379/0",
    )
    assert "topsecret" not in result.stdout and "alsosecret" not in result.stdout
    config = json.loads(result.stdout)
    assert config["database_url"] == {"value": "postgresql+psycopg://tlq:***@db:5432/tlq", "source": "TLQ_DATABASE_URL"}
    assert config["home"]["source"] == "TLQ_HOME"


def test_run_executes_in_process_and_records_the_same_rows(home, digits_dir):
    result = invoke(
        home, "run", "feature-extract", "--backbone", "test_resnet", "--no-pretrained", "--data", digits_dir, "--json"
    )
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["status"] == "succeeded" and job["queue"] == "local" and job["metrics"]["images"] == 120
    listed = json.loads(invoke(home, "jobs", "--json").stdout)
    assert [j["id"] for j in listed] == [job["id"]]


def test_db_upgrade_reports_the_revision(home):
    from tlq.db.engine import head_revision

    head = head_revision()
    first = invoke(home, "db", "upgrade").stdout
    assert f"upgraded to revision {head}" in first and f"(head {head})" in first
    assert f"already at revision {head}" in invoke(home, "db", "upgrade").stdout
