"""``--compile``: a job's inference forward through ``torch.compile`` (inductor, weights frozen into the graph),
where that pays.

On a 2-core AVX512-BF16 CPU (no AMX), resnet50 features ran 1.35-1.5x faster compiled than bf16 eager in
channels_last, but compiling took 7-16 s in every new process (about 30 s the first time on a machine, while gcc
builds each kernel; inductor keeps the built kernels in ``TLQ_HOME/inductor`` for later processes). So ``auto``
compiles only on a CPU, only a job whose eager forward would run long enough to pay the compile back, and never a
model shape this machine found no faster compiled. The job then checks for itself: it times a few full batches
eager, compiles, times a few compiled, and goes back to eager unless compiled is at least 5% faster. That verdict
is cached beside the precision choice in ``calibration.json``, and a later job of the same model shape, precision
and batch trusts it instead of measuring again.

Only full batches go through the compiled forward (``dynamic=False``: one graph, and no recompile for a short last
batch, which runs eager). Any error while compiling or running it sends the job back to the eager forward with one
warning: a job never fails because of the compiler.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tlq.ml import calibration
from tlq.ml.calibration import Workload

Mode = Literal["auto", "on", "off"]
# ``auto`` compiles where the time a compile saves is at least PAYBACK times what it costs: the compile's seconds
# vary by a third from one process to the next on a busy 2-core host, and a job that only breaks even is a coin
# flip (resnet50 over 1,024 JPEGs here: 17.8 s of eager forward, 11 s saved, 10.7-14 s to compile).
PAYBACK = 1.5
# With no verdict measured here, a compile of about 10 s (7-16 s measured) against a 1.35x gain (the smallest
# seen on resnet50) saves 26% of the eager time: PAYBACK times 10 s past about 58 s of eager forward.
MIN_EAGER_S = 60.0
MARGIN = 1.05  # compiled must beat eager by this factor, or the job goes back to eager
WARM_UP_BATCHES = 1  # the first eager batch builds oneDNN's kernels: not timed
TIMED_BATCHES = 3  # full batches timed each way; the best of them counts (this host's speed drifts)
log = logging.getLogger("tlq.compile")


@dataclass(frozen=True)
class Verdict:
    """What compiling a forward gave on this machine: the compile's seconds and the seconds per image of the
    forward eager and compiled (``compiled_s`` None: the compile failed, with ``error``)."""

    compile_s: float
    eager_s: float
    compiled_s: float | None
    error: str = ""

    @property
    def speedup(self) -> float | None:
        return self.eager_s / self.compiled_s if self.compiled_s else None

    @property
    def faster(self) -> bool:
        """Whether compiled beat eager by the margin that keeps it."""
        return self.compiled_s is not None and self.compiled_s * MARGIN <= self.eager_s

    def describe(self) -> str:
        if self.compiled_s is None:
            return f"compiling failed: {self.error}"
        return (
            f"compiled {self.speedup:.2f}x eager ({1 / self.compiled_s:.1f} against {1 / self.eager_s:.1f} img/s), "
            f"{self.compile_s:.1f} s to compile"
        )


@dataclass(frozen=True)
class Plan:
    """Whether a job compiles its forward, and why.

    Attributes:
        compile: The job compiles its forward (on its first full batches).
        measure: It times eager and compiled batches first and keeps the faster; False where it trusts
            ``verdict``, a measurement of the same model shape, precision and batch on this machine.
        reason: Why, for the job's log.
        verdict: The cached verdict the plan rests on, if any.
        key: Where the job files its own verdict (``calibration.measurement_key``); empty: nowhere.
        digest: The digest ``key`` is filed under.
    """

    compile: bool
    measure: bool = False
    reason: str = ""
    verdict: Verdict | None = None
    key: str = ""
    digest: str = ""


def plan_compile(
    mode: Mode, device: str, images: int | None, eager_s: float | None, verdict: Verdict | None = None
) -> Plan:
    """Whether to compile a job's forward: ``images`` to go through it at ``eager_s`` seconds each eager (None:
    unknown), given this machine's earlier ``verdict`` on the same model shape.

    ``off`` never compiles; ``on`` always tries (measuring again unless the verdict found compiled faster).
    ``auto`` compiles on a CPU only, never where the verdict found compiled no faster (or failing), and only for
    a job long enough: with a verdict, where the time it would save is ``PAYBACK`` times the compile it measured;
    without one, past ``MIN_EAGER_S`` seconds of eager work.
    """
    if mode == "off":
        return Plan(False, reason="--compile off")
    if device != "cpu":
        return Plan(False, reason=f"compiling is for CPU jobs for now; on {device} the forward runs eager")
    trusted = verdict is not None and verdict.faster
    if mode == "on":
        return Plan(True, measure=not trusted, reason="--compile on", verdict=verdict)
    if verdict is not None and not trusted:
        return Plan(False, reason=f"no gain here before ({verdict.describe()}); --compile on tries again")
    if eager_s is None or images is None:
        return Plan(False, reason="the job's length is unknown")
    eager = eager_s * images
    if verdict is not None:
        saved = eager * (1 - 1 / verdict.speedup)
        if saved >= PAYBACK * verdict.compile_s:
            return Plan(
                True, reason=f"saves about {saved:.0f} s of {eager:.0f} s; {verdict.describe()}", verdict=verdict
            )
        return Plan(
            False,
            reason=f"would save {saved:.0f} s of {eager:.0f} s, too little for its {verdict.compile_s:.0f} s compile",
        )
    if eager >= MIN_EAGER_S:
        return Plan(True, measure=True, reason=f"about {eager:.0f} s of eager work: worth trying")
    return Plan(False, reason=f"about {eager:.0f} s of eager work, under the {MIN_EAGER_S:.0f} s a compile needs")


def plan_job(mode: Mode, workload: Workload, device: str, precision: str, home) -> Plan:
    """``plan_compile`` for a job about to run ``workload`` in ``precision``: with this machine's cached verdict,
    and an estimate of the eager seconds per image (the verdict's, else what ``--precision auto`` measured, else
    a short timing of the model now, as calibration times it)."""
    if mode == "off" or device != "cpu":
        return plan_compile(mode, device, workload.images, None)
    key, digest = verdict_key(workload, device, precision)
    verdict = read_verdict(home, key, digest)
    estimate = verdict.eager_s if verdict is not None else None
    if estimate is None and mode == "auto":
        estimate = (calibration.known_seconds(workload, device, home) or {}).get(precision)
        if estimate is None and (workload.images or 0) >= calibration.MIN_IMAGES:
            estimate = calibration.measure(workload, device, (precision,))[precision]
    plan = plan_compile(mode, device, workload.images, estimate, verdict)
    return dataclasses.replace(plan, key=key, digest=digest)


def verdict_key(workload: Workload, device: str, precision: str) -> tuple[str, str]:
    """The key (and its digest) of the compile verdict for ``workload`` in ``precision`` on this machine: beside
    the precision choice, for this batch exactly (a compiled graph is built for one batch shape)."""
    return calibration.measurement_key(workload, device, f"compile {precision} batch {workload.batch}")


def read_verdict(home, key: str, digest: str) -> Verdict | None:
    """The verdict filed under ``digest`` for ``key``; None where there is none, or one this code did not write."""
    entry = calibration.read_measurement(home, digest)
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("compile"), dict):
        return None
    fields = entry["compile"]

    def seconds(value, at_least_zero: bool = False) -> bool:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and (value >= 0 if at_least_zero else value > 0)

    compiled = fields.get("compiled_s")
    if not (seconds(fields.get("compile_s"), True) and seconds(fields.get("eager_s"))):
        return None
    if compiled is not None and not seconds(compiled):
        return None
    return Verdict(fields["compile_s"], fields["eager_s"], compiled, str(fields.get("error", "")))


def record_verdict(home, plan: Plan, verdict: Verdict) -> None:
    """Files ``verdict`` where ``plan`` says, for later jobs of the same shape."""
    if plan.digest:
        calibration.record_measurement(home, plan.digest, {"key": plan.key, "compile": dataclasses.asdict(verdict)})


def keep_kernels_in(home) -> None:
    """Points inductor's cache (the C++ kernels it builds) at ``home``/inductor, so that later processes reuse
    them: a test_resnet compile took 32 s in a fresh process and 7 s with its kernels built.

    A folder the user chose with ``TORCHINDUCTOR_CACHE_DIR`` stays. Importing torch sets that variable to torch's
    default folder (in /tmp) where it is unset, so that value counts as unset. Inductor reads the variable
    itself, each time it builds or loads a kernel, so it is set here rather than kept in tlq's settings.
    """
    if home is None:
        return
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(home) / "inductor")


class CompiledForward:
    """A job's forward, called with each batch, run compiled or eager as its plan and its own timings say.

    Compiles once, on the first full batch it is to compile (after the eager batches it times, when it
    measures); ``close`` at the end of the job frees the compiled graph and its frozen copy of the weights.

    Args:
        forward: The eager forward: a batch in, features out.
        batch_size: The job's batch; only batches of exactly this many images go through the compiled graph.
        plan: What ``plan_job`` decided (a plan that does not compile runs eager throughout).
        home: TLQ_HOME: where the kernels and the verdict are kept.
        logger: Where the line about the outcome, or a failure, goes.
    """

    def __init__(self, forward: Callable, batch_size: int, plan: Plan, home=None, logger=None) -> None:
        self.forward, self.batch_size, self.plan, self.home = forward, batch_size, plan, home
        self.log = logger or log
        self.verdict: Verdict | None = None
        self.compile_s: float | None = None
        self._compiled: Callable | None = None
        self._eager_times: list[float] = []
        self._compiled_times: list[float] = []
        self._warm_ups = 0
        self._first_call_s = 0.0
        self._compiled_at: float | None = None  # when the compile ended (perf_counter)
        self._images_since = 0  # images through the forward since then, either way
        self.steady_rate: float | None = None  # images per second from the compile's end to close()
        self._state = "eager"
        if plan.compile:
            self._state = "warm-up" if plan.measure else "compile"

    @property
    def kept(self) -> bool:
        """Whether the compiled forward runs the job's full batches (after ``close``: whether it ran the rest)."""
        return self._state == "compiled"

    def __call__(self, images):
        if self._compiled_at is not None:
            self._images_since += len(images)
        if self._state == "eager" or images.shape[0] != self.batch_size:
            return self.forward(images)
        if self._state == "warm-up":
            self._warm_ups += 1
            if self._warm_ups >= WARM_UP_BATCHES:
                self._state = "time-eager"
            return self.forward(images)
        if self._state == "time-eager":
            out, seconds = _timed(self.forward, images)
            self._eager_times.append(seconds / len(images))
            if len(self._eager_times) >= TIMED_BATCHES:
                self._state = "compile"
            return out
        try:
            if self._state == "compile":
                return self._compile_on(images)
            out, seconds = _timed(self._run_compiled, images)
        except Exception as exc:  # no C compiler, an op inductor cannot lower, ...: the job goes on eager
            return self._fall_back(exc, images)
        if self._state == "time-compiled":
            self._compiled_times.append(seconds / len(images))
            if len(self._compiled_times) >= TIMED_BATCHES:
                self._decide()
        return out

    def _compile_on(self, images):
        import torch

        keep_kernels_in(self.home)
        self._compiled = torch.compile(self.forward, dynamic=False)
        out, self._first_call_s = _timed(self._run_compiled, images)
        self._compiled_at = time.perf_counter()
        # The first call traces, compiles and runs the batch: the compile is that call less one compiled run
        # (the verdict's, or once timed, the job's own).
        self.compile_s = self._first_call_s
        if self.plan.measure:
            self._state = "time-compiled"
        else:
            self._state = "compiled"
            if self.plan.verdict is not None and self.plan.verdict.compiled_s is not None:
                self.compile_s = max(0.0, self._first_call_s - self.plan.verdict.compiled_s * len(images))
                # The compile's own time again, for the next job's plan (kernels built once are reused).
                self.verdict = dataclasses.replace(self.plan.verdict, compile_s=self.compile_s)
                record_verdict(self.home, self.plan, self.verdict)
            self.log.info("compiled the forward in %.1f s (%s)", self.compile_s, self.plan.reason)
        return out

    def _run_compiled(self, images):
        import torch._inductor.config as inductor

        # Freezing folds the weights into the graph as constants (conv + batch norm fused, weights prepacked for
        # oneDNN): the part of the gain eager cannot have. It acts while the graph compiles, on the first call.
        with inductor.patch(freezing=True):
            return self._compiled(images)

    def _decide(self) -> None:
        """Keeps the compiled forward where it beat eager by the margin, else goes back to eager; files the
        verdict."""
        compiled = min(self._compiled_times)
        self.compile_s = max(0.0, self._first_call_s - compiled * self.batch_size)
        self.verdict = Verdict(self.compile_s, min(self._eager_times), compiled)
        record_verdict(self.home, self.plan, self.verdict)
        if self.verdict.faster:
            self._state = "compiled"
            self.log.info("%s: keeping the compiled forward", self.verdict.describe())
        else:
            self._state = "eager"
            self.log.info("%s: not %d%% faster, back to eager", self.verdict.describe(), round(100 * (MARGIN - 1)))

    def _fall_back(self, exc: Exception, images):
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        self._state = "eager"
        self.verdict = Verdict(self.compile_s or 0.0, min(self._eager_times, default=0.0), None, error)
        if self._eager_times:  # auto jobs of this shape stop trying; --compile on tries again
            record_verdict(self.home, self.plan, self.verdict)
        self.log.warning("compiling the forward failed (%s); the job runs eager", error)
        return self.forward(images)

    def close(self) -> None:
        """Decides on whatever timings the job got to (one too short to finish measuring), then frees the
        compiled graph: torch keeps it, with the frozen weights, until its caches are reset."""
        if self._state == "time-compiled" and self._compiled_times:
            self._decide()
        if self._compiled_at is not None and self._images_since:
            self.steady_rate = self._images_since / (time.perf_counter() - self._compiled_at)
        if self._compiled is not None:
            import torch

            self._compiled = None
            torch.compiler.reset()

    def metrics(self) -> dict[str, float]:
        """``compiled`` (1: the compiled forward ran the job's full batches), and where a compile ran, its
        seconds, the job's images per second after it (decoding included: the steady speed the compile bought)
        and, where measured, how many times faster than eager the compiled forward alone was."""
        values = {"compiled": float(self.kept)}
        if self.compile_s is not None:
            values["compile_seconds"] = self.compile_s
        if self.steady_rate is not None:
            values["images_per_second_after_compile"] = self.steady_rate
        if self.verdict is not None and self.verdict.speedup is not None:
            values["compile_speedup"] = self.verdict.speedup
        return values


def _timed(call: Callable, images):
    start = time.perf_counter()
    out = call(images)
    return out, time.perf_counter() - start
