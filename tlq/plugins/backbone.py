"""What a backbone provider is and what it hands a task: a backbone reference (``resnet18``, ``job:12``), a loaded
model, and the provider protocol that resolves the names of one scheme; ``provider_for`` picks the provider."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tlq.errors import BadInput

if TYPE_CHECKING:
    from tlq.env import Environment
    from tlq.plugins.registry import Registry

LOCAL = "local-dir:"


def local_path(name: str) -> Path:
    """The folder of a ``local-dir:PATH`` backbone name, ``~`` expanded."""
    return Path(name[len(LOCAL) :]).expanduser()


def absolute(name: str) -> str:
    """``local-dir:`` with an absolute path, so a worker with another working directory finds the same folder."""
    return f"{LOCAL}{local_path(name).resolve()}" if name.startswith(LOCAL) else name


@dataclass(frozen=True)
class BackboneRef:
    """The backbone a job asked for: a name (``resnet18``, ``job:12``), local weights, and whether to load the
    pretrained ones."""

    name: str
    weights: Path | None = None
    pretrained: bool = True

    def each(self) -> list[BackboneRef]:
        """The backbones a comma-separated name lists (``job:12,resnet18``, for a task that compares several), each
        with these weights and pretrained flag; a plain name gives itself."""
        return [replace(self, name=name.strip()) for name in self.name.split(",") if name.strip()]


@dataclass
class LoadedBackbone:
    """A model ready for a task.

    Attributes:
        model: The torch module; with ``num_classes=0`` it returns pooled pre-logits features.
        data_config: timm's data config (input_size, interpolation, mean, std, crop_pct, crop_mode).
        arch: The timm architecture name.
        source: Where the weights came from, in words (recorded on the job and in model cards).
        class_names: Names of the classifier's outputs, when known.
        weights_file: The file the weights came from (None for random initialization); the feature cache
            keys on its digest.
    """

    model: Any
    data_config: dict[str, Any]
    arch: str
    source: str
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    weights_file: Path | None = None


class BackboneProvider(Protocol):
    """Resolves backbone names of one scheme (``timm`` for plain names, ``job`` for ``job:ID``)."""

    scheme: str

    def list(self, pattern: str | None, env: Environment) -> list[dict[str, str]]:
        """Backbones this provider offers, as ``{"name", "source", "description"}`` rows."""

    def check(self, ref: BackboneRef, env: Environment) -> None:
        """Submit-time check; raises BadInput naming the fix."""

    def load(self, ref: BackboneRef, env: Environment, num_classes: int | None) -> LoadedBackbone:
        """Builds the model; ``num_classes=0`` gives a feature extractor, None keeps the trained head."""

    def class_names(self, ref: BackboneRef, env: Environment) -> list[str] | None:
        """Names of the classifier's outputs, found without building the model; None when unknown."""

    def architecture(self, ref: BackboneRef, env: Environment) -> tuple[str, int | None, int | None] | None:
        """(timm architecture, input size or None for its own, classifier outputs or None) without loading
        weights, for estimates; None when unknown."""


DEFAULT_SCHEME = "timm"
TIMM_SCHEMES = ("hf-hub", "hf_hub", "local-dir")  # prefixes timm.create_model itself understands


def scheme_of(name: str) -> str:
    """The provider a backbone name belongs to: ``job:12`` -> ``job``, ``resnet18`` -> ``timm``."""
    scheme = name.split(":", 1)[0] if ":" in name else DEFAULT_SCHEME
    return DEFAULT_SCHEME if scheme in TIMM_SCHEMES else scheme


def provider_for(name: str, providers: Registry) -> BackboneProvider:
    """The provider that resolves ``name``; an unknown scheme is answered with the schemes that exist."""
    scheme = scheme_of(name)
    if scheme not in providers.names():
        known = ", ".join(f"{s}:" for s in providers.names() if s != DEFAULT_SCHEME)
        raise BadInput(f"unknown backbone scheme '{scheme}:' in '{name}'; use a timm model name or one of {known}")
    return providers.get(scheme)
