"""The Gram-matrix and style-loss operators, each with a reference twin, selectable by ``impl=``.

- ``impl="ref"``: plain PyTorch (bmm, subtract, square, sum) with autograd; always available.
- ``impl="ext"``: the ``nst_fast::`` operators of the compiled extension (csrc/), with autograd and
  fake (meta) kernels registered here, so they work under autograd and ``torch.compile``.
- ``impl="auto"``: the extension where it is loaded and supports the device, and, on a GPU, has passed
  its self-check there (:mod:`nst_fast.selfcheck`, at the first use); else the reference.

Both compute in float32 whatever the features' dtype (float64 stays float64, for gradcheck), and
autocast does not lower their precision.
"""

from __future__ import annotations

import torch

from . import _ext, selfcheck
from .errors import OptionsError

IMPLS = ("auto", "ext", "ref")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flat(feats: torch.Tensor) -> torch.Tensor:
    """B×C×H×W → B×C×(H·W) in the accumulation dtype."""
    b, c, h, w = feats.shape
    return feats.reshape(b, c, h * w).to(accumulation_dtype(feats.dtype))


def gram_ref(feats: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale · F·Fᵀ per batch element: B×C×H×W → B×C×C, accumulated in float32 (or float64)."""
    with torch.autocast(feats.device.type, enabled=False):
        f = _flat(feats)
        return torch.bmm(f, f.transpose(1, 2)) * scale


def style_loss_ref(feats: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """Σ_b Σ_ij (scale · F_b·F_bᵀ − A)², a float32 scalar; ``target`` A is C×C or B×C×C."""
    with torch.autocast(feats.device.type, enabled=False):
        diff = gram_ref(feats, scale) - target.to(accumulation_dtype(feats.dtype))
        return diff.square().sum()


def _has_kernels(device: torch.device) -> bool:
    """The extension is loaded and has kernels for ``device`` (the CUDA kernels reduce split-K partial
    sums with atomics, which are not bit-reproducible: not while deterministic algorithms are on)."""
    if not _ext.AVAILABLE:
        return False
    if device.type == "cuda":
        return _ext.WITH_CUDA and not torch.are_deterministic_algorithms_enabled()
    return device.type == "cpu"


def extension_serves(device: torch.device) -> bool:
    """Whether ``impl="auto"`` computes with the extension on ``device``: it is loaded, has kernels there,
    and, on a GPU, they passed their self-check (run here at the first call per process and device)."""
    return _has_kernels(device) and (device.type not in selfcheck.DEVICE_TYPES or selfcheck.passed(device))


def check_impl(impl: str, device: torch.device) -> None:
    """Raise :class:`OptionsError` unless ``impl`` can compute on ``device``."""
    if impl not in IMPLS:
        raise OptionsError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl != "ext":
        return
    if not _ext.AVAILABLE:
        raise OptionsError(f"impl 'ext' needs the compiled extension, which is not loaded ({_ext.IMPORT_ERROR})")
    if not _has_kernels(device):
        raise OptionsError(f"impl 'ext' has no {device.type} kernels in this build; use impl 'auto' or 'ref'")
    if not extension_serves(device):
        raise OptionsError(f"impl 'ext': {selfcheck.refusal(device)}; use impl 'auto' or 'ref'")


def uses_extension(impl: str, feats: torch.Tensor) -> bool:
    """Whether the operators compute ``feats`` with the extension (``impl`` "ext" that cannot: an error)."""
    if impl == "ref":
        return False
    check_impl(impl, feats.device)
    return impl == "ext" or extension_serves(feats.device)


def gram(feats: torch.Tensor, scale: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """scale · F·Fᵀ: B×C×H×W (fp32, bf16, fp16 or fp64) → B×C×C in float32 (float64 for fp64 input)."""
    _check_feats(feats)
    if uses_extension(impl, feats):
        return torch.ops.nst_fast.gram(feats, float(scale))
    return gram_ref(feats, scale)


def style_loss(feats: torch.Tensor, target: torch.Tensor, scale: float, impl: str = "auto") -> torch.Tensor:
    """Σ (scale · F·Fᵀ − A)² over the batch, a scalar; A is C×C, 1×C×C or B×C×C (Gram targets are
    symmetric, but any A gives the right value and gradient)."""
    _check_feats(feats)
    c = feats.shape[1]
    if (
        target.shape[-2:] != (c, c)
        or target.dim() not in (2, 3)
        or (target.dim() == 3 and target.shape[0] not in (1, feats.shape[0]))
    ):
        raise ValueError(f"style target of shape {tuple(target.shape)} does not fit features {tuple(feats.shape)}")
    if uses_extension(impl, feats):
        return torch.ops.nst_fast.style_loss(feats, target, float(scale))[0]
    return style_loss_ref(feats, target, scale)


def _check_feats(feats: torch.Tensor) -> None:
    if feats.dim() != 4:
        raise ValueError(f"features must be B×C×H×W, got shape {tuple(feats.shape)}")


# --- autograd and fake kernels for the extension's operators --------------------------------------


def _register() -> None:
    @torch.library.register_fake("nst_fast::gram")
    def _(feats, scale):
        b, c = feats.shape[:2]
        return feats.new_empty((b, c, c), dtype=accumulation_dtype(feats.dtype))

    def gram_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.scale = inputs[1]

    def gram_backward(ctx, grad):
        (feats,) = ctx.saved_tensors
        with torch.autocast(feats.device.type, enabled=False):
            grad_f = torch.bmm(grad + grad.transpose(1, 2), _flat(feats)) * ctx.scale
        return grad_f.reshape(feats.shape).to(feats.dtype), None

    torch.library.register_autograd("nst_fast::gram", gram_backward, setup_context=gram_setup)

    @torch.library.register_fake("nst_fast::style_loss")
    def _(feats, target, scale):
        b, c = feats.shape[:2]
        acc = accumulation_dtype(feats.dtype)
        return feats.new_empty((), dtype=acc), feats.new_empty((b, c, c), dtype=acc)

    @torch.library.register_fake("nst_fast::style_loss_backward")
    def _(grad, feats, diff, scale):
        # As the kernels: channels_last stays channels_last, every other layout comes back contiguous.
        channels_last = not feats.is_contiguous() and feats.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        return torch.empty(feats.shape, dtype=feats.dtype, device=feats.device, memory_format=layout)

    def style_loss_setup(ctx, inputs, output):
        feats, target, scale = inputs
        ctx.mark_non_differentiable(output[1])  # diff is kept for the backward, not a result to differentiate
        ctx.save_for_backward(feats, output[1])
        ctx.scale = scale
        ctx.target_shape = target.shape

    def style_loss_backward(ctx, grad_loss, grad_diff):
        feats, diff = ctx.saved_tensors
        grad_feats = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_feats = torch.ops.nst_fast.style_loss_backward(grad_loss, feats, diff, ctx.scale)
        if ctx.needs_input_grad[1]:
            # d/dA Σ (sG − A)² = −2 (sG − A), summed over the batch where A was broadcast.
            grad_target = (-2 * grad_loss) * diff
            if len(ctx.target_shape) == 2:
                grad_target = grad_target.sum(0)
            elif ctx.target_shape[0] != diff.shape[0]:
                grad_target = grad_target.sum(0, keepdim=True)
        return grad_feats, grad_target, None

    torch.library.register_autograd("nst_fast::style_loss", style_loss_backward, setup_context=style_loss_setup)


if _ext.AVAILABLE:
    _register()
