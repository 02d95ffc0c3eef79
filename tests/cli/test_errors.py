"""Bad input at submit: exit code 2, one line naming the fix, and nothing queued."""

import json

import pytest
from click.testing import CliRunner

from tlq.cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def env(home):
    return {"TLQ_HOME": str(home), "HF_HUB_OFFLINE": "1", "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": ""}


def invoke(runner, env, *args):
    return runner.invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def empty_dir(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    return path


CASES = {
    "unknown task": (["submit", "feature-extrakt"], "unknown task 'feature-extrakt'; did you mean feature-extract"),
    "unknown backbone": (
        ["submit", "feature-extract", "--backbone", "resnet9000", "--no-pretrained", "--data", "{digits}"],
        "unknown backbone 'resnet9000'",
    ),
    "missing backbone": (["submit", "feature-extract", "--data", "{digits}"], "needs a backbone; pass --backbone"),
    "missing data folder": (
        ["submit", "feature-extract", "--backbone", "test_resnet", "--no-pretrained", "--data", "/nonexistent/photos"],
        "--data: folder /nonexistent/photos does not exist",
    ),
    "data not given": (
        ["submit", "feature-extract", "--backbone", "test_resnet", "--no-pretrained"],
        "--data: is required",
    ),
    "empty folder": (
        ["submit", "feature-extract", "--backbone", "test_resnet", "--no-pretrained", "--data", "{empty}"],
        "no files under",
    ),
    "zero batch size": (
        [
            "submit",
            "feature-extract",
            "--backbone",
            "test_resnet",
            "--no-pretrained",
            "--data",
            "{digits}",
            "--batch-size",
            "0",
        ],
        "--batch-size: Input should be greater than or equal to 1",
    ),
    "text batch size": (
        [
            "submit",
            "feature-extract",
            "--backbone",
            "test_resnet",
            "--no-pretrained",
            "--data",
            "{digits}",
            "--batch-size",
            "many",
        ],
        "--batch-size: Input should be a valid integer",
    ),
    "bad precision": (
        ["submit", "feature-extract", "--backbone", "test_resnet", "--data", "{digits}", "--precision", "fp8"],
        "Invalid value for '--precision'",
    ),
    "priority out of range": (
        [
            "submit",
            "feature-extract",
            "--backbone",
            "test_resnet",
            "--no-pretrained",
            "--data",
            "{digits}",
            "--priority",
            "12",
        ],
        "--priority: Input should be less than or equal to 9",
    ),
    "malformed tag": (
        [
            "submit",
            "feature-extract",
            "--backbone",
            "test_resnet",
            "--no-pretrained",
            "--data",
            "{digits}",
            "--tag",
            "novalue",
        ],
        "is not KEY=VALUE",
    ),
    "missing weights file": (
        [
            "submit",
            "feature-extract",
            "--backbone",
            "test_resnet",
            "--weights",
            "/nope.safetensors",
            "--data",
            "{digits}",
        ],
        "weights file /nope.safetensors does not exist",
    ),
    "pretrained weights offline": (
        ["submit", "feature-extract", "--backbone", "resnet18", "--data", "{digits}"],
        "pass --weights FILE to use a local file, or --no-pretrained",
    ),
    "unknown option": (
        ["submit", "feature-extract", "--backbone", "test_resnet", "--data", "{digits}", "--epochs", "3"],
        "No such option '--epochs'",
    ),
    "bad device": (
        ["submit", "feature-extract", "--backbone", "test_resnet", "--data", "{digits}", "--device", "tpu"],
        "Invalid value for '--device'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_queues_nothing(runner, env, home, digits_dir, empty_dir, case):
    args, expected = CASES[case]
    args = [a.format(digits=digits_dir, empty=empty_dir) for a in args]
    result = invoke(runner, env, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert expected in lines[0]
    assert not (home / "broker.sqlite").exists()  # nothing reached the broker
    jobs = invoke(runner, env, "jobs", "--json")
    assert json.loads(jobs.stdout) == []


def test_show_of_a_missing_job_says_how_to_find_jobs(runner, env):
    result = invoke(runner, env, "show", 42)
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: there is no job 42; `tlq jobs` lists the jobs"


def test_worker_without_gpu_refuses_the_gpu_queue(runner, env):
    result = invoke(runner, env, "worker", "--queues", "gpu,cpu")
    assert result.exit_code == 2
    assert "no CUDA GPU" in result.stderr and "--queues cpu" in result.stderr


def test_unreachable_database_is_one_line(runner, env):
    env = dict(env, TLQ_DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    result = invoke(runner, env, "jobs")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("Error: cannot reach the database at postgresql+psycopg://postgres@127.0.0.1:1/none")
    assert "TLQ_DATABASE_URL" in line and "\n" not in line


@pytest.mark.parametrize(
    "args",
    [
        ["show", "99999999999999999999"],
        ["cancel", "2147483648"],
        ["compare", "1", "3000000000"],
        ["jobs", "--group", "0"],
    ],
)
def test_an_id_no_job_can_have_is_one_line_not_a_traceback(runner, env, args):
    result = invoke(runner, env, *args)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "is not in the range 1<=x<=2147483647" in line
