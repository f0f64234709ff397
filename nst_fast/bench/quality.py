"""Time-to-quality: how long each loop takes to reach the loss the reference reaches after ``steps``
L-BFGS iterations, every output judged by the float32 reference loss (:func:`~nst_fast.objective.evaluate_loss`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import __version__
from ..atomic import atomic_write_text
from ..objective import evaluate_loss
from ..options import Options
from ..plan import Plan
from ..stylizer import Stylizer
from .flops import run_flops
from .machine import default_images, image_digest, machine_info, synchronize
from .steps import configurations


@dataclass
class Quality:
    """How long a loop takes to reach the loss that the reference reaches after ``steps`` iterations,
    and the loss it has itself after ``steps`` iterations (both judged by the float32 reference loss)."""

    backend: str
    precision: str
    size: int
    steps: int
    target_loss: float
    seconds_to_target: float | None  # None: not reached within 2 × ``steps`` iterations
    steps_to_target: int | None
    loss_at_steps: float  # the float32 reference loss of the output of its run of ``steps`` iterations
    reference_seconds: float  # the reference's time for ``steps`` iterations

    @property
    def speedup(self) -> float | None:
        return None if self.seconds_to_target is None else self.reference_seconds / self.seconds_to_target


class _Done(Exception):
    """Raised from a callback to end a loop early."""


def _loop(options: Options, content: torch.Tensor, style: torch.Tensor, callback: Callable) -> torch.Tensor:
    return Stylizer(style, options).stylize_tensor(content, callback)


def time_to_quality(
    size: int = 256,
    steps: int = 300,
    device: str = "auto",
    backends: list[str] | None = None,
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[Quality]:
    """Wall time until each loop's output reaches the reference's loss after ``steps`` L-BFGS iterations,
    and the loss of each loop's output after ``steps`` iterations.

    Each loop runs ``steps`` iterations; when it has not reached the target by then, it runs again (the
    same iterates: the runs are deterministic) until it does, or up to 2 × ``steps``. Its iterates and
    its output are judged by the float32 reference loss, off the clock.
    """
    content, style = images or default_images()
    options = Options(size=size, steps=steps, device=device)
    ref_trace: list[tuple[float, float]] = []
    _loop(options.replace(backend="reference"), content, style, lambda it: ref_trace.append((it.elapsed, it.loss)))
    target, ref_seconds = ref_trace[-1][1], ref_trace[-1][0]
    judge = Stylizer(style, options)
    _, judge_loss = judge.loss_for(content)
    hit = next(i for i, (_, loss) in enumerate(ref_trace) if loss <= target)
    results = [Quality("reference", "fp32", size, steps, target, ref_trace[hit][0], hit + 1, target, ref_seconds)]

    def judged(image: torch.Tensor) -> float:
        return evaluate_loss(judge.model, judge_loss, image.to(judge.device))["total"]

    for backend, precision in configurations(judge.device, backends):
        if backend == "reference":
            continue
        run_options = options.replace(backend=backend, precision=precision)
        reached: list[tuple[int, float]] = []
        paused, judged_from = 0.0, 1

        def watch(it, reached=reached):
            nonlocal paused
            # it.elapsed is host time; on a GPU the step may still be queued: wait for it, on the clock.
            t0 = time.perf_counter()
            synchronize(judge.device)
            elapsed = it.elapsed + (time.perf_counter() - t0) - paused
            t1 = time.perf_counter()
            if not reached and it.step >= judged_from and judged(it.image) <= target:
                reached.append((it.step, elapsed))
                if it.step > steps:
                    raise _Done
            paused += time.perf_counter() - t1

        final = judged(_loop(run_options, content, style, watch))
        if not reached:
            paused, judged_from = 0.0, steps + 1  # its first ``steps`` iterates did not reach it
            with contextlib.suppress(_Done):
                _loop(run_options.replace(steps=2 * steps), content, style, watch)
        step_hit, seconds = reached[0] if reached else (None, None)
        results.append(Quality(backend, precision, size, steps, target, seconds, step_hit, final, ref_seconds))
    return results


# --- Images per second at a fixed quality: the benchmark's headline ---------------------------------
#
# The workload: the benchmark's content and style (default_images), at one size, with the default
# options (the default schedule: steps, pyramid, early stopping, precision, backend), B copies of the
# content optimized together where the engine batches them. Its quality target: the float32 reference
# loss of what the reference loop (fp32, one scale, early stopping off) reaches after 300 iterations —
# a property of the workload, not of the machine, so it is computed once and cached by the workload's
# definition (:class:`TargetCache`), and every machine races to the same target.

QUALITY_VERSION = 1  # of the target's definition; a change here makes every cached target stale
REFERENCE_STEPS = 300
# The options that change how a run executes but not what it optimizes: not part of a target's key.
_EXECUTION_FIELDS = (
    "device",
    "graph",
    "checkpoint",
    "impl",
    "max_pixels",
    "deterministic",
    "max_time",
    "batch_size",
    "backend",
    "precision",
    # and those a one-scale, untiled run does not read
    "pyramid_steps",
    "tile_overlap",
)
# A run's own loss (in its precision) within this factor of the target before its iterate is judged in
# float32: judging every iterate would cost one float32 forward pass per iteration.
_JUDGE_WITHIN = 1.1


def default_targets_path() -> Path:
    """Where targets are cached unless a path is given: $XDG_CACHE_HOME/nst-fast (~/.cache/nst-fast)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nst-fast" / "quality-targets.json"


