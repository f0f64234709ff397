"""How much memory an optimization needs, estimated from the network's layer shapes before running.

The estimate adds what one iteration holds at its peak: the network's weights (and, under autocast,
their low-precision copies); the activations autograd keeps for the backward pass (with block
checkpointing: each block's input, the requested activations, and one block recomputed at a time);
the gradient buffers of the backward pass; the image, its gradient, the best iterate and the
optimizer's state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .vgg import LAYER_NAMES
from .weights import CONV_CHANNELS, conv_shape


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes at the peak of one iteration, by what holds them."""

    weights: int  # the network's float32 weights and, under autocast, their low-precision copies
    kept: int  # tensors autograd keeps from the forward pass for the backward pass
    recomputed: int  # with checkpointing: one block's activations, recomputed during the backward pass
    backward: int  # gradient buffers alive at once during the backward pass
    optimizer: int  # the image, its gradient, the best iterate and the optimizer's state
    canvas: int = 0  # when tiled: the whole image, its content image and a band of tiles, at full size

    PARTS = ("weights", "kept", "recomputed", "backward", "optimizer", "canvas")

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in self.PARTS)

    def __str__(self) -> str:
        gib = 2**30
        parts = ", ".join(f"{k} {getattr(self, k) / gib:.2f}" for k in self.PARTS if k != "canvas" or self.canvas)
        return f"{self.total / gib:.2f} GiB ({parts})"


def _layer_shapes(last: str, height: int, width: int) -> list[tuple[str, int, int, int]]:
    """(name, C, H, W) of every layer up to ``last``."""
    shapes, c, h, w = [], 3, height, width
    for name in LAYER_NAMES[: LAYER_NAMES.index(last) + 1]:
        if name.startswith("conv"):
            c = CONV_CHANNELS[name]
        elif name.startswith("pool"):
            h, w = h // 2, w // 2
        shapes.append((name, c, h, w))
    return shapes


def estimate(
    layers: tuple[str, ...],
    height: int,
    width: int,
    activation_bytes: int = 4,
    checkpoint: bool = False,
    optimizer: str = "lbfgs",
    history: int = 100,
    batch: int = 1,
    float32_loss_copies: bool = True,
    pooling: str = "avg",
) -> MemoryEstimate:
    """Peak memory of one iteration at ``height``×``width`` with activations of ``activation_bytes``.

    ``float32_loss_copies``: the loss keeps float32 copies of low-precision activations (the reference
    operators do; the extension's read them as they are).
    """
    last = max(layers, key=LAYER_NAMES.index)
    shapes = _layer_shapes(last, height, width)
    numel = {name: batch * c * h * w for name, c, h, w in shapes}
    params = sum(o * i * 9 + o for o, i, _, _ in (conv_shape(n) for n, *_ in shapes if n.startswith("conv")))
    weights = params * 4 + (params * activation_bytes if activation_bytes < 4 else 0)
    # Distinct tensors autograd keeps: the network's input, each convolution's output (its ReLU runs in
    # place, unless the convolution's own output is requested), each pooling's output; and, for
    # low-precision activations, the float32 copies of the requested ones that the loss computes with.
    def kept_by(names) -> int:
        count = sum(numel[n] for n in names if n.startswith(("conv", "pool")))
        count += sum(numel[n] for n in names if n.startswith("relu") and n.replace("relu", "conv") in layers)
        copies = sum(numel[n] for n in names if n in layers) * 4 if activation_bytes < 4 and float32_loss_copies else 0
        indices = sum(numel[n] for n in names if n.startswith("pool")) * 8 if pooling == "max" else 0  # int64
        return count * activation_bytes + copies + indices

    input_bytes = batch * 3 * height * width * activation_bytes
    names = [name for name, *_ in shapes]
    if checkpoint:
        blocks: list[list[str]] = []
        for name in names:
            if (name.startswith("conv") and name.endswith("_1")) or not blocks:
                blocks.append([])
            blocks[-1].append(name)
        kept = input_bytes + sum(numel[b[-1]] for b in blocks[:-1]) * activation_bytes
        recomputed = max(kept_by(b) for b in blocks)
    else:
        kept, recomputed = input_bytes + kept_by(names), 0
    # The backward pass holds about two activation-sized gradients at a time (float32 where the loss
    # computes in float32 copies).
    backward = 2 * max(numel.values()) * (4 if float32_loss_copies else activation_bytes)
    image = batch * 3 * height * width * 4
    state = 2 * history + 3 if optimizer == "lbfgs" else 3  # L-BFGS: pairs, last x and g, direction
    return MemoryEstimate(weights, kept, recomputed, backward, image * (state + 3))  # + x, its grad, the best x


def process_status_kb(key: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM: the peak resident set), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def available_bytes(device: torch.device) -> int | None:
    """Free memory on ``device``: the GPU's free memory, or the system's available memory on a CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            return None
    return None
