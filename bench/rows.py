"""The benchmark rows. Each measures tlq and a plain baseline in the same run, on the same files."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One line of the results table: a tlq figure against the baseline's, with the target it should meet."""

    name: str
    tlq: float
    baseline: float
    unit: str
    target: str
    met: bool | None
    note: str = ""
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.tlq / self.baseline if self.baseline else float("nan")
        return self.baseline / self.tlq if self.tlq else float("nan")


def tlq_env(home: Path, device: str):
    """A tlq Environment in a fresh home of its own; the feature cache off, so every row measures real work."""
    from tlq.config import Settings
    from tlq.env import Environment

    shutil.rmtree(home, ignore_errors=True)
    os.environ["TLQ_FEATURE_CACHE_MB"] = "0"  # and in the processes the bench starts after this
    return Environment(Settings.load(home=home, environ={"TLQ_FEATURE_CACHE_MB": "0"}))


def run_job(env, task: str, backbone: str | None, device: str, **params) -> dict:
    from tlq.db import queries
    from tlq.jobs.spec import JobSpec
    from tlq.jobs.submit import run_here

    spec = JobSpec(task=task, backbone=backbone, pretrained=False, device=device, params=params)
    job_id = run_here(env, spec)
    with env.db.session() as session:
        job = queries.job_as_dict(session, queries.get_job(session, job_id), env.settings.artifacts_dir)
        job["history"] = {}
        for m in queries.metric_history(session, job_id):
            job["history"].setdefault(m.name, []).append((m.step, m.value))
    if job["status"] != "succeeded":
        raise RuntimeError(f"{task} job failed: {job['error']}")
    return job


def auto_choice(home: Path, kind: str) -> str:
    """What ``--precision auto`` chose for a ``kind`` step in this home, with the speeds it measured against plain
    fp32: 'bf16 (bf16 3.05x, fp32-cl 1.41x)', or 'fp32 (not measured)'."""
    try:
        entries = json.loads((home / "calibration.json").read_text()).values()
    except (OSError, ValueError):
        return "fp32 (not measured)"
    for entry in entries:
        if entry["key"].split(" || ")[1].startswith(kind):
            seconds = entry["seconds"]
            speeds = ", ".join(f"{w} {seconds['fp32'] / s:.2f}x" for w, s in seconds.items() if w != "fp32")
            return f"{entry['precision']} ({speeds})"
    return "fp32 (not measured)"


_PEAKS: dict[tuple[str, str], float] = {}


def matmul_peak(device: str, dtype: str, n: int = 2048, tries: int = 6) -> float:
    """The machine's matmul GFLOP/s in ``dtype`` (fp32 or bf16): the best of ``tries`` n x n products."""
    import torch

    key = (device, dtype)
    if key not in _PEAKS:
        kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        a = torch.randn(n, n, device=device).to(kind)
        b = torch.randn(n, n, device=device).to(kind)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(tries):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            best = min(best, time.perf_counter() - start)
        _PEAKS[key] = 2 * n**3 / best / 1e9
    return _PEAKS[key]


def best_peak(device: str) -> tuple[float, str]:
    """The better of the fp32 and bf16 matmul peaks, and which it is."""
    return max((matmul_peak(device, d), d) for d in ("fp32", "bf16"))


