"""The objective: what a stylization minimizes, built in one place for every backend.

- :func:`style_targets`: the style image(s)' normalized Gram matrices (blended);
- :func:`build_loss`: the :class:`StyleTransferLoss` against a content image, each term's weight
  normalized by its target's own scale (``normalize_losses``);
- :func:`initial_image`: where the optimization starts;
- :func:`evaluate_loss`: the float32 loss of an image — the judge of every fast path's output.

The reference loop, the engine (plain and checkpointed) and the ONNX step graph all take their terms
and weights from :class:`StyleTransferLoss` (:meth:`~StyleTransferLoss.layer_terms`,
:meth:`~StyleTransferLoss.term_weights`); the formulas themselves are in :mod:`nst_fast.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from . import ops
from .errors import ImageError
from .image import load_image
from .losses import (
    content_energy,
    content_loss,
    content_losses,
    style_energy,
    style_layer_loss_to_target,
    style_layer_losses_to_target,
    style_target,
    tv_loss,
    tv_losses,
)
from .options import Options
from .vgg import LAYER, VGG19, context_margin, deepest


class StyleTransferLoss(nn.Module):
    """J = α·J_c + β·J_s + γ·TV against fixed targets; returns the total and each weighted term.

    Args:
        content_targets: {layer: a_C} activations of the content image.
        style_targets: {layer: N_S} normalized Gram matrices (:func:`~nst_fast.losses.style_target`).
        layer_weights: {layer: λ_l} for the style layers.
        content_layer_weights: {layer: weight} for the content layers (default 1 each).
        content_weight, style_weight, tv_weight: α, β, γ.
    """

    def __init__(
        self,
        content_targets: Mapping[str, torch.Tensor],
        style_targets: Mapping[str, torch.Tensor],
        layer_weights: Mapping[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float = 0.0,
        content_layer_weights: Mapping[str, float] | None = None,
        impl: str = "auto",
    ):
        super().__init__()
        self.content_targets = {k: v.detach() for k, v in content_targets.items()}
        self.style_targets = {k: v.detach() for k, v in style_targets.items()}
        self.layer_weights = dict(layer_weights)
        self.content_layer_weights = dict(content_layer_weights or dict.fromkeys(self.content_targets, 1.0))
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        self.impl = impl
        self._weights = self.term_weights()

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.content_targets, *self.style_targets]))

    def term_weights(self) -> dict[str, float]:
        """The factor of each term in the total: {"content.<layer>", "style.<layer>", "tv": value}."""
        weights = {f"content.{n}": self.content_weight * self.content_layer_weights[n] for n in self.content_targets}
        weights.update({f"style.{n}": self.style_weight * self.layer_weights[n] for n in self.style_targets})
        if self.tv_weight:
            weights["tv"] = self.tv_weight
        return weights

    def layer_terms(self, name: str, act: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted content and style terms that layer ``name``'s activation contributes."""
        terms = {}
        if name in self.content_targets:
            weight = self._weights[f"content.{name}"]
            if isinstance(weight, torch.Tensor):  # a batch, each image with its own content weight
                terms["content"] = (weight * content_losses(self.content_targets[name], act)).sum()
            else:
                terms["content"] = weight * content_loss(self.content_targets[name], act)
        if name in self.style_targets:
            term = style_layer_loss_to_target(self.style_targets[name], act, impl=self.impl)
            terms["style"] = self._weights[f"style.{name}"] * term
        return terms

    def batch(
        self, acts: Mapping[str, torch.Tensor], image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """For a batch of images optimized together: the total (differentiable; each image's gradient is
        its own loss's, since no term mixes images), each image's loss (a detached vector: what each
        image's best iterate is judged by), and each term summed over the batch."""
        each = image.new_zeros(image.shape[0], dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}

        def add(key: str, weighted: torch.Tensor, weighted_each: torch.Tensor) -> None:
            nonlocal each
            terms[key] = terms[key] + weighted if key in terms else weighted
            each = each + weighted_each

        for name in self.layers:
            act = acts[name]
            if name in self.content_targets:
                values = self._weights[f"content.{name}"] * content_losses(self.content_targets[name], act)
                add("content", values.sum(), values.detach())
            if name in self.style_targets:
                total, values = style_layer_losses_to_target(self.style_targets[name], act, impl=self.impl)
                weight = self._weights[f"style.{name}"]
                add("style", weight * total, weight * values)
        if self.tv_weight:
            values = self.tv_weight * tv_losses(image)
            add("tv", values.sum(), values.detach())
        return sum(terms.values()), each, terms

    def select(self, rows: list[int]) -> StyleTransferLoss:
        """The loss of a batch's images ``rows`` only (a batch that some of its images left): their own
        content targets and scales, the shared style targets."""

        def pick(value):  # a batch's tensor (targets, per-image weights); a shared number stays
            if isinstance(value, torch.Tensor) and value.dim():
                return value.index_select(0, torch.tensor(rows, device=value.device))
            return value

        return StyleTransferLoss(
            {k: pick(v) for k, v in self.content_targets.items()},
            self.style_targets,
            self.layer_weights,
            self.content_weight,
            self.style_weight,
            self.tv_weight,
            content_layer_weights={k: pick(v) for k, v in self.content_layer_weights.items()},
            impl=self.impl,
        )

    def image_terms(self, image: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The terms of the image itself (total variation)."""
        return {"tv": self.tv_weight * tv_loss(image)} if self.tv_weight and image is not None else {}

    def forward(
        self, acts: Mapping[str, torch.Tensor], image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms: dict[str, torch.Tensor] = {}
        for name in self.layers:
            for key, value in self.layer_terms(name, acts[name]).items():
                terms[key] = terms[key] + value if key in terms else value
        terms.update(self.image_terms(image))
        return sum(terms.values()), terms


def style_targets(
    model: VGG19, styles: list[torch.Tensor], blend: list[float], layers, tiles: list[int | None] | None = None
) -> dict[str, torch.Tensor]:
    """{layer: Σ_i w_i·N_S_i}: the blend of the styles' normalized Gram matrices (weights sum to 1).

    Matching the blended Gram matrix has the same gradient as the weighted sum of per-style losses.
    ``tiles``: per style image, None or the side of the overlapping tiles it is run through the network
    in (:func:`style_grams`), for the same targets in a fraction of the memory.
    """
    total = sum(blend)
    targets: dict[str, torch.Tensor] = {}
    for image, weight, tile in zip(styles, blend, tiles or [None] * len(styles)):
        for name, gram in style_grams(model, image, layers, tile).items():
            term = gram * (weight / total)
            targets[name] = term if name not in targets else targets[name] + term
    return targets


def style_grams(model: VGG19, image: torch.Tensor, layers, tile: int | None = None) -> dict[str, torch.Tensor]:
    """{layer: N_S = G_S / (nH·nW)} of one style image; with ``tile`` smaller than the image, from
    overlapping tiles: each contributes the Gram matrix of its core (the tile less a margin of
    :func:`~nst_fast.vgg.context_margin` on sides inside the image), whose features are the whole image's — each
    position's receptive field lies inside the tile, and tiles start at multiples of the deepest
    stride — so the sum over cores is G_S, to float rounding (tested). The memory is one tile's forward
    pass (memory.forward_bytes) instead of the image's."""
    height, width = image.shape[-2:]
    with torch.no_grad():
        if tile is None or max(height, width) <= tile:
            acts = model(image)
            return {name: style_target(acts[name]) for name in layers}
        margin = context_margin(layers)
        stride = LAYER[deepest(layers)].stride
        core = (tile - 2 * margin) // stride * stride
        if core < stride:
            raise ValueError(f"a style tile of {tile} px leaves no core inside its {margin} px margins")
        sizes = {name: LAYER[name].output_size(height, width) for name in layers}
        grams: dict[str, torch.Tensor] = {}
        for top, bottom in _cores(height, core):
            for left, right in _cores(width, core):
                y0, x0 = max(0, top - margin), max(0, left - margin)
                y1, x1 = min(height, bottom + margin), min(width, right + margin)
                acts = model(image[..., y0:y1, x0:x1])
                for name in layers:
                    s = LAYER[name].stride
                    h, w = sizes[name]
                    # The core's positions at this layer, in the tile's feature map (the last core of a
                    # row or column runs to the image's edge, as the whole image's floor-mode poolings).
                    rows = slice((top - y0) // s, (h if bottom == height else bottom // s) - y0 // s)
                    cols = slice((left - x0) // s, (w if right == width else right // s) - x0 // s)
                    part = ops.gram(acts[name][..., rows, cols].contiguous(), 1.0 / (h * w))
                    grams[name] = part if name not in grams else grams[name] + part
                del acts  # one tile's activations at a time
        return grams


def _cores(size: int, core: int) -> list[tuple[int, int]]:
    """[start, end) spans of at most ``core`` (a multiple of the deepest stride) covering ``size``."""
    return [(start, min(start + core, size)) for start in range(0, size, core)]


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
        start = load_image(options.init, options.max_pixels).to(content.device)
        return torch.nn.functional.interpolate(
            start, size=content.shape[-2:], mode="bicubic", antialias=True, align_corners=False
        ).clamp_(0, 1)
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
    impl: str | None = None,
) -> StyleTransferLoss:
    """The loss against ``content``'s activations and the style ``targets``.

    With ``normalize_losses``, each term's weight is divided by the term's value at an all-zero
    activation (its target's scale), which makes α, β and λ independent of the weights' scale.
    ``whole_content_energy`` gives the content terms' scales instead (a tile uses its whole image's).
    ``impl`` chooses the operators (default: ``options.impl``; a plan may decide otherwise). A batch of
    content images (B×3×H×W) gets each image's own content targets and scales: one loss, whose terms
    never mix images (:meth:`StyleTransferLoss.batch`).
    """
    c_targets = content_targets(model, content, options.content_layers)
    layer_weights = options.layer_weights
    scales: dict[str, float | torch.Tensor] = {name: 1.0 for name in c_targets}
    if options.normalize_losses:
        for name, a in c_targets.items():
            if whole_content_energy is not None:
                scales[name] = 1.0 / _energy(whole_content_energy[name], "content", name)
            elif content.shape[0] > 1:
                energies = content_losses(torch.zeros_like(a), a)
                for energy in energies.tolist():
                    _energy(energy, "content", name)
                scales[name] = energies.reciprocal()
            else:
                scales[name] = 1.0 / _energy(content_energy(a), "content", name)
        layer_weights = {
            name: w / _energy(style_energy(targets[name]), "style", name) for name, w in layer_weights.items()
        }
    return StyleTransferLoss(
        c_targets,
        targets,
        layer_weights,
        options.content_weight,
        options.style_weight,
        options.tv_weight,
        content_layer_weights=scales,
        impl=options.impl if impl is None else impl,
    )


def placeholder_loss(options: Options) -> StyleTransferLoss:
    """A loss with ``options``' layers, weights and zero targets: the structure of a loss whose targets
    come later (an ONNX step graph with its targets as inputs)."""
    channels = {name: LAYER[name].channels for name in options.layers}
    content = {n: torch.zeros(1, channels[n], 1, 1) for n in options.content_layers}
    style = {n: torch.zeros(1, channels[n], channels[n]) for n in options.style_layers}
    return StyleTransferLoss(
        content, style, options.layer_weights, options.content_weight, options.style_weight, options.tv_weight
    )


def _energy(value: torch.Tensor | float, what: str, layer: str) -> float:
    energy = float(value)
    if not math.isfinite(energy) or energy <= 0:
        raise ImageError(
            f"the {what} image gives {layer} no usable activations (scale {energy:g}); with --no-normalize-losses "
            f"it could still be used, or choose another {what} layer or image"
        )
    return energy


def evaluate_loss(model: VGG19, loss_fn: StyleTransferLoss, image: torch.Tensor) -> dict[str, float]:
    """The loss and its terms at ``image``, in float32 — the judge of any fast path's output."""
    with torch.no_grad():
        loss, terms = loss_fn(model(image.float()), image.float())
    return {"total": loss.item(), **{k: v.item() for k, v in terms.items()}}
