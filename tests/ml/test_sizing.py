"""How much tlq does at once when the user does not say: DataLoader processes, inference batches and the
models a worker keeps (pure functions of the machine, checked on made-up machines)."""

import pytest

from tlq.config import Settings
from tlq.ml.features import inference_batch_size, loader_workers
from tlq.workers.model_cache import ModelCache


@pytest.mark.parametrize(
    "cores, device, expected",
    [(2, "cpu", 0), (4, "cpu", 0), (16, "cpu", 4), (64, "cpu", 8), (4, "cuda", 4), (32, "cuda", 8)],
)
def test_loader_processes_are_sized_to_the_machine(monkeypatch, cores, device, expected):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert loader_workers(None, 1000, 16, device) == expected
    assert loader_workers(3, 1000, 16, device) == 3  # --loader-workers N overrides
    assert loader_workers(None, 32, 16, device) == 0  # a batch or two of work is not worth a process


def test_inference_batches_default_to_16_on_a_cpu_and_64_on_a_gpu():
    assert (inference_batch_size(None, "cpu"), inference_batch_size(None, "cuda:0")) == (16, 64)
    assert inference_batch_size(8, "cuda") == 8


def test_a_worker_keeps_two_models_unless_told():
    assert ModelCache(Settings.load(environ={}).model_cache).capacity == 2
    assert ModelCache(Settings.load(environ={"TLQ_MODEL_CACHE": "5"}).model_cache).capacity == 5
