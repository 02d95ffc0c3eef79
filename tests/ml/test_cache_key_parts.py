"""The parts of the feature cache's key, each on its own and fast: the weights file's digest and version, the
description of the transform a job applies, and the key made of them. tests/tasks/test_cache_keys.py checks
the whole key on real jobs; here each part must tell apart what it exists to tell apart."""

import hashlib
import os
from pathlib import Path

import pytest
import torch
from torchvision import transforms

from tlq.ml import feature_cache
from tlq.ml.feature_cache import FeatureCache, file_digest, file_version
from tlq.ml.features import describe_transform


@pytest.fixture
def cache(tmp_path):
    cache = FeatureCache(tmp_path / "cache" / "features.sqlite", 2**20)
    yield cache
    cache.close()


def test_a_weights_digest_is_the_files_sha256_and_none_for_what_cannot_be_read(cache, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights" * 300_000)  # over 1 MiB: read in more than one chunk
    assert cache.weights_digest(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_digest(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert cache.weights_digest(tmp_path / "missing.safetensors") is None
    assert file_digest(tmp_path / "missing.safetensors") is None
    assert file_digest(tmp_path) is None  # a folder: stat works, reading does not
    assert cache.weights_digest(tmp_path) is None


def test_weights_rewritten_with_their_old_size_and_mtime_get_a_new_digest(cache, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 1000)
    before = os.stat(weights)
    first = cache.weights_digest(weights)
    weights.write_bytes(b"b" * 1000)  # `cp -p`, `rsync -t`, an unpacked archive: new bytes, old mtime
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(weights).st_size == before.st_size and os.stat(weights).st_mtime_ns == before.st_mtime_ns
    assert file_version(weights) != file_version(weights.with_name("other")) is None
    second = cache.weights_digest(weights)
    assert second == hashlib.sha256(b"b" * 1000).hexdigest() != first
    replaced = tmp_path / "new.safetensors"  # a new file (new inode) renamed over the old one
    replaced.write_bytes(b"c" * 1000)
    os.replace(replaced, weights)
    assert cache.weights_digest(weights) == hashlib.sha256(b"c" * 1000).hexdigest()


def test_a_digest_is_computed_once_per_file_version_and_remembered_across_processes(cache, tmp_path, monkeypatch):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x" * 5000)
    reads = []
    real = feature_cache.file_digest
    monkeypatch.setattr(feature_cache, "file_digest", lambda path: reads.append(path) or real(path))
    digest = cache.weights_digest(weights)
    assert cache.weights_digest(weights) == digest and len(reads) == 1
    other = FeatureCache(cache.path, 2**20)  # another process, the same cache file
    assert other.weights_digest(weights) == digest and len(reads) == 1
    other.close()
    elsewhere = tmp_path / "copy.safetensors"  # the same bytes under another path: read once more
    elsewhere.write_bytes(weights.read_bytes())
    assert cache.weights_digest(elsewhere) == digest and len(reads) == 2
    assert cache.weights_digest(weights) == digest and len(reads) == 2  # each file keeps its own entry


def test_a_file_that_changes_while_it_is_read_is_not_remembered(cache, tmp_path, monkeypatch):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"old" * 1000)
    real = feature_cache.file_digest

    def read_while_written(path):
        digest = real(path)
        Path(path).write_bytes(b"new" * 1000)  # a writer got in between
        return digest

    monkeypatch.setattr(feature_cache, "file_digest", read_while_written)
    cache.weights_digest(weights)
    monkeypatch.setattr(feature_cache, "file_digest", real)
    assert cache.weights_digest(weights) == hashlib.sha256(b"new" * 1000).hexdigest()


def test_a_model_key_changes_with_every_part_and_not_with_their_order():
    parts = {"code": 2, "arch": "resnet18", "weights": "ab" * 32, "precision": "fp32", "path": Path("/x")}
    key = FeatureCache.model_key(**parts)
    assert key == FeatureCache.model_key(**dict(reversed(list(parts.items()))))
    assert len(key) == 64 and int(key, 16) >= 0
    for name, other in [("code", 3), ("arch", "resnet34"), ("weights", "cd" * 32), ("precision", "bf16")]:
        assert FeatureCache.model_key(**{**parts, name: other}) != key, name
    assert FeatureCache.model_key(**{**parts, "path": Path("/y")}) != key  # values that are not JSON still count


def pipeline(size=32, crop=28, interpolation=transforms.InterpolationMode.BILINEAR, mean=(0.485, 0.456, 0.406)):
    return transforms.Compose(
        [
            transforms.Resize(size, interpolation=interpolation),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(mean, (0.229, 0.224, 0.225)),
        ]
    )


class TensorNormalize:
    """Normalization constants held as tensors, as timm's transforms hold them."""

    def __init__(self, mean) -> None:
        self.mean = torch.tensor(mean)
        self.nested = [(1, torch.tensor([0.5]))]


def test_a_transform_description_tells_apart_every_setting_that_changes_features():
    base = describe_transform(pipeline())
    assert describe_transform(pipeline()) == base  # built twice, described alike: the key is stable
    different = {
        "size": pipeline(size=36),
        "crop": pipeline(crop=24),
        "interpolation": pipeline(interpolation=transforms.InterpolationMode.BICUBIC),
        "mean at the 6th decimal": pipeline(mean=(0.485001, 0.456, 0.406)),
        "one step fewer": transforms.Compose(pipeline().transforms[1:]),
    }
    for what, other in different.items():
        assert describe_transform(other) != base, what
    assert "Resize" in base and "Normalize" in base
    single = describe_transform(transforms.CenterCrop(28))  # a bare step, not a Compose
    assert single == describe_transform(transforms.CenterCrop(28)) != describe_transform(transforms.CenterCrop(24))
    composed = describe_transform(transforms.Compose([TensorNormalize([0.485, 0.456, 0.406])]))
    assert composed == describe_transform(transforms.Compose([TensorNormalize([0.485, 0.456, 0.406])]))
    assert composed != describe_transform(transforms.Compose([TensorNormalize([0.4850001, 0.456, 0.406])]))
    tensors = describe_transform(TensorNormalize([0.485, 0.456, 0.406]))
    assert tensors == describe_transform(TensorNormalize([0.485, 0.456, 0.406]))
    assert tensors != describe_transform(TensorNormalize([0.4850001, 0.456, 0.406]))  # past torch's 4 printed places