def _without_early_stop(options: Options) -> Options:
    """``options`` with early stopping off (``tol`` None), where the options have it."""
    if "tol" in {f.name for f in dataclasses.fields(options)}:
        return options.replace(tol=None)
    return options


def reference_options(options: Options, steps: int = REFERENCE_STEPS) -> Options:
    """What defines a target: the reference loop, fp32, ``steps`` iterations at one scale (``options.size``),
    untiled, no early stopping, on ``options``' objective (layers, weights, init, seed, ...)."""
    return _without_early_stop(
        options.replace(
            backend="reference", precision="fp32", steps=steps, pyramid_start=0, tile=0, batch_size=1, max_time=None
        )
    )


def jsonable_options(options: Options, exclude: tuple[str, ...] = ()) -> dict:
    """``options`` as a JSON object (tuples as lists), without the fields in ``exclude``."""
    return {
        f.name: list(v) if isinstance(v := getattr(options, f.name), tuple) else v
        for f in dataclasses.fields(options)
        if f.name not in exclude
    }


def workload_definition(
    content: torch.Tensor, style: torch.Tensor, options: Options, steps: int = REFERENCE_STEPS
) -> dict:
    """What a target depends on, machine-independent: the images' pixels (digests), the objective's
    options, the reference's iterations and the definition's version."""
    objective = jsonable_options(reference_options(options, steps), exclude=_EXECUTION_FIELDS)
    return {
        "quality_version": QUALITY_VERSION,
        "nst_fast": __version__,
        "content": image_digest(content),
        "style": image_digest(style),
        "content_shape": list(content.shape[-2:]),
        "reference": f"reference backend, fp32, {steps} L-BFGS iterations at one scale",
        "reference_steps": steps,
        "options": objective,
    }


def workload_key(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:20]


class TargetCache:
    """Quality targets by workload key, in a JSON file (read when made, merged on every write: two
    processes adding targets keep each other's)."""

    SCHEMA = "nst-fast-quality-targets"

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_targets_path()

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path}: not a readable quality-target cache ({e}); move it away") from None
        if not isinstance(data, dict) or data.get("schema") != self.SCHEMA:
            raise ValueError(f"{self.path}: not a quality-target cache (schema {self.SCHEMA!r}); move it away")
        return data.get("targets", {})

    def get(self, key: str) -> dict | None:
        return self._read().get(key)

    def put(self, key: str, entry: dict) -> None:
        targets = self._read()
        targets[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"schema": self.SCHEMA, "targets": targets}, indent=1, sort_keys=True) + "\n"
        atomic_write_text(self.path, text)


