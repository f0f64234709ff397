"""VGG-19 as a frozen feature extractor with named layers (conv1_1 … relu5_4, pool1 … pool5).

The input is always RGB in [0, 1], N×3×H×W; the preprocessing the weights need happens inside.
The network is truncated after the deepest requested layer, and one forward pass returns a dict
of the requested activations.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .errors import OptionsError
from .weights import CONV_NAMES, Preprocessing, VGGWeights, load_weights


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for block in range(1, 6):
        for conv in CONV_NAMES:
            if conv[4] == str(block):
                names += [conv, "relu" + conv[4:]]
        names.append(f"pool{block}")
    return tuple(names)


LAYER_NAMES: tuple[str, ...] = _layer_names()
"""Every layer, in order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, … relu5_4, pool5."""

POOLINGS = ("max", "avg")


def check_layers(layers: Iterable[str]) -> tuple[str, ...]:
    """Return ``layers`` as a tuple, or raise :class:`OptionsError` naming the first unknown one."""
    layers = tuple(layers)
    for name in layers:
        if name not in LAYER_NAMES:
            raise OptionsError(
                f"unknown VGG-19 layer {name!r}; layers are conv1_1 … relu5_4 and pool1 … pool5 "
                "(nst-fast --list-layers lists them)"
            )
    return layers


def min_image_side(layers: Iterable[str]) -> int:
    """Smallest image side for which every layer in ``layers`` is at least 1×1."""
    deepest = max(LAYER_NAMES.index(n) for n in check_layers(layers))
    return 2 ** sum(1 for n in LAYER_NAMES[: deepest + 1] if n.startswith("pool"))


class Preprocess(nn.Module):
    """RGB in [0, 1] → the network's input: channel order, scale, mean and std as one affine map."""

    def __init__(self, preprocessing: Preprocessing):
        super().__init__()
        self.preprocessing = preprocessing
        std = torch.tensor(preprocessing.std)
        self.register_buffer("mul", (preprocessing.scale / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("add", (-torch.tensor(preprocessing.mean) / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.preprocessing.bgr:
            image = image.flip(1)
        return torch.addcmul(self.add, image, self.mul)


class VGG19(nn.Module):
    """Frozen VGG-19 feature extractor returning ``{layer name: activation}`` for ``layers``.

    Args:
        layers: the layer names whose activations ``forward`` returns; the network ends at the deepest.
        weights: a :class:`VGGWeights`, or a source for :func:`load_weights` ("caffe", "torchvision", a path).
        pooling: "max" (VGG's own) or "avg" (Gatys et al.'s choice for image synthesis).
    """

    def __init__(self, layers: Iterable[str], weights: VGGWeights | str = "caffe", pooling: str = "max"):
        super().__init__()
        self.layers = check_layers(layers)
        if not self.layers:
            raise OptionsError("VGG19 needs at least one layer to return")
        if pooling not in POOLINGS:
            raise OptionsError(f"unknown pooling {pooling!r}; use 'max' or 'avg'")
        if not isinstance(weights, VGGWeights):
            weights = load_weights(weights)
        self.weights_source = weights.source
        self.pooling = pooling
        self.preprocess = Preprocess(weights.preprocessing)
        last = max(LAYER_NAMES.index(n) for n in self.layers)
        wanted = set(self.layers)
        self.body = nn.ModuleDict()
        for i, name in enumerate(LAYER_NAMES[: last + 1]):
            if name.startswith("conv"):
                weight, bias = weights.convs[name]
                conv = nn.Conv2d(weight.shape[1], weight.shape[0], 3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(weight)
                    conv.bias.copy_(bias)
                self.body[name] = conv
            elif name.startswith("relu"):
                # In place unless the convolution's output is itself requested.
                self.body[name] = nn.ReLU(inplace=LAYER_NAMES[i - 1] not in wanted)
            else:
                self.body[name] = nn.MaxPool2d(2) if pooling == "max" else nn.AvgPool2d(2)
        self.requires_grad_(False)
        self.eval()

    def blocks(self) -> list[list[str]]:
        """The layer names of each block (conv{b}_1 … pool{b}), truncated like the network: the units
        of activation checkpointing."""
        blocks: list[list[str]] = []
        for name in self.body:
            if name.endswith("_1") and name.startswith("conv") or not blocks:
                blocks.append([])
            blocks[-1].append(name)
        return blocks

    @property
    def last_layer(self) -> str:
        return next(reversed(self.body.keys()))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"VGG19 expects an N×3×H×W RGB image, got shape {tuple(image.shape)}")
        x = self.preprocess(image)
        out = {}
        for name, module in self.body.items():
            x = module(x)
            if name in self.layers:
                out[name] = x
        return {name: out[name] for name in self.layers}

    def train(self, mode: bool = True) -> VGG19:
        # Frozen feature extractor: there is no training mode to enter.
        return super().train(False)
