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


def _task(name: str, **fields) -> TaskPlugin:
    from pydantic import create_model

    from tlq.plugins import TaskParams

    params = create_model("Params", __base__=TaskParams, **{k: (int, 0) for k in fields})
    return TaskPlugin(name=name, summary="a test task", params=params, run=lambda ctx, p: None)


@pytest.mark.parametrize(
    ("entry_name", "plugin", "message"),
    [
        ("pixel-count", _task("pixel-stats"), "named 'pixel-count' but its TaskPlugin is named 'pixel-stats'"),
        ("sizes", _task("sizes", device=1, timeout=1, scale=1), "its parameters device, timeout take names"),
        ("odd", object(), "loads a object, not a tlq.plugins.TaskPlugin"),
    ],
)
def test_a_task_that_would_be_misread_is_refused_when_it_loads(entry_name, plugin, message):
    registry = task_registry()
    registry.register(entry_name, lambda: plugin)
    with pytest.raises(BadInput, match="cannot be used") as err:
        registry.get(entry_name)
    assert message in str(err.value) and f"the task '{entry_name}'" in str(err.value)


def test_every_installed_task_passes_the_load_checks():
    registry = task_registry()
    assert all(registry.get(name).name == name for name in registry.names())
