"""The task contract: every registered task runs on tiny data through a real worker the four ways a user runs one
(`tlq submit --wait`, ``Client.submit`` + ``wait``, a sweep, and `tlq compare` on the sweep), records its headline
metric (``TaskPlugin.headline``), is ranked by it in the direction the task declares (``headline_goal``), and is
found by it in `tlq results` and in the ``metric_summary`` SQL view.

The tasks come from the registry (tlq's own entry points, and the example plugin's, installed as a user would), as
timm's tests parametrize over ``list_models()``: a newly registered task gets this test with no edit here.
"""

from __future__ import annotations

import json
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import REPO, WorkerProcess, make_digits, run_tlq, sql_rows, tlq_env, tlq_json
from tlq.plugins.registry import TASKS_GROUP, task_registry

pytestmark = pytest.mark.integration

EXAMPLE_PLUGIN = REPO / "examples" / "tlq-example-plugin"
QUEUE_TEST_TASKS = REPO / "tests" / "fixtures" / "tlq-test-tasks"
BUILT_INS = {
    "finetune",
    "feature-extract",
    "predict",
    "ideal-image",
    "adversarial",
    "feature-maps",
    "transferability",
    "lr-find",
}


def entry_point_names(package: Path) -> set[str]:
    """The tasks a plugin package registers: the ``tlq.tasks`` entry points in its pyproject.toml."""
    project = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    return set(project["entry-points"][TASKS_GROUP])


# The tasks installed here, and the example plugin's (installed into the `plugin_site` fixture at run time). The
# queue's own test tasks (sleep, crash, stuck, ...) are left out: they exist to fail, hang and kill workers.
QUEUE_TEST_TASK_NAMES = entry_point_names(QUEUE_TEST_TASKS)
# Runs of users' own scripts, recorded by tlq.client.track, are never submitted (tests/client/test_tracking.py).
NEVER_SUBMITTED = {"external"}
TASKS = sorted(
    (set(task_registry().names()) | entry_point_names(EXAMPLE_PLUGIN)) - QUEUE_TEST_TASK_NAMES - NEVER_SUBMITTED
)

# A test_resnet fine-tune of one epoch on 32-pixel images: the parent model of the tasks that take job:ID.
TINY_TRAINING = {
    "strategy": "full",
    "epochs": 1,
    "image_size": 32,
    "augment": "none",
    "batch_size": 16,
    "precision": "fp32",
    "loader_workers": 0,
}
# Settings that keep any task small and fast, given to a task without a recipe where it has the parameter.
TINY = {"precision": "fp32", "loader_workers": 0, "epochs": 1, "steps": 3, "image_size": 32, "max_images": 6}


@dataclass(frozen=True)
class Recipe:
    """How the test runs one task: the options of a job, and the one option its sweep crosses (two values, which
    give the headline two values: else a ranking in the wrong direction would pass unseen)."""

    options: dict[str, Any]
    sweep: dict[str, list[Any]]
    moves_headline: bool = True


