"""`tlq worker` starts a Celery worker; `tlq workers` lists the workers that registered."""

from __future__ import annotations

import click

from tlq.cli.output import print_json
from tlq.cli.state import CliState, pass_state


def parse_queues(text: str | None, has_gpu: bool) -> list[str]:
    """The queues a worker consumes: as given, else cpu plus gpu on a GPU host. A CPU host refuses gpu."""
    from tlq.errors import BadInput
    from tlq.workers.app import QUEUES

    if text is None:
        return ["gpu", "cpu"] if has_gpu else ["cpu"]
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise BadInput(f"unknown queue {', '.join(unknown) or '(none)'}; --queues takes gpu, cpu or gpu,cpu")
    if "gpu" in queues and not has_gpu:
        raise BadInput("this machine has no CUDA GPU, so it cannot consume the gpu queue; use --queues cpu")
    return queues


@click.command()
@click.option("--queues", metavar="LIST", help="Comma-separated: gpu, cpu.  [default: cpu, plus gpu with a GPU]")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Jobs at once; one training job already uses every core.",
)
@click.option(
    "--gpus",
    metavar="all|N|LIST",
    help="One pool process per GPU, each seeing only its own: all, the first N, or indices such as 0,2,5.",
)
@click.option("--name", metavar="NAME", help="Worker name, unique among live workers.  [default: HOST-PID-XXXX]")
@click.option("--loglevel", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "solo", "threads"]))
@click.option("--events", is_flag=True, help="Send Celery task events (for Flower).")
@pass_state
def worker(state: CliState, queues, concurrency, gpus, name, loglevel, pool, events) -> None:
    """Start a worker that runs queued jobs (Ctrl-C stops it)."""
    from tlq.workers.app import create_app, default_worker_name
    from tlq.workers.devices import cuda_available, describe_device
    from tlq.workers.lifecycle import start_worker

    name = name or default_worker_name()
    owned = None
    if gpus is not None:
        owned, concurrency, queues = gpu_worker(gpus, name, concurrency, queues, pool)
    has_gpu = owned is not None or cuda_available()
    import timm  # noqa: F401  (loaded once here, so forked pool children start jobs without the import)

    chosen = parse_queues(queues, has_gpu)
    shown = owned
    if "gpu" in chosen:  # a job of N GPUs (--ddp N) is on gpus-N: taken by workers that own as many
        from tlq.workers.app import gpu_queues
        from tlq.workers.gpus import visible_gpus

        shown = owned or visible_gpus()
        at = chosen.index("gpu")
        chosen[at : at + 1] = gpu_queues(len(shown))
    state.env.db.ensure_schema()
    app = create_app(state.settings)
    device = describe_device() if owned is None else f"cuda ({len(owned)} GPUs, one per pool process)"
    start_worker(
        app,
        name=name,
        queues=chosen,
        device=device,
        concurrency=concurrency,
        loglevel=loglevel,
        pool=pool,
        events=events,
        memory_per_job=memory_per_job("gpu" in chosen, concurrency)
        if owned is None
        else min(g.memory_bytes for g in owned),
        gpus=owned,
        shown_gpus=shown,
    )


def gpu_worker(spec: str, name: str, concurrency: int, queues: str | None, pool: str):
    """``--gpus``: (the GPUs, checked free and locked for this worker's life; one pool process each; the gpu queue
    unless ``--queues`` says otherwise)."""
    from tlq.errors import BadInput
    from tlq.workers.gpus import claim

    source = click.get_current_context().get_parameter_source("concurrency")
    if pool != "prefork":
        raise BadInput("--gpus runs one pool process per GPU; drop --pool or use --pool prefork")
    owned, _locks = claim(spec, name)  # the locks live as long as this process
    if source is click.core.ParameterSource.COMMANDLINE and concurrency != len(owned):
        raise BadInput(f"--gpus gives {len(owned)} pool processes, one per GPU; drop --concurrency {concurrency}")
    return owned, len(owned), queues or "gpu"


def memory_per_job(gpu: bool, concurrency: int) -> int | None:
    """What each job of this worker may use: its GPU's memory, else this machine's memory over the jobs at once."""
    from tlq.client import Client
    from tlq.workers.devices import gpu_memory_bytes

    if gpu:
        return gpu_memory_bytes()
    total = Client.machine_memory()
    return total // concurrency if total else None


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Include workers that went offline.")
@click.option("--json", "json_out", is_flag=True, help="Print a list of worker objects.")
@pass_state
def workers(state: CliState, show_all: bool, json_out: bool) -> None:
    """List workers: host, queues, device, current job and when each last reported in."""
    data = state.client.workers(show_all)
    if json_out:
        print_json(data)
        return
    if not data:
        click.echo("no live workers; start one with `tlq worker`")
        return
    from rich.table import Table

    from tlq.cli.output import console

    table = Table(box=None, header_style="bold")
    for column in ("NAME", "HOST", "QUEUES", "DEVICE", "STATUS", "JOB", "LAST SEEN"):
        table.add_column(column)
    for w in data:
        table.add_row(
            w["name"],
            w["hostname"],
            ",".join(w["queues"]),
            w["device"]
            + "".join(f"\n  GPU {g['index']}: {g['name']}, {g['memory_bytes'] / 2**30:.0f} GiB" for g in w["gpus"]),
            w["status"],
            ",".join(map(str, w["current_jobs"])),
            f"{w['seconds_since_seen']:.0f}s ago",
        )
    console().print(table)
