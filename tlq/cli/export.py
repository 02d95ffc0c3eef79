"""`tlq export`: jobs and models written where other tools read them (`tlq export mlflow`, `tlq export hf`)."""

from __future__ import annotations

from pathlib import Path

import click

from tlq.cli.output import print_json
from tlq.cli.state import CliState, pass_state


@click.group("export")
def export() -> None:
    """Write jobs and models where other tools read them."""


@export.command("mlflow")
@click.option(
    "--tracking-uri",
    required=True,
    envvar="MLFLOW_TRACKING_URI",
    metavar="URI",
    help="MLflow's tracking server or store: http://HOST:5000, sqlite:///mlflow.db, ... [env MLFLOW_TRACKING_URI].",
)
@click.option("--group", type=int, metavar="G", help="Only the jobs of this group (a sweep).")
@click.option("--where", metavar="FILTER", help="Only the jobs this filter finds, as in `tlq results --where`.")
@click.option("--experiment", default="tlq", show_default=True, help="The MLflow experiment (made if missing).")
@click.option(
    "--model-name",
    metavar="NAME",
    help="The registered model succeeded finetunes become versions of [default: the job's name, else tlq-BACKBONE].",
)
@click.option("--artifact-location", metavar="URI", help="Where a new experiment keeps files [default: the server's].")
@click.option("--json", "json_out", is_flag=True, help="Print the runs, parent runs and model versions as JSON.")
@pass_state
def mlflow(state: CliState, tracking_uri, group, where, experiment, model_name, artifact_location, json_out) -> None:
    """Write jobs as MLflow runs: parameters, tags, every metric value at its step, files; a group's jobs nested
    in a parent run; a succeeded finetune's model as a registered model version. Exporting again adds nothing
    twice: it finds the runs it wrote by their tlq.job_id and tlq.instance tags, and completes those of jobs that
    were still running. Needs `pip install 'tlq[mlflow]'`.

    \b
      tlq export mlflow --tracking-uri sqlite:///mlflow.db
      tlq export mlflow --group 3 --tracking-uri http://127.0.0.1:5000
      tlq export mlflow --where "task = 'finetune' and val_acc > 0.9" --tracking-uri sqlite:///mlflow.db
    """
    from tlq.client.mlflow_export import export_mlflow, import_mlflow
    from tlq.config import mask_secrets_in, mask_url

    import_mlflow()  # a missing MLflow is one line naming the extra, before anything is read
    from mlflow.exceptions import MlflowException

    uri = mask_url(tracking_uri)
    try:
        report = export_mlflow(state.client, tracking_uri, group, where, experiment, model_name, artifact_location)
    except MlflowException as exc:
        message = (str(exc.message).strip().splitlines() or ["no reason given"])[0]
        raise click.ClickException(mask_secrets_in(f"MLflow at {uri} refused the export: {message}")) from exc
    if json_out:
        print_json(report.as_dict() | {"tracking_uri": uri})
        return
    for group_run in report.groups:
        click.echo(f"group {group_run['group']} -> parent run {group_run['run_id']} ({group_run['action']})")
    for run in report.runs:
        click.echo(f"job {run['job']} -> run {run['run_id']} ({run['action']})")
    for model in report.models:
        click.echo(f"job {model['job']} -> model {model['name']} version {model['version']} ({model['action']})")
    for line in report.left_out:
        click.echo(f"left out: {line}", err=True)
    counts = {action: sum(run["action"] == action for run in report.runs) for action in ("created", "updated")}
    unchanged = len(report.runs) - sum(counts.values())
    click.echo(
        f"{len(report.runs)} job(s) to MLflow at {uri}, experiment {experiment!r} (id {report.experiment_id}): "
        f"{counts['created']} created, {counts['updated']} updated, {unchanged} unchanged"
    )


@export.command("hf")
@click.argument("job_id", type=int, metavar="JOB")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path), metavar="DIR")
@click.option("--json", "json_out", is_flag=True, help="Print the files written as JSON.")
@pass_state
def hf(state: CliState, job_id: int, folder: Path, json_out: bool) -> None:
    """Write a fine-tuned model as a folder for the Hugging Face Hub: timm's config.json (classes, label names,
    preprocessing), model.safetensors, and a README.md model card with the job's metrics and parameters. DIR
    must be new or empty; nothing in it names a path of this machine.

    \b
      tlq export hf 12 ./digits-resnet
      hf upload ORG/NAME ./digits-resnet        # or huggingface_hub.upload_folder(...)
      timm.create_model("hf-hub:ORG/NAME", pretrained=True)
    """
    from tlq.client.hf_export import export_hf

    files = export_hf(state.client, job_id, folder)
    if json_out:
        print_json({"job": job_id, "folder": str(files[0].parent), "files": [p.name for p in files]})
        return
    sizes = ", ".join(f"{p.name} ({_size(p.stat().st_size)})" for p in files)
    click.echo(f"job {job_id} -> {folder}: {sizes}")
    click.echo(f'load it here:  timm.create_model("local-dir:{folder}", pretrained=True)')
    click.echo(f"upload it:     hf upload ORG/NAME {folder}   (or huggingface_hub.upload_folder)")


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"
