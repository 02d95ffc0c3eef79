"""The learning-rate range test: finetune's ``--lr auto`` chooses a sane lr and trains well at it, and lr-find's
curve is a readable CSV whose chosen lr lies where the loss is falling. Both run through a real worker, on the
session's digits model and digits it never saw."""

import copy
import csv
import json
import math

import pytest
from click.testing import CliRunner

from tests.support import WorkerProcess, tlq_env
from tlq.cli.main import cli
from tlq.ml.lr_find import LrCurve, smooth, suggest, valley

SMALL = {"strategy": "full", "image_size": 32, "augment": "none", "batch_size": 16, "precision": "fp32"}


@pytest.fixture(scope="module")
def jobs(trained, target, tmp_path_factory):
    """A finetune with ``--lr auto`` and an lr-find, both on digits 5-9 from the session's digits 0-4 model,
    submitted to one real worker and waited for."""
    from tlq.client import Client
    from tlq.config import Settings

    train, val = target
    env = tlq_env(trained.home)
    with WorkerProcess(env, tmp_path_factory.mktemp("lr-find") / "worker.log"):
        client = Client(settings=Settings.load(environ=env))
        common = {"backbone": trained.backbone, "data": str(train), **SMALL}
        auto = client.submit("finetune", val_data=str(val), lr="auto", epochs=5, **common)
        found = client.submit("lr-find", steps=50, **common)
        done = {name: client.wait(job, timeout=240) for name, job in (("auto", auto), ("lr_find", found))}
    for job in done.values():
        assert job["status"] == "succeeded", job["error"]
    return done


def test_lr_auto_records_a_sane_lr_and_trains_to_good_accuracy(jobs):
    job = jobs["auto"]
    metrics = job["metrics"]
    # Measured (2026-12-01): the range test chose 4.5e-3 (minimum; valley 1.1e-3, steep 0.24) and the job reached
    # 0.88 (chance 0.2); at valley's 1.1e-3, the default rule before, 0.89.
    assert 1e-4 <= metrics["lr_chosen"] <= 0.1
    assert metrics["val_acc"] >= 0.7
    files = {a["kind"]: a["path"] for a in job["artifacts"]}
    assert {"lr_find", "lr_find_png", "model"} <= set(files)
    card = json.loads(open(files["model_card"]).read())
    assert card["params"]["lr"] == pytest.approx(metrics["lr_chosen"])  # it trained at the lr it chose


