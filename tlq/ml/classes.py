"""Naming classes: a target given as a class name ("Siamese cat"), a synonym, or an index."""

from __future__ import annotations

import difflib

from tlq.env import Environment
from tlq.errors import BadInput
from tlq.plugins.backbone import BackboneRef


def synonyms(description: str) -> list[str]:
    """ImageNet descriptions list synonyms: "Siamese cat, Siamese" -> ["Siamese cat", "Siamese"]."""
    return [part.strip() for part in description.split(",") if part.strip()] or [description]


def resolve_class(target: str | int, names: list[str] | None, num_classes: int | None = None) -> int:
    """The index of ``target``: a class name or synonym (any case), else an integer index.

    Raises:
        BadInput: No class has that name (the closest names are listed), or the index is out of range.
    """
    text = str(target).strip()
    if names:
        lowered = text.lower()
        for index, name in enumerate(names):
            if lowered == name.lower() or lowered in (s.lower() for s in synonyms(name)):
                return index
    count = len(names) if names else num_classes
    if text.lstrip("-").isdigit():
        index = int(text)
        if count is not None and not 0 <= index < count:
            raise BadInput(f"--target {index} is out of range; this model has classes 0 to {count - 1}")
        return index
    if not names:
        raise BadInput(f"--target {text!r}: this model's classes have no names; give a class index instead")
    choices: dict[str, int] = {}
    for index, name in enumerate(names):
        for synonym in synonyms(name):
            choices.setdefault(synonym.lower(), index)
    close = difflib.get_close_matches(text.lower(), list(choices), n=8, cutoff=0.4)
    indices = list(dict.fromkeys(choices[c] for c in close))[:3]
    hint = "; closest: " + ", ".join(f"'{names[i]}' ({i})" for i in indices) if indices else ""
    raise BadInput(f"--target {text!r} is not a class of this model{hint}; give a class name or index")


def backbone_class_names(ref: BackboneRef | None, env: Environment) -> list[str] | None:
    """The class names of a backbone's classifier, from its provider, without building the model."""
    if ref is None:
        return None
    from tlq.plugins.backbone import provider_for

    provider = provider_for(ref.name, env.backbones)
    lookup = getattr(provider, "class_names", None)
    return lookup(ref, env) if lookup is not None else None