def quality_target(
    options: Options,
    content: torch.Tensor,
    style: torch.Tensor,
    steps: int = REFERENCE_STEPS,
    cache: TargetCache | None = None,
    judge: Stylizer | None = None,
) -> dict:
    """The workload's target: from ``cache`` when it has the workload's key, else computed here — the
    reference loop's ``steps`` iterations, its output judged by the float32 reference loss — and cached.
    Returns the key, the target loss, its source ("cache" or "computed"), and for a computed one the
    reference's seconds and iterations."""
    definition = workload_definition(content, style, options, steps)
    key = workload_key(definition)
    cache = cache or TargetCache()
    entry = cache.get(key)
    if entry is not None:
        return {"key": key, "source": "cache", **entry}
    judge = judge or Stylizer(style, reference_options(options, steps))
    counted = []
    synchronize(judge.device)
    start = time.perf_counter()
    output = judge.stylize_tensor(content, lambda it: counted.append(it.step))
    synchronize(judge.device)
    seconds = time.perf_counter() - start
    if len(counted) != steps:  # a target must come from exactly ``steps`` iterations
        raise RuntimeError(f"the reference loop ran {len(counted)} iterations, not {steps}: no target computed")
    _, loss_fn = judge.loss_for(content)
    target = evaluate_loss(judge.model, loss_fn, output.to(judge.device))["total"]
    info = machine_info()
    entry = {
        "target_loss": target,
        "definition": definition,
        "computed_on": info["gpu"] or info["host_cpu"],
        "device": str(judge.device),
        "reference_seconds": seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    cache.put(key, entry)
    return {"key": key, "source": "computed", **entry}


@dataclass
class Throughput:
    """Images per second of the workload at one size and batch, to the quality target, end to end."""

    size: int
    image: list[int]  # height, width
    batch: int
    backend: str
    precision: str
    device: str
    target_loss: float
    target_key: str
    target_source: str  # "cache" or "computed"
    steps_factor: int  # the default schedule's iterations × this (1: the default schedule as it is)
    schedule: list[list[int]]  # [size, steps] per scale of the run timed
    reached: bool
    seconds: float | None  # from the call to the iterate at which every image reached the target
    images_per_second: float | None
    iterations: int | None  # iterations when reached, every scale's
    final_scale_iterations: int | None
    loss_reached: float | None  # the worst image's float32 reference loss then
    default_schedule_loss: float | None  # the worst image's loss after the default schedule, when it missed
    flops: int | None  # the work done to reach the target (:func:`~nst_fast.bench.flops.run_flops`)
    achieved_flops_per_s: float | None
    judging_seconds: float  # spent judging iterates, off the clock
    reference_seconds: float | None  # the reference's time for its iterations, when computed here
    note: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _longer(options: Options, factor: int) -> Options:
    """The default schedule with every scale's iterations × ``factor`` and early stopping off (for a
    schedule that ends before the target)."""
    if factor == 1:
        return options
    pyramid = {} if options.pyramid_steps is None else {"pyramid_steps": options.pyramid_steps * factor}
    return _without_early_stop(options.replace(steps=options.steps * factor, **pyramid))


@dataclass
class _Race:
    """One timed run of the workload toward the target."""

    reached: tuple[int, float, float] | None  # (iteration, seconds, worst loss) when every image reached it
    outputs: list[torch.Tensor] | None  # the run's images when it ended without reaching it
    judging_seconds: float


def _race(stylizer: Stylizer, contents: list[torch.Tensor], plan: Plan, goal: float, judged) -> _Race:
    """Run ``stylizer`` on ``contents`` until every image's float32 loss (``judged``) is at most ``goal``,
    timing it from the call; iterates of the final scale are judged, off the clock, once the run's own
    loss is within ``_JUDGE_WITHIN`` of the goal."""
    final_shape = (plan.scales[-1].height, plan.scales[-1].width)
    batch = len(contents)
    paused, reached = 0.0, []

    def watch(it) -> None:
        nonlocal paused
        synchronize(stylizer.device)  # on the clock: the step's queued work
        now = time.perf_counter()
        try:
            if tuple(it.image.shape[-2:]) != final_shape or it.loss > _JUDGE_WITHIN * batch * goal:
                return
            loss = judged(it.image)
            if loss <= goal:
                reached.append((it.step, now - start - paused, loss))
                raise _Done
        finally:
            paused += time.perf_counter() - now

    synchronize(stylizer.device)
    start = time.perf_counter()
    try:
        outputs = stylizer.stylize_many(contents, watch)
    except _Done:
        outputs = None
    return _Race(reached[0] if reached else None, outputs, paused)


def measure_throughput(
    size: int,
    batch: int = 1,
    device: str = "auto",
    images: tuple[torch.Tensor, torch.Tensor] | None = None,
    reference_steps: int = REFERENCE_STEPS,
    cache: TargetCache | None = None,
    factors: tuple[int, ...] = (1, 4),
    warmup: bool = True,
    **overrides,
) -> Throughput:
    """Images per second of the workload at ``size``: ``batch`` copies of the content stylized together
    (``Stylizer.stylize_many``) with the default options (and ``overrides``), timed from the call until
    the iterate at which every image's float32 reference loss is at most the target's.

    The clock runs from the call — content targets, every scale of the schedule — to that iterate, the
    device synchronised; the style's targets (once per style) and the judging of iterates are off it.
    When the default schedule ends before the target, the run is repeated with every scale's iterations
    × the next of ``factors`` (early stopping off), and ``steps_factor`` says so; past the last factor,
    ``reached`` is False. A first short run (2 iterations per scale) warms the kernels up, unless
    ``warmup`` is False.
    """
    content, style = images or default_images()
    options = Options(size=size, device=device, batch_size=batch).replace(**overrides)
    judge = Stylizer(style, reference_options(options, reference_steps))
    target = quality_target(options, content, style, reference_steps, cache, judge)
    goal = target["target_loss"]
    _, judge_loss = judge.loss_for(content)
    contents = [content] * batch  # the same picture B times: each image is the workload, judged alone

    def judged(image: torch.Tensor) -> float:
        """The worst image's float32 reference loss."""
        return max(evaluate_loss(judge.model, judge_loss, one[None].to(judge.device))["total"] for one in image)

    if warmup:
        short = {"steps": 2} | ({} if options.pyramid_steps is None else {"pyramid_steps": 2})
        Stylizer(style, _without_early_stop(options.replace(**short))).stylize_many(contents)
    judging, missed_loss = 0.0, None
    for factor in factors:
        run_options = _longer(options, factor)
        stylizer = Stylizer(style, run_options)
        plan = Plan.resolve(run_options, tuple(content.shape[-2:]), stylizer.device, batch)
        row = {
            "size": size,
            "image": [plan.scales[-1].height, plan.scales[-1].width],
            "batch": batch,
            "backend": plan.backend.name,
            "precision": plan.precision.name,
            "device": str(stylizer.device),
            "target_loss": goal,
            "target_key": target["key"],
            "target_source": target["source"],
            "steps_factor": factor,
            "schedule": [[s.size, s.steps] for s in plan.scales],
            "reached": False,
            "seconds": None,
            "images_per_second": None,
            "iterations": None,
            "final_scale_iterations": None,
            "loss_reached": None,
            "default_schedule_loss": missed_loss,
            "flops": None,
            "achieved_flops_per_s": None,
            "judging_seconds": judging,
            "reference_seconds": target.get("reference_seconds") if target["source"] == "computed" else None,
        }
        if batch > 1 and plan.batch_key is None:
            return Throughput(**row, note="the engine does not batch this run")
        race = _race(stylizer, contents, plan, goal, judged)
        judging += race.judging_seconds
        row["judging_seconds"] = judging
        if race.reached:
            step, seconds, loss = race.reached
            final_steps = step - sum(s.iterations for s in plan.scales[:-1])
            flops = run_flops(plan, final_steps)
            row.update(
                reached=True,
                seconds=seconds,
                images_per_second=batch / seconds,
                iterations=step,
                final_scale_iterations=final_steps,
                loss_reached=loss,
                flops=flops,
                achieved_flops_per_s=flops / seconds,
            )
            return Throughput(**row)
        if factor == 1 and race.outputs is not None:
            missed_loss = judged(torch.cat(race.outputs))
            row["default_schedule_loss"] = missed_loss
    return Throughput(**row, note=f"not reached within {factors[-1]}× the default schedule's iterations")
