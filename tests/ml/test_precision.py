"""`--precision auto` chooses by measurement on this machine, caches the choice per machine, and the
measurement leaves the job's model exactly as it found it."""

import json

import pytest
import timm
import torch

from tlq.ml import calibration
from tlq.ml.calibration import Workload, choose_precision, resolve_precision


def tiny(num_classes=3, **kwargs):
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=num_classes, **kwargs)


@pytest.mark.parametrize(
    ("seconds", "chosen"),
    [
        ({"fp32": 1.0, "fp32-cl": 0.7, "bf16": 0.4}, "bf16"),
        ({"fp32": 1.0, "fp32-cl": 0.97, "bf16": 0.98}, "fp32"),
        ({"fp32": 1.0, "fp32-cl": 0.7, "bf16": 1.9}, "fp32-cl"),
        ({"fp32": 1.0, "fp32-cl": 1.2, "bf16": 1.9}, "fp32"),
    ],
    ids=["bf16 much faster (AMX)", "a tie keeps fp32", "bf16 slower, channels_last faster", "nothing beats fp32"],
)
def test_the_fastest_way_only_where_it_clearly_beats_plain_fp32(tmp_path, monkeypatch, seconds, chosen):
    monkeypatch.setattr(calibration, "bf16_possible", lambda device: True)
    monkeypatch.setattr(calibration, "measure", lambda workload, device, ways: {w: seconds[w] for w in ways})
    choice = choose_precision(Workload("inference", tiny(), (3, 32, 32), 8, "test_resnet"), "cpu", tmp_path)
    assert choice.precision == chosen and not choice.cached
    described = choice.describe()
    assert described.startswith(f"{chosen}: ") and f"bf16 {1 / seconds['bf16']:.2f}x" in described
    assert f"fp32-cl {1 / seconds['fp32-cl']:.2f}x" in described


def test_without_bf16_kernels_only_the_fp32_layouts_are_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "bf16_possible", lambda device: False)
    asked = []

    def measure(workload, device, ways):
        asked.append(ways)
        return {"fp32": 1.0, "fp32-cl": 0.5}

    monkeypatch.setattr(calibration, "measure", measure)
    choice = choose_precision(Workload("inference", tiny(), (3, 32, 32), 8, "test_resnet"), "cpu", tmp_path)
    assert choice.precision == "fp32-cl" and asked == [("fp32", "fp32-cl")]
    assert choose_precision(Workload("inference", tiny(), (3, 32, 32), 8, "x"), "mps", tmp_path).precision == "fp32"
    assert len(asked) == 1  # a device tlq has nothing else for is not measured


def test_the_choice_is_measured_once_per_machine_and_again_on_another(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "bf16_possible", lambda device: True)
    measured = []

    def measure(workload, device, ways):
        measured.append(workload.kind)
        return {"fp32": 1.0, "fp32-cl": 0.8, "bf16": 0.5}

    monkeypatch.setattr(calibration, "measure", measure)
    model = tiny()
    workload = Workload("training", model, (3, 32, 32), 16, "test_resnet")
    first = choose_precision(workload, "cpu", tmp_path)
    again = choose_precision(workload, "cpu", tmp_path)
    assert (first.precision, first.cached, again.precision, again.cached) == ("bf16", False, "bf16", True)
    assert measured == ["training"]
    choose_precision(Workload("inference", model, (3, 32, 32), 16, "test_resnet"), "cpu", tmp_path)
    choose_precision(Workload("training", model, (3, 64, 64), 16, "test_resnet"), "cpu", tmp_path)
    assert measured == ["training", "inference", "training"]  # another kind of step, another image size
    monkeypatch.setattr(calibration, "machine_fingerprint", lambda: "torch 9.9 | another CPU | | threads 2")
    assert not choose_precision(workload, "cpu", tmp_path).cached  # a new torch or CPU measures again
    assert len(json.loads((tmp_path / "calibration.json").read_text())) == 4


