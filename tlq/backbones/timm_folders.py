"""timm's own model folders as backbones: ``local-dir:PATH`` and ``hf-hub:ORG/NAME``.

Both hold a ``config.json`` (architecture, classes, label names, preprocessing) beside the weights, as
``timm.models.save_for_hf`` writes it and as a finetune job leaves its model; ``timm.create_model`` reads them
itself. What is checked here, at submit and offline: that the folder (or the Hub's copy in the local cache) is
there, names an architecture this timm knows, and holds weights that fit it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tlq.errors import BadInput
from tlq.plugins.backbone import LOCAL, local_path

HUB = ("hf-hub:", "hf_hub:")
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
FOLDER_HINT = "a timm model folder holds config.json and model.safetensors (`tlq export hf JOB DIR` writes one)"


def is_folder(name: str) -> bool:
    """Whether backbone ``name`` is a timm model folder (``local-dir:`` or ``hf-hub:``) rather than a timm name."""
    return name.startswith((LOCAL, *HUB))


def timm_name(name: str) -> str:
    """The name to hand ``timm.create_model``: a local folder's path expanded, the rest as written."""
    return f"{LOCAL}{local_path(name)}" if name.startswith(LOCAL) else name


def _hub_repo(name: str) -> tuple[str, str | None]:
    repo = name.split(":", 1)[1]
    repo, _, revision = repo.partition("@")
    return repo, revision or None


def _hub_cached(name: str, filename: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    repo, revision = _hub_repo(name)
    found = try_to_load_from_cache(repo, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None


def config_path(name: str) -> Path | None:
    """Where the folder's config.json is on this machine (the Hugging Face cache for the Hub); None if not here."""
    if name.startswith(LOCAL):
        path = local_path(name) / CONFIG_FILE
        return path if path.is_file() else None
    return _hub_cached(name, CONFIG_FILE)


def weights_path(name: str) -> Path | None:
    """The folder's weights file on this machine, in timm's order of preference; None if not here."""
    if name.startswith(LOCAL):
        folder = local_path(name)
        for filename in WEIGHT_FILES:
            if (folder / filename).is_file():
                return folder / filename
        for suffix in (".safetensors", ".pth", ".bin"):
            found = sorted(folder.glob(f"*{suffix}"))
            if found:
                return found[0]
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = _hub_cached(name, filename)
        if found is not None:
            return found
    return None


def read_config(name: str) -> dict[str, Any] | None:
    """The folder's config.json as a dict (None when not on this machine); raises BadInput when unreadable."""
    path = config_path(name)
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"{name}: {CONFIG_FILE} is unreadable ({exc}); {FOLDER_HINT}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise BadInput(f"{name}: {CONFIG_FILE} names no 'architecture', so it is not timm's; {FOLDER_HINT}")
    return config


def pretrained_cfg(config: dict[str, Any]) -> dict[str, Any]:
    """The config's preprocessing and classes, in either layout timm writes (nested ``pretrained_cfg`` or flat)."""
    cfg = dict(config.get("pretrained_cfg") or config)
    for key in ("num_classes", "label_names"):
        if key in config:
            cfg[key] = config[key]
    return cfg


def label_list(labels) -> list[str] | None:
    """``label_names`` as a list by class index (timm allows a list, or a dict keyed by index)."""
    if isinstance(labels, dict):
        return [str(labels.get(i, labels.get(str(i), i))) for i in range(len(labels))]
    return [str(label) for label in labels] if labels else None


def describe(name: str) -> tuple[str, int | None, int | None] | None:
    """(architecture, input size, classes) from the config alone; None when the config is not on this machine."""
    config = read_config(name)
    if config is None:
        return None
    cfg = pretrained_cfg(config)
    size = cfg.get("input_size")
    return config["architecture"], (int(size[-1]) if size else None), cfg.get("num_classes")


def check(name: str, pretrained: bool, hub_reachable) -> None:
    """Submit-time check of a ``local-dir:`` or ``hf-hub:`` backbone; raises BadInput naming the fix.

    Args:
        name: The backbone name.
        pretrained: Whether the job loads the folder's weights (else only its architecture).
        hub_reachable: Called with no arguments: whether the Hugging Face Hub can be reached now.
    """
    if not name.split(":", 1)[1].strip():
        raise BadInput(f"backbone {name!r} names no folder; write local-dir:PATH or hf-hub:ORG/NAME")
    if name.startswith(LOCAL):
        folder = local_path(name)
        if not folder.is_dir():
            raise BadInput(f"{name}: {folder} is not a folder; {FOLDER_HINT}")
        if config_path(name) is None:
            raise BadInput(f"{name}: {folder} has no {CONFIG_FILE}; {FOLDER_HINT}")
    elif config_path(name) is None or (pretrained and weights_path(name) is None):
        if hub_reachable():
            return  # timm downloads them when the job starts
        repo, _ = _hub_repo(name)
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true") else ""
        raise BadInput(
            f"{name} is not in the local Hugging Face cache and huggingface.co cannot be reached{offline}; "
            f"download it where there is a network (`hf download {repo} --local-dir DIR`), copy DIR here and pass "
            "--backbone local-dir:DIR"
        )
    config = read_config(name)
    check_architecture(name, config["architecture"])
    if pretrained:
        weights = weights_path(name)
        if weights is None:
            raise BadInput(
                f"{name} holds no weights (model.safetensors); add them, or pass --no-pretrained to start the "
                "architecture from random weights"
            )
        check_weights_fit(name, weights)


def check_architecture(name: str, arch: str) -> None:
    import timm

    if not timm.is_model(arch):
        raise BadInput(
            f"{name} is a {arch}, an architecture timm {timm.__version__} does not have; upgrade timm "
            "(`pip install -U timm`)"
        )


def check_weights_fit(name: str, weights: Path) -> None:
    """Compares the tensor names and shapes of a safetensors file with the architecture its config builds (on the
    meta device: nothing is allocated); other formats are checked when the job loads them."""
    if weights.suffix != ".safetensors":
        return
    import timm
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            shapes = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118
    except Exception as exc:
        raise BadInput(f"{name}: {weights.name} is not valid safetensors ({exc}); write the weights again") from exc
    with torch.device("meta"):
        model = timm.create_model(timm_name(name), pretrained=False)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    wrong = sorted(k for k in expected.keys() | shapes.keys() if expected.get(k) != shapes.get(k))
    if wrong:
        raise BadInput(
            f"{name}: {weights.name} does not fit the {model.pretrained_cfg.get('architecture')} its {CONFIG_FILE} "
            f"names ({len(wrong)} tensors differ, e.g. {', '.join(wrong[:2])}); keep the config and weights written "
            "together"
        )
