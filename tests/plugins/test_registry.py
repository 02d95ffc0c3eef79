"""Registries: built-ins come through the same entry points as third-party plugins."""

import pytest

from tlq.plugins import BadInput, TaskPlugin, backbone_providers, task_registry
from tlq.plugins.backbone import provider_for, scheme_of


def test_builtin_tasks_and_backbones_register_through_entry_points():
    from importlib.metadata import entry_points

    assert "feature-extract" in {ep.name for ep in entry_points(group="tlq.tasks")}
    assert "timm" in {ep.name for ep in entry_points(group="tlq.backbones")}
    plugin = task_registry().get("feature-extract")
    assert isinstance(plugin, TaskPlugin) and plugin.name == "feature-extract"


def test_names_filter_like_timm():
    registry = task_registry()
    assert "feature-extract" in registry.names("feature-*")
    assert registry.names("nothing-like-this*") == []


def test_unknown_task_lists_close_matches():
    with pytest.raises(BadInput) as err:
        task_registry().get("feature-extrct")
    assert "did you mean feature-extract" in str(err.value) and "tlq tasks" in str(err.value)


def test_backbone_schemes():
    assert scheme_of("resnet18") == "timm"
    assert scheme_of("hf-hub:timm/resnet18.a1_in1k") == "timm"
    assert scheme_of("job:12") == "job"
    with pytest.raises(BadInput, match="unknown backbone scheme 'nope:'"):
        provider_for("nope:1", backbone_providers())


def test_every_task_has_a_strict_parameter_model():
    registry = task_registry()
    for name in registry.names():
        plugin = registry.get(name)
        assert plugin.params.model_config.get("extra") == "forbid", name
        assert plugin.summary, name
