"""The `--where` and `--order-by` language of `tlq results`, compiled to SQLAlchemy expressions.

    val_acc > 0.9 and backbone = 'vgg16'
    params.lr <= 1e-3 and (status = 'succeeded' or tags.dataset in ('pets', 'digits'))
    created >= '2026-11-01' and not error is null

A name is a job column (``task``, ``backbone``, ``status``, ``created``, ...), ``params.NAME``, ``tags.NAME``,
or the name of a metric (also written ``metrics.NAME``, as MLflow does), which stands for its final value (the
value at the job's last step). A metric no job has recorded yet matches nothing, but a bare name close to a
known one (``backbon``, ``val_ac``) is refused with a "did you mean"; ``metrics.NAME`` is never refused. Values are
always bound parameters, and names are looked up in a fixed table, so no text of a filter ever reaches the
SQL: a filter cannot inject SQL.

A filter is also bounded in size (``MAX_DEPTH``, ``MAX_CONDITIONS``, ``MAX_VALUES``); the tokenizer and parser,
and why those bounds, are in tlq/db/filter_parser.py.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from tlq.db.filter_parser import (
    MAX_CONDITIONS,
    MAX_DEPTH,
    MAX_VALUES,
    FilterError,
    WhereParser,
    filter_error,
    tokenize,
)
from tlq.db.models import Job, Metric

# --- fields -----------------------------------------------------------------------------------------------------

COLUMNS: dict[str, tuple[Any, str]] = {
    "id": (Job.id, "int"),
    "job": (Job.id, "int"),
    "task": (Job.task, "str"),
    "backbone": (Job.backbone, "str"),
    "weights": (Job.weights, "str"),
    "status": (Job.status, "str"),
    "name": (Job.name, "str"),
    "queue": (Job.queue, "str"),
    "device": (Job.device, "str"),
    "ran_on": (Job.ran_on, "str"),
    "worker": (Job.worker, "str"),
    "error": (Job.error, "str"),
    "group": (Job.group_id, "int"),
    "parent": (Job.parent_id, "int"),
    "priority": (Job.priority, "int"),
    "attempts": (Job.attempts, "int"),
    "created": (Job.created_at, "time"),
    "started": (Job.started_at, "time"),
    "finished": (Job.finished_at, "time"),
}
ALIASES = {"created_at": "created", "started_at": "started", "finished_at": "finished", "group_id": "group"}
DERIVED = ("seconds", "epochs")
FILTER_NAME = re.compile(r"[A-Za-z_][\w-]*")  # a metric name the parser reads as one name (filter_parser.TOKEN)


def field_names() -> list[str]:
    """The names a filter may use besides metrics, for error messages and help."""
    return sorted(COLUMNS) + list(DERIVED) + ["params.NAME", "tags.NAME"]


def final_metric(name: str) -> ColumnElement:
    """The value a job's metric ``name`` has at its last step, as a correlated subquery (NULL if none)."""
    metric = aliased(Metric)
    return (
        select(metric.value)
        .where(metric.job_id == Job.id, metric.name == name)
        .order_by(metric.step.desc(), metric.id.desc())
        .limit(1)
        .correlate(Job)
        .scalar_subquery()
    )


def job_epochs() -> ColumnElement:
    """The last epoch a job recorded a metric for (NULL for jobs without epochs)."""
    metric = aliased(Metric)
    return select(func.max(metric.epoch)).where(metric.job_id == Job.id).correlate(Job).scalar_subquery()


def job_seconds(dialect: str) -> ColumnElement:
    """Run time in seconds, from start to finish."""
    if dialect == "postgresql":
        return func.extract("epoch", Job.finished_at - Job.started_at)
    return (func.julianday(Job.finished_at) - func.julianday(Job.started_at)) * 86400.0


def json_type_of(column, key: str, dialect: str) -> ColumnElement:
    """The JSON type of ``column[key]`` (SQL NULL when the key is missing)."""
    if dialect == "postgresql":
        return func.json_typeof(column[key])
    if _plain_key(key):
        return func.json_type(column, f'$."{key}"' if not re.fullmatch(r"[A-Za-z_]\w*", key) else f"$.{key}")
    return _json_each(column, key, "type")


def json_value(column, key: str, kind: str, dialect: str) -> ColumnElement:
    """``column[key]`` as a number, text or boolean; NULL where the stored JSON value is of another type.

    The type guard keeps PostgreSQL from failing a whole query on a cast (``'./data'::float``).
    """
    json_type = json_type_of(column, key, dialect)
    if dialect == "postgresql":
        wanted = {"number": "number", "str": "string", "bool": "boolean"}[kind]
    else:
        wanted = {"number": ("integer", "real"), "str": ("text",), "bool": ("true", "false")}[kind]
    if dialect != "postgresql" and not _plain_key(key):
        extracted = _json_each(column, key, "value")
    else:
        element = column[key]
        extracted = {"number": element.as_float, "str": element.as_string, "bool": element.as_boolean}[kind]()
    condition = json_type == wanted if isinstance(wanted, str) else json_type.in_(wanted)
    return case((condition, extracted), else_=None)


def json_missing(column, key: str, dialect: str) -> ColumnElement:
    """True where ``column`` has no ``key``, or holds JSON null there."""
    json_type = json_type_of(column, key, dialect)
    return or_(json_type.is_(None), json_type == "null")


def _plain_key(key: str) -> bool:
    # SQLite's JSON paths cannot name a key holding a double quote; json_each can.
    return '"' not in key and "\\" not in key


