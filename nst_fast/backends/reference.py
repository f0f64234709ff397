"""The reference loop: Gatys et al.'s optimization, step by step, in plain float32 PyTorch.

Readable on purpose and kept that way: it is the oracle that every fast path is checked against, and the
baseline of every benchmark. The network is frozen; the image is the parameter; autograd supplies the
gradient; ``torch.optim.LBFGS`` or ``Adam`` updates it; the image is kept in [0, 1]. The problem
itself — targets, loss, initial image — is built by :mod:`nst_fast.objective`, as for every backend.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping

import torch

from ..callbacks import Callback, Iterate
from ..control import Plateau
from ..errors import DivergedError
from ..objective import StyleTransferLoss
from ..vgg import VGG19
from . import LoopSpec
from .imports import import_off_the_stack

Evaluate = Callable[[torch.Tensor], tuple[torch.Tensor | float, Mapping[str, torch.Tensor | float], torch.Tensor]]


def optimize(
    model: VGG19,
    loss_fn: StyleTransferLoss,
    image: torch.Tensor,
    spec: LoopSpec,
    callback: Callback | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Optimize ``image`` (the initial image, modified in place) for ``spec.steps`` evaluations of the
    loss; return it clamped to [0, 1]. ``callback`` receives an :class:`Iterate` after each one."""

    def evaluate(x: torch.Tensor):
        loss, terms = loss_fn(model(x), x)
        loss.backward()
        return loss, terms, x.grad

    return optimizer_loop(image.detach().requires_grad_(True), spec, evaluate, callback, stop)


def make_step(
    model: VGG19, loss_fn: StyleTransferLoss, image: torch.Tensor, spec: LoopSpec
) -> Callable[[], torch.Tensor]:
    """One evaluation of the loss and its gradient per call, as the loop's closure does it."""
    x = image.detach().clone().requires_grad_(True)

    def step() -> torch.Tensor:
        x.grad = None
        loss, _ = loss_fn(model(x), x)
        loss.backward()
        return loss.detach()

    return step


def optimizer_loop(
    x: torch.Tensor,
    spec: LoopSpec,
    evaluate: Evaluate,
    callback: Callback | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """The reference's optimization around ``evaluate(x) → (loss, terms, ∂loss/∂x)``: torch.optim.LBFGS
    (no line search) or Adam updates ``x`` (a leaf tensor, in place), kept in [0, 1]; ``spec.steps``
    evaluations, fewer when ``stop()`` turns true or the loss reaches a plateau (``spec.tol``; then it
    returns the iterate it had reached); a
    non-finite loss stops the run. Other loops (ONNX Runtime) reuse it with their own
    ``evaluate``."""
    import_off_the_stack("torch._dynamo")  # torch.optim imports it on first use
    if spec.optimizer == "lbfgs":
        # One .step() runs the whole optimization; negative tolerances disable early stopping, so that
        # every run does exactly ``steps`` iterations.
        optimizer = torch.optim.LBFGS(
            [x],
            lr=spec.learning_rate,
            max_iter=spec.steps,
            max_eval=spec.steps,
            tolerance_grad=-1,
            tolerance_change=-1,
            history_size=100,
        )
    else:
        optimizer = torch.optim.Adam([x], lr=spec.learning_rate)
    start = time.perf_counter()
    step, best, plateau, flat = 0, math.inf, Plateau(spec.tol), False

    def closure() -> torch.Tensor:
        nonlocal step, best, flat
        if step and (flat or (stop is not None and stop())):
            raise _Stopped
        with torch.no_grad():
            x.clamp_(0, 1)
        optimizer.zero_grad(set_to_none=True)
        loss, terms, grad = evaluate(x)
        step += 1
        value = _number(loss)
        if not math.isfinite(value):
            raise DivergedError(
                f"the loss became {value} at step {step}; lower --lr, or the content, style or TV weight"
            )
        x.grad = grad
        if callback is not None:
            losses = {k: _number(v) for k, v in terms.items()}
            callback(Iterate(step, spec.steps, value, losses, time.perf_counter() - start, x.detach()))
        best = min(best, value)
        flat = plateau.reached(step, best)
        return loss if isinstance(loss, torch.Tensor) else torch.tensor(loss)

    if spec.steps > 0 and not (stop is not None and stop()):
        with contextlib.suppress(_Stopped):  # torch.optim runs its iterations inside one step() call
            if spec.optimizer == "lbfgs":
                optimizer.step(closure)
            else:
                for _ in range(spec.steps):
                    optimizer.step(closure)
    with torch.no_grad():
        return x.detach().clamp_(0, 1)


class _Stopped(Exception):
    """Raised inside the closure to end torch.optim's loop when the run must stop."""


def _number(value: torch.Tensor | float) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