def test_a_damaged_cache_is_measured_again_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "bf16_possible", lambda device: True)
    monkeypatch.setattr(calibration, "measure", lambda workload, device, ways: {"fp32": 1.0, "fp32-cl": 1.5, "bf16": 2})
    (tmp_path / "calibration.json").write_text("{not json")
    workload = Workload("inference", tiny(), (3, 32, 32), 8, "test_resnet")
    assert choose_precision(workload, "cpu", tmp_path).precision == "fp32"
    assert choose_precision(workload, "cpu", tmp_path).cached


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind", ["inference", "training", "input-gradient"])
def test_measuring_leaves_the_model_exactly_as_it_was(kind, mode):
    model = tiny()
    model.train(mode == "train")  # a job may hand its model over in either mode, whatever it will run
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = calibration.measure(Workload(kind, model, (3, 32, 32), 4, "test_resnet"), "cpu")
    assert set(seconds) == set(calibration.CANDIDATES) and min(seconds.values()) > 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and norm statistics untouched
    assert all(p.grad is None for p in model.parameters()) and model.training == (mode == "train")
    assert next(model.parameters()).dtype == torch.float32
    # measuring channels_last moved a copy, not the job's model
    assert all(p.is_contiguous() for p in model.parameters())


def test_a_cast_model_is_measured_on_a_copy():
    model = tiny().eval()
    calibration.measure(Workload("input-gradient", model, (3, 32, 32), 1, "test_resnet", cast=True), "cpu")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_explicit_precisions_are_kept_and_auto_without_a_workload_stays_fp32_on_cpu():
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") == "fp32"


def test_a_job_too_short_to_gain_runs_fp32_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(calibration, "bf16_possible", lambda device: True)
    monkeypatch.setattr(calibration, "measure", lambda *args: pytest.fail("measured a short job"))
    short = Workload("inference", tiny(), (3, 32, 32), 8, "test_resnet", images=calibration.MIN_IMAGES - 1)
    choice = choose_precision(short, "cpu", tmp_path)
    assert choice.precision == "fp32" and "too few" in choice.describe()


def test_auto_in_a_job_measures_on_the_jobs_model_and_says_what_it_chose(tmp_path, digits_dir, caplog, monkeypatch):
    monkeypatch.setattr(calibration, "MIN_IMAGES", 100)  # the 120 digits count as a long job
    from tests.support import run_job_here
    from tlq.config import Settings
    from tlq.env import Environment
    from tlq.jobs.spec import JobSpec

    env = Environment(Settings.load(home=tmp_path, environ={}))
    caplog.set_level("INFO")
    spec = JobSpec(
        task="feature-extract",
        backbone="test_resnet",
        pretrained=False,
        params={"data": str(digits_dir), "precision": "auto"},
    )
    job = run_job_here(env, spec)
    assert job["status"] == "succeeded", job["error"]
    entries = json.loads((tmp_path / "calibration.json").read_text())
    (entry,) = entries.values()
    assert entry["key"].split(" || ")[1].startswith("inference | test_resnet")
    seconds = entry["seconds"]
    fastest = min(seconds, key=seconds.get)
    assert entry["precision"] == (fastest if seconds[fastest] * calibration.MARGIN < seconds["fp32"] else "fp32")
    assert f"precision auto for test_resnet (inference): {entry['precision']}" in caplog.text


def test_bf16_autocast_runs_the_model_in_bf16_and_fp32_leaves_it_alone():
    """The planted bug this catches: bf16 autocast silently made a no-op, so bf16 jobs ran fp32."""
    from tlq.ml.precision import autocast

    layer, x = torch.nn.Linear(8, 4), torch.randn(2, 8)
    for device in ("cpu", "cpu:0"):
        with autocast(device, "bf16"):
            assert layer(x).dtype == torch.bfloat16
    with autocast("cpu", "fp32"):
        assert layer(x).dtype == torch.float32


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_bf16_on_a_gpu_is_bf16_autocast_on_its_device_type_not_fp16():
    from tlq.ml.precision import autocast

    context = autocast("cuda:1", "bf16")  # built without a GPU here: torch disables it, but keeps what it was asked
    assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)


