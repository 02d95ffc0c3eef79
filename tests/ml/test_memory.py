"""Memory estimates at submit: measured on the model's own shapes, and a job that cannot fit is refused."""

import pytest
import timm
import torch
from click.testing import CliRunner

from tlq import client
from tlq.cli.main import cli
from tlq.config import Settings
from tlq.db import queries
from tlq.env import Environment
from tlq.errors import BadInput
from tlq.ml.memory import GIB, inference_need, profile, training_need


def test_the_shape_only_profile_counts_what_a_real_forward_makes():
    model = timm.create_model("test_resnet", pretrained=False).eval()
    sizes = []
    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel())) for m in leaves]
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    found = profile("test_resnet", 64)
    assert found.activations_total == sum(sizes) and found.activations_peak == max(sizes)
    assert found.parameters == sum(p.numel() for p in model.parameters())


def test_training_needs_more_than_inference_and_grows_with_the_batch():
    vgg = profile("vgg16", 224)
    small, large = (training_need(vgg, batch, 224, "bf16", 0, True) for batch in (8, 256))
    assert large.total - small.total == 248 * small.per_image
    assert large.total > 20 * GIB  # a batch of 256 VGG16 images at 224 px does not fit this 24 GiB machine
    assert inference_need(vgg, 256, 224, "bf16", 0).total < large.total / 4
    assert large.largest_batch(4 * GIB) == 16


@pytest.fixture
def env(tmp_path):
    environment = Environment(Settings.load(home=tmp_path, environ={}))
    with environment.db.session() as session:  # a live CPU worker with 4 GiB for each job
        queries.register_worker(
            session,
            name="small",
            instance="i",
            hostname="h",
            pid=1,
            queues="cpu",
            device="cpu",
            concurrency=1,
            memory_bytes=4 * GIB,
        )
    return environment


def test_a_job_that_cannot_fit_the_queues_workers_is_refused_with_the_fix(env, digits_dir):
    options = dict(backbone="vgg16", pretrained=False, data=str(digits_dir), strategy="full", device="cpu")
    with pytest.raises(BadInput) as refused:
        client.Client(env=env).submit("finetune", batch_size=256, **options)
    message = str(refused.value)
    assert message.startswith("this job needs about ") and "(vgg16 training, batch 256 at 224 px)" in message
    assert "but the largest cpu worker has 4.0 GiB per job; lower --batch-size to 16 (about " in message
    assert client.Client(env=env).list() == []  # nothing was queued
    job_id = client.Client(env=env).submit("finetune", batch_size=8, **options)  # one that fits is queued
    assert client.Client(env=env).get(job_id)["status"] == "queued"


def test_tlq_run_is_measured_against_this_machine(tmp_path, digits_dir):
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "finetune",
            "--backbone",
            "vgg16",
            "--no-pretrained",
            "--data",
            str(digits_dir),
            "--batch-size",
            "4096",
            "--strategy",
            "full",
        ],
        env={"TLQ_HOME": str(tmp_path)},
    )
    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert "this job needs about" in line and "but this machine has" in line and "lower --batch-size to" in line


def test_inference_tasks_are_measured_too(env, digits_dir):
    with pytest.raises(BadInput, match=r"\(vgg16 inference, batch 4096 at 224 px\) but the largest cpu worker"):
        client.Client(env=env).submit(
            "feature-extract", backbone="vgg16", pretrained=False, data=str(digits_dir), batch_size=4096, device="cpu"
        )
