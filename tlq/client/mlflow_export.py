"""`tlq export mlflow`: tlq's jobs as MLflow runs, for MLflow's UI, model registry and API.

Each job becomes a run of an MLflow experiment (``tlq`` unless named): its parameters (nested ones as ``a.b``, and
the backbone), its tags (the user's, and ``tlq.job_id``, ``tlq.instance``, ``tlq.task``, ``tlq.backbone``,
``tlq.status``, ``tlq.group_id``, ``tlq.error``), every value of every metric at its step and time, and its files,
each checked against the sha256 tlq recorded. The jobs of a group (a sweep) are nested under a parent run named
after the group. A succeeded finetune's model files (``model.safetensors``, ``model_card.json`` and timm's
``config.json`` where the job wrote it) go under the run's ``model/`` folder, which is registered as a version of a
registered model. No MLflow flavor is written (the model is a timm model, not an ``MLmodel`` a pyfunc loads): the
version's source is that folder, and ``mlflow.artifacts.download_artifacts("models:/NAME/VERSION")`` fetches it.

Exporting again adds nothing twice. A job's run is found by its ``tlq.job_id`` and ``tlq.instance`` tags (the id of
the tlq database: job ids repeat across databases); a run whose ``tlq.status`` tag, written last, already gives the
job's final status is left as it is; a run of a job that was still running is brought up to date (the metric
values it lacks, the files, its end), and a model version is registered once per run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import posixpath
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tlq.client.api import FINAL, Client
from tlq.errors import BadInput

INSTALL_HINT = "`tlq export mlflow` needs MLflow, which is not installed here: pip install 'tlq[mlflow]'"
RUN_STATUS = {
    "queued": "SCHEDULED",
    "running": "RUNNING",
    "succeeded": "FINISHED",
    "failed": "FAILED",
    "cancelled": "KILLED",
}
MODEL_FILES = frozenset({"model.safetensors", "model_card.json", "config.json"})
MODEL_FOLDER = "model"
# MLflow's limits (mlflow.utils.validation), kept here so that a value past one is cut, not refused.
MAX_KEY, MAX_PARAM, MAX_TAG, BATCH = 250, 6000, 8000, 1000


@dataclass
class Exported:
    """What an export did: each run (``created``, ``updated`` or ``unchanged``), each group's parent run, each
    model version (``registered`` or ``exists``), and the files left out (missing, or changed since recorded)."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_mlflow():
    """MLflow's client, or a BadInput naming the extra to install."""
    try:
        from mlflow import MlflowClient
    except ImportError as exc:
        raise BadInput(INSTALL_HINT) from exc
    return MlflowClient


def export_mlflow(
    client: Client,
    tracking_uri: str,
    group: int | None = None,
    where: str | None = None,
    experiment: str = "tlq",
    model_name: str | None = None,
    artifact_location: str | None = None,
) -> Exported:
    """Writes jobs (a group's, those matching ``where``, or all) to the MLflow tracking server at ``tracking_uri``.

    Args:
        experiment: The MLflow experiment to write to (created when missing, at ``artifact_location`` if given).
        model_name: The registered model a succeeded finetune becomes a version of (default: the job's name,
            else ``tlq-BACKBONE``).

    Raises:
        BadInput: MLflow is not installed, the selection is malformed or empty, or the experiment was deleted.
        mlflow.exceptions.MlflowException: The tracking server refused or could not be reached.
    """
    MlflowClient = import_mlflow()
    ids = _job_ids(client, group, where)
    ml, experiment_id = _first_contact(MlflowClient, tracking_uri, experiment, artifact_location)
    report = Exported(tracking_uri, experiment, experiment_id)
    instance = client.env.db.instance_id
    with _one_export_at_a_time(client, tracking_uri, report.experiment_id):
        _export_jobs(ml, client, report, ids, instance, model_name)
    return report


