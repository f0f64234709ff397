"""The fast loop — the "torch" backend: mixed precision, channels_last, a device-resident optimizer,
and no host synchronisation per iteration on a GPU.

It optimizes the same loss as the reference (the same :class:`~nst_fast.objective.StyleTransferLoss`,
whose Gram and style-loss math runs in float32 through :mod:`nst_fast.ops`), with the same ``steps``
semantics. What differs is how an iteration runs:

- the convolutions run under autocast in bf16 or fp16 (or fp32 / TF32), in channels_last layout (the
  image here; the network's weights once, when the Stylizer is made: a run never changes the model) —
  or, where the plan may run them by Winograd (float32 on a CPU: :mod:`nst_fast.conv`), in NCHW;
- optionally each VGG block is recomputed in the backward pass (``spec.checkpoint``), the network is
  compiled (``graph="compile"``) or the whole iteration is captured in a CUDA graph (``graph="cuda"``);
- the optimizer is :class:`~nst_fast.backends.lbfgs.DeviceLBFGS` (torch.optim.LBFGS's algorithm
  without its host-side branches) or Adam (fused on CUDA), so nothing is read back unless the callback
  asks;
- a non-finite loss stops the run with a clear error (checked every step on a CPU, where it is free,
  and whenever the loss is read on a GPU).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import torch
import torch.utils.checkpoint

from ..callbacks import Callback, Iterate
from ..control import Plateau
from ..errors import DivergedError, OptionsError
from ..objective import StyleTransferLoss
from ..vgg import VGG19
from . import LoopSpec
from .imports import import_off_the_stack
from .lbfgs import BatchedLBFGS, CompactLBFGS, DeviceLBFGS
from .precision import Precision

_COMPILE_LOCK = threading.Lock()

# Steps run eagerly before a CUDA graph is captured: the optimizer's first step differs from the rest,
# and capture needs kernels already chosen and loaded (cuDNN autotuning, lazy module loading).
WARMUP_STEPS = 3


def _block_terms(model: VGG19, loss_fn: StyleTransferLoss, block: list[str], x: torch.Tensor, winograd=frozenset()):
    """Run one VGG block from its input; return its output and the content and style terms its layers
    contribute (as tensors, zero where none)."""
    content = style = x.new_zeros((), dtype=torch.float32)
    for name in block:
        x = model.layer(name, x, winograd)
        if name in model.layers:
            terms = loss_fn.layer_terms(name, x)
            content = content + terms.get("content", 0.0)
            style = style + terms.get("style", 0.0)
    return x, content, style


def checkpointed_loss(model: VGG19, loss_fn: StyleTransferLoss, image: torch.Tensor, winograd=frozenset()):
    """The loss, with each VGG block's activations — and the loss terms computed from them — recomputed
    in the backward pass instead of kept: what autograd keeps falls to the blocks' inputs, and the peak
    to about one block's activations, for the cost of a second forward pass."""
    x = model.preprocess(image)
    content = style = image.new_zeros((), dtype=torch.float32)
    for block in model.blocks():
        # No randomness in VGG: skipping the RNG state saves time and lets CUDA graphs capture this.
        x, c, s = torch.utils.checkpoint.checkpoint(
            _block_terms, model, loss_fn, block, x, winograd, use_reentrant=False, preserve_rng_state=False
        )
        content, style = content + c, style + s
    terms = {}
    if loss_fn.content_targets:
        terms["content"] = content
    if loss_fn.style_targets:
        terms["style"] = style
    terms.update(loss_fn.image_terms(image))
    return sum(terms.values()), terms


def compiled(model: VGG19):
    """``torch.compile(model)``, once per model: the network is what compiles, not the loss, whose
    targets and weights change with every image and tile and would each force a recompilation. A new
    image size recompiles, after which the changed dimension is dynamic."""
    with _COMPILE_LOCK:  # runs in several threads compile a model once
        if "_nst_compiled" not in model.__dict__:
            import_off_the_stack("torch._dynamo")
            # Kept on the model (not in a registry, which would keep every model alive), and set past
            # nn.Module.__setattr__ so that it is no submodule.
            object.__setattr__(model, "_nst_compiled", torch.compile(model))
        return model.__dict__["_nst_compiled"]