def recipe_for(task: str, plugin, setup: SimpleNamespace) -> Recipe:
    """The built-in and example tasks on tiny data, each swept over a parameter of its own (where one moves the
    headline on this data, that one, so the ranking's direction shows); any other task with its required ``data``
    or ``image`` filled in, the ``TINY`` settings it has, and a sweep of two priorities."""
    data, parent, one = str(setup.data), setup.parent, str(setup.one)
    inference = {"precision": "fp32", "loader_workers": 0}
    random_resnet = {"backbone": "test_resnet", "pretrained": False}
    known = {
        # Validated on 12 images, then on 1: a model that is neither perfect nor always wrong scores apart (the lr
        # or batch size does not move the accuracy of a one-epoch model on 12 images: both runs scored 1/3).
        "finetune": Recipe({**random_resnet, "data": data, **TINY_TRAINING}, {"val_data": [data, one]}),
        "feature-extract": Recipe(
            {**random_resnet, "data": data, "compile": "off", **inference}, {"batch_size": [4, 16]}
        ),
        "predict": Recipe({"backbone": parent, "data": data, **inference}, {"data": [data, one]}),
        "ideal-image": Recipe(
            {"backbone": parent, "target": "0", "steps": 3, "size": 32, "snapshots": 0, "precision": "fp32"},
            {"lr": [0.1, 10.0]},
        ),
        "adversarial": Recipe(
            {"backbone": parent, "data": data, "method": "pgd", "precision": "fp32"}, {"steps": [1, 3]}
        ),
        # The stem's 16 x 16 maps fire in more of their channels than the last stage's single cell.
        "feature-maps": Recipe(
            {"backbone": parent, "image": str(setup.image), "top": 4}, {"layer": ["act1", "layer4"]}
        ),
        "pixel-stats": Recipe({"data": data}, {"max_images": [1, 12]}),
        # Two backbones in one job, as `tlq submit transferability --backbone job:ID,test_resnet` names them.
        "transferability": Recipe(
            {"backbone": f"{parent},test_resnet", "pretrained": False, "data": data, **inference},
            {"image_size": [32, 48]},
        ),
    }
    if task in known:
        return known[task]
    fields = plugin.params.model_fields
    samples = {"data": data, "image": str(setup.image)}
    unknown = [name for name, field in fields.items() if field.is_required() and name not in samples]
    if unknown:
        pytest.fail(f"{task} requires {', '.join(unknown)}, which this test cannot guess; add its Recipe to recipe_for")
    options = {name: samples[name] for name, field in fields.items() if field.is_required()}
    options |= {name: value for name, value in TINY.items() if name in fields}
    if plugin.needs_backbone:
        options["backbone"] = parent
    return Recipe(options, {"priority": [0, 1]}, moves_headline=False)


def cli_args(options: dict[str, Any]) -> list[str]:
    """``options`` as `tlq submit` flags: ``--flag VALUE``, ``--flag``/``--no-flag``, ``--tag KEY=VALUE``."""
    args = []
    for name, value in options.items():
        flag = name.replace("_", "-")
        if name == "tags":
            args += [arg for key, tag in value.items() for arg in ("--tag", f"{key}={tag}")]
        elif isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            args += [f"--{flag}", str(value)]
    return args


@pytest.fixture(scope="module")
def contract(tmp_path_factory, plugin_site):
    """One worker (embedded broker, the example plugin on its path), tiny digits (3 classes x 4, 32 pixels), and a
    parent model fine-tuned through that worker for the tasks that take ``--backbone job:ID``, and a folder of one
    labelled digit it was not trained on."""
    from tlq.client import Client
    from tlq.config import Settings

    root = tmp_path_factory.mktemp("contract")
    env = tlq_env(root / "home", PYTHONPATH=str(plugin_site))
    data = make_digits(root / "digits", classes=range(3), per_class=4, size=32)
    one = make_digits(root / "one-digit", classes=[1], per_class=1, size=32, offset=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(plugin_site))  # the example plugin's task for the client in this process too
        with WorkerProcess(env, root / "worker.log"):
            client = Client(settings=Settings.load(environ=env))
            parent = client.submit(
                "finetune", backbone="test_resnet", pretrained=False, data=str(data), **TINY_TRAINING
            )
            made = client.wait(parent, timeout=120)
            assert made["status"] == "succeeded", made["error"]
            yield SimpleNamespace(
                env=env,
                client=client,
                registry=task_registry(),
                data=data,
                one=one,
                image=min(data.rglob("*.png")),
                parent=f"job:{parent}",
            )


