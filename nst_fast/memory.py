"""How much memory an optimization needs, estimated from the network's layer shapes before running.

The estimate adds what one iteration holds at its peak: the network's weights (under autocast, with
their low-precision copies); the activations autograd keeps
for the backward pass (with block checkpointing: each block's input, the requested activations, and
one block recomputed at a time); the gradients of the requested activations, which the backward pass
holds at once, and the chain's own; the image, its gradient, the best iterate and the optimizer's
state. Checked against the allocator's peak on a CPU at 256-1024 px, and against the peak resident
set up to 2048 px, in benchmarks/NOTES.md §4 and tests/test_engine.py.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .vgg import LAYER, LAYER_NAMES, blocks, conv_shape, deepest, network


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes at the peak of one iteration, by what holds them."""

    weights: int  # the network's float32 weights and their low-precision copies
    kept: int  # tensors autograd keeps from the forward pass for the backward pass
    recomputed: int  # with checkpointing: one block's activations, recomputed during the backward pass
    backward: int  # gradient buffers alive at once during the backward pass
    optimizer: int  # the image, its gradient, the best iterate and the optimizer's state
    canvas: int = 0  # when tiled: the whole image, its content image and a band of tiles, at full size
    source: int = 0  # on a CPU: the content image as loaded, at its own resolution, kept for every scale
    loaded_weights: int = 0  # of ``weights``, the float32 ones, loaded before a run (not a part of its own)
    workspace: int = 0  # Winograd convolutions: NNPACK's per-thread workspace, flipped weights (nst_fast.conv)

    PARTS = ("weights", "kept", "recomputed", "backward", "optimizer", "workspace", "canvas", "source")

    @property
    def total(self) -> int:
        return sum(getattr(self, k) for k in self.PARTS)

    @property
    def beyond_loaded(self) -> int:
        """What a run allocates beyond the weights and the content image, which are loaded (and counted
        as used) before it starts: the figure to compare with free memory."""
        return self.total - self.loaded_weights - self.source

    def __str__(self) -> str:
        gib = 2**30
        parts = ", ".join(
            f"{k} {getattr(self, k) / gib:.2f}"
            for k in self.PARTS
            if getattr(self, k) or k not in ("workspace", "canvas", "source")
        )
        return f"{self.total / gib:.2f} GiB ({parts})"


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
    workspace: int = 0,
) -> MemoryEstimate:
    """Peak memory of one iteration at ``height``×``width`` with activations of ``activation_bytes``.

    ``float32_loss_copies``: the loss keeps float32 copies of low-precision activations (the reference
    operators do; the extension's read them as they are). ``workspace``: what the convolutions need
    beyond their tensors (NNPACK's, for Winograd: :func:`nst_fast.conv.workspace_bytes`).
    """
    last = deepest(layers)
    names = [layer.name for layer in network(last)]
    numel = {name: batch * LAYER[name].channels * math.prod(LAYER[name].output_size(height, width)) for name in names}
    params = sum(o * i * 9 + o for o, i, _, _ in (conv_shape(n) for n in names if LAYER[n].kind == "conv"))
    weights = params * 4 + (params * activation_bytes if activation_bytes < 4 else 0)

    # Distinct tensors autograd keeps: the network's input, each convolution's output (its ReLU runs in
    # place, unless the convolution's own output is requested), each pooling's output; and, for
    # low-precision activations, the float32 copies of the requested ones that the loss computes with.
    def kept_by(names) -> int:
        count = sum(numel[n] for n in names if LAYER[n].kind in ("conv", "pool"))
        # A ReLU runs in place unless the convolution before it is requested: then its output is kept too.
        count += sum(numel[n] for n in names if LAYER[n].kind == "relu" and LAYER_NAMES[LAYER[n].index - 1] in layers)
        copies = sum(numel[n] for n in names if n in layers) * 4 if activation_bytes < 4 and float32_loss_copies else 0
        indices = sum(numel[n] for n in names if LAYER[n].kind == "pool") * 8 if pooling == "max" else 0  # int64
        return count * activation_bytes + copies + indices

    input_bytes = batch * 3 * height * width * activation_bytes
    # The backward pass starts from the loss terms, and autograd runs all of them before the network's
    # chain: the gradients of the requested activations are alive at once (float32 where the loss
    # computes in float32 copies), and the chain then holds about two activation-sized gradients. With
    # checkpointing, a block's terms are recomputed and differentiated with the block, so only one
    # block's requested activations have gradients at a time.
    grad_bytes = 4 if activation_bytes < 4 and float32_loss_copies else activation_bytes

    def requested(names) -> int:
        return sum(numel[n] for n in names if n in layers)

    if checkpoint:
        units = blocks(last)
        kept = input_bytes + sum(numel[b[-1]] for b in units[:-1]) * activation_bytes
        recomputed = max(kept_by(b) for b in units)
        grads = max(requested(b) for b in units)
    else:
        kept, recomputed, grads = input_bytes + kept_by(names), 0, requested(names)
    backward = (grads + 2 * max(numel.values())) * grad_bytes
    image = batch * 3 * height * width * 4
    state = 2 * history + 3 if optimizer == "lbfgs" else 3  # L-BFGS: pairs, last x and g, direction
    return MemoryEstimate(
        weights,
        kept,
        recomputed,
        backward,
        image * (state + 3),  # + x, its grad, the best x
        loaded_weights=params * 4,
        workspace=workspace,
    )


def forward_bytes(layers: tuple[str, ...], height: int, width: int) -> int:
    """Peak of one float32 forward pass without autograd at ``height``×``width`` (a style image's, for its
    targets): the requested activations produced so far, which it returns together, and the running
    layer's input and output (a ReLU runs in place unless its convolution is requested). tests/test_plan.py
    holds a fresh process's peak resident set at 1024² within 0.85–1.2× of it, with one and two style
    images and with convolutions requested."""
    held = 0  # requested activations so far
    current, current_held = 3 * height * width, False  # the tensor flowing through the network
    peak = current
    for layer in network(deepest(layers)):
        if layer.kind == "relu" and LAYER_NAMES[layer.index - 1] not in layers:
            # In place (VGG19 makes it so unless the convolution's own output is requested): the
            # convolution's output becomes this layer's.
            if layer.name in layers and not current_held:
                held, current_held = held + current, True
            continue
        count = layer.channels * math.prod(layer.output_size(height, width))
        peak = max(peak, held + (0 if current_held else current) + count)
        current, current_held = count, layer.name in layers
        held += count if current_held else 0
    return 4 * max(peak, held)


def readable(count: int) -> str:
    """A number of bytes for a message: 1.5 GiB, 28 MiB, 1 KiB."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}" if unit == "GiB" else f"{count / size:.0f} {unit}"
    return f"{count} bytes"


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
    """Free memory on ``device``: on a GPU, what the driver has free plus what PyTorch's caching allocator
    holds unused (reserved, not allocated: a run can take it, and in a long-lived process — a service —
    it can be most of the GPU); on a CPU, the system's available memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
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