def test_lr_finds_csv_is_readable_and_its_lr_lies_where_the_loss_falls(jobs):
    job = jobs["lr_find"]
    files = {a["kind"]: a["path"] for a in job["artifacts"]}
    assert open(files["lr_find_png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with open(files["lr_find"]) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["step", "lr", "loss", "smoothed_loss"] and 20 <= len(rows) <= 50
    lrs, smoothed = [float(r["lr"]) for r in rows], [float(r["smoothed_loss"]) for r in rows]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-7)
    chosen = job["metrics"]["lr_chosen"]
    assert chosen == pytest.approx(job["metrics"]["lr_minimum"])  # the default rule
    # The descending part: past the flat start (the loss there already below where it began) and short of the
    # lowest loss, beyond which it diverges.
    at = min(range(len(lrs)), key=lambda i: abs(math.log(lrs[i] / chosen)))
    lowest = min(range(len(lrs)), key=smoothed.__getitem__)
    assert smoothed[at] < smoothed[0] - 0.02 and at < lowest
    assert job["metrics"]["lr_find_steps"] == len(rows)


def test_valley_is_two_thirds_down_the_longest_descent():
    # Flat, then falling steadily over steps 10-39, then rising: the valley's lr is well inside the fall, past its
    # first third and short of its end.
    losses = [2.0] * 10 + [2.0 - 0.05 * i for i in range(1, 31)] + [0.5 + 0.2 * i for i in range(1, 11)]
    lrs = [10 ** (-7 + 8 * i / 49) for i in range(50)]
    assert lrs[18] <= valley(lrs, losses) <= lrs[30]
    curve = LrCurve(lrs, losses, smooth(losses), "valley", suggest(lrs, smooth(losses)))
    assert curve.suggestions["minimum"] < curve.lrs[curve.smoothed.index(min(curve.smoothed))]


def test_lr_auto_is_a_value_of_lr_in_submit_and_sweep_and_anything_else_is_one_line(tmp_path, tiny):
    env = tlq_env(tmp_path / "home")
    common = ["finetune", "--backbone", "test_resnet", "--no-pretrained", "--data", str(tiny)]
    swept = CliRunner().invoke(cli, ["sweep", *common, "--lr", "auto,3e-3", "--json"], env=env)
    assert swept.exit_code == 0, swept.output
    listed = json.loads(CliRunner().invoke(cli, ["jobs", "--json"], env=env).stdout)
    assert sorted(str(job["params"]["lr"]) for job in listed) == ["0.003", "auto"]
    for bad, says in (("fast", "'fast' is not a number"), ("0", "0 is out of range")):
        refused = CliRunner().invoke(cli, ["submit", *common, "--lr", bad], env=env)
        assert refused.exit_code == 2 and says in refused.stderr and "or auto" in refused.stderr
        assert refused.stderr.count("\n") == 1
    # lr-find checks the options it shares with finetune as finetune does: one line, not a traceback
    lr_find = ["lr-find", "--backbone", "test_resnet", "--no-pretrained", "--data", str(tiny)]
    refused = CliRunner().invoke(cli, ["submit", *lr_find, "--label-pattern", "("], env=env)
    assert refused.exit_code == 2 and "not a valid regular expression" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_the_range_test_leaves_model_optimizer_and_random_state_as_they_were_and_stops_at_divergence():
    import torch

    from tlq.ml.lr_find import range_test

    torch.manual_seed(0)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()

    def step() -> float:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    step()  # the optimizer has momentum buffers to keep
    before, momentum = {k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    curve = range_test(model, optimizer, step, end_lr=1e4, steps=100)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and batch-norm stats
    kept = optimizer.state_dict()
    assert all(
        torch.equal(momentum["state"][i]["momentum_buffer"], kept["state"][i]["momentum_buffer"]) for i in kept["state"]
    )
    assert optimizer.param_groups[0]["lr"] == 0.1 and torch.equal(torch.get_rng_state(), rng)
    ratios = [b / a for a, b in zip(curve.lrs, curve.lrs[1:], strict=False)]
    assert max(ratios) == pytest.approx(min(ratios))  # exponentially rising
    assert len(curve.lrs) < 100 and max(curve.smoothed) > 4 * min(curve.smoothed)  # stopped once it diverged


def test_a_worker_killed_after_the_range_test_resumes_at_its_lr_and_trains_as_that_lr_by_hand(tmp_path, monkeypatch):
    """The choice is checkpointed at once (epoch 0): the next attempt neither runs the test again nor trains
    otherwise than a job given the chosen lr; with decoding processes and augmentation, the test's batches come
    from a loader of its own, so the training epochs' augmentation is what it would have been."""
    from tests.support import make_digits, run_job_here
    from tlq.config import Settings
    from tlq.db import claims, queries
    from tlq.env import Environment
    from tlq.jobs.spec import JobSpec
    from tlq.ml.finetune_loops import Fit, ImageTraining
    from tlq.plugins.context import JobLost
    from tlq.workers.execute import execute_job

    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    data = make_digits(tmp_path / "d", classes=range(3), per_class=6)
    params = {"data": str(data), "strategy": "freeze", "epochs": 1, "image_size": 32, "batch_size": 8,
              "augment": "light", "loader_workers": 1, "precision": "fp32"}  # fmt: skip
    with env.db.session() as session:
        job_id = queries.create_job(
            session, task="finetune", backbone="test_resnet", pretrained=False, params={**params, "lr": "auto"}
        ).id

    save = ImageTraining.save

    def killed(self, epoch, rng):  # after the range test and epoch 1, before epoch 1's checkpoint lands
        if epoch == 1:
            raise JobLost("the worker was killed")
        save(self, epoch, rng)

    with monkeypatch.context() as patched:
        patched.setattr(ImageTraining, "save", killed)
        assert execute_job(env, job_id, "w") == "lost"
    with env.db.session() as session:
        first = [m.value for m in queries.metric_history(session, job_id, "train_loss")]  # the uninterrupted path
        claims.recover(session, job_id, queries.get_job(session, job_id).lease, "worker died")

    def again(self, **options):
        raise AssertionError("the range test ran again")

    monkeypatch.setattr(Fit, "lr_range_test", again)
    assert execute_job(env, job_id, "w") == "succeeded"
    with env.db.read_session() as session:
        resumed = queries.job_as_dict(session, queries.get_job(session, job_id), env.settings.artifacts_dir)
        losses = [m.value for m in queries.metric_history(session, job_id, "train_loss")]
    metrics = resumed["metrics"]
    assert metrics["resumed_from_epoch"] == 0 and resumed["attempts"] == 2
    assert sorted(a["kind"] for a in resumed["artifacts"]).count("lr_find") == 1
    by_hand = run_job_here(
        env,
        JobSpec(
            task="finetune", backbone="test_resnet", pretrained=False, params={**params, "lr": metrics["lr_chosen"]}
        ),
    )
    assert [v for _, v in by_hand["history"]["train_loss"]] == losses == first


def test_a_loss_not_a_number_from_the_start_or_a_cancel_mid_test_leaves_the_model_and_says_why():
    import torch

    from tlq.errors import BadInput, JobCancelled
    from tlq.ml.lr_find import range_test

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def step() -> float:
        model.weight.data.add_(1.0)  # a step that changes the weights, then a loss that is no number
        return float("nan")

    with pytest.raises(BadInput) as refused:
        range_test(model, optimizer, step)
    assert "not a number at its first step" in str(refused.value) and "--precision fp32" in str(refused.value)
    assert "--start-lr" not in str(refused.value)  # finetune's --lr auto has none to lower

    def cancelled(i: int, n: int) -> None:
        if i == 3:
            raise JobCancelled("job 1 was cancelled")

    with pytest.raises(JobCancelled):
        range_test(model, optimizer, lambda: model.weight.data.add_(1.0).sum().item(), on_step=cancelled)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
