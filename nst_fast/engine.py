"""The fast loop — the "torch" backend: mixed precision, channels_last, a device-resident optimizer,
and no host synchronisation per iteration on a GPU.

It optimizes the same loss as :mod:`nst_fast.reference` (the same ``StyleTransferLoss``, whose Gram and
style-loss math runs in float32 through :mod:`nst_fast.ops`), and has the same signature and ``steps``
semantics as :func:`nst_fast.reference.optimize`. What differs is how an iteration runs:

- the convolutions run under autocast in bf16 or fp16 (or fp32 / TF32), in channels_last layout;
- the optimizer is :class:`nst_fast.lbfgs.DeviceLBFGS` (torch.optim.LBFGS's algorithm without its
  host-side branches) or Adam (fused on CUDA), so nothing is read back unless the callback asks;
- a non-finite loss stops the run with a clear error (checked every step on a CPU, where it is free,
  and whenever the loss is read on a GPU).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from .callbacks import Callback, Iterate
from .errors import NstError
from .lbfgs import CompactLBFGS, DeviceLBFGS
from .losses import StyleTransferLoss
from .memory import MemoryEstimate, available_bytes, estimate
from .options import PRECISIONS, Options
from .vgg import VGG19


@dataclass(frozen=True)
class Precision:
    """The precision a run uses on a device, and why it differs from the one asked for, if it does."""

    requested: str
    name: str
    autocast_dtype: torch.dtype | None
    note: str | None = None


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 or AMX), where bf16 is fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """Map a requested precision onto what ``device`` can run well."""
    if requested not in PRECISIONS:
        raise NstError(f"unknown precision {requested!r}; use {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            requested_name = "bf16" if bf16_ok else "fp16"
            return resolve_precision(requested_name, device)
        if requested == "bf16" and not bf16_ok:
            return Precision(requested, "fp16", torch.float16, "this GPU has no bf16: fp16 with loss scaling")
        dtype = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
        return Precision(requested, requested, dtype)
    if device.type == "cpu":
        fast_bf16 = cpu_supports_bf16()
        if requested == "auto":
            return Precision(requested, "bf16" if fast_bf16 else "fp32", torch.bfloat16 if fast_bf16 else None)
        if requested == "fp16":
            # Measured here: fp16 convolutions on a CPU run ~400× slower than bf16 (no native kernels).
            if fast_bf16:
                return Precision(requested, "bf16", torch.bfloat16, "fp16 has no fast CPU kernels: using bf16")
            return Precision(requested, "fp32", None, "fp16 has no fast CPU kernels: using fp32")
        if requested == "tf32":
            return Precision(requested, "fp32", None, "TF32 is a GPU format: using fp32")
        if requested == "bf16" and not fast_bf16:
            return Precision(requested, "bf16", torch.bfloat16, "this CPU has no native bf16: expect it to be slow")
        return Precision(requested, requested, torch.bfloat16 if requested == "bf16" else None)
    # Other devices: autocast where torch supports it.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(requested)
    return Precision(requested, requested if requested != "auto" else "fp32", dtype)


@contextlib.contextmanager
def _tf32(enabled: bool):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def lbfgs_history(numel: int, budget_bytes: int = 2**30) -> int:
    """Curvature pairs to keep: 100 (the reference's) while they fit ``budget_bytes``, at least 5."""
    return max(5, min(100, budget_bytes // (8 * numel)))


def _block_terms(model: VGG19, loss_fn: StyleTransferLoss, block: list[str], x: torch.Tensor):
    """Run one VGG block from its input; return its output and the content and style terms its layers
    contribute (as tensors, zero where none)."""
    content = style = x.new_zeros((), dtype=torch.float32)
    for name in block:
        x = model.body[name](x)
        if name in model.layers:
            terms = loss_fn.layer_terms(name, x)
            content = content + terms.get("content", 0.0)
            style = style + terms.get("style", 0.0)
    return x, content, style


def checkpointed_loss(model: VGG19, loss_fn: StyleTransferLoss, image: torch.Tensor):
    """The loss, with each VGG block's activations — and the loss terms computed from them — recomputed
    in the backward pass instead of kept: what autograd keeps falls to the blocks' inputs, and the peak
    to about one block's activations, for the cost of a second forward pass."""
    x = model.preprocess(image)
    content = style = image.new_zeros((), dtype=torch.float32)
    for block in model.blocks():
        # No randomness in VGG: skipping the RNG state saves time and lets CUDA graphs capture this.
        x, c, s = torch.utils.checkpoint.checkpoint(_block_terms, model, loss_fn, block, x, use_reentrant=False,
                                                    preserve_rng_state=False)  # fmt: skip
        content, style = content + c, style + s
    terms = {}
    if loss_fn.content_targets:
        terms["content"] = content
    if loss_fn.style_targets:
        terms["style"] = style
    terms.update(loss_fn.image_terms(image))
    return sum(terms.values()), terms


class _Evaluator:
    """Loss and image gradient at the current iterate, in the run's precision."""

    # fp16 gradients of a loss of order one underflow; scale the loss up before backward and the
    # gradient back down after. The losses are normalized (order one), so a fixed scale serves.
    FP16_LOSS_SCALE = 2.0**12

    def __init__(self, model: VGG19, loss_fn: StyleTransferLoss, image: torch.Tensor, precision: Precision,
                 checkpoint: bool = False, compile: bool = False, autocast_cache: bool = True):  # fmt: skip  # noqa: A002
        self.model, self.loss_fn, self.image, self.precision = model, loss_fn, image, precision
        self.scale = self.FP16_LOSS_SCALE if precision.autocast_dtype == torch.float16 else None
        self.checkpoint = checkpoint
        if checkpoint:  # torch.utils.checkpoint imports torch._dynamo on its first call
            import_off_the_stack("torch._dynamo")
        # A CUDA graph must not capture autocast's weight cache (it is freed when autocast exits).
        self.autocast_cache = autocast_cache
        self.network = compiled(model) if compile and not checkpoint else model

    def loss_and_terms(self, x: torch.Tensor):
        dtype = self.precision.autocast_dtype
        with torch.autocast(x.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None,
                            cache_enabled=self.autocast_cache):  # fmt: skip
            if self.checkpoint:
                return checkpointed_loss(self.model, self.loss_fn, x)
            acts = self.network(x)
        return self.loss_fn(acts, x)

    def __call__(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        x = self.image
        with torch.no_grad():
            x.clamp_(0, 1)
        loss, terms = self.loss_and_terms(x)
        (grad,) = torch.autograd.grad(loss * self.scale if self.scale else loss, x)
        if self.scale:
            grad = torch.nan_to_num(grad.float().div_(self.scale), nan=0.0, posinf=0.0, neginf=0.0)
        return loss.detach(), {k: v.detach() for k, v in terms.items()}, grad


def import_off_the_stack(name: str) -> None:
    """Import module ``name`` in a thread of its own, where none of our frames is on the stack.

    Importing torch._dynamo leaves reference cycles through the frames on the stack at the time, and
    with them every tensor those frames hold when they return: imported from inside the first
    checkpointed step (as torch.utils.checkpoint does), that was the run's optimizer state and image,
    121 MiB at 256 px and growing with the image, held until a full garbage collection. (torch.optim's
    optimizers import it too.) Not to be called while importing a module that the import needs: the
    thread would wait for that import's lock.
    """
    if name in sys.modules:
        return
    failed: list[BaseException] = []

    def run() -> None:
        try:
            importlib.import_module(name)
        except BaseException as e:  # raised in the caller's thread below
            failed.append(e)

    thread = threading.Thread(target=run, name=f"import {name}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def compiled(model: VGG19):
    """``torch.compile(model)``, once per model: the network is what compiles, not the loss, whose
    targets and weights change with every image and tile and would each force a recompilation. A new
    image size recompiles, after which the changed dimension is dynamic."""
    if "_nst_compiled" not in model.__dict__:
        import_off_the_stack("torch._dynamo")
        # Kept on the model (not in a registry, which would keep every model alive), and set past
        # nn.Module.__setattr__ so that it is no submodule.
        object.__setattr__(model, "_nst_compiled", torch.compile(model))
    return model.__dict__["_nst_compiled"]


def resolve_graph(requested: str, device: torch.device) -> str:
    """How steps run: ``eager``, ``compile`` (torch.compile'd network) or ``cuda`` (captured CUDA graph).

    ``auto`` is eager: torch.compile needs a compiler at run time and spent 8–20 s compiling each image
    size on this project's CPU, about what it saves in a default run (120 steps at 512 px; benchmarks/
    NOTES.md §7); on a GPU the captured graph has not been measured yet.
    """
    if requested == "cuda" and device.type != "cuda":
        raise NstError(f"graph 'cuda' captures CUDA graphs and needs a CUDA device, not {device.type}")
    return "eager" if requested == "auto" else requested


def use_checkpointing(options: Options, model: VGG19, image: torch.Tensor, precision: Precision) -> bool:
    """``checkpoint`` "on"/"off" as given; "auto": on when the estimate without it exceeds free memory."""
    if options.checkpoint != "auto":
        return options.checkpoint == "on"
    need = memory_estimate(options, model, image, precision, checkpoint=False).beyond_loaded
    free = available_bytes(image.device)
    return free is not None and need > free


def memory_estimate(options: Options, model: VGG19, image: torch.Tensor, precision: Precision,
                    checkpoint: bool) -> MemoryEstimate:  # fmt: skip
    from .ops import extension_serves

    activation_bytes = 2 if precision.autocast_dtype is not None else 4
    history = lbfgs_history(image.numel())
    copies = options.impl == "ref" or not extension_serves(image.device)
    return estimate(model.layers, image.shape[-2], image.shape[-1], activation_bytes, checkpoint,
                    options.optimizer, history, image.shape[0], float32_loss_copies=copies,
                    pooling=options.pooling, reordered_weights=image.device.type == "cpu")  # fmt: skip


def optimize(
    model: VGG19,
    loss_fn: StyleTransferLoss,
    image: torch.Tensor,
    options: Options,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Optimize ``image`` for ``options.steps`` loss evaluations; return the best iterate, clamped to [0, 1]."""
    device = image.device
    precision = resolve_precision(options.precision, device)
    graph = resolve_graph(options.graph, device)
    model.to(memory_format=torch.channels_last)
    x = image.detach().clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    evaluate = _Evaluator(model, loss_fn, x, precision, use_checkpointing(options, model, x, precision),
                          compile=graph == "compile", autocast_cache=graph != "cuda")  # fmt: skip
    if options.optimizer == "lbfgs":
        lbfgs = (CompactLBFGS if graph == "cuda" else DeviceLBFGS)(x, options.learning_rate, lbfgs_history(x.numel()))
        update = lbfgs.step
    else:
        kind = {"fused": True, "capturable": graph == "cuda"} if device.type == "cuda" else {"foreach": True}
        adam = torch.optim.Adam([x], lr=options.learning_rate, **kind)

        def update(grad: torch.Tensor) -> None:
            x.grad = grad.to(x.dtype)
            adam.step()

    # L-BFGS without a line search does not descend monotonically: a step can overshoot and the loss
    # rise for a few iterations. The run returns the best iterate it evaluated, tracked on the device
    # (torch.where, no host read), so that a late rise does not become the output.
    best = x.detach().clone()
    best_loss = torch.full((), math.inf, device=device)
    # What a callback sees: the iterate just evaluated (the update that follows it moves x).
    shown = torch.empty_like(best) if callback is not None else None

    def step(apply_update: bool):
        loss, terms, grad = evaluate()
        with torch.no_grad():
            better = loss < best_loss
            torch.where(better, x, best, out=best)
            torch.where(better, loss, best_loss, out=best_loss)
            if shown is not None:
                shown.copy_(x)
        if apply_update:
            update(grad)
        return loss, terms

    check_every = 1 if device.type == "cpu" else 50
    start = time.perf_counter()
    replay = _captured(step) if graph == "cuda" else None
    with _tf32(precision.name == "tf32" and device.type == "cuda"):
        for n in range(1, options.steps + 1):
            last = n == options.steps  # as torch.optim.LBFGS: no update after the last evaluation
            if replay is not None and not last and n > _WARMUP_STEPS:
                loss, terms = replay()
            else:
                loss, terms = step(apply_update=not last)
            if n % check_every == 0 or last:
                value = loss.item()
                if not math.isfinite(value):
                    raise NstError(f"the loss became {value} by step {n}; lower --lr, or the weights")
            if callback is not None:
                callback(Iterate(n, options.steps, loss, terms, time.perf_counter() - start, shown))
    return best.clamp_(0, 1).contiguous()


# Steps run eagerly before a CUDA graph is captured: the optimizer's first step differs from the rest,
# and capture needs kernels already chosen and loaded (cuDNN autotuning, lazy module loading).
_WARMUP_STEPS = 3


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
            with torch.cuda.graph(graph):
                outputs = step(True)
        graph.replay()
        loss, terms = outputs
        return loss.clone(), {k: v.clone() for k, v in terms.items()}

    return replay