class Evaluator:
    """Loss and image gradient at the current iterate ``image``, in the run's precision."""

    # fp16 gradients of a loss of order one underflow; scale the loss up before backward and the
    # gradient back down after. The losses are normalized (order one), so a fixed scale serves.
    FP16_LOSS_SCALE = 2.0**12

    def __init__(
        self,
        model: VGG19,
        loss_fn: StyleTransferLoss,
        image: torch.Tensor,
        precision: Precision,
        checkpoint: bool = False,
        compile: bool = False,  # noqa: A002 — torch.compile's name
        autocast_cache: bool = True,
        batched: bool | None = None,
        winograd: frozenset[str] = frozenset(),
    ):
        self.model, self.loss_fn, self.image, self.precision = model, loss_fn, image, precision
        if winograd and (compile or precision.autocast_dtype is not None):
            raise ValueError("Winograd convolutions run eagerly in float32")
        self.winograd = winograd
        self.scale = self.FP16_LOSS_SCALE if precision.autocast_dtype == torch.float16 else None
        self.checkpoint = checkpoint
        # A batch of images, each with its own loss (StyleTransferLoss.batch): each one's value is what
        # its best iterate is judged by. (The plan batches only runs without checkpointing.)
        self.batched = image.shape[0] > 1 if batched is None else batched  # (one left of a batch: still one)
        self.compile = compile
        if self.batched and checkpoint:
            raise ValueError("a batch of images is optimized without checkpointing")
        if checkpoint:  # torch.utils.checkpoint imports torch._dynamo on its first call
            import_off_the_stack("torch._dynamo")
        # A CUDA graph must not capture autocast's weight cache (it is freed when autocast exits).
        self.autocast_cache = autocast_cache
        self.network = compiled(model) if compile and not checkpoint else model

    def loss_and_terms(self, x: torch.Tensor):
        dtype = self.precision.autocast_dtype
        with torch.autocast(
            x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None, cache_enabled=self.autocast_cache
        ):
            if self.checkpoint:
                return (*checkpointed_loss(self.model, self.loss_fn, x, self.winograd), None)
            acts = self.network(x, self.winograd) if self.winograd else self.network(x)
        if self.batched:
            total, each, terms = self.loss_fn.batch(acts, x)
            return total, terms, each
        return (*self.loss_fn(acts, x), None)

    def __call__(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """The loss (summed over a batch), its terms, the image gradient, and for a batch each image's loss."""
        x = self.image
        with torch.no_grad():
            x.clamp_(0, 1)
        loss, terms, each = self.loss_and_terms(x)
        (grad,) = torch.autograd.grad(loss * self.scale if self.scale else loss, x)
        if self.scale:
            grad = torch.nan_to_num(grad.float().div_(self.scale), nan=0.0, posinf=0.0, neginf=0.0)
        return loss.detach(), {k: v.detach() for k, v in terms.items()}, grad, each


class _Run:
    """One optimization's state — iterate, optimizer, best iterate — and its iteration, :meth:`iterate`:
    what :func:`optimize` repeats and :func:`make_step` times."""

    def __init__(self, model: VGG19, loss_fn: StyleTransferLoss, image: torch.Tensor, spec: LoopSpec, show: bool):
        device = image.device
        if spec.graph == "cuda" and device.type != "cuda":
            raise OptionsError(f"graph 'cuda' captures CUDA graphs and needs a CUDA device, not {device.type}")
        self.spec = spec
        self.layout = torch.channels_last if spec.channels_last else torch.contiguous_format  # the network's
        x = image.detach().clone().contiguous(memory_format=self.layout).requires_grad_(True)
        self.x = x
        self.evaluate = Evaluator(
            model,
            loss_fn,
            x,
            spec.precision,
            spec.checkpoint,
            spec.graph == "compile",
            spec.graph != "cuda",
            winograd=spec.winograd,
        )
        batch = x.shape[0]
        if batch > 1 and spec.graph == "cuda":
            raise ValueError("a batch of images runs eagerly or compiled, not in a CUDA graph")
        if spec.optimizer == "lbfgs":
            kind = BatchedLBFGS if batch > 1 else CompactLBFGS if spec.graph == "cuda" else DeviceLBFGS
            self.optimizer = kind(x, spec.learning_rate, spec.history)
            self.update = self.optimizer.step
        else:
            import_off_the_stack("torch._dynamo")  # torch.optim imports it on first use
            self._adam(x)
        # L-BFGS without a line search does not descend monotonically: a step can overshoot and the loss
        # rise for a few iterations. The run returns the best iterate it evaluated, tracked on the device
        # (torch.where, no host read), so that a late rise does not become the output.
        # (Adam's update is elementwise: a batch's images are independent under it as they are.)
        self.best = x.detach().clone()
        self.best_loss = torch.full((batch,) if batch > 1 else (), math.inf, device=device)
        # What a callback sees: the iterate just evaluated (the update that follows it moves x).
        self.shown = torch.empty_like(self.best) if show else None
        self.replay = _captured(self._step) if spec.graph == "cuda" else None

    def _adam(self, x: torch.Tensor, state: dict | None = None) -> None:
        """Adam on ``x`` (with ``state``, another Adam's per-parameter state, to go on from)."""
        fused = (
            {"fused": True, "capturable": self.spec.graph == "cuda"} if x.device.type == "cuda" else {"foreach": True}
        )
        adam = torch.optim.Adam([x], lr=self.spec.learning_rate, **fused)
        if state is not None:
            adam.state[x] = state
        self.optimizer = adam

        def update(grad: torch.Tensor) -> None:
            x.grad = grad.to(x.dtype)
            adam.step()

        self.update = update

    def keep(self, rows: list[int]) -> None:
        """Go on with the batch's images ``rows`` only (the others were cancelled). Each keeps its
        iterate, optimizer state and best iterate, and no term of the loss mixes images, so each one's
        trajectory goes on as it would have (to the rounding of a smaller batch's convolutions)."""
        index = torch.tensor(rows, device=self.x.device)
        old = self.x
        x = old.detach().index_select(0, index).contiguous(memory_format=self.layout).requires_grad_(True)
        self.x = x
        ev = self.evaluate
        self.evaluate = Evaluator(
            ev.model,
            ev.loss_fn.select(rows),
            x,
            ev.precision,
            ev.checkpoint,
            ev.compile,
            ev.autocast_cache,
            True,
            ev.winograd,
        )
        if isinstance(self.optimizer, BatchedLBFGS):
            self.optimizer.keep(rows, x)
            self.update = self.optimizer.step
        else:  # Adam: its moments are elementwise, so a batch's rows are each image's own
            state = {
                k: v.index_select(0, index) if isinstance(v, torch.Tensor) and v.dim() else v
                for k, v in self.optimizer.state[old].items()
            }
            self._adam(x, state)
        self.best = self.best.index_select(0, index)
        self.best_loss = self.best_loss.index_select(0, index)
        if self.shown is not None:
            self.shown = self.shown.index_select(0, index)

    def _step(self, apply_update: bool):
        loss, terms, grad, each = self.evaluate()
        with torch.no_grad():
            value = loss if each is None else each  # a batch: each image's best iterate is its own
            better = value < self.best_loss
            torch.where(better.view(-1, *[1] * (self.x.dim() - 1)), self.x, self.best, out=self.best)
            torch.where(better, value, self.best_loss, out=self.best_loss)
            if self.shown is not None:
                self.shown.copy_(self.x)
        if apply_update:
            self.update(grad)
        return loss, terms

    def iterate(self, n: int, last: bool):
        """The ``n``-th iteration (from 1): evaluation and, unless ``last`` (as torch.optim.LBFGS: no
        update after the last evaluation), the update; from a captured CUDA graph after the warm-up."""
        if self.replay is not None and not last and n > WARMUP_STEPS:
            return self.replay()
        return self._step(apply_update=not last)


def optimize(
    model: VGG19,
    loss_fn: StyleTransferLoss,
    image: torch.Tensor,
    spec: LoopSpec,
    callback: Callback | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Optimize ``image`` for ``spec.steps`` loss evaluations, or until ``stop()`` or a plateau of the
    loss (``spec.tol``); return the best iterate, clamped to [0, 1]. A batch's image whose token in
    ``stop`` (a :class:`~nst_fast.control.Stop` with ``members``) is cancelled leaves the run between
    two iterations, and the others go on without it (its row of the result is its best iterate then)."""
    run = _Run(model, loss_fn, image, spec, show=callback is not None)
    plateau = Plateau(spec.tol)
    check_every = 1 if image.device.type == "cpu" else 50
    batch = image.shape[0]
    positions = list(range(batch))  # the batch's images the run still holds
    wanted = getattr(stop, "wanted", None) if batch > 1 else None
    result = None  # the whole batch's best iterates, once an image has left
    start = time.perf_counter()
    for n in range(1, spec.steps + 1):
        if stop is not None and stop():
            break
        if wanted is not None and (still := wanted(positions)) != positions:
            if result is None:
                result = run.best.clone()
            result[positions] = run.best
            run.keep([positions.index(p) for p in still])
            positions = still
        last = n == spec.steps
        loss, terms = run.iterate(n, last)
        if n % check_every == 0 or last:
            value = loss.item()
            if not math.isfinite(value):
                raise DivergedError(f"the loss became {value} by step {n}; lower --lr, or the weights")
        if callback is not None:
            indices = tuple(positions) if batch > 1 else None
            callback(Iterate(n, spec.steps, loss, terms, time.perf_counter() - start, run.shown, indices=indices))
        if plateau.reached(n, run.best_loss):
            break
    if result is not None:
        result[positions] = run.best
        return result.clamp_(0, 1).contiguous()
    return run.best.clamp_(0, 1).contiguous()


def make_step(
    model: VGG19, loss_fn: StyleTransferLoss, image: torch.Tensor, spec: LoopSpec
) -> Callable[[], torch.Tensor]:
    """One iteration of :func:`optimize`'s loop per call — evaluation, gradient, best-iterate tracking
    and the optimizer's update, replayed from a CUDA graph with ``graph="cuda"`` after the warm-up
    steps — returning the loss (on the device)."""
    run = _Run(model, loss_fn, image, spec, show=False)
    count = 0

    def step() -> torch.Tensor:
        nonlocal count
        count += 1
        return run.iterate(count, last=False)[0]

    return step


def _captured(step):
    """A function that runs ``step(True)`` — evaluation, best-iterate tracking and the update — by
    replaying a CUDA graph captured on first use after the warm-up steps; it returns copies of the
    loss and terms (the graph's outputs are overwritten by the next replay)."""
    graph: torch.cuda.CUDAGraph | None = None
    outputs = None

    def replay():
        nonlocal graph, outputs
        if graph is None:  # torch.cuda.graph captures on a side stream of its own
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' runs may go on (allocate, launch) while this one captures.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                outputs = step(True)
        graph.replay()
        loss, terms = outputs
        return loss.clone(), {k: v.clone() for k, v in terms.items()}

    return replay
