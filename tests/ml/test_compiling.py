"""`--compile`: a compiled forward gives the eager forward's features, `off` never compiles, a compile that fails
leaves the job on the eager forward, and `auto` compiles only a CPU job long enough to pay back, never where this
machine found compiled no faster."""

import logging
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.support import run_job_here
from tlq.config import Settings
from tlq.env import Environment
from tlq.jobs.spec import JobSpec
from tlq.ml import compiling
from tlq.ml.calibration import Workload
from tlq.ml.compiling import Verdict, plan_compile, plan_job, read_verdict, record_verdict, verdict_key

FASTER = Verdict(compile_s=8.0, eager_s=0.02, compiled_s=0.014)  # 1.43x: saves 30%, 12 s of 40 s eager
SLOWER = Verdict(compile_s=8.0, eager_s=0.02, compiled_s=0.0195)  # 1.03x: under the 5% that keeps it
FAILED = Verdict(compile_s=0.0, eager_s=0.02, compiled_s=None, error="InvalidCxxCompiler: no working C++ compiler")


@pytest.fixture(autouse=True)
def kernels(monkeypatch):
    """Inductor's kernels in a folder kept from run to run, as for a user who chose one: each test's fresh
    TLQ_HOME would build them all again (the compiling test took 28-49 s so, against 10-15 s with them built)."""
    import tempfile

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "tlq-tests-inductor"))


@pytest.fixture
def env(tmp_path):
    return Environment(Settings.load(home=tmp_path / "home", environ={}))


@pytest.fixture
def weights(tmp_path):
    """Weights in a file, so the feature cache keeps what the jobs compute (it never keeps random ones)."""
    torch.manual_seed(0)
    path = tmp_path / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False, num_classes=10).state_dict(), str(path))
    return path


@pytest.fixture
def no_compile(monkeypatch):
    """torch.compile, made to fail the test if anything calls it."""
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: pytest.fail("torch.compile was called"))


def extract(env, data, weights, compile):
    spec = JobSpec(
        task="feature-extract",
        backbone="test_resnet",
        weights=weights,
        params={"data": str(data), "precision": "fp32", "batch_size": 8, "compile": compile},
    )
    job = run_job_here(env, spec)
    return job, np.load(job["files"]["features"])


def job_workload() -> Workload:
    """The workload a feature-extract of test_resnet over the 120 digits, in batches of 8, plans its compile for."""
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    return Workload("inference", model, (3, 160, 160), 8, "test_resnet", images=120)


@pytest.mark.parametrize(
    ("mode", "device", "images", "eager_s", "verdict", "compiles", "measures"),
    [
        ("off", "cpu", 100_000, 0.02, FASTER, False, False),
        ("on", "cpu", 10, None, None, True, True),
        ("on", "cpu", 10, None, FASTER, True, False),
        ("on", "cpu", 10, None, SLOWER, True, True),
        ("auto", "cuda", 100_000, 0.02, None, False, False),
        ("auto", "cpu", 3_000, 0.02, None, True, True),
        ("auto", "cpu", 2_999, 0.02, None, False, False),
        ("auto", "cpu", None, None, None, False, False),
        ("auto", "cpu", 100_000, 0.02, SLOWER, False, False),
        ("auto", "cpu", 100_000, 0.02, FAILED, False, False),
        ("auto", "cpu", 2_000, 0.02, FASTER, True, False),
        ("auto", "cpu", 1_900, 0.02, FASTER, False, False),
    ],
    ids=[
        "off never",
        "on always, measuring",
        "on trusts a verdict that found it faster",
        "on measures again where it was not faster",
        "auto not on a GPU",
        "auto at 60 s of eager work",
        "auto not under 60 s",
        "auto not for a job of unknown length",
        "auto not where it was not faster",
        "auto not where it failed",
        "auto where the saving measured here is 1.5x the compile",
        "auto not where it is less",
    ],
)
def test_auto_compiles_only_a_cpu_job_long_enough_to_pay_back(
    mode, device, images, eager_s, verdict, compiles, measures
):
    plan = plan_compile(mode, device, images, eager_s, verdict)
    assert (plan.compile, plan.measure) == (compiles, measures), plan.reason
    assert plan.reason


def test_compiled_features_equal_eager_ones_and_the_verdict_is_kept(env, digits_dir, weights, monkeypatch):
    from tlq.ml import features

    monkeypatch.setattr(features, "CHUNK_FILES", 48)  # 3 passes over the files: still one compile for the job
    compiles = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: compiles.append(1) or real_compile(*args, **kwargs))
    compiled_job, compiled = extract(env, digits_dir, weights, "on")
    metrics = compiled_job["metrics"]
    assert len(compiles) == 1
    # 120 images in batches of 8: one eager warm-up, 3 timed eager, the compiling one, 3 timed compiled, 7 more.
    assert metrics["compile_seconds"] > 0 and metrics["compile_speedup"] > 0
    assert metrics["compiled"] == float(metrics["compile_speedup"] >= compiling.MARGIN)
    eager_job, eager = extract(env, digits_dir, weights, "off")
    assert eager_job["metrics"]["cached_images"] == 0  # compiled features are not served to an eager job
    assert "compile_seconds" not in eager_job["metrics"] and eager_job["metrics"]["compiled"] == 0
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)  # fp32: the same up to rounding
    key, digest = verdict_key(job_workload(), "cpu", "fp32")
    verdict = read_verdict(env.settings.home, key, digest)
    assert verdict is not None and verdict.speedup == pytest.approx(metrics["compile_speedup"])


