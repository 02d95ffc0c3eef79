"""feature-extract stores exactly what timm computes for each image, and skips what cannot be read."""

import csv

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.support import run_job_here
from tlq.config import Settings
from tlq.env import Environment
from tlq.jobs.spec import JobSpec


@pytest.fixture
def env(tmp_path):
    return Environment(Settings.load(home=tmp_path / "home", environ={}))


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    path = tmp_path / "test_resnet.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def run_extract(env, data, weights, precision):
    spec = JobSpec(
        task="feature-extract",
        backbone="test_resnet",
        weights=weights,
        params={"data": str(data), "precision": precision, "batch_size": 16},
    )
    job = run_job_here(env, spec)
    with open(job["files"]["index"]) as fh:
        index = list(csv.DictReader(fh))
    return job, np.load(job["files"]["features"]), index


def reference_model(weights):
    from safetensors.torch import load_file

    model = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    model.load_state_dict(load_file(str(weights)))
    model.reset_classifier(0)
    return model.eval()


def test_stored_features_equal_timms_own_forward(env, digits_dir, weights):
    job, features, index = run_extract(env, digits_dir, weights, "fp32")
    assert features.shape == (120, 96) and len(index) == 120
    assert job["metrics"]["images"] == 120 and job["metrics"]["skipped"] == 0
    assert {row["label"] for row in index} == {str(d) for d in range(10)}
    model = reference_model(weights)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    for row in (0, 57, 119):
        image = Image.open(digits_dir / index[row]["path"]).convert("RGB")
        with torch.no_grad():
            expected = model(transform(image).unsqueeze(0))[0].numpy()
        np.testing.assert_allclose(features[row], expected, rtol=1e-4, atol=1e-5)


def test_bf16_features_stay_faithful_to_fp32(env, digits_dir, weights):
    _, fp32, _ = run_extract(env, digits_dir, weights, "fp32")
    _, bf16, _ = run_extract(env, digits_dir, weights, "bf16")
    cosine = (fp32 * bf16).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(bf16, axis=1))
    assert cosine.min() >= 0.99
    # ...and bf16 really ran: its rounding (8-bit mantissa) moves each vector by about 0.5% (measured 0.40-0.61%
    # on a CPU with AVX512-BF16 and no AMX), while fp32 in channels_last, which is what a bf16 job computes with
    # autocast turned into a no-op, moves it by about 1e-7.
    relative = np.linalg.norm(fp32 - bf16, axis=1) / np.linalg.norm(fp32, axis=1)
    assert np.median(relative) > 1e-3, f"bf16 features equal fp32 ones to {np.median(relative):.1e}: bf16 never ran"


def test_unreadable_files_are_skipped_counted_and_listed(env, tmp_path, digits_dir, weights):
    import shutil

    data = tmp_path / "mixed"
    shutil.copytree(digits_dir / "3", data / "3")
    (data / "3" / "notes.txt").write_text("not an image")
    (data / "3" / "empty.png").write_bytes(b"")
    job, features, index = run_extract(env, data, weights, "auto")
    assert features.shape[0] == len(index) == 12
    assert job["metrics"]["skipped"] == 2
    skipped = next(a["path"] for a in job["artifacts"] if a["kind"] == "skipped")
    with open(skipped) as fh:
        rows = {r["path"]: r["reason"] for r in csv.DictReader(fh)}
    assert rows == {"3/notes.txt": "not an image", "3/empty.png": "empty file"}


def test_features_stream_to_disk_in_chunks_the_same_as_in_one_piece(env, tmp_path, digits_dir, weights, monkeypatch):
    import shutil

    from tlq.ml import features as features_module

    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    (data / "3" / "broken.png").write_bytes(b"\x89PNG not really")  # a skipped file inside a chunk
    whole, whole_features, whole_index = run_extract(env, data, weights, "fp32")
    monkeypatch.setattr(features_module, "CHUNK_FILES", 7)  # 121 files: 17 chunks plus 2 files, one skipped
    chunked, chunked_features, chunked_index = run_extract(env, data, weights, "fp32")
    assert chunked["metrics"]["cached_images"] == 120  # chunk by chunk from the feature cache...
    uncached = Environment(env.settings.model_copy(update={"feature_cache_mb": 0}))
    computed, computed_features, _ = run_extract(uncached, data, weights, "fp32")
    assert computed["metrics"]["cached_images"] == 0  # ...and computed chunk by chunk
    np.testing.assert_array_equal(whole_features, computed_features)
    assert whole_features.shape == chunked_features.shape == (120, 96) and chunked["metrics"]["skipped"] == 1
    np.testing.assert_array_equal(whole_features, chunked_features)  # the same rows, in the same order
    assert whole_index == chunked_index and chunked["metrics"]["feature_dim"] == 96
    mapped = np.load(chunked["files"]["features"], mmap_mode="r")  # a real .npy that maps without reading it
    assert isinstance(mapped, np.memmap) and mapped.shape == (120, 96)


def test_the_npy_writer_keeps_exactly_the_rows_written(tmp_path):
    from tlq.ml.npy_writer import NpyWriter

    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    writer = NpyWriter(tmp_path / "f.npy", capacity=100_000)  # room for far more than it gets
    for start in range(0, 10, 3):
        writer.append(rows[start : start + 3])
    writer.close()
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), rows)
    assert (tmp_path / "f.npy").stat().st_size == 128 + rows.nbytes  # the header, then the rows and no more
    full = NpyWriter(tmp_path / "g.npy", capacity=2)
    full.append(rows[:2])
    with pytest.raises(ValueError, match="more than the 2 rows"):
        full.append(rows[2:3])
    with pytest.raises(ValueError, match="do not fit a file of rows 4 wide"):
        full.append(np.zeros((1, 5), np.float32))  # another width would shift every later row
    full.close()
    full.close()  # twice: nothing more
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), rows[:2])
    empty = NpyWriter(tmp_path / "e.npy", capacity=10)
    empty.close()
    assert np.load(tmp_path / "e.npy").shape == (0, 0)  # no rows: still a file numpy reads


def test_the_wait_clock_counts_the_time_spent_waiting_for_batches_and_not_the_work_on_them():
    import time

    from tlq.ml.features import WaitClock

    def slow_batches():
        for batch in range(3):
            time.sleep(0.05)  # decoding
            yield batch

    clock = WaitClock(slow_batches())
    for _ in clock:
        time.sleep(0.1)  # the model's step: not waiting
    assert 0.15 <= clock.seconds < 0.25
