"""The style-transfer losses of Gatys et al., with the normalizations of the seeds.

For an activation a of one layer, with nC channels and nH×nW positions:

- content:  J_c   = 1/(4·nH·nW·nC) · Σ (a_C − a_G)²
- Gram:     G_ij  = Σ_k F_ik·F_jk  (F = a as nC × nH·nW)
- style:    J_s^l = 1/(4·nC²·(nH·nW)²) · Σ_ij (G_S − G_G)²,  J_s = Σ_l λ_l·J_s^l
- total:    J     = α·J_c + β·J_s (+ γ·TV)

Each loss sums over the batch. Accumulation is float32 whatever the activations' dtype (float64 for
float64 activations). The style term is written with normalized Grams, N = G/(nH·nW), so that
J_s^l = 1/(4·nC²) · Σ (N_S − N_G)²: the seeds' value when both images have the same size, and a
well-defined one when the style image has another size than the generated image.

The weighted sum of these terms, against a run's targets, is :class:`nst_fast.objective.StyleTransferLoss`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from . import ops


def gram_matrix(feats: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """G = F·Fᵀ per batch element, unnormalized: B×C×H×W → B×C×C (float32)."""
    return ops.gram(feats, 1.0, impl=impl)


def style_target(a_S: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """The normalized Gram matrix N_S = G_S/(nH·nW) of a style activation: what J_s^l compares to."""
    h, w = a_S.shape[-2:]
    return ops.gram(a_S, 1.0 / (h * w), impl=impl)


def content_loss(a_C: torch.Tensor, a_G: torch.Tensor) -> torch.Tensor:
    """J_c = 1/(4·nH·nW·nC) · Σ (a_C − a_G)², per batch element, summed over the batch."""
    if a_C.shape[1:] != a_G.shape[1:] or a_C.shape[0] not in (1, a_G.shape[0]):
        raise ValueError(f"content activations {tuple(a_C.shape)} do not fit generated ones {tuple(a_G.shape)}")
    _, c, h, w = a_G.shape
    acc = ops.accumulation_dtype(a_G.dtype)
    with torch.autocast(a_G.device.type, enabled=False):
        return (a_G.to(acc) - a_C.to(acc)).square().sum() / (4 * c * h * w)


def content_losses(a_C: torch.Tensor, a_G: torch.Tensor) -> torch.Tensor:
    """J_c of each batch element (a vector of B): for a batch of images with their own content targets."""
    _, c, h, w = a_G.shape
    acc = ops.accumulation_dtype(a_G.dtype)
    with torch.autocast(a_G.device.type, enabled=False):
        return (a_G.to(acc) - a_C.to(acc)).square().sum(dim=(1, 2, 3)) / (4 * c * h * w)


def style_layer_losses_to_target(
    target: torch.Tensor, a_G: torch.Tensor, impl: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """J_s^l against a :func:`style_target`: summed over the batch (differentiable), and of each batch
    element (detached: read, not differentiated), from one Gram matrix per element."""
    _, c, h, w = a_G.shape
    scale = 1.0 / (h * w)
    if ops.uses_extension(impl, a_G):
        total, diff = torch.ops.nst_fast.style_loss(a_G, target, scale)
        each = diff.detach().square().sum(dim=(1, 2))
    else:
        with torch.autocast(a_G.device.type, enabled=False):
            diff = ops.gram_ref(a_G, scale) - target.to(ops.accumulation_dtype(a_G.dtype))
            squares = diff.square().sum(dim=(1, 2))
        total, each = squares.sum(), squares.detach()
    return total / (4 * c * c), each / (4 * c * c)


def style_layer_loss_to_target(target: torch.Tensor, a_G: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """J_s^l against a precomputed :func:`style_target` (C×C or B×C×C)."""
    _, c, h, w = a_G.shape
    return ops.style_loss(a_G, target, 1.0 / (h * w), impl=impl) / (4 * c * c)


def style_layer_loss(a_S: torch.Tensor, a_G: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """J_s^l = 1/(4·nC²·(nH·nW)²) · Σ_ij (G_S − G_G)², per batch element, summed over the batch.

    A style batch of one is compared with every generated image. When the layers' nH·nW differ, each
    Gram matrix is normalized by its own nH·nW.
    """
    return style_layer_loss_to_target(style_target(a_S, impl=impl), a_G, impl=impl)


def style_loss(
    targets: Mapping[str, torch.Tensor],
    acts: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float] | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """J_s = Σ_l λ_l · J_s^l over the layers of ``targets`` (λ_l = 1 when ``layer_weights`` is None)."""
    total = None
    for name, target in targets.items():
        weight = 1.0 if layer_weights is None else layer_weights[name]
        term = weight * style_layer_loss_to_target(target, acts[name], impl=impl)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("style_loss needs at least one layer")
    return total


def content_energy(a_C: torch.Tensor) -> torch.Tensor:
    """J_c between ``a_C`` and an all-zero activation: the content target's scale."""
    return content_loss(a_C, torch.zeros_like(a_C))


def style_energy(target: torch.Tensor) -> torch.Tensor:
    """J_s^l between a style target and an all-zero Gram matrix: the style target's scale."""
    c = target.shape[-1]
    return target.to(ops.accumulation_dtype(target.dtype)).square().sum() / (4 * c * c)


def tv_losses(image: torch.Tensor) -> torch.Tensor:
    """:func:`tv_loss` of each batch element (a vector of B)."""
    acc = ops.accumulation_dtype(image.dtype)
    x = image.to(acc)
    total = x.new_zeros(x.shape[0])
    if x.shape[-2] > 1:
        total = total + (x[..., 1:, :] - x[..., :-1, :]).square().mean(dim=(1, 2, 3))
    if x.shape[-1] > 1:
        total = total + (x[..., :, 1:] - x[..., :, :-1]).square().mean(dim=(1, 2, 3))
    return total


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """Total variation: mean squared difference of vertically and horizontally adjacent pixels,
    per batch element, summed over the batch (so its weight does not depend on the image size)."""
    acc = ops.accumulation_dtype(image.dtype)
    x = image.to(acc)
    total = x.new_zeros(())
    if x.shape[-2] > 1:
        total = total + (x[..., 1:, :] - x[..., :-1, :]).square().mean(dim=(1, 2, 3)).sum()
    if x.shape[-1] > 1:
        total = total + (x[..., :, 1:] - x[..., :, :-1]).square().mean(dim=(1, 2, 3)).sum()
    return total