def test_bf16_and_fp32_cl_move_models_and_image_batches_to_channels_last_and_fp32_does_not():
    from tlq.ml.precision import prepare_batch, prepare_model

    channels_last = torch.channels_last
    for way in ("bf16", "fp32-cl"):
        moved = prepare_model(torch.nn.Conv2d(3, 4, 3), "cpu", way)
        assert moved.weight.is_contiguous(memory_format=channels_last) and not moved.weight.is_contiguous()
        assert moved.weight.dtype == torch.float32  # bf16 is autocast: the weights stay fp32
        assert prepare_batch(torch.rand((2, 3, 5, 5)), "cpu", way).is_contiguous(memory_format=channels_last)
    assert prepare_model(torch.nn.Conv2d(3, 4, 3), "cpu", "fp32").weight.is_contiguous()
    batch = torch.rand((2, 3, 5, 5))
    assert prepare_batch(batch, "cpu", "bf16").is_contiguous(memory_format=channels_last)
    assert not prepare_batch(batch, "cpu", "bf16").is_contiguous()
    assert torch.equal(prepare_batch(batch, "cpu", "bf16"), batch)  # the same values, another layout
    assert prepare_batch(batch, "cpu", "fp32").is_contiguous()
    features = torch.rand((2, 7))
    assert prepare_batch(features, "cpu", "bf16").is_contiguous()  # not an image batch: left as it is
    assert prepare_model(torch.nn.Linear(2, 2).to(torch.float64), "cpu", "fp32").weight.dtype == torch.float64


def test_auto_without_a_workload_takes_bf16_on_a_gpu_only_where_it_has_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "cuda:0") == "bf16"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp32", "cuda:0") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda:0") == "fp32"


MEASURED = {"fp32": 1.0, "fp32-cl": 0.8, "bf16": 0.5}


def test_auto_with_a_workload_takes_the_measured_choice_and_says_so(tmp_path, monkeypatch, caplog):
    import logging

    asked = []

    def choose(workload, device, home):
        asked.append((workload.label, device, home))
        return calibration.Choice("bf16", MEASURED)

    monkeypatch.setattr(calibration, "choose_precision", choose)
    workload = Workload("training", tiny(), (3, 32, 32), 8, "test_resnet")
    logger = logging.getLogger("tlq.test.precision")
    caplog.set_level("INFO", logger="tlq.test.precision")
    assert resolve_precision("auto", "cpu", workload, tmp_path, logger) == "bf16"
    assert asked == [("test_resnet", "cpu", tmp_path)]
    said = f"precision auto for test_resnet (training): {calibration.Choice('bf16', MEASURED).describe()}"
    assert [r.getMessage() for r in caplog.records if r.name == "tlq.test.precision"] == [said]
    caplog.set_level("INFO", logger="tlq.precision")
    resolve_precision("auto", "cpu", workload, tmp_path)  # a job without a logger of its own: tlq's
    assert [r.getMessage() for r in caplog.records if r.name == "tlq.precision"] == [said]
    assert resolve_precision("fp32", "cpu", workload, tmp_path, logger) == "fp32" and len(asked) == 2


def test_models_and_batches_move_to_the_jobs_device():
    from tlq.ml.precision import prepare_batch, prepare_model

    # "meta" stands in for a second device: a CPU-only machine has no other
    for precision in ("fp32", "fp32-cl", "bf16"):
        assert prepare_batch(torch.rand((2, 3, 4, 4)), "meta", precision).device.type == "meta"
        assert prepare_model(torch.nn.Conv2d(3, 4, 3), "meta", precision).weight.device.type == "meta"


def test_fp32_in_channels_last_computes_what_plain_fp32_does():
    from tlq.ml.precision import prepare_batch, prepare_model

    model, images = tiny().eval(), torch.rand((4, 3, 32, 32))
    with torch.inference_mode():
        plain = model(images)
        moved = prepare_model(tiny().eval(), "cpu", "fp32-cl")
        assert not moved.conv1[0].weight.is_contiguous()  # really in the other layout
        laid_out = moved(prepare_batch(images, "cpu", "fp32-cl"))
    assert torch.allclose(plain, laid_out, rtol=1e-4, atol=1e-5)


def test_cpu_flags_are_those_proc_cpuinfo_lists():
    from pathlib import Path

    from tlq.ml.precision import cpu_flags, cpu_info

    listed = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    assert cpu_flags() == frozenset(listed.partition(":")[2].split()) == cpu_info()[1] and "fpu" in cpu_flags()


def test_feature_extract_predict_and_a_linear_probe_on_one_backbone_share_one_measurement(tmp_path, monkeypatch):
    """Their feature caches are keyed by precision: they must choose alike to share features."""
    monkeypatch.setattr(calibration, "bf16_possible", lambda device: True)
    measured = []

    def measure(workload, device, ways):
        measured.append(workload.model.num_classes)
        return {"fp32": 1.0, "fp32-cl": 0.8, "bf16": 0.5}

    monkeypatch.setattr(calibration, "measure", measure)
    for classes in (0, 10, 3):  # feature-extract, predict with the model's head, a linear probe's new head
        choice = choose_precision(
            Workload("inference", tiny(num_classes=classes), (3, 32, 32), 8, "t"), "cpu", tmp_path
        )
        assert choice.precision == "bf16"
    assert measured == [0]  # measured once, for the first
    frozen = tiny()
    for p in frozen.parameters():
        p.requires_grad_(False)
    choose_precision(Workload("training", frozen, (3, 32, 32), 8, "t"), "cpu", tmp_path)
    choose_precision(Workload("training", tiny(), (3, 32, 32), 8, "t"), "cpu", tmp_path)
    assert len(measured) == 3  # training a frozen body and a whole model are measured apart