def gflop_per_image(arch: str, size: int = 224, training: bool = False) -> float:
    """A model's GFLOP for one image (forward; forward and backward when ``training``), by torch's counter."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model(arch, pretrained=False)
    x = torch.randn(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        if training:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / 1e9


def share_of_peak(arch: str, images_per_s: float, device: str, training: bool = False) -> str:
    """'N GFLOP/s, P% of the <dtype> peak' for a model row."""
    peak, dtype = best_peak(device)
    rate = gflop_per_image(arch, training=training) * images_per_s
    return f"{rate:.0f} GFLOP/s, {100 * rate / peak:.0f}% of the {dtype} matmul peak"


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# 1 --------------------------------------------------------------------------------------------------------------
def plain_extract(arch: str, paths: list[Path], device: str, batch_size: int = 16) -> float:
    """The plain way: fp32 timm model in eval mode, no_grad, batches of 16, PIL + torchvision transforms."""
    import timm
    import torch
    from PIL import Image

    model = timm.create_model(arch, pretrained=False, num_classes=0).eval().to(device)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i : i + batch_size]])
            model(batch.to(device))
    sync(device)
    return len(paths) / (time.perf_counter() - start)


def feature_extract_rows(work: Path, device: str, counts: dict[str, int]) -> list[Row]:
    from data import write_photos

    rows = []
    for arch, count in counts.items():
        folder = work / f"photos-{count}"
        paths = write_photos(folder, count)
        # Best of two, interleaved: this host's speed drifts by 10-15 % from minute to minute.
        baseline, rate = 0.0, 0.0
        for attempt in range(2):
            baseline = max(baseline, plain_extract(arch, paths, device))
            home = work / f"home-extract-{arch}-{attempt}"
            job = run_job(tlq_env(home, device), "feature-extract", arch, device, data=str(folder))
            rate = max(rate, job["metrics"]["images_per_second"])
        target = "2.5x" if arch in ("vgg16", "resnet50") else "-"
        rows.append(
            Row(
                f"feature-extract {arch} at 224, {count} JPEGs",
                rate,
                baseline,
                "img/s",
                target,
                rate / baseline >= 2.5 if target != "-" else None,
                note=f"tlq auto chose {auto_choice(home, 'inference')} on {job['ran_on']}; "
                + share_of_peak(arch, rate, device)
                + f"; the model waited for data {job['metrics']['data_wait_share']:.0%} of the time",
            )
        )
    if device == "cpu" and "resnet50" in counts:
        rows.append(compiled_extract_row(work, device, "resnet50", 512))
    return rows


def compiled_extract_row(work: Path, device: str, arch: str, count: int) -> Row:
    """tlq's feature-extract with ``--compile on`` against ``--compile off`` on the same JPEGs: images per second
    after the compile (the job's steady speed, decoding included), best of two interleaved, and the share of the
    matmul peak it reaches. The first compiled job runs in a fresh home (it times eager and compiled batches and
    builds every kernel); the second trusts that verdict and reuses the kernels, in this same process."""
    from data import write_photos

    folder = work / f"photos-{count}"
    write_photos(folder, count)
    eager, compiled, compile_s = 0.0, {}, []
    env = tlq_env(work / f"home-compile-{arch}", device)
    for attempt in range(2):
        off = run_job(
            tlq_env(work / f"home-eager-{arch}-{attempt}", device),
            "feature-extract",
            arch,
            device,
            data=str(folder),
            compile="off",
        )
        eager = max(eager, off["metrics"]["images_per_second"])
        metrics = run_job(env, "feature-extract", arch, device, data=str(folder), compile="on")["metrics"]
        compile_s.append(metrics.get("compile_seconds", float("nan")))
        steady = metrics.get("images_per_second_after_compile", metrics["images_per_second"])
        if steady > compiled.get("steady", 0.0):
            compiled = {**metrics, "steady": steady}
    peak, _ = best_peak(device)
    share = gflop_per_image(arch) * compiled["steady"] / peak
    speedup = compiled.get("compile_speedup", float("nan"))
    return Row(
        f"feature-extract {arch} at 224, {count} JPEGs: --compile on (after the compile) vs off",
        compiled["steady"],
        eager,
        "img/s",
        ">= 60% of the peak",
        share >= 0.6,
        note=f"compiled: {share_of_peak(arch, compiled['steady'], device)}; "
        f"eager: {share_of_peak(arch, eager, device)}; the forward alone ran {speedup:.2f}x faster compiled "
        f"({'kept' if compiled['compiled'] else 'not kept'}); {compile_s[0]:.0f} s to compile in a fresh home, "
        f"{compile_s[1]:.0f} s with its kernels built; the whole compiled job "
        f"{compiled['images_per_second']:.1f} img/s",
    )


# 2 --------------------------------------------------------------------------------------------------------------
def plain_head_training(build, train, val, device, epochs, lr, batch_size) -> tuple[float, float]:
    """The plain way to train a head behind a frozen backbone: a backbone forward for every batch of every
    epoch, fp32. ``build`` returns the backbone (a LoadedBackbone with no head). Returns (seconds, accuracy)."""
    import timm
    import torch
    from PIL import Image

    start = time.perf_counter()
    torch.manual_seed(0)
    loaded = build()
    backbone = loaded.model.eval().to(device)
    transform = timm.data.create_transform(**loaded.data_config)
    classes = sorted({label for _, label in train})
    head = torch.nn.Linear(backbone.num_features, len(classes)).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    index = {c: i for i, c in enumerate(classes)}

    def batches(items, shuffle_seed=None):
        order = list(range(len(items)))
        if shuffle_seed is not None:
            order = torch.randperm(len(items), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
        for i in range(0, len(order), batch_size):
            chunk = [items[j] for j in order[i : i + batch_size]]
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in chunk]).to(device)
            yield x, torch.tensor([index[label] for _, label in chunk], device=device)

    for epoch in range(epochs):
        for x, y in batches(train, shuffle_seed=epoch):
            with torch.no_grad():
                features = backbone(x)
            loss = torch.nn.functional.cross_entropy(head(features), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    correct = 0
    with torch.no_grad():
        for x, y in batches(val):
            correct += (head(backbone(x)).argmax(1) == y).sum().item()
    sync(device)
    return time.perf_counter() - start, correct / len(val)


def linear_probe_row(work: Path, device: str, per_class: int, epochs: int = 10, lr: float = 1e-2) -> Row:
    """Both sides train a linear head on the same backbone: a resnet18 that tlq fine-tuned on digits 0-4
    (row 3), probed on digits 5-9, so the features mean something and "equal accuracy" is a real check."""
    from data import write_digits

    from tlq.ml.labelled import load_labelled, stratified_split
    from tlq.plugins.backbone import BackboneRef, provider_for
    from tlq.plugins.registry import backbone_providers

    env, source = digits_backbone(work, device)
    data = write_digits(work / f"digits-probe-{per_class}", per_class, classes=range(5, 10))
    labelled = load_labelled(data)
    train_idx, val_idx = stratified_split(labelled.labels, 0.2, seed=0)
    train = [(labelled.files[i].path, labelled.files[i].label) for i in train_idx]
    val = [(labelled.files[i].path, labelled.files[i].label) for i in val_idx]
    ref = BackboneRef(f"job:{source['id']}")

    def build():
        return provider_for(ref.name, backbone_providers()).load(ref, env, 0)

    plain_seconds, plain_acc = plain_head_training(build, train, val, device, epochs, lr, 32)
    start = time.perf_counter()
    job = run_job(
        env,
        "finetune",
        ref.name,
        device,
        data=str(data),
        strategy="linear-probe",
        epochs=epochs,
        lr=lr,
        batch_size=32,
        schedule="constant",
    )
    tlq_seconds = time.perf_counter() - start
    tlq_acc = job["metrics"]["val_acc"]
    same = abs(tlq_acc - plain_acc) <= 0.01 + 1e-6  # (accuracies are float32 means)
    return Row(
        f"linear-probe on a digits resnet18 (job:{source['id']}), {epochs} epochs, {len(train)}+{len(val)} JPEGs at "
        "224",
        tlq_seconds,
        plain_seconds,
        "s",
        "7x, accuracy within 1 pt",
        tlq_seconds * 7 <= plain_seconds and same,
        note=f"val_acc tlq {tlq_acc:.3f} vs plain {plain_acc:.3f}; both times include building the model",
        higher_is_better=False,
    )


_DIGITS_BACKBONE: dict = {}


def digits_backbone(work: Path, device: str, per_class: int = 50, epochs: int = 3):
    """A resnet18 fine-tuned by tlq on 224 px JPEGs of digits 0-4 (full strategy): row 3's measurement and
    row 2's backbone. Trained once per run."""

    if device not in _DIGITS_BACKBONE:
        _DIGITS_BACKBONE[device] = digits_finetune(work, "home-digits", device, per_class, epochs, batch_size=16)
    return _DIGITS_BACKBONE[device]


def digits_finetune(work: Path, home: str, device: str, per_class: int, epochs: int, **params):
    """(env, job) of resnet18 fine-tuned (full strategy, no augmentation, lr 1e-3) by tlq on 224 px JPEGs of
    digits 0-4, ``per_class`` of each, in a fresh home ``work / home``."""
    from data import write_digits

    data = write_digits(work / f"digits-source-{per_class}", per_class, classes=range(5))
    env = tlq_env(work / home, device)
    options = dict(data=str(data), strategy="full", epochs=epochs, augment="none", lr=1e-3) | params
    return env, run_job(env, "finetune", "resnet18", device, **options)


# 3 --------------------------------------------------------------------------------------------------------------
def plain_training_rate(arch, items, device, epochs, batch_size) -> float:
    """A plain fp32 training loop; images/s over its last epoch."""
    import timm
    import torch
    from PIL import Image

    torch.manual_seed(0)
    classes = sorted({label for _, label in items})
    model = timm.create_model(arch, pretrained=False, num_classes=len(classes)).train().to(device)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    index = {c: i for i, c in enumerate(classes)}
    rate = 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(epoch)).tolist()
        for i in range(0, len(order), batch_size):
            chunk = [items[j] for j in order[i : i + batch_size]]
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in chunk]).to(device)
            y = torch.tensor([index[label] for _, label in chunk], device=device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        sync(device)
        rate = len(items) / (time.perf_counter() - start)
    return rate


def full_finetune_row(work: Path, device: str, per_class: int) -> Row:
    from data import write_digits

    from tlq.ml.labelled import load_labelled, stratified_split

    data = write_digits(work / f"digits-source-{per_class}", per_class, classes=range(5))
    labelled = load_labelled(data)
    train_idx, _ = stratified_split(labelled.labels, 0.2, seed=0)
    items = [(labelled.files[i].path, labelled.files[i].label) for i in train_idx]
    baseline = plain_training_rate("resnet18", items, device, epochs=2, batch_size=16)
    env, job = digits_backbone(work, device, per_class)
    rate = job["history"]["images_per_second"][-1][1]
    return Row(
        f"full finetune resnet18 at 224, {len(items)} train images",
        rate,
        baseline,
        "img/s",
        "1.8x",
        rate / baseline >= 1.8,
        note="training images/s in the last epoch (tlq: of 3; plain: of 2); tlq auto chose "
        + auto_choice(env.settings.home, "training")
        + "; "
        + share_of_peak("resnet18", rate, device, training=True)
        + f"; the model waited for data {job['history']['data_wait_share'][-1][1]:.0%} of the time",
    )


# 9 --------------------------------------------------------------------------------------------------------------
def ddp_scaling_row(work: Path, device: str, per_class: int, epochs: int = 3) -> Row:
    """``--ddp 2`` against one process, the same per-process batch (the global batch doubles): training images/s
    over the last epoch, and the scaling efficiency, rate(2) / (2 x rate(1)). On CUDA it needs 2 GPUs."""
    rates, accuracy = {}, {}
    for processes in (1, 2):
        _env, job = digits_finetune(
            work, f"home-ddp-{processes}", device, per_class, epochs, batch_size=32, ddp=processes
        )
        rates[processes] = job["history"]["images_per_second"][-1][1]
        accuracy[processes] = job["history"]["val_acc"][-1][1]
    efficiency = rates[2] / (2 * rates[1])
    return Row(
        "full finetune resnet18 at 224: --ddp 2 against 1 process",
        rates[2],
        rates[1],
        "img/s",
        "-",
        None,
        note=f"scaling efficiency {efficiency:.0%} (1.0 = twice the images/s); batch 32 per process; val_acc "
        f"{accuracy[2]:.3f} (ddp 2) and {accuracy[1]:.3f} (1 process) after {epochs} epochs",
    )


# 4 --------------------------------------------------------------------------------------------------------------
def install_example_plugin(work: Path) -> Path:
    from tests.support import install_packages

    site = work / "plugin-site"
    if not (site / "tlq_example_plugin").exists():
        install_packages(site, REPO / "examples" / "tlq-example-plugin")
    return site


def start_worker(env: dict, log: Path, *args: str):
    """A real `tlq worker` (the tests' WorkerProcess), ready to take jobs; ``discard()`` it when done."""
    from tests.support import WorkerProcess

    log.unlink(missing_ok=True)
    return WorkerProcess(env, log, *args).start().wait_ready(timeout=120)


def stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def wait_done(env, job_ids: list[int], timeout: float = 300) -> list:
    """Waits for the jobs to end, then returns their rows. Every 10 ms it counts, in one plain query over their
    id range, those that ended: the waiting must not take CPU from the 2 cores the worker, its database and its
    broker share (asking for each job's status through an ORM session every 10 ms took a third of a core, and
    made tlq's rows slower than tlq is). The bench's jobs are the only ones in their database, so the range holds
    no other job; a list with gaps is waited for one id at a time."""
    from sqlalchemy import func, select

    from tlq.db import queries
    from tlq.db.models import Job

    if not job_ids:
        return []
    ended = ("succeeded", "failed", "cancelled")
    deadline = time.monotonic() + timeout
    ranges = [(min(job_ids), max(job_ids))] if len(set(job_ids)) == max(job_ids) - min(job_ids) + 1 else []
    ranges = ranges or [(j, j) for j in job_ids]
    with env.db.engine.connect() as conn:
        for low, high in ranges:
            count = select(func.count()).where(Job.id.between(low, high), Job.status.in_(ended))
            while conn.execute(count).scalar_one() < high - low + 1:
                conn.rollback()
                if time.monotonic() > deadline:
                    raise RuntimeError("jobs did not finish")
                time.sleep(0.01)
            conn.rollback()
    with env.db.read_session() as session:
        return [queries.get_job(session, j) for j in job_ids]


def queue_rows(work: Path, broker: str, broker_url: str | None, database_url: str | None) -> list[Row]:
    """Submit-to-start latency and throughput of tiny jobs, tlq against bare Celery on the same broker."""
    from tlq.config import Settings
    from tlq.env import Environment
    from tlq.jobs.spec import JobSpec
    from tlq.jobs.submit import submit
    from tlq.workers.app import create_app

    site = install_example_plugin(work)
    home = work / f"home-queue-{broker}"
    tiny = work / "tiny"
    tiny.mkdir(exist_ok=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tiny / "one.png")
    env_vars = dict(os.environ, TLQ_HOME=str(home), PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    for key, value in (("TLQ_BROKER_URL", broker_url), ("TLQ_DATABASE_URL", database_url)):
        if value:
            env_vars[key] = value
    sys.path.insert(0, str(site))
    settings = Settings.load(environ=env_vars)
    env = Environment(settings)
    app = create_app(settings)
    worker = start_worker(env_vars, work / f"worker-{broker}.log", "--name", f"bench-{broker}")
    try:
        spec = JobSpec(task="pixel-stats", params={"data": str(tiny)})
        latencies = []
        for _ in range(20):
            (job,) = wait_done(env, [submit(env, spec, app=app)])
            latencies.append((job.started_at - job.created_at).total_seconds())
        start = time.perf_counter()
        ids = [submit(env, spec, app=app) for _ in range(100)]
        wait_done(env, ids)
        rate = len(ids) / (time.perf_counter() - start)
    finally:
        worker.discard()
    raw_p50, raw_rate = raw_celery(work, broker, settings.broker_url)
    p50 = statistics.median(latencies)
    p95 = float(np.percentile(latencies, 95))
    target = "p50 < 100 ms" if broker == "redis" else "-"
    return [
        Row(
            f"queue {broker}: submit-to-start p50 (p95 {p95 * 1000:.0f} ms)",
            p50 * 1000,
            raw_p50 * 1000,
            "ms",
            target,
            p50 < 0.1 if broker == "redis" else None,
            higher_is_better=False,
            note="baseline: a bare Celery task on the same broker",
        ),
        Row(
            f"queue {broker}: tiny jobs per second, 100 at once, 1 worker",
            rate,
            raw_rate,
            "jobs/s",
            "-",
            None,
            note="baseline: bare Celery tasks",
        ),
    ]


RAW_APP = """
import time
from celery import Celery
app = Celery("raw", broker=BROKER, backend=BACKEND)
app.conf.update(task_serializer="json", accept_content=["json"], worker_prefetch_multiplier=1, task_acks_late=True,
                broker_transport_options=OPTIONS)
@app.task(name="raw.stamp")
def stamp(sent):
    return time.time() - sent
"""


def raw_celery(work: Path, broker: str, broker_url: str) -> tuple[float, float]:
    """The same measurements for a bare Celery task that does nothing but report when it started."""
    from tlq.workers.app import celery_broker

    url, transport = celery_broker(broker_url)
    if transport is not None:
        url = "sqla+" + url
        backend = f"db+sqlite:///{work / 'raw-results.sqlite'}"
        options = {}
    else:
        backend = url
        options = {}
    module = work / "raw_bench_app.py"
    module.write_text(f"BROKER={url!r}\nBACKEND={backend!r}\nOPTIONS={options!r}\n" + RAW_APP)
    env = dict(os.environ, PYTHONPATH=str(work))
    log = work / f"raw-worker-{broker}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "raw_bench_app",
            "worker",
            "-c",
            "1",
            "-P",
            "prefork",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ],
        env=env,
        cwd=work,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            if time.monotonic() > deadline:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.1)
        sys.path.insert(0, str(work))
        import raw_bench_app

        latencies = [raw_bench_app.stamp.delay(time.time()).get(timeout=30) for _ in range(20)]
        start = time.perf_counter()
        results = [raw_bench_app.stamp.delay(time.time()) for _ in range(100)]
        for r in results:
            r.get(timeout=120)
        rate = 100 / (time.perf_counter() - start)
    finally:
        stop(proc)
        sys.modules.pop("raw_bench_app", None)
    return statistics.median(latencies), rate


