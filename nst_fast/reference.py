"""The reference implementation: Gatys et al.'s optimization, step by step, in plain float32 PyTorch.

Readable on purpose and kept that way: it is the oracle that every fast path is checked against, and the
baseline of every benchmark. The network is frozen; the image is the parameter; autograd supplies the
gradient; ``torch.optim.LBFGS`` or ``Adam`` updates it; the image is kept in [0, 1].
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import torch

from .callbacks import Callback, Iterate
from .errors import NstError
from .losses import StyleTransferLoss, content_energy, style_energy, style_target
from .options import Options
from .vgg import VGG19


def style_targets(model: VGG19, styles: list[torch.Tensor], blend: list[float], layers) -> dict[str, torch.Tensor]:
    """{layer: Σ_i w_i·N_S_i}: the blend of the styles' normalized Gram matrices (weights sum to 1).

    Matching the blended Gram matrix has the same gradient as the weighted sum of per-style losses.
    """
    total = sum(blend)
    targets: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for image, weight in zip(styles, blend):
            acts = model(image)
            for name in layers:
                term = style_target(acts[name]) * (weight / total)
                targets[name] = term if name not in targets else targets[name] + term
    return targets


def content_targets(model: VGG19, content: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        acts = model(content)
        return {name: acts[name] for name in layers}


def initial_image(content: torch.Tensor, options: Options) -> torch.Tensor:
    """Content, uniform noise, their mix, or an image file resized to the content's size; the noise
    comes from a CPU generator seeded with ``seed``, so a seed gives the same start on every device."""
    if options.init == "content":
        return content.clone()
    if options.init not in ("noise", "content+noise"):
        from .image import load_image

        start = load_image(options.init, options.max_pixels).to(content.device)
        return torch.nn.functional.interpolate(start, size=content.shape[-2:], mode="bicubic", antialias=True,
                                               align_corners=False).clamp_(0, 1)  # fmt: skip
    generator = torch.Generator().manual_seed(options.seed)
    noise = torch.rand(content.shape, generator=generator).to(content.device, content.dtype)
    if options.init == "noise":
        return noise
    r = options.noise_ratio
    return (1 - r) * content + r * noise


def content_energies(model: VGG19, pieces: list[torch.Tensor], layers) -> dict[str, float]:
    """{layer: content energy} of an image given as ``pieces`` (its tiles): their mean, weighted by
    pixels — what the whole image's energy would be, without running the network on all of it."""
    sums, pixels = dict.fromkeys(layers, 0.0), 0
    with torch.no_grad():
        for piece in pieces:
            acts, n = model(piece), piece.shape[-2] * piece.shape[-1]
            for name in layers:
                sums[name] += content_energy(acts[name]).item() * n
            pixels += n
    return {name: total / pixels for name, total in sums.items()}


def build_loss(
    model: VGG19,
    content: torch.Tensor,
    targets: Mapping[str, torch.Tensor],
    options: Options,
    whole_content_energy: Mapping[str, float] | None = None,
) -> StyleTransferLoss:
    """The loss against ``content``'s activations and the style ``targets``.

    With ``normalize_losses``, each term's weight is divided by the term's value at an all-zero
    activation (its target's scale), which makes α, β and λ independent of the weights' scale.
    ``whole_content_energy`` gives the content terms' scales instead (a tile uses its whole image's).
    """
    c_targets = content_targets(model, content, options.content_layers)
    layer_weights = options.layer_weights
    scales = {name: 1.0 for name in c_targets}
    if options.normalize_losses:
        scales = {name: 1.0 / _energy(content_energy(a) if whole_content_energy is None else whole_content_energy[name],
                                      "content", name) for name, a in c_targets.items()}  # fmt: skip
        layer_weights = {name: w / _energy(style_energy(targets[name]), "style", name)
                         for name, w in layer_weights.items()}  # fmt: skip
    return StyleTransferLoss(
        c_targets, targets, layer_weights, options.content_weight, options.style_weight, options.tv_weight,
        content_layer_weights=scales, impl=options.impl,
    )  # fmt: skip


def _energy(value: torch.Tensor | float, what: str, layer: str) -> float:
    energy = float(value)
    if not math.isfinite(energy) or energy <= 0:
        raise NstError(
            f"the {what} image gives {layer} no usable activations (scale {energy:g}); with --no-normalize-losses "
            f"it could still be used, or choose another {what} layer or image"
        )
    return energy


def optimize(
    model: VGG19,
    loss_fn: StyleTransferLoss,
    image: torch.Tensor,
    options: Options,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Optimize ``image`` (the initial image, modified in place) for ``options.steps`` evaluations of the
    loss; return it clamped to [0, 1]. ``callback`` receives an :class:`Iterate` after each one."""

    def evaluate(x: torch.Tensor):
        loss, terms = loss_fn(model(x), x)
        loss.backward()
        return loss, terms, x.grad

    return optimizer_loop(image.detach().requires_grad_(True), options, evaluate, callback)


Evaluate = Callable[[torch.Tensor], tuple[torch.Tensor | float, Mapping[str, torch.Tensor | float], torch.Tensor]]


def optimizer_loop(x: torch.Tensor, options: Options, evaluate: Evaluate, callback: Callback | None = None) -> torch.Tensor:
    """The reference's optimization around ``evaluate(x) → (loss, terms, ∂loss/∂x)``: torch.optim.LBFGS
    (no line search) or Adam updates ``x`` (a leaf tensor, in place), kept in [0, 1]; ``options.steps``
    evaluations; a non-finite loss stops the run. Other loops (ONNX Runtime) reuse it with their own
    ``evaluate``."""
    if options.optimizer == "lbfgs":
        # One .step() runs the whole optimization; negative tolerances disable early stopping, so that
        # every run does exactly ``steps`` iterations.
        optimizer = torch.optim.LBFGS(
            [x], lr=options.learning_rate, max_iter=options.steps, max_eval=options.steps,
            tolerance_grad=-1, tolerance_change=-1, history_size=100,
        )  # fmt: skip
    else:
        optimizer = torch.optim.Adam([x], lr=options.learning_rate)
    start = time.perf_counter()
    step = 0

    def closure() -> torch.Tensor:
        nonlocal step
        with torch.no_grad():
            x.clamp_(0, 1)
        optimizer.zero_grad(set_to_none=True)
        loss, terms, grad = evaluate(x)
        step += 1
        value = _number(loss)
        if not math.isfinite(value):
            raise NstError(f"the loss became {value} at step {step}; lower --lr, or the content, style or TV weight")
        x.grad = grad
        if callback is not None:
            callback(Iterate(step, options.steps, value, {k: _number(v) for k, v in terms.items()},
                             time.perf_counter() - start, x.detach()))  # fmt: skip
        return loss if isinstance(loss, torch.Tensor) else torch.tensor(loss)

    if options.steps > 0:
        if options.optimizer == "lbfgs":
            optimizer.step(closure)
        else:
            for _ in range(options.steps):
                optimizer.step(closure)
    with torch.no_grad():
        return x.detach().clamp_(0, 1)


def _number(value: torch.Tensor | float) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def evaluate_loss(model: VGG19, loss_fn: StyleTransferLoss, image: torch.Tensor) -> dict[str, float]:
    """The loss and its terms at ``image``, in float32 — the judge of any fast path's output."""
    with torch.no_grad():
        loss, terms = loss_fn(model(image.float()), image.float())
    return {"total": loss.item(), **{k: v.item() for k, v in terms.items()}}
