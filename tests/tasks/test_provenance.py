"""A job reads only files it wrote: no checkpoint of another job or database, no model file changed since."""

import shutil

import pytest
import torch

from tests.support import make_digits, run_job_here
from tlq.config import Settings
from tlq.db import claims, queries
from tlq.env import Environment
from tlq.errors import BadInput
from tlq.jobs.spec import JobSpec
from tlq.plugins.backbone import BackboneRef


def finetune(data, epochs=3) -> JobSpec:
    return JobSpec(
        task="finetune",
        backbone="test_resnet",
        pretrained=False,
        params={"data": str(data), "strategy": "full", "epochs": epochs, "image_size": 32, "augment": "none"},
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_digits(tmp_path_factory.mktemp("provenance"), classes=range(3), per_class=20)


def plant(artifacts, job_id, **state):
    """A checkpoint that says it is at epoch 50, as a job of another database would have left it."""
    folder = artifacts / str(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 50, **state}, folder / "checkpoint.pt")
    (folder / "model.safetensors").write_bytes(b"not this job's model")
    return folder


def test_a_recreated_database_never_resumes_from_the_old_ones_files(tmp_path, data, caplog):
    artifacts = tmp_path / "artifacts"  # kept, while the database is made anew
    env = Environment(Settings.load(home=tmp_path / "new-db", artifacts_dir=artifacts, environ={}))
    planted = plant(artifacts, 1, origin={"job": 1, "database": "the-old-one", "params": "x", "attempt": 1})
    job = run_job_here(env, finetune(data))
    assert job["id"] == 1 and job["attempts"] == 1
    assert "resumed_from_epoch" not in job["metrics"]  # it trained, from epoch 1
    assert [step for step, _ in job["history"]["val_acc"]] == [1, 2, 3]
    aside = list(tmp_path.glob("artifacts/1.set-aside-*"))
    assert len(aside) == 1 and (aside[0] / "checkpoint.pt").exists()  # moved aside, not deleted
    assert (planted / "model.safetensors").read_bytes() != b"not this job's model"
    assert "held files it did not write; moved to" in caplog.text


@pytest.mark.parametrize("planted", ["a link to an empty folder", "a link to nothing"])
def test_a_first_attempt_never_writes_through_a_link_in_place_of_its_folder(tmp_path, data, caplog, planted):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    outside = tmp_path / "outside"
    if planted == "a link to an empty folder":
        outside.mkdir()
    (artifacts / "1").symlink_to(outside)
    env = Environment(Settings.load(home=tmp_path / "home", artifacts_dir=artifacts, environ={}))
    spec = JobSpec(task="feature-extract", backbone="test_resnet", pretrained=False, params={"data": str(data)})
    job = run_job_here(env, spec)  # succeeds: no "File exists" failure on a dangling link
    assert not outside.exists() or not any(outside.iterdir())  # nothing written outside the artifacts directory
    assert not (artifacts / "1").is_symlink() and (artifacts / "1" / "features.npy").is_file()
    assert job["files"]["features"] == str(artifacts / "1" / "features.npy")
    assert "moved to" in caplog.text


@pytest.mark.parametrize(
    "origin",
    [
        None,  # written before checkpoints recorded their origin
        {"job": 1, "database": "another-database", "params": "same?", "attempt": 1},
        "same database, other parameters",
    ],
)
def test_a_later_attempt_resumes_only_from_its_own_checkpoint(tmp_path, data, caplog, origin):
    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    spec = finetune(data)
    with env.db.session() as session:  # a first attempt that was recovered: the next claim is not the first
        job_id = queries.create_job(
            session, task="finetune", backbone="test_resnet", pretrained=False, params=spec.params, queue="cpu"
        ).id
    with env.db.session() as session:
        lease = claims.claim(session, job_id, "w")
    with env.db.session() as session:
        claims.recover(session, job_id, lease, "worker died")
    if origin == "same database, other parameters":
        origin = {"job": job_id, "database": env.db.instance_id, "params": "0" * 64, "attempt": 1}
    plant(env.settings.artifacts_dir, job_id, **({"origin": origin} if origin else {}))
    from tlq.workers.execute import execute_job

    assert execute_job(env, job_id, "w") == "succeeded"
    with env.db.read_session() as session:
        metrics = queries.last_metrics(session, job_id)
        steps = [m.step for m in queries.metric_history(session, job_id, "val_acc")]
    assert "resumed_from_epoch" not in metrics and steps == [1, 2, 3]
    assert "checkpoint.pt was not written by this job; training from epoch 1" in caplog.text


@pytest.fixture
def model_job(tmp_path, data):
    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    job = run_job_here(env, finetune(data, epochs=1))
    return env, job


def test_a_job_model_changed_or_removed_after_its_job_wrote_it_is_refused(model_job, data):
    from tlq.backbones.job_models import provider

    env, job = model_job
    ref = BackboneRef(f"job:{job['id']}")
    provider.check(ref, env)  # as written: fine
    weights = job["files"]["model"]
    shutil.copyfile(weights, weights + ".bak")
    with open(weights, "r+b") as fh:  # one byte flipped, size unchanged
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))
    with pytest.raises(BadInput, match=r"model.safetensors was changed after job \d+ wrote it .*restore the file"):
        provider.load(ref, env, None)
    shutil.move(weights + ".bak", weights)
    provider.load(ref, env, None)  # restored: loads again
    import os

    os.remove(weights)
    with pytest.raises(BadInput, match=r"model.safetensors of job \d+ was removed after the job wrote it"):
        provider.check(ref, env)
    spec = JobSpec(task="predict", backbone=ref.name, params={"data": str(data)})
    from tlq.jobs.spec import validate_spec

    with pytest.raises(BadInput, match="was removed"):  # at submit: nothing is queued
        validate_spec(spec, env)
