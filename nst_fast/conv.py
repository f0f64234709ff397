"""VGG-19's 3×3 convolutions by Winograd's F(6×6, 3×3), for float32 runs on a CPU.

On a CPU without native bf16 (AVX2 only: AMD before Zen 4, most Intel desktop and older server parts)
the engine runs in float32, and its iteration is VGG's convolutions: oneDNN computes them directly,
9 multiply-adds per output and input channel. NNPACK — inside PyTorch's CPU builds — computes a 3×3
convolution by Winograd's F(6×6, 3×3): 64 multiplications per 6×6 output tile instead of 324, for
transforms of the input and output tiles (memory traffic) and a little rounding (2–5e-6 relative
against float64, twice the direct convolution's). Measured on a 2-core AMD EPYC with AVX2
(benchmarks/NOTES.md §15), forward plus input gradient, against oneDNN's layout in the engine: up to
3.3× per layer, 1.8× over all convolutions at 512 px and 2.1× at 1024 px, in the layers with enough
positions for their channels (:data:`MIN_WORK`); at fewer, its transforms — the weights' too, anew at
every call (a 512×512 layer's: 64 MiB) — cost more than it saves, and with three input channels
(conv1_1) it lost up to 2× at 128–256 px. :func:`winograd_layers` is that rule; the plan applies it.

Only the forward and the input gradient are needed (VGG is frozen): the input gradient of a 3×3
convolution with padding 1 is the same convolution of the output gradient with the weights flipped in
space and transposed, so both run through NNPACK. The twin of every call here is ``F.conv2d`` (the
tests hold the two to float32 rounding, against float64, forward and gradient, at several shapes).

NNPACK keeps a per-thread workspace, which it grows to the largest call's need and never shrinks: up
to about four times the largest map it has convolved (:func:`workspace_bytes`; the memory estimate
counts it).
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch import nn

from .vgg import LAYER, network

CONVS = ("auto", "direct", "winograd")

# The measured rule (NOTES §15): where Winograd wins on the CPU it was measured on. Its transforms cost in
# proportion to positions × channels, the multiplications it saves to that × the other side's channels,
# and each call transforms the weights anew: a layer gains once positions × the smaller of its channel
# counts reaches 2^19 (1.1–3.3× above it, bar one 0.95×; 0.13–0.9× below it, bar three at 1.3–1.6×).
# conv1_1 (three input channels) lost up to 2× at 128–256 px; conv1_2 gains 1.3–1.9× for the largest
# workspace of all (its 64-channel full-size map),
# so ``auto`` starts after the first pooling; ``winograd`` includes it.
MIN_IN_CHANNELS = 64
AUTO_FROM_BLOCK = 2
MIN_WORK = 2**19  # positions × min(in channels, out channels)
# NNPACK's workspace per byte of the larger of a layer's input and output maps (one is the forward call's
# input, the other the input-gradient call's): measured 2.2–3.6 at 256–1024 px, the most for 128 channels.
WORKSPACE_PER_MAP_BYTE = 4

_READY = False
_READY_LOCK = threading.Lock()


def available() -> bool:
    """Whether this PyTorch has NNPACK and it runs on this CPU."""
    try:
        return bool(torch.backends.nnpack.is_available())
    except (AttributeError, RuntimeError):
        return False


def _ensure_ready() -> None:
    """NNPACK must be initialized before its first convolution (torch's op does not do it), and torch
    creates NNPACK's thread pool on the first call without a lock: both done once, here, under one."""
    global _READY
    if _READY:
        return
    with _READY_LOCK:
        if not _READY:
            if not torch._nnpack_available():
                raise RuntimeError("NNPACK is not available on this CPU")
            x = torch.zeros(1, 1, 8, 8)
            torch._nnpack_spatial_convolution(x, torch.zeros(1, 1, 3, 3), None, [1, 1], [1, 1])
            _READY = True


def winograd_layers(layers: tuple[str, ...], height: int, width: int, everywhere: bool = False) -> frozenset[str]:
    """The convolutions of a network returning ``layers`` that run by Winograd for an image of
    ``height``×``width``: from conv2_1 on, those whose positions × smaller channel count reach
    :data:`MIN_WORK` (``everywhere``: every convolution with 64 or more input channels, conv1_2 on)."""
    last = max(layers, key=lambda n: LAYER[n].index)
    chosen = []
    for layer in network(last):
        if layer.kind != "conv" or layer.in_channels < MIN_IN_CHANNELS:
            continue
        h, w = layer.output_size(height, width)
        if everywhere or (
            layer.block >= AUTO_FROM_BLOCK and h * w * min(layer.in_channels, layer.channels) >= MIN_WORK
        ):
            chosen.append(layer.name)
    return frozenset(chosen)


def workspace_bytes(names: frozenset[str], height: int, width: int, batch: int = 1) -> int:
    """What convolutions ``names`` at ``height``×``width`` need beyond their tensors: NNPACK's workspace,
    grown to the largest call's need (forward: the layer's input; input gradient: its output gradient)
    and kept by the thread, and the input gradient's flipped weights, kept on each layer."""
    largest = flipped = 0
    for name in names:
        layer = LAYER[name]
        positions = math.prod(layer.output_size(height, width))
        largest = max(largest, max(layer.in_channels, layer.channels) * positions * 4)
        flipped += layer.in_channels * layer.channels * 9 * 4
    return WORKSPACE_PER_MAP_BYTE * largest * batch + flipped


def _is_channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class _Winograd3x3(torch.autograd.Function):
    """A 3×3, stride-1, padding-1 convolution and its input gradient, both by NNPACK (no weight
    gradient: the network is frozen). NNPACK reads and writes NCHW; a channels_last input gets a
    channels_last output (and gradient), so that the layers around it — the fused style-loss operator
    above all — see the layout they run fastest in (NOTES §15)."""

    @staticmethod
    def forward(ctx, x, weight: torch.Tensor, bias: torch.Tensor | None, flipped: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(flipped)
        ctx.channels_last = _is_channels_last(x)
        y = torch._nnpack_spatial_convolution(x.contiguous(), weight.contiguous(), bias, [1, 1], [1, 1])
        return y.contiguous(memory_format=torch.channels_last) if ctx.channels_last else y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (flipped,) = ctx.saved_tensors
        dx = torch._nnpack_spatial_convolution(grad.contiguous(), flipped, None, [1, 1], [1, 1])
        return dx.contiguous(memory_format=torch.channels_last) if ctx.channels_last else dx, None, None, None


def _flipped_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weights of the input gradient: d/dx of conv(x, W) is conv(grad, W'), W'[i, o] = W[o, i] flipped
    in both spatial axes. Made once per layer (VGG is frozen; anew only if its weight changes) and kept on
    the module, not in every iteration's backward: 12 layers' weights, 7 ms an iteration otherwise. Threads
    that make it at once make the same tensor; one of them is kept."""
    weight = conv.weight
    key = (weight.data_ptr(), weight._version)
    cached = conv.__dict__.get("_nst_flipped")
    if cached is None or cached[0] != key:
        cached = (key, weight.detach().flip(2, 3).transpose(0, 1).contiguous())
        conv.__dict__["_nst_flipped"] = cached  # past nn.Module.__setattr__: no buffer, not in a state dict
    return cached[1]


def winograd_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` for one of VGG's 3×3 convolutions, by Winograd F(6×6, 3×3); float32 on a CPU only."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        raise ValueError(f"Winograd convolutions run in float32 on a CPU, not {x.dtype} on {x.device.type}")
    _ensure_ready()
    return _Winograd3x3.apply(x, conv.weight, conv.bias, _flipped_weight(conv))


def direct_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """The twin: the same convolution as PyTorch computes it."""
    return F.conv2d(x, conv.weight, conv.bias, padding=1)
