"""VGG-19: its layer table, and the network as a frozen feature extractor with named layers.

:data:`LAYERS` is the one description of the network's geometry — every layer's name, kind, block,
channels and downsampling, derived once from the five blocks' widths and depths. The weights, the
memory estimate, the ONNX graphs and the benchmarks read it; nothing else re-derives it.

The network's input is always RGB in [0, 1], N×3×H×W; the preprocessing the weights need happens
inside. It is truncated after the deepest requested layer, and one forward pass returns a dict of the
requested activations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import OptionsError

if TYPE_CHECKING:
    from .weights import Preprocessing, VGGWeights


@dataclass(frozen=True)
class Layer:
    """One layer of VGG-19."""

    name: str  # conv1_1, relu1_1, ..., pool5
    kind: str  # "conv", "relu" or "pool"
    block: int  # 1 ... 5: the layers between two poolings, and the pooling that ends them
    index: int  # position in the network (and in torchvision's ``vgg19().features``)
    channels: int  # output channels
    in_channels: int
    stride: int  # image pixels per output position along each side: 1, 2, 4, ... 32

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The spatial size of this layer's output for a ``height``×``width`` image (floor-mode pools)."""
        return height // self.stride, width // self.stride


# VGG-19's five blocks: output channels and number of 3×3 convolutions (each followed by a ReLU).
_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


def _layer_table() -> tuple[Layer, ...]:
    layers: list[Layer] = []
    in_channels, stride = 3, 1
    for block, (channels, convs) in enumerate(_BLOCKS, start=1):
        for i in range(1, convs + 1):
            layers.append(Layer(f"conv{block}_{i}", "conv", block, len(layers), channels, in_channels, stride))
            layers.append(Layer(f"relu{block}_{i}", "relu", block, len(layers), channels, channels, stride))
            in_channels = channels
        stride *= 2
        layers.append(Layer(f"pool{block}", "pool", block, len(layers), channels, channels, stride))
    return tuple(layers)


LAYERS: tuple[Layer, ...] = _layer_table()
LAYER: dict[str, Layer] = {layer.name: layer for layer in LAYERS}
LAYER_NAMES: tuple[str, ...] = tuple(LAYER)
"""Every layer, in order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, … relu5_4, pool5."""
CONV_NAMES: tuple[str, ...] = tuple(layer.name for layer in LAYERS if layer.kind == "conv")

POOLINGS = ("max", "avg")


def conv_shape(name: str) -> tuple[int, int, int, int]:
    """The (out, in, 3, 3) weight shape of VGG-19 convolution ``name``."""
    layer = LAYER[name]
    return (layer.channels, layer.in_channels, 3, 3)


def check_layers(layers: Iterable[str]) -> tuple[str, ...]:
    """Return ``layers`` as a tuple, or raise :class:`OptionsError` naming the first unknown one."""
    layers = tuple(layers)
    for name in layers:
        if name not in LAYER:
            raise OptionsError(
                f"unknown VGG-19 layer {name!r}; layers are conv1_1 … relu5_4 and pool1 … pool5 "
                "(nst-fast --list-layers lists them)"
            )
    return layers


def deepest(layers: Iterable[str]) -> str:
    """The deepest of ``layers``: where a network that returns them all ends."""
    return max(check_layers(layers), key=lambda name: LAYER[name].index)


def network(last: str) -> tuple[Layer, ...]:
    """The layers of a network truncated after ``last``, in order."""
    return LAYERS[: LAYER[last].index + 1]


def receptive_field(last: str) -> int:
    """Side in pixels of the input square that one output position of ``last`` depends on (156 for
    relu5_1): each 3×3 convolution widens it by two positions of its input, each 2×2 pooling by one."""
    field = 1
    for layer in network(last):
        step = layer.stride // 2 if layer.kind == "pool" else layer.stride  # the layer's input spacing
        field += 2 * step if layer.kind == "conv" else step if layer.kind == "pool" else 0
    return field