def warm_worker_row(work: Path) -> Row:
    """Time until the first batch of a second job on a warm worker, same backbone and weights."""
    import timm
    from data import write_photos
    from safetensors.torch import save_file

    from tlq.config import Settings
    from tlq.env import Environment
    from tlq.jobs.spec import JobSpec
    from tlq.jobs.submit import submit
    from tlq.workers.app import create_app

    weights = work / "resnet50.safetensors"
    if not weights.exists():
        save_file(timm.create_model("resnet50").state_dict(), str(weights))
    folder = work / "photos-16"
    write_photos(folder, 16)
    home = work / "home-warm"
    env_vars = dict(os.environ, TLQ_HOME=str(home), HF_HUB_OFFLINE="1", TLQ_FEATURE_CACHE_MB="0")
    env_vars.pop("TLQ_BROKER_URL", None)
    env_vars.pop("TLQ_DATABASE_URL", None)
    settings = Settings.load(environ=env_vars)
    env = Environment(settings)
    app = create_app(settings)
    worker = start_worker(env_vars, work / "worker-warm.log", "--name", "bench-warm")
    try:
        spec = JobSpec(task="feature-extract", backbone="resnet50", weights=weights, params={"data": str(folder)})
        firsts = []
        for _ in range(2):
            (job,) = wait_done(env, [submit(env, spec, app=app)])
            with env.db.session() as session:
                from tlq.db import queries

                firsts.append(queries.last_metrics(session, job.id)["seconds_to_first_batch"])
    finally:
        worker.discard()
    cold, warm = firsts
    return Row(
        "warm worker: second resnet50 job, seconds to its first batch",
        warm,
        cold,
        "s",
        "< 0.5 s",
        warm < 0.5,
        note="baseline: the same job on a cold worker (model built and loaded)",
        higher_is_better=False,
    )


