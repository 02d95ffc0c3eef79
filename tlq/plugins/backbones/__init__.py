"""Backbone providers: timm models by name (``resnet18``) and, with a scheme prefix, other sources."""

from __future__ import annotations

from tlq.plugins.base import BackboneProvider
from tlq.plugins.errors import BadInput
from tlq.plugins.registry import Registry

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