def context_margin(layers: Iterable[str]) -> int:
    """Pixels of context a piece of an image needs on each side of the part whose features it is used
    for, so that they are the whole image's: half the deepest layer's receptive field, rounded up to
    that layer's stride (so that a piece's poolings line up with the whole image's): 80 px for relu5_1."""
    last = LAYER[deepest(layers)]
    return -(-receptive_field(last.name) // 2 // last.stride) * last.stride


def blocks(last: str) -> list[list[str]]:
    """The layer names of each block of a network truncated after ``last``: the units of activation
    checkpointing."""
    grouped: dict[int, list[str]] = {}
    for layer in network(last):
        grouped.setdefault(layer.block, []).append(layer.name)
    return list(grouped.values())


def min_image_side(layers: Iterable[str]) -> int:
    """Smallest image side for which every layer in ``layers`` is at least 1×1."""
    return LAYER[deepest(layers)].stride


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
        weights: a :class:`~nst_fast.weights.VGGWeights`, or a source for
            :func:`~nst_fast.weights.load_weights` ("caffe", "torchvision", a path).
        pooling: "max" (VGG's own) or "avg" (Gatys et al.'s choice for image synthesis).
    """

    def __init__(self, layers: Iterable[str], weights: VGGWeights | str = "caffe", pooling: str = "max"):
        super().__init__()
        self.layers = check_layers(layers)
        if not self.layers:
            raise OptionsError("VGG19 needs at least one layer to return")
        if pooling not in POOLINGS:
            raise OptionsError(f"unknown pooling {pooling!r}; use 'max' or 'avg'")
        if isinstance(weights, str):
            from .weights import load_weights  # weights.py reads this module's layer table

            weights = load_weights(weights)
        self.weights_source = weights.source
        self.pooling = pooling
        self.preprocess = Preprocess(weights.preprocessing)
        wanted = set(self.layers)
        self.body = nn.ModuleDict()
        for layer in network(deepest(self.layers)):
            if layer.kind == "conv":
                weight, bias = weights.convs[layer.name]
                conv = nn.Conv2d(layer.in_channels, layer.channels, 3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(weight)
                    conv.bias.copy_(bias)
                self.body[layer.name] = conv
            elif layer.kind == "relu":
                # In place unless the convolution's output is itself requested.
                self.body[layer.name] = nn.ReLU(inplace=LAYER_NAMES[layer.index - 1] not in wanted)
            else:
                self.body[layer.name] = nn.MaxPool2d(2) if pooling == "max" else nn.AvgPool2d(2)
        self.requires_grad_(False)
        self.eval()

    def blocks(self) -> list[list[str]]:
        """The layer names of each block (conv{b}_1 … pool{b}), truncated like the network."""
        return blocks(self.last_layer)

    @property
    def last_layer(self) -> str:
        return next(reversed(self.body.keys()))

    def forward(self, image: torch.Tensor, winograd: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
        """The requested activations of ``image``; the convolutions named in ``winograd`` run by
        Winograd's algorithm (:mod:`nst_fast.conv`: float32 on a CPU), as a run's plan chose."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"VGG19 expects an N×3×H×W RGB image, got shape {tuple(image.shape)}")
        x = self.preprocess(image)
        out = {}
        for name in self.body:
            x = self.layer(name, x, winograd)
            if name in self.layers:
                out[name] = x
        return {name: out[name] for name in self.layers}

    def layer(self, name: str, x: torch.Tensor, winograd: frozenset[str] = frozenset()) -> torch.Tensor:
        """Layer ``name`` applied to ``x`` (by Winograd if it is a convolution named in ``winograd``)."""
        module = self.body[name]
        if name in winograd:
            from .conv import winograd_conv  # conv.py reads this module's layer table

            return winograd_conv(x, module)
        return module(x)

    def train(self, mode: bool = True) -> VGG19:
        # Frozen feature extractor: there is no training mode to enter.
        return super().train(False)
