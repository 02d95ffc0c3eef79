"""Backbones and tasks, found through the ``tlq.backbones`` and ``tlq.tasks`` entry points.

Built-in plugins register through the very entry points third parties use, so every run exercises the
plugin path.
"""

from tlq.errors import BadInput
from tlq.plugins.backbone import BackboneRef, LoadedBackbone
from tlq.plugins.registry import Registry, backbone_providers, task_registry
from tlq.plugins.task import TaskParams, TaskPlugin

__all__ = [
    "BackboneRef",
    "BadInput",
    "LoadedBackbone",
    "Registry",
    "TaskParams",
    "TaskPlugin",
    "backbone_providers",
    "task_registry",
]