def _json_each(column, key: str, what: str) -> ColumnElement:
    each = func.json_each(column).table_valued("key", "value", "type")
    return select(each.c[what]).where(each.c.key == key).scalar_subquery()


@dataclass
class FieldResolver:
    """Turns a name in a filter into a column expression, knowing the dialect and which metrics exist."""

    dialect: str
    metric_names: set[str]
    used_metrics: list[str]

    def __init__(self, dialect: str, metric_names: Iterable[str]) -> None:
        self.dialect = dialect
        self.metric_names = set(metric_names)
        self.used_metrics = []

    def missing(self, name: str, fail: Callable[[str], FilterError]) -> ColumnElement:
        """The condition that ``name`` has no value: a NULL column or metric, or an absent or null JSON key."""
        prefix, dot, key = name.partition(".")
        if dot and prefix.lower() in ("params", "param"):
            return json_missing(Job.params, key, self.dialect)
        if dot and prefix.lower() in ("tags", "tag"):
            return json_missing(Job.tags, key, self.dialect)
        column, _ = self.resolve(name, None, fail)
        return column.is_(None)

    def resolve(self, name: str, value_kind: str | None, fail: Callable[[str], FilterError]) -> tuple[Any, str]:
        """The expression and kind (int, float, str, time, number, bool) of ``name``.

        ``value_kind`` is the kind of the value it is compared with, which picks how a JSON value is read.
        """
        lowered = ALIASES.get(name.lower(), name.lower())
        if lowered in COLUMNS:
            return COLUMNS[lowered]
        if lowered == "seconds":
            return job_seconds(self.dialect), "float"
        if lowered == "epochs":
            return job_epochs(), "int"
        prefix, dot, key = name.partition(".")
        if dot:
            if prefix.lower() in ("params", "param"):
                kind = {"str": "str", "bool": "bool"}.get(value_kind or "", "number")
                return json_value(Job.params, key, kind, self.dialect), kind
            if prefix.lower() in ("tags", "tag"):
                return json_value(Job.tags, key, "str", self.dialect), "str"
            if prefix.lower() in ("metrics", "metric"):
                return self.metric(key), "float"  # MLflow's spelling; a metric by that name, recorded or not
            raise fail(f"unknown name {name!r}: dotted names start with params., tags. or metrics.")
        if name not in self.metric_names:
            close = self.close_names(name)
            if close:
                message = f"unknown name {name!r}: did you mean {' or '.join(close)}?"
                if any(match in self.metric_names for match in close):
                    message += f" (for a metric no job has recorded yet, write metrics.{name})"
                raise fail(message)
        return self.metric(name), "float"

    def metric(self, name: str) -> ColumnElement:
        """The final value of metric ``name``: NULL for every job while none has recorded it, so a condition on
        it matches nothing (and ``is null`` everything), as for any job that lacks it."""
        if name not in self.used_metrics:
            self.used_metrics.append(name)
        return final_metric(name)

    def close_names(self, name: str) -> list[str]:
        """The job fields and recorded metrics ``name`` is likely a typo of (``backbon``, ``val_ac``, ``tag``)."""
        spelled = {**{field: field for field in [*COLUMNS, *ALIASES, *DERIVED]}, "params": "params.NAME"}
        # only the metrics a filter can name: "did you mean x%_?" would point at a name the parser refuses
        readable = (metric for metric in self.metric_names if FILTER_NAME.fullmatch(metric))
        spelled |= {"tags": "tags.NAME", **{metric.lower(): metric for metric in readable}}
        close = difflib.get_close_matches(name.lower(), spelled, n=3, cutoff=0.8)
        return [spelled[match] for match in close]


def compile_where(source: str, resolver: FieldResolver) -> ColumnElement:
    """The SQL condition of a `--where` filter; raises FilterError pointing at the first problem."""
    return WhereParser(source, resolver).parse()


def compile_order_by(source: str, resolver: FieldResolver) -> list[ColumnElement]:
    """ORDER BY terms for ``-val_acc,created`` (a leading ``-`` sorts descending); missing values go last."""
    terms = []
    offset = 0
    for part in source.split(","):
        text = part.strip()
        pos = offset + len(part) - len(part.lstrip())
        offset += len(part) + 1
        if not text:
            raise filter_error("--order-by", source, pos, "empty name; write names such as -val_acc,created")
        descending = text.startswith("-")
        name = text.lstrip("-+").strip()
        if not re.fullmatch(r"[A-Za-z_][\w-]*(?:\.[\w-]+)?", name):
            raise filter_error("--order-by", source, pos, f"{text!r} is not a name")

        def fail(message: str, pos=pos) -> FilterError:
            return filter_error("--order-by", source, pos, message)

        column, kind = resolver.resolve(name, None, fail)
        if name.lower().startswith(("params.", "param.")):
            # Numbers in numeric order first, then text values in text order.
            column_text = json_value(Job.params, name.partition(".")[2], "str", resolver.dialect)
            columns = [column, column_text]
        else:
            columns = [column]
        for col in columns:
            terms.append(col.desc().nulls_last() if descending else col.asc().nulls_last())
    return terms


__all__ = [
    "MAX_CONDITIONS",
    "MAX_DEPTH",
    "MAX_VALUES",
    "FieldResolver",
    "FilterError",
    "compile_order_by",
    "compile_where",
    "field_names",
    "final_metric",
    "json_value",
    "tokenize",
]