def test_the_contract_covers_every_registered_task(contract):
    tasks = tlq_json(["tasks"], contract.env)
    listed = {task["name"] for task in tasks}
    assert listed - QUEUE_TEST_TASK_NAMES - NEVER_SUBMITTED == set(TASKS)
    for task in tasks:  # what each is ranked by, as the registry has it
        plugin = contract.registry.get(task["name"])
        assert (task["headline"], task["headline_goal"]) == (plugin.headline, plugin.headline_goal)
    assert {t["name"]: t["headline"] for t in tasks}["pixel-stats"] == "contrast"
    assert BUILT_INS | {"pixel-stats"} <= set(TASKS)


@pytest.mark.parametrize("task", TASKS)
def test_task_runs_from_the_cli_the_client_and_a_sweep_and_ranks_by_its_headline(contract, task):
    plugin = contract.registry.get(task)
    headline, goal = plugin.headline, plugin.headline_goal
    assert headline, f"{task} declares no TaskPlugin.headline, the metric `tlq compare` and sweeps rank its jobs by"
    recipe = recipe_for(task, plugin, contract)
    options = {**recipe.options, "tags": {"contract": task}}
    client = contract.client

    # `tlq submit --wait` starts up (it imports torch to size the job) while the worker runs the client's jobs.
    with ThreadPoolExecutor() as pool:
        submitted = pool.submit(run_tlq, ["submit", task, *cli_args(options), "--wait", "--json"], contract.env)
        by_client = client.submit(task, **options)
        sweep = client.sweep(task, recipe.sweep, **{k: v for k, v in options.items() if k not in recipe.sweep})
        waited = [client.wait(job, timeout=120) for job in (by_client, *sweep["jobs"])]
        jobs = [json.loads(submitted.result().stdout), *waited]
    for job in jobs:
        assert job["status"] == "succeeded", f"{task} job {job['id']} {job['status']}: {job['error']}"
        assert isinstance(job["metrics"].get(headline), float), f"{task} job {job['id']} recorded no {headline}"
    ids = [job["id"] for job in jobs]
    assert len(set(ids)) == 4 and len(sweep["jobs"]) == 2

    # The sweep's leaderboard ranks by the task's headline, best first in the task's direction.
    order = f"-{headline}" if goal == "max" else headline
    readers = (
        ["compare", sweep["group"]],
        ["compare", sweep["group"], "--json"],
        ["results", "--where", f"tags.contract = '{task}'", "--order-by", order, "--json"],
    )
    with ThreadPoolExecutor() as pool:
        shown, board, found = (out.stdout for out in pool.map(lambda args: run_tlq(args, contract.env), readers))
    board, found = json.loads(board), json.loads(found)
    better = {"max": "higher", "min": "lower"}[goal]
    assert f"{headline} leaderboard of group {sweep['group']} ({better} is better)" in shown
    assert sorted(row["job"] for row in board) == sorted(sweep["jobs"]) and [row["rank"] for row in board] == [1, 2]
    pick = max if goal == "max" else min
    for row in board:
        assert row["status"] == "succeeded"
        assert row["best"] == pick(point["value"] for point in client.metrics(row["job"], headline))
    bests = [row["best"] for row in board]
    if recipe.moves_headline:
        assert len(set(bests)) == 2, f"{task}'s sweep {recipe.sweep} left {headline} at {bests[0]}: sweep what moves it"
    assert bests == sorted(bests, reverse=goal == "max")

    # `tlq results` finds all four by tag, ordered by the headline's final value.
    assert sorted(job["id"] for job in found) == sorted(ids)
    finals = [job["metrics"][headline] for job in found]
    assert finals == sorted(finals, reverse=goal == "max")

    # The plain-SQL view holds the headline of each job like any built-in metric.
    summary = {
        job_id: (final, best_max, best_min)
        for job_id, final, best_max, best_min in sql_rows(
            client.settings.database_url,
            "SELECT job_id, final_value, max_value, min_value FROM metric_summary WHERE name = :name",
            name=headline,
        )
    }
    for job in jobs:
        assert summary[job["id"]][0] == pytest.approx(job["metrics"][headline])
    for row in board:
        assert row["best"] == pytest.approx(summary[row["job"]][1 if goal == "max" else 2])