@contextlib.contextmanager
def _one_export_at_a_time(client: Client, tracking_uri: str, experiment_id: str):
    """Holds a lock (a file in TLQ_HOME) while this export of the tlq home to the experiment runs: two at once
    would each find no run for a job and create one, so the job would have two."""
    digest = hashlib.sha256(f"{tracking_uri}\n{experiment_id}".encode()).hexdigest()[:16]
    lock = client.settings.home / "cache" / f"mlflow-export-{digest}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def _export_jobs(ml, client: Client, report: Exported, ids: list[int], instance: str, model_name) -> None:
    existing = _tlq_runs(ml, report.experiment_id, instance)
    jobs = [client.get(job_id) for job_id in ids]
    parents = {
        group_id: _sync_group(ml, client, report, group_id, existing.get(("group", str(group_id))), instance)
        for group_id in sorted({job["group_id"] for job in jobs if job["group_id"] is not None})
    }
    for job in jobs:
        run = existing.get(("job", str(job["id"])))
        run_id = _sync_job(ml, client, report, job, run, parents.get(job["group_id"]), instance)
        if job["task"] == "finetune" and job["status"] == "succeeded":
            _register(ml, report, job, run_id, model_name, instance)


def _job_ids(client: Client, group: int | None, where: str | None) -> list[int]:
    if group is not None and where:
        raise BadInput("give --group or --where, not both")
    if group is not None:
        from tlq.client.dashboard import check_ids

        check_ids(group=group)  # an id no column holds: "no group", not the driver's OverflowError
        ids = client.jobs_of(group)
    else:
        ids = sorted(job["id"] for job in client.results(where, limit=None))
    if not ids:
        raise BadInput("no jobs to export" + (f" match {where!r}" if where else "") + "; `tlq jobs` lists them")
    return ids


