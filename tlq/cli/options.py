"""Click options generated from a task's pydantic parameter model, so a new task needs no CLI code.

Values go to pydantic as given (text), so every bad value gets the same one-line message, naming its flag.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import click
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

# A job or group id: the INTEGER columns hold no more (32 bits on PostgreSQL); a larger one is refused in one line.
JOB_ID = click.IntRange(1, 2**31 - 1)


def parse_tags(tags: tuple[str, ...]) -> dict[str, str]:
    """``--tag KEY=VALUE`` options (on submit, or as a filter) as a dict; a malformed one is a BadInput."""
    from tlq.errors import BadInput

    parsed = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--tag {tag!r} is not KEY=VALUE; write it as --tag dataset=pets")
        parsed[key.strip()] = value.strip()
    return parsed


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _unwrap_optional(annotation: Any) -> Any:
    """The plain type behind ``X | None`` and ``Annotated[X, ...]``."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap_optional(args[0])
    return annotation


def _members(annotation: Any) -> list[Any]:
    """The plain types of a union that is more than ``X | None`` (``--lr``: ``Literal["auto"] | float``), else the
    one plain type."""
    base = _unwrap_optional(annotation)
    if typing.get_origin(base) in (typing.Union, types.UnionType):
        return [_unwrap_optional(a) for a in typing.get_args(base) if a is not type(None)]
    return [base]


def describe_type(annotation: Any) -> str:
    """A short type name for `tlq tasks`."""
    members = _members(annotation)
    if len(members) > 1:
        return "|".join(describe_type(member) for member in members)
    base = members[0]
    if typing.get_origin(base) is Literal:
        return "|".join(str(a) for a in typing.get_args(base))
    return getattr(base, "__name__", str(base)).lower()


def default_text(field: FieldInfo) -> str | None:
    if field.default is PydanticUndefined or field.default is None:
        return None
    return str(field.default)


def sweep_separator(field: FieldInfo) -> str:
    """What separates the values of an option in `tlq sweep`: ',' for numbers and choices; ';' for text, paths
    and lists, whose values may hold commas themselves (a regex, 'tench, Tinca tinca', --eps 1/255,2/255)."""
    if all(typing.get_origin(base) is Literal or base in (int, float) for base in _members(field.annotation)):
        return ","
    return ";"


def option_for_field(name: str, field: FieldInfo, sweep: bool = False) -> click.Option:
    """A click option for one parameter field; unset options are left out so pydantic defaults apply.

    With ``sweep``, every non-flag option takes text, so it can hold a comma-separated list of values.
    """
    base = _unwrap_optional(field.annotation)
    help_text = field.description or ""
    default = default_text(field)
    if field.is_required():
        help_text += "  [required]"
    elif default is not None:
        help_text += f"  [default: {default}]"
    flag = flag_name(name)
    if base is bool:
        return click.Option([f"{flag}/--no-{name.replace('_', '-')}"], default=None, help=help_text)
    if typing.get_origin(base) is Literal and sweep:
        choices = "|".join(str(a) for a in typing.get_args(base))
        return click.Option([flag], type=str, default=None, metavar=choices, help=help_text)
    if typing.get_origin(base) is Literal:
        choices = [str(a) for a in typing.get_args(base)]
        return click.Option([flag], type=click.Choice(choices), default=None, help=help_text)
    metavar = {int: "N", float: "X"}.get(base, "TEXT")
    if len(members := _members(field.annotation)) > 1:  # --lr X|auto
        metavar = "|".join({int: "N", float: "X"}.get(m, describe_type(m)) for m in reversed(members))
    if "Path" in getattr(base, "__name__", ""):
        metavar = "PATH"
    return click.Option([flag], type=str, default=None, metavar=metavar, help=help_text)


def describe_params(model) -> list[dict[str, Any]]:
    """The parameters of a task model, for `tlq tasks --json`."""
    rows = []
    for name, field in model.model_fields.items():
        rows.append(
            {
                "name": name,
                "flag": flag_name(name),
                "type": describe_type(field.annotation),
                "required": field.is_required(),
                "default": None if field.default is PydanticUndefined else field.default,
                "help": field.description or "",
            }
        )
    return rows
