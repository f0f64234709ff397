"""Time-to-quality: how long each loop takes to reach the loss the reference reaches after ``steps``
L-BFGS iterations, every output judged by the float32 reference loss (:func:`~nst_fast.objective.evaluate_loss`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..objective import evaluate_loss
from ..options import Options
from ..stylizer import Stylizer
from .machine import default_images, synchronize
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
