"""Every timm model as a backbone, by its timm name (``vgg16``, ``convnext_tiny.in12k_ft_in1k``), and timm's own
model folders (``local-dir:PATH``, ``hf-hub:ORG/NAME``; see ``timm_folders``).

Pretrained weights come from the local Hugging Face (or torch hub) cache, or the hub when it can be reached.
When they are neither cached nor reachable, the check at submit says so within seconds and offers
``--weights FILE`` or ``--no-pretrained``, instead of timm's long retries.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from tlq.backbones import timm_folders
from tlq.backbones.weights import check_weights_path, read_state_dict
from tlq.env import Environment
from tlq.errors import BadInput
from tlq.plugins.backbone import BackboneRef, LoadedBackbone
from tlq.plugins.registry import unknown_name_message

HUB_HOST = "huggingface.co"
REACHABILITY_TIMEOUT_S = 3.0


def _timm():
    import timm

    return timm


def cached_pretrained_file(name: str) -> Path | None:
    """The locally cached pretrained weights of timm model ``name``, if any (no network)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:
        return None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        import torch.hub

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url)
        if candidate.is_file():
            return candidate
    return None


def hub_reachable(host: str = HUB_HOST, timeout: float = REACHABILITY_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout`` (DNS included, in a thread)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def check_name(name: str) -> None:
    """Checks a timm name (``resnet50`` or ``resnet50.a1_in1k``); an unknown one is answered with the closest names
    and the `tlq backbones` command that lists them."""
    import difflib
    import re

    timm = _timm()
    arch, _, tag = name.partition(".")
    if not timm.is_model(arch):
        known = timm.list_pretrained() if tag else timm.list_models()
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        stem = re.match(r"[A-Za-z]*", close[0] if close else "").group(0)
        listing = "tlq backbones" if tag else "tlq backbones --architectures"
        listing += f" --filter '{stem}*'" if stem else ""
        raise BadInput(unknown_name_message("backbone", name, known, listing))
    if tag:
        tags = timm.list_pretrained(f"{arch}.*")
        if name not in tags:
            close = difflib.get_close_matches(name, tags, n=3, cutoff=0.5) or tags[:3]
            offer = f"did you mean {', '.join(close)}? " if close else f"{arch} has no pretrained weights; "
            raise BadInput(
                f"unknown pretrained tag '{tag}' for {arch}; {offer}run `tlq backbones --filter '{arch}.*'` to list "
                "its tags"
            )


class TimmProvider:
    """Backbones by timm name."""

    scheme = "timm"

    def list(self, pattern: str | None, env: Environment) -> list[dict[str, str]]:
        """Every pretrained tag (``convnext_tiny.in12k_ft_in1k``), as ``timm.list_pretrained`` names them."""
        timm = _timm()
        from timm.models import get_pretrained_cfg

        rows = []
        for name in timm.list_pretrained(pattern or "*"):
            cfg = get_pretrained_cfg(name)
            arch = name.split(".", 1)[0]
            details = [f"{cfg.input_size[-1]}px"] if cfg.input_size else []
            details.append(f"{cfg.num_classes} classes" if cfg.num_classes else "features only")
            if get_pretrained_cfg(arch).tag == cfg.tag:
                details.append("default")
            if cached_pretrained_file(name) is not None:
                details.append("cached")
            rows.append({"name": name, "source": "timm", "description": ", ".join(details)})
        return rows

    def architectures(self, pattern: str | None) -> list[dict[str, str]]:
        """Every bare architecture (``convnext_tiny``), whether or not it has pretrained weights."""
        timm = _timm()
        pretrained = {name.split(".", 1)[0] for name in timm.list_pretrained()}
        return [
            {"name": name, "source": "timm", "description": "pretrained weights" if name in pretrained else ""}
            for name in timm.list_models(pattern or "*")
        ]

    def check(self, ref: BackboneRef, env: Environment) -> None:
        if timm_folders.is_folder(ref.name):
            if ref.weights is not None:
                raise BadInput(
                    f"--weights does not combine with {ref.name.split(':')[0]}: (the folder's own weights are used); "
                    "put the weights in the folder as model.safetensors"
                )
            timm_folders.check(ref.name, ref.pretrained, hub_reachable)
            return
        arch = ref.name
        check_name(arch)
        if ref.weights is not None:
            check_weights_path(ref.weights)
            self._build_with_weights(arch, ref.weights, num_classes=None, meta=True)
            return
        if ref.pretrained and cached_pretrained_file(arch) is None and not hub_reachable():
            raise BadInput(
                f"pretrained weights for {arch} are not in the local cache and {HUB_HOST} cannot be reached; "
                "pass --weights FILE to use a local file, or --no-pretrained to start from random weights"
            )

    def architecture(self, ref: BackboneRef, env: Environment) -> tuple[str, int | None, int | None] | None:
        if timm_folders.is_folder(ref.name):
            return timm_folders.describe(ref.name)  # None for a Hub model not in the local cache
        return ref.name, None, None

    def load(self, ref: BackboneRef, env: Environment, num_classes: int | None) -> LoadedBackbone:
        timm = _timm()
        if timm_folders.is_folder(ref.name):
            return self._load_folder(ref, num_classes)
        arch = ref.name
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        weights_file = None
        if ref.weights is not None:
            model = self._build_with_weights(arch, ref.weights, num_classes)
            source = f"file {Path(ref.weights).name}"
            weights_file = Path(ref.weights)
        elif ref.pretrained:
            cached = cached_pretrained_file(arch)
            weights_file = cached
            if cached is not None:
                model = timm.create_model(
                    ref.name, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kwargs
                )
                source = f"timm pretrained ({model.pretrained_cfg.get('hf_hub_id') or arch}, cached)"
            else:
                model = timm.create_model(ref.name, pretrained=True, **kwargs)
                source = f"timm pretrained ({model.pretrained_cfg.get('hf_hub_id') or arch})"
                weights_file = cached_pretrained_file(arch)
        else:
            model = timm.create_model(ref.name, pretrained=False, **kwargs)
            source = "random init"
        data_config = timm.data.resolve_data_config({}, model=model)
        class_names = None
        if num_classes is None:
            class_names = imagenet_names(getattr(model, "num_classes", 0))  # a 1000-class head is ImageNet's
        return LoadedBackbone(
            model=model,
            data_config=data_config,
            arch=arch,
            source=source,
            class_names=class_names,
            weights_file=weights_file,
        )

    def _load_folder(self, ref: BackboneRef, num_classes: int | None) -> LoadedBackbone:
        """A ``local-dir:`` or ``hf-hub:`` model, built by timm from its config.json, with its label names."""
        timm = _timm()
        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        model = timm.create_model(timm_folders.timm_name(ref.name), pretrained=ref.pretrained, **kwargs)
        cfg = model.pretrained_cfg
        class_names = None
        if num_classes is None:
            class_names = timm_folders.label_list(cfg.get("label_names")) or imagenet_names(model.num_classes)
        return LoadedBackbone(
            model=model,
            data_config=timm.data.resolve_data_config({}, model=model),
            arch=cfg.get("architecture") or ref.name,
            source=f"{ref.name}" if ref.pretrained else f"random init ({ref.name} architecture)",
            class_names=class_names,
            weights_file=timm_folders.weights_path(ref.name) if ref.pretrained else None,
        )

    def class_names(self, ref: BackboneRef, env: Environment) -> list[str] | None:
        from timm.models import get_pretrained_cfg

        if timm_folders.is_folder(ref.name):
            config = timm_folders.read_config(ref.name)
            if config is None:
                return None
            cfg = timm_folders.pretrained_cfg(config)
            return timm_folders.label_list(cfg.get("label_names")) or imagenet_names(cfg.get("num_classes") or 0)
        arch = ref.name
        if ref.weights is not None:
            num = _classifier_outputs(arch, read_state_dict(ref.weights)) or 0
        else:
            try:
                cfg = get_pretrained_cfg(arch)
            except RuntimeError:
                cfg = None
            num = cfg.num_classes if cfg is not None and cfg.num_classes else 1000
        return imagenet_names(num)

    def _build_with_weights(self, arch: str, weights: Path, num_classes: int | None, meta: bool = False):
        """Builds ``arch`` sized like the weights file, loads it strictly, then fits the head to ``num_classes``."""
        import torch

        timm = _timm()
        state = read_state_dict(weights)
        file_classes = _classifier_outputs(arch, state)
        build_kwargs = {"num_classes": file_classes} if file_classes is not None else {}
        if meta:
            with torch.device("meta"):
                model = timm.create_model(arch, pretrained=False, **build_kwargs)
        else:
            model = timm.create_model(arch, pretrained=False, **build_kwargs)
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or mismatched:
            examples = (missing or unexpected or mismatched)[:2]
            raise BadInput(
                f"weights file {Path(weights).name} does not fit {arch}: {len(missing)} missing, {len(unexpected)} "
                f"unexpected, {len(mismatched)} mis-shaped tensors (e.g. {', '.join(examples)}); "
                "pass weights saved from this architecture, or the architecture they were saved from"
            )
        if not meta:
            model.load_state_dict(state, strict=True)
            if num_classes is not None and num_classes != file_classes:
                model.reset_classifier(num_classes)
        return model


def _classifier_outputs(arch: str, state: dict) -> int | None:
    """The number of classes a state dict's classifier has, from the layer timm names as the classifier."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(arch)
    except RuntimeError:
        cfg = None
    names = cfg.classifier if cfg is not None else None
    if isinstance(names, str):
        names = (names,)
    for name in names or ():
        weight = state.get(f"{name}.weight")
        if weight is not None:
            return int(weight.shape[0])
    if names and all(f"{n}.weight" not in state for n in names):
        return 0  # saved without a head
    return None


def imagenet_names(num: int) -> list[str] | None:
    """ImageNet class descriptions for a 1000- or 1001-class head, from timm's bundled class info (offline)."""
    if num not in (1000, 1001):
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    return ["background", *names] if num == 1001 else names


provider = TimmProvider()
