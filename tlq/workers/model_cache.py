"""Built models kept in a worker process, so a second job on the same backbone and weights neither rebuilds
nor reloads it. Each job gets its own deep copy, since tasks train, move and convert their models."""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from tlq.backbones.timm_folders import local_path, weights_path
from tlq.ml.feature_cache import file_version
from tlq.plugins.backbone import BackboneRef, LoadedBackbone

log = logging.getLogger("tlq.model_cache")


def cache_key(ref: BackboneRef, num_classes: int | None) -> tuple | None:
    """What identifies a model; None for random initialization, which must stay fresh (and seeded) per job."""
    if ref.weights is None and not ref.pretrained and not ref.name.startswith("job:"):
        return None
    weights = None
    if ref.weights is not None:
        weights = (str(ref.weights), file_version(ref.weights))  # new bytes under an old size and mtime too
        if weights[1] is None:
            return None
    elif ref.name.startswith("local-dir:"):  # the folder's files, rewritten under the same name, are a new model
        folder = local_path(ref.name)
        weights = (file_version(folder / "config.json"), file_version(weights_path(ref.name) or folder))
        if None in weights:
            return None
    return (ref.name, weights, ref.pretrained, num_classes)


class ModelCache:
    """An LRU of loaded backbones, at most ``capacity`` of them (``Settings.model_cache``: ``TLQ_MODEL_CACHE``,
    default 2); 0 keeps none."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[tuple, LoadedBackbone] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, ref: BackboneRef, num_classes: int | None, load: Callable[[], LoadedBackbone]) -> LoadedBackbone:
        key = cache_key(ref, num_classes)
        if key is None or self.capacity <= 0:
            return load()
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            log.info("model cache hit for %s", ref.name)
            return _copy(self._entries[key])
        self.misses += 1
        loaded = load()
        self._entries[key] = _copy(loaded)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return loaded


def _copy(loaded: LoadedBackbone) -> LoadedBackbone:
    return replace(
        loaded,
        model=copy.deepcopy(loaded.model),
        data_config=dict(loaded.data_config),
        class_names=list(loaded.class_names) if loaded.class_names is not None else None,
        extra=copy.deepcopy(loaded.extra),
    )
