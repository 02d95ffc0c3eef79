"""Shell completion, through Click's protocol as bash and zsh call it: job ids for the commands that take one,
backbone names for --backbone, and nothing heavy loaded on a Tab once timm's names are listed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from tests.support import tlq_env
from tlq.cli.main import cli
from tlq.config import Settings
from tlq.db import Database, queries
from tlq.db.models import JobStatus


def complete(home, line: str, shell: str = "bash") -> list[str]:
    """What a Tab at the end of ``line`` offers (``line`` ends in a space to complete a new word)."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    env = {
        "TLQ_HOME": str(home),
        "TLQ_DATABASE_URL": "",
        "TLQ_BROKER_URL": "",
        "_TLQ_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": " ".join(words),
        "COMP_CWORD": str(len(words) - 1),
    }
    result = CliRunner().invoke(cli, [], env=env, prog_name="tlq", catch_exceptions=False)
    assert result.exit_code == 0 and result.stderr == "", result.output
    if shell == "zsh":  # type, value, help: one line each
        lines = result.stdout.splitlines()
        return [f"{value}  {help_text}" for value, help_text in zip(lines[1::3], lines[2::3], strict=True)]
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]  # "type,value" a line


@pytest.fixture
def jobs(home) -> dict[str, int]:
    """Jobs in every state, one of them a finetune whose model later jobs can build on; returns status -> id."""
    database = Database(Settings.load(home=home, environ={}).database_url)
    ids = {}
    with database.session() as session:
        for n, status in enumerate(["succeeded", "failed", "queued", "running", "succeeded"]):
            job = queries.create_job(
                session, task="finetune", backbone="resnet18", params={}, queue="cpu", name=f"run {n}"
            )
            job.status = status
            ids[status if n < 4 else "model"] = job.id
        queries.record_artifact(session, ids["model"], "model_card", f"{ids['model']}/model_card.json", 10, "0" * 64)
        for _ in range(11):  # ids 6 to 16, so "1" has several completions
            queries.create_job(
                session, task="predict", backbone="vgg16", params={}, queue="cpu"
            ).status = JobStatus.CANCELLED.value
    database.dispose()
    return ids


def test_job_ids_complete_for_the_commands_that_take_one(home, jobs):
    every = [str(n) for n in range(16, 0, -1)]
    assert complete(home, "tlq show ") == every  # newest first
    assert complete(home, "tlq retry 1") == ["16", "15", "14", "13", "12", "11", "10", "1"]
    live = [str(jobs["running"]), str(jobs["queued"])]
    assert complete(home, "tlq cancel ") == complete(home, "tlq wait ") == live
    assert complete(home, "tlq show x") == []
    described = complete(home, f"tlq show {jobs['running']}", shell="zsh")
    assert described == [f"{jobs['running']}  finetune resnet18 running run 3"]


def test_backbones_complete_with_timm_names_and_model_jobs(home, jobs):
    assert complete(home, "tlq submit finetune --backbone job:") == [f"job:{jobs['model']}"]
    names = complete(home, "tlq submit finetune --backbone resnet5")
    assert {"resnet50", "resnet50d", "resnet50.a1_in1k"} <= set(names)
    assert all(name.startswith("resnet5") for name in names)
    tags = ["convnext_tiny.in12k", "convnext_tiny.in12k_ft_in1k", "convnext_tiny.in12k_ft_in1k_384"]
    assert complete(home, "tlq jobs --backbone convnext_tiny.in12k") == tags
    swept = complete(home, "tlq sweep finetune --backbone vgg16,vgg1")
    assert "vgg16,vgg19" in swept and all(name.startswith("vgg16,vgg1") for name in swept)
    assert f"job:{jobs['model']}" in complete(home, "tlq run finetune --backbone j")
    assert complete(home, "tlq submit finetune --backbone nosuchnet") == []
    assert [p.name for p in (home / "cache").iterdir() if p.name.startswith("timm-")] != []


def test_a_tab_after_the_first_loads_neither_timm_nor_torch(home, jobs):
    complete(home, "tlq submit finetune --backbone vit_")  # lists timm's names once
    code = (
        "import json, os, sys\nfrom tlq.cli.main import cli\n"
        "try:\n    cli.main([], prog_name='tlq')\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in ('timm', 'torch') if m in sys.modules)), file=sys.stderr)"
    )
    env = tlq_env(
        home, _TLQ_COMPLETE="bash_complete", COMP_WORDS="tlq submit finetune --backbone vit_b", COMP_CWORD="4"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "plain,vit_base_patch16_224" in result.stdout.splitlines()
    assert json.loads(result.stderr.splitlines()[-1]) == []


def test_completion_on_a_fresh_home_offers_nothing_and_creates_nothing(home):
    assert complete(home, "tlq show ") == [] and complete(home, "tlq submit finetune --backbone job:") == []
    assert not (home / "tlq.sqlite").exists()
    assert "submit" in complete(home, "tlq su") and complete(home, "tlq jobs --status q") == ["queued"]


def test_a_job_name_with_newlines_or_escapes_is_one_line_of_help_not_a_made_up_completion(home):
    database = Database(Settings.load(home=home, environ={}).database_url)
    with database.session() as session:
        name = "evil\nrm -rf ~\nspoofed\x1b[31mred\ttab" + "x" * 300
        queries.create_job(session, task="finetune", backbone="resnet18", params={}, queue="cpu", name=name)
    database.dispose()
    offered = complete(home, "tlq show ", shell="zsh")  # was 2 items, the second "rm -rf ~" (zsh's framing broken)
    assert len(offered) == 1 and offered[0].startswith("1  finetune resnet18 queued evil rm -rf ~ spoofed [31mred tabx")
    assert len(offered[0]) == len("1  ") + 100  # and cut to 100 characters


@pytest.mark.parametrize("poison", ["huge", "symlink to a huge file", "not utf-8"])
def test_a_poisoned_names_cache_is_listed_again_and_replaced_not_read(home, poison):
    from importlib.metadata import version

    from tlq.cli.completion import MAX_NAMES_BYTES

    cache = home / "cache" / f"timm-{version('timm')}-names.txt"
    cache.parent.mkdir(parents=True)
    if poison in ("huge", "symlink to a huge file"):  # was read whole on every Tab (/dev/zero: until memory ran out)
        huge = cache if poison == "huge" else home / "huge"
        with open(huge, "wb") as f:
            f.truncate(MAX_NAMES_BYTES + 1)
        if huge != cache:
            cache.symlink_to(huge)
    else:
        cache.write_bytes(b"resnet50\n\xff\xfe")
    assert "resnet50" in complete(home, "tlq submit finetune --backbone resnet5")
    assert not cache.is_symlink() and cache.stat().st_size < MAX_NAMES_BYTES
    assert "resnet50" in cache.read_text(encoding="utf-8").split()