# 5 --------------------------------------------------------------------------------------------------------------
def pgd_row(work: Path, device: str, eps: float = 1 / 255, steps: int = 10) -> list[Row]:
    """tlq's PGD against torchattacks' on a digits model tlq trained: same model, images, eps and steps."""
    import timm  # noqa: F401
    import torch
    import torchattacks
    from data import write_digits

    from tlq.ml.attacks import PixelModel, attack, pixel_transform
    from tlq.ml.images import discover_files, load_rgb
    from tlq.plugins.backbone import BackboneRef, provider_for
    from tlq.plugins.registry import backbone_providers

    train = write_digits(work / "digits64-train", 60, size=64)
    env = tlq_env(work / "home-pgd", device)
    source = run_job(
        env,
        "finetune",
        "test_resnet",
        device,
        data=str(train),
        strategy="full",
        epochs=6,
        lr=2e-3,
        image_size=64,
        augment="none",
        batch_size=16,
    )
    ref = BackboneRef(f"job:{source['id']}")
    loaded = provider_for(ref.name, backbone_providers()).load(ref, env, None)
    model = PixelModel(loaded.model.eval(), loaded.data_config["mean"], loaded.data_config["std"]).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    files = discover_files(train)[::3]
    transform = pixel_transform(loaded.data_config)
    x = torch.stack([transform(load_rgb(f.path)) for f in files]).to(device)
    y = torch.tensor([int(f.label) for f in files], device=device)
    keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    alpha = 2.5 * eps / steps
    reference = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    # Warm both up at the full batch shape (oneDNN builds its kernels for each new shape on first use), so the
    # order of the runs does not matter.
    attack(model, x, y, "pgd", False, eps, 1, alpha)
    torchattacks.PGD(model, eps=eps, alpha=alpha, steps=1, random_start=True)(x, y)

    def timed(fn):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        return out, time.perf_counter() - start

    def ours_with_outcome():
        result = attack(model, x, y, "pgd", False, eps, steps, alpha, generator=torch.Generator().manual_seed(0))
        return result.success_quantized.float().mean().item()  # judged on the 8-bit images it would save

    def theirs_with_outcome():
        torch.manual_seed(0)
        adversarial = reference(x, y)
        with torch.no_grad():  # the caller needs one forward pass to learn the outcome
            return (model(adversarial).argmax(1) != y).float().mean().item()

    # Best of two, interleaved: this host's speed drifts from minute to minute.
    our_seconds = their_seconds = float("inf")
    for _ in range(2):
        (our_rate, seconds) = timed(ours_with_outcome)
        our_seconds = min(our_seconds, seconds)
        (their_rate, seconds) = timed(theirs_with_outcome)
        their_seconds = min(their_seconds, seconds)
    name = f"PGD untargeted eps {eps * 255:.0f}/255, {steps} steps, {len(x)} images"
    return [
        Row(
            f"{name}: wall time",
            our_seconds,
            their_seconds,
            "s",
            "no slower",
            our_seconds <= their_seconds * 1.05,
            note="both include learning the outcome (tlq: of the 8-bit images it would save; torchattacks: of floats)",
            higher_is_better=False,
        ),
        Row(
            f"{name}: success rate",
            our_rate,
            their_rate,
            "",
            "at least as high",
            our_rate >= their_rate,
            note="share of correctly classified images fooled",
        ),
    ]