def _first_contact(MlflowClient, tracking_uri: str, name: str, artifact_location: str | None) -> tuple[Any, str]:
    """MLflow's client and the experiment's id; a store MLflow cannot open (a database down, a folder not made) is an
    MlflowException, as a server that cannot be reached is, not the database driver's or the OS's error."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    try:
        ml = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        return ml, _experiment(ml, name, artifact_location)
    except (OSError, SQLAlchemyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MlflowException(f"the tracking store could not be opened: {reason}") from exc


def _experiment(ml, name: str, artifact_location: str | None) -> str:
    found = ml.get_experiment_by_name(name)
    if found is None:
        return ml.create_experiment(name, artifact_location=artifact_location)
    if found.lifecycle_stage == "deleted":
        raise BadInput(f"the MLflow experiment {name!r} was deleted; restore it in MLflow or pass --experiment NEW")
    return found.experiment_id


def _tlq_runs(ml, experiment_id: str, instance: str) -> dict[tuple[str, str], Any]:
    """The runs this tlq database exported to the experiment before: ("job", id) and ("group", id) to run."""
    found, token = {}, None
    while True:
        page = ml.search_runs(
            [experiment_id], filter_string=f"tags.`tlq.instance` = '{instance}'", max_results=1000, page_token=token
        )
        for run in page:
            tags = run.data.tags
            if "tlq.job_id" in tags:
                found[("job", tags["tlq.job_id"])] = run
            elif "tlq.group_id" in tags:
                found[("group", tags["tlq.group_id"])] = run
        token = page.token
        if not token:
            return found


# --- one job -----------------------------------------------------------------------------------------------------


def _sync_job(ml, client: Client, report: Exported, job: dict, run, parent: str | None, instance: str) -> str:
    """Creates or completes the job's run; returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    if run is not None and job["status"] in FINAL and run.data.tags.get("tlq.status") == job["status"]:
        report.runs.append({"job": job["id"], "run_id": run.info.run_id, "action": "unchanged"})
        return run.info.run_id
    tags = job_tags(job, instance, parent)
    action = "updated" if run is not None else "created"
    if run is None:
        start = _ms(job["started_at"] or job["created_at"])
        run = ml.create_run(report.experiment_id, start_time=start, tags=tags, run_name=tags["mlflow.runName"])
    run_id = run.info.run_id
    logged = run.data.params if action == "updated" else {}
    params = [Param(k, v) for k, v in job_params(job).items() if k not in logged]
    known = _logged_points(ml, run_id, run.data.metrics) if action == "updated" else set()
    metrics = [
        Metric(_key(m["name"]), m["value"], _ms(m["time"]), m["step"])
        for m in client.metrics(job["id"])
        if (_key(m["name"]), m["step"]) not in known
    ]
    _log_batches(ml, run_id, params=params, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
    if "tlq.error" in run.data.tags and "tlq.error" not in tags:  # an attempt's error, cleared by the next one
        ml.delete_tag(run_id, "tlq.error")
    _log_files(ml, client, report, job, run_id)
    if job["status"] in FINAL:
        ml.set_terminated(run_id, RUN_STATUS[job["status"]], end_time=_ms(job["finished_at"]))
    else:
        ml.update_run(run_id, status=RUN_STATUS[job["status"]])
    ml.set_tag(run_id, "tlq.status", job["status"])  # last: a run that says the final status is complete
    report.runs.append({"job": job["id"], "run_id": run_id, "action": action})
    return run_id


def job_tags(job: dict, instance: str, parent: str | None = None) -> dict[str, str]:
    """The run's tags: the job's own (but MLflow's reserved ``mlflow.*``) and tlq's; ``tlq.status`` comes last."""
    tags = {_key(k): _text(v, MAX_TAG) for k, v in job["tags"].items() if not k.startswith("mlflow.")}
    tags |= {
        "tlq.job_id": str(job["id"]),
        "tlq.instance": instance,
        "tlq.task": job["task"],
        "mlflow.runName": f"{job['name'] or job['task']} #{job['id']}",
    }
    optional = {"tlq.backbone": job["backbone"], "tlq.name": job["name"], "tlq.ran_on": job["ran_on"]}
    optional |= {"tlq.group_id": job["group_id"], "tlq.error": job["error"], "mlflow.parentRunId": parent}
    return tags | {k: _text(v, MAX_TAG) for k, v in optional.items() if v is not None}


def job_params(job: dict) -> dict[str, str]:
    """The run's parameters: the job's, nested dicts flattened to ``a.b``, and its backbone."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", job["params"] or {})
    if job["backbone"] and "backbone" not in flat:
        flat["backbone"] = job["backbone"]
    return {_key(k): _text(v, MAX_PARAM) for k, v in flat.items() if k}


def _log_batches(ml, run_id: str, **lists: list) -> None:
    """``log_batch`` within MLflow's limits per call: 1,000 metric values, 100 parameters or tags."""
    for kind, items in lists.items():
        size = BATCH if kind == "metrics" else 100
        for start in range(0, len(items), size):
            ml.log_batch(run_id, **{kind: items[start : start + size]})


def _logged_points(ml, run_id: str, latest: dict[str, float]) -> set[tuple[str, int]]:
    """(name, step) of every metric value the run already has."""
    return {(key, point.step) for key in latest for point in ml.get_metric_history(run_id, key)}


def _log_files(ml, client: Client, report: Exported, job: dict, run_id: str) -> None:
    """Logs the job's files at their places in its folder (a finetune's model files under ``model/``); a file
    that is missing, or whose sha256 is no longer the one recorded, is left out and reported."""
    from tlq.plugins.artifacts import sha256_of

    for artifact in client.artifacts(job["id"]):
        inner = artifact["relative"].removeprefix(f"{job['id']}/")
        path = Path(artifact["path"])
        if not path.is_file() or sha256_of(path) != artifact["sha256"]:
            report.left_out.append(f"job {job['id']}: {inner} (missing, or changed since tlq recorded it)")
            continue
        folder = MODEL_FOLDER if inner in MODEL_FILES else posixpath.dirname(inner)
        ml.log_artifact(run_id, str(path), folder or None)


def _register(ml, report: Exported, job: dict, run_id: str, model_name: str | None, instance: str) -> None:
    """Registers the run's ``model/`` folder as a version of ``model_name``, once per run."""
    from mlflow.exceptions import MlflowException

    name = model_name or job["name"] or f"tlq-{job['backbone']}"
    name = re.sub(r"[/:\s]+", "-", name).strip("-.") or "tlq-model"
    entry = {"job": job["id"], "run_id": run_id, "name": name}
    versions = ml.search_model_versions(f"run_id = '{run_id}'")
    if versions:
        report.models.append(
            entry | {"name": versions[0].name, "version": int(versions[0].version), "action": "exists"}
        )
        return
    if not any(Path(a["path"]).name in MODEL_FILES for a in job["artifacts"]):
        report.left_out.append(f"job {job['id']}: no model files to register")
        return
    try:
        ml.get_registered_model(name)
    except MlflowException:
        ml.create_registered_model(name, description="Models fine-tuned by tlq (`tlq export mlflow`).")
    source = f"{ml.get_run(run_id).info.artifact_uri}/{MODEL_FOLDER}"
    tags = {"tlq.job_id": str(job["id"]), "tlq.instance": instance}
    version = ml.create_model_version(name, source, run_id=run_id, tags=tags, description=_model_description(job))
    report.models.append(entry | {"version": int(version.version), "action": "registered"})


def _model_description(job: dict) -> str:
    acc = job["metrics"].get("val_acc")
    scored = f", val_acc {acc:.4f}" if acc is not None else ""
    return f"tlq job {job['id']}: {job['backbone']} fine-tuned{scored}. Files: {', '.join(sorted(MODEL_FILES))}."


# --- one group ---------------------------------------------------------------------------------------------------


def _sync_group(ml, client: Client, report: Exported, group_id: int, run, instance: str) -> str:
    """The parent run of a group's jobs: named after the group, its spec as a tag, finished once they all are."""
    from tlq.db import results

    with client.env.db.read_session() as session:
        group = results.get_group(session, group_id)
        name, spec = group.name, group.spec
    statuses = client.statuses(client.jobs_of(group_id))
    done = all(status in FINAL for status in statuses.values())
    if run is not None and run.data.tags.get("tlq.status") == "finished":
        report.groups.append({"group": group_id, "run_id": run.info.run_id, "action": "unchanged"})
        return run.info.run_id
    action = "updated" if run is not None else "created"
    if run is None:
        tags = {"tlq.group_id": str(group_id), "tlq.instance": instance, "tlq.kind": "group"}
        tags["tlq.group_spec"] = _text(json.dumps(spec, default=str), MAX_TAG)
        run = ml.create_run(report.experiment_id, tags=tags, run_name=name or f"group {group_id}")
    if done:
        ml.set_terminated(run.info.run_id, "FINISHED")
        ml.set_tag(run.info.run_id, "tlq.status", "finished")
    report.groups.append({"group": group_id, "run_id": run.info.run_id, "action": action})
    return run.info.run_id


# --- values ------------------------------------------------------------------------------------------------------


def _ms(iso: str | None) -> int | None:
    return None if iso is None else int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


def _key(name: Any) -> str:
    """A name MLflow takes for a metric, param or tag: letters, digits and ``_-. /:``, the rest replaced by ``_``;
    and, as MLflow takes names for file paths, one that would be another path (``/a``, ``a/``, ``a//b``, ``.``,
    ``..x``, empty) with its slashes replaced and a ``_`` before it."""
    key = re.sub(r"[^\w\-. /:]", "_", str(name))[:MAX_KEY]
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith(("..", "/")):
        key = "_" + key.replace("/", "_")[: MAX_KEY - 1]
    return key


def _text(value: Any, limit: int) -> str:
    text = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