class TwoHeads(torch.nn.Module):
    """A distilled model's shape (deit, levit, efficientformer): get_classifier() returns two heads."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.body = torch.nn.Conv2d(3, 8, 3)
        self.head, self.head_dist = torch.nn.Linear(8, classes), torch.nn.Linear(8, classes)

    def get_classifier(self):
        return self.head, self.head_dist

    def forward(self, x):
        features = self.body(x).mean((2, 3))
        return (self.head(features) + self.head_dist(features)) / 2


class NoHead(TwoHeads):
    def get_classifier(self):
        return None


def test_models_with_two_heads_or_none_are_keyed_by_their_body(tmp_path, monkeypatch):
    real = calibration.measure(Workload("input-gradient", TwoHeads(), (3, 16, 16), 2, "m"), "cpu")
    assert set(real) == set(calibration.CANDIDATES)
    monkeypatch.setattr(calibration, "bf16_possible", lambda device: True)
    monkeypatch.setattr(calibration, "measure", lambda w, d, ways: {"fp32": 1.0, "fp32-cl": 0.8, "bf16": 0.5})
    for model in (TwoHeads(3), TwoHeads(7), NoHead()):
        assert choose_precision(Workload("inference", model, (3, 16, 16), 8, "m"), "cpu", tmp_path).precision == "bf16"
    keys = [
        calibration.workload_key(Workload("inference", m, (3, 16, 16), 8, "m"), "cpu")
        for m in (TwoHeads(3), TwoHeads(7))
    ]
    assert keys[0] == keys[1] and " 224/224 " in keys[0]  # the body's 8x3x3x3 + 8 weights; both heads left out


@pytest.mark.parametrize(
    "entry",
    [["not", "a", "dict"], {"precision": "bf16", "seconds": [1, 2]}, {"precision": "bf16", "seconds": {"fp32": None}}],
    ids=["a list", "seconds a list", "seconds with a null"],
)
def test_a_damaged_entry_for_this_very_key_is_measured_again(tmp_path, monkeypatch, entry):
    monkeypatch.setattr(calibration, "bf16_possible", lambda device: True)
    monkeypatch.setattr(calibration, "measure", lambda w, d, ways: {"fp32": 1.0, "fp32-cl": 0.8, "bf16": 0.5})
    workload = Workload("inference", tiny(), (3, 32, 32), 8, "test_resnet")
    key = f"{calibration.machine_fingerprint()} || {calibration.workload_key(workload, 'cpu')}"
    digest = calibration.hashlib.sha256(key.encode()).hexdigest()[:24]
    if isinstance(entry, dict):
        entry = {**entry, "key": key}
    (tmp_path / "calibration.json").write_text(json.dumps({digest: entry}))
    choice = choose_precision(workload, "cpu", tmp_path)
    assert (choice.precision, choice.cached) == ("bf16", False) and "bf16 2.00x" in choice.describe()
    assert choose_precision(workload, "cpu", tmp_path).cached  # and written back whole


def test_measuring_copies_no_model_for_inference_and_keeps_a_callers_gradients(monkeypatch):
    model = tiny()
    model(torch.rand(2, 3, 32, 32)).sum().backward()  # gradients the caller has, before measuring
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    real_deepcopy = calibration.copy.deepcopy
    monkeypatch.setattr(calibration.copy, "deepcopy", lambda *a: pytest.fail("copied the model"))
    calibration.measure(Workload("inference", model, (3, 32, 32), 4, "test_resnet"), "cpu")
    calibration.measure(Workload("input-gradient", model, (3, 32, 32), 4, "test_resnet"), "cpu")
    monkeypatch.setattr(calibration.copy, "deepcopy", real_deepcopy)
    assert all(torch.equal(p.grad, grads[name]) for name, p in model.named_parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # channels_last measured in place, then undone