# 6 --------------------------------------------------------------------------------------------------------------
def _peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM, which starts afresh at exec: unlike the kernel's
    rusage figure, it does not count the pages the child shared with this big process right after fork)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def streaming_row(work: Path, counts: tuple[int, ...] = (1_000, 10_000, 100_000)) -> Row:
    """`tlq run feature-extract` over 1,000, 10,000 and 100,000 small PNG files, each in a process of its own:
    its peak resident memory (read from /proc ten times a second while it runs) and seconds per 1,000 images.
    Features stream to features.npy, so memory should not grow with the count."""
    from data import write_small_pngs

    rss, per_thousand, sizes = {}, {}, {}
    for count in counts:
        folder = write_small_pngs(work / f"small-{count}", count)
        home = work / f"home-stream-{count}"
        shutil.rmtree(home, ignore_errors=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TLQ_")}
        env.update(TLQ_HOME=str(home), TLQ_FEATURE_CACHE_MB="0", HF_HUB_OFFLINE="1")
        command = [sys.executable, "-m", "tlq", "run", "feature-extract", "--backbone", "test_resnet"]
        command += ["--no-pretrained", "--data", str(folder), "--json"]
        start = time.perf_counter()
        with open(work / f"stream-{count}.json", "w+b") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.DEVNULL)
            peak = 0
            while process.poll() is None:
                peak = max(peak, _peak_rss_kib(process.pid))
                time.sleep(0.1)
            seconds = time.perf_counter() - start
            out.seek(0)
            output = out.read()
        if process.returncode != 0:
            raise RuntimeError(f"feature-extract over {count} files failed: {output[-500:]!r}")
        job = json.loads(output)
        rss[count] = peak / 1024
        per_thousand[count] = 1000 * seconds / count
        sizes[count] = next(a["bytes"] for a in job["artifacts"] if a["kind"] == "features") / 2**20
    small, large = counts[0], counts[-1]
    note = "; ".join(
        f"{c:,} images: {rss[c]:.0f} MB peak, {per_thousand[c]:.2f} s per 1,000, features.npy {sizes[c]:.0f} MB"
        for c in counts
    )
    return Row(
        f"feature-extract test_resnet over {large:,} small PNGs: peak RSS (baseline: {small:,})",
        rss[large],
        rss[small],
        "MB",
        "<= 1.1x",
        rss[large] <= 1.1 * rss[small],
        note=note + " (the whole process: Python, torch, the model)",
        higher_is_better=False,
    )