@pytest.mark.usefixtures("no_compile")
def test_compile_off_never_compiles_and_a_short_auto_job_does_not_either(env, digits_dir, weights):
    for mode in ("off", "auto"):
        job, _ = extract(env, digits_dir, weights, mode)
        assert job["metrics"]["compiled"] == 0 and "compile_seconds" not in job["metrics"]


def test_a_compile_that_fails_leaves_the_job_on_the_eager_forward(env, digits_dir, weights, monkeypatch, caplog):
    _, eager = extract(env, digits_dir, weights, "off")
    env = Environment(env.settings.model_copy(update={"feature_cache_mb": 0}))  # computed again, not from the cache

    def compile(*args, **kwargs):  # failure injection; the next test has inductor fail for real
        raise RuntimeError("torch.compile is not supported here")

    monkeypatch.setattr(torch, "compile", compile)
    with caplog.at_level(logging.WARNING):
        job, features = extract(env, digits_dir, weights, "on")
    assert job["status"] == "succeeded" and job["metrics"]["compiled"] == 0
    np.testing.assert_array_equal(features, eager)  # every batch ran the eager forward
    failures = [r for r in caplog.records if "compiling the forward failed" in r.getMessage()]
    assert len(failures) == 1 and "the job runs eager" in failures[0].getMessage()
    key, digest = verdict_key(job_workload(), "cpu", "fp32")
    verdict = read_verdict(env.settings.home, key, digest)
    assert verdict is not None and verdict.compiled_s is None  # auto jobs of this shape will not try again
    assert plan_compile("auto", "cpu", 10**9, 0.02, verdict).compile is False


def test_a_compiler_that_fails_for_real_on_the_first_call_leaves_the_eager_forward(tmp_path, monkeypatch, caplog):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "/nonexistent/g++"))  # no C++ compiler for inductor's kernels

    def forward(images):  # pointwise work and a reduction: kernels inductor builds in C++ (test_resnet takes 9 s)
        return (images.sin() * 2 + images.cos()).mean(dim=(2, 3))

    plan = compiling.Plan(True, measure=True, key="k", digest="d")
    compiled = compiling.CompiledForward(forward, 4, plan, tmp_path, logging.getLogger("test.compile"))
    batches = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(7)]
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        outputs = [compiled(batch) for batch in [*batches, batches[0][:3]]]
    compiled.close()
    for batch, out in zip([*batches, batches[0][:3]], outputs, strict=True):
        torch.testing.assert_close(out, forward(batch), rtol=0, atol=0)  # eager, every one
    failures = [r.getMessage() for r in caplog.records if "compiling the forward failed" in r.getMessage()]
    assert len(failures) == 1 and "InvalidCxxCompiler" in failures[0]
    assert compiled.metrics() == {"compiled": 0.0} and read_verdict(tmp_path, "k", "d").compiled_s is None


@pytest.mark.usefixtures("no_compile")
def test_a_cached_verdict_that_compiled_was_not_faster_is_honoured(env, digits_dir, weights, monkeypatch, caplog):
    monkeypatch.setattr(compiling, "MIN_EAGER_S", 0.0)  # any job is long enough now
    workload = job_workload()
    assert plan_job("auto", workload, "cpu", "fp32", env.settings.home).compile  # with no verdict, it would
    key, digest = verdict_key(workload, "cpu", "fp32")
    record_verdict(env.settings.home, compiling.Plan(True, key=key, digest=digest), SLOWER)
    with caplog.at_level(logging.INFO):
        job, _ = extract(env, digits_dir, weights, "auto")
    assert job["metrics"]["compiled"] == 0
    assert "compile off: no gain here before (compiled 1.03x eager" in caplog.text
    other, other_digest = verdict_key(job_workload(), "cpu", "bf16")  # another precision has no verdict yet
    assert read_verdict(env.settings.home, other, other_digest) is None


def test_a_damaged_verdict_is_not_trusted(tmp_path):
    key, digest = verdict_key(job_workload(), "cpu", "fp32")
    plan = compiling.Plan(True, key=key, digest=digest)
    record_verdict(tmp_path, plan, Verdict(compile_s=-1.0, eager_s=0.02, compiled_s=0.01))
    assert read_verdict(tmp_path, key, digest) is None
    record_verdict(tmp_path, plan, FASTER)
    assert read_verdict(tmp_path, key, digest) == FASTER
    assert read_verdict(tmp_path, key + " (another)", digest) is None


def test_kernels_are_kept_under_tlq_home_unless_the_user_chose_a_folder(tmp_path, monkeypatch):
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compiling.keep_kernels_in(tmp_path / "home")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    for unset in (None, default_cache_dir()):  # importing torch sets the variable to its default where unset
        if unset is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", unset)
        compiling.keep_kernels_in(tmp_path / "home")
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "home" / "inductor")