# 7 --------------------------------------------------------------------------------------------------------------
def populate_at_scale(database, jobs: int, metrics_per_job: int) -> int:
    """``jobs`` finished finetune jobs in groups of 100, each with ``metrics_per_job`` metric rows (val_acc and
    train_loss per epoch), written in bulk. Returns the id of the last group."""
    import datetime as dt
    import random

    from sqlalchemy import insert

    from tlq.db.models import Job, JobGroup, Metric

    rng = random.Random(0)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    epochs = metrics_per_job // 2
    backbones = ["resnet18", "resnet50", "vgg16", "convnext_tiny", "vit_small_patch16_224"]
    with database.session() as session:
        session.execute(insert(JobGroup), [{"name": f"sweep {g}"} for g in range(jobs // 100)])
        for first in range(0, jobs, 10_000):
            rows = []
            for i in range(first, min(jobs, first + 10_000)):
                when = start + dt.timedelta(seconds=60 * i)
                rows.append(
                    {
                        "id": i + 1,
                        "task": "finetune",
                        "backbone": backbones[i % len(backbones)],
                        "params": {"lr": rng.choice([1e-4, 3e-4, 1e-3, 3e-3]), "epochs": epochs, "data": "/data"},
                        "status": "succeeded" if i % 20 else "failed",
                        "tags": {"team": rng.choice(["a", "b", "c"])},
                        "group_id": i // 100 + 1,
                        "created_at": when,
                        "started_at": when,
                        "finished_at": when + dt.timedelta(seconds=rng.randint(30, 3000)),
                        "attempts": 1,
                    }
                )
            session.execute(insert(Job), rows)
        for first in range(0, jobs, 5_000):
            rows = []
            for job in range(first + 1, min(jobs, first + 5_000) + 1):
                for epoch in range(1, epochs + 1):
                    rows.append(
                        {"job_id": job, "name": "val_acc", "step": epoch, "epoch": epoch, "value": rng.random()}
                    )
                    rows.append(
                        {"job_id": job, "name": "train_loss", "step": epoch, "epoch": epoch, "value": rng.random()}
                    )
            session.execute(insert(Metric), rows)
    return jobs // 100


def database_scale_rows(work: Path, backend: str, database_url: str | None, jobs: int = 100_000) -> list[Row]:
    """`tlq jobs`, `tlq results --where` and `tlq compare` on a database of ``jobs`` jobs and 10 metric rows each
    (1,000,000 for 100,000 jobs): the client call (best of 3) and the whole command, as a user runs it."""
    from tlq.client import Client
    from tlq.config import Settings
    from tlq.db import Database

    home = work / f"home-scale-{backend}"
    shutil.rmtree(home, ignore_errors=True)
    settings = Settings.load(home=home, database_url=database_url, environ={})
    database = Database(settings.database_url)
    database.ensure_schema()
    started = time.perf_counter()
    group = populate_at_scale(database, jobs, 10)
    fill_s = time.perf_counter() - started
    database.dispose()
    client = Client(settings=settings)
    where = "val_acc > 0.99 and params.lr <= 0.0003 and backbone = 'resnet50'"
    calls = {
        "tlq jobs": (lambda: client.list(limit=50), ["jobs"]),
        f'tlq results --where "{where}"': (
            lambda: client.results(where, "-val_acc", limit=20),
            ["results", "--where", where],
        ),
        f"tlq compare --group {group} (100 jobs)": (
            lambda: client.compare(group=group),
            ["compare", "--group", str(group)],
        ),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLQ_")}
    env.update(TLQ_HOME=str(home), HF_HUB_OFFLINE="1")
    if database_url:
        env["TLQ_DATABASE_URL"] = database_url
    rows = []
    for label, (call, args) in calls.items():
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            answer = call()
            best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tlq", *args], env=env, capture_output=True, text=True)
        command_s = time.perf_counter() - start
        if done.returncode != 0 or not answer:
            raise RuntimeError(f"{label} failed on {backend}: {done.stderr[-500:]}")
        rows.append(
            Row(
                f"{backend}, {jobs:,} jobs and {jobs * 10:,} metric rows: {label}",
                best,
                1.0,
                "s",
                "< 1 s",
                best < 1.0,
                note=f"the client call, best of 3; the whole command (Python start included) {command_s:.2f} s; "
                f"filling the database took {fill_s:.0f} s",
                higher_is_better=False,
            )
        )
    return rows + dashboard_rows(settings, backend, jobs)


def dashboard_rows(settings, backend: str, jobs: int, long_history: int = 100_000) -> list[Row]:
    """`tlq ui` on the same database: the jobs page and the job page of a job with ``long_history`` metric rows
    (5 metrics), each as a browser loads it: the HTML, then the API call its script makes at once; best of 3."""
    import datetime as dt

    from sqlalchemy import insert
    from starlette.testclient import TestClient

    from tlq.db import Database
    from tlq.db.models import Job, Metric
    from tlq.ui.app import create_app

    database = Database(settings.database_url)
    now = dt.datetime.now(dt.UTC)
    with database.session() as session:
        long_id = jobs + 1
        session.execute(
            insert(Job),
            [{"id": long_id, "task": "finetune", "backbone": "resnet50", "params": {"lr": 1e-4}, "status": "succeeded",
              "created_at": now, "started_at": now, "finished_at": now, "attempts": 1, "name": "long history"}],
        )  # fmt: skip
        names = ["train_loss", "val_loss", "train_acc", "val_acc", "lr"]
        steps = long_history // len(names)
        for first in range(0, steps, 4_000):
            session.execute(
                insert(Metric),
                [
                    {"job_id": long_id, "name": name, "step": step, "epoch": step // 100, "value": (step % 97) / 97}
                    for step in range(first, min(steps, first + 4_000))
                    for name in names
                ],
            )
    database.dispose()
    loads = {
        "tlq ui: the jobs page (HTML and its /api/jobs)": ("/", "/api/jobs?page=1&per_page=50"),
        f"tlq ui: the page of a job with {long_history:,} metric rows (HTML and its metrics, downsampled)": (
            f"/jobs/{long_id}",
            f"/api/jobs/{long_id}/metrics?max_points=1000",
        ),
    }
    rows = []
    with TestClient(create_app(settings, token=""), base_url="http://127.0.0.1") as browser:
        for label, urls in loads.items():
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for url in urls:
                    answer = browser.get(url)
                    if answer.status_code != 200:
                        raise RuntimeError(f"{url} answered {answer.status_code}: {answer.text[:300]}")
                best = min(best, time.perf_counter() - start)
            rows.append(
                Row(
                    f"{backend}, {jobs:,} jobs and {jobs * 10 + long_history:,} metric rows: {label}",
                    best,
                    1.0,
                    "s",
                    "< 1 s",
                    best < 1.0,
                    note="server side, in process (Starlette's test client), best of 3",
                    higher_is_better=False,
                )
            )
    return rows


def machine_info(device: str) -> dict:
    import platform

    import celery
    import timm
    import torch

    from tlq.ml.precision import cpu_flags, cpu_info

    cpu = cpu_info()[0]
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "amx": bool(cpu_flags() & {"amx_bf16", "amx_tile"}),
        "avx512-bf16": "avx512_bf16" in cpu_flags(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "celery": celery.__version__,
        "device": device,
        "torch threads": torch.get_num_threads(),
        "fp32 matmul GFLOP/s": round(matmul_peak(device, "fp32")),
        "bf16 matmul GFLOP/s": round(matmul_peak(device, "bf16")),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def to_json(rows: list[Row]) -> str:
    return json.dumps([row.__dict__ | {"ratio": row.ratio} for row in rows], indent=2)
