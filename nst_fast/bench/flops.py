"""The arithmetic of one optimization iteration, counted from VGG-19's layer table and a plan.

An iteration evaluates the loss at the image and its gradient with respect to the image. Counted, per
image of a batch, a multiply-add as two FLOPs (a matrix product of M×K by K×N: 2·M·N·K):

- every convolution of the network truncated after the deepest layer used, forward: 2·C_in·9·C_out·h·w
  (3×3 kernels, padding 1: the output has the input's h×w);
- its backward to its input, the same 2·C_in·9·C_out·h·w — conv1_1's included, whose input is the image
  being optimized; no weight gradients, since the weights are frozen;
- the Gram matrix of each style layer, G = F·Fᵀ with F of C × h·w: 2·C²·h·w forward, and the backward of
  the style term, ∂J/∂F = c·(G − A)·F: one more product, 2·C²·h·w. Both as full products, although G's
  symmetry lets the kernels skip half of the first (the customary count of the work, not of the kernel);
- elementwise work, one FLOP per element and operation: the preprocessing, the convolutions' biases,
  ReLU and pooling forward and backward, the content, style and total-variation terms and their
  gradients. It is under 1% of the total; it is memory-bound, not FLOP-bound.

The convolutions are counted as direct ones also where the plan runs them by Winograd's algorithm
(:mod:`nst_fast.conv`, float32 on a CPU), which multiplies less: the count is the work an iteration does
for the loss, not the algorithm's own, so such a run's fraction of the matrix-product peak can exceed 1.

Not counted: the optimizer's update (L-BFGS's two-loop recursion over m curvature pairs, about
4·m·3·H·W FLOPs: under 0.1% of an iteration at m = 100) and the best-iterate tracking.

At 512×384, VGG-19 to relu5_1 with the default layers: about 298 GFLOP per iteration, 95.3% of it in
the convolutions (284 GFLOP), 4.6% in the Gram matrices, 0.1% elementwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from ..options import Options
from ..vgg import LAYER, LAYERS, Layer, deepest, network


@dataclass(frozen=True)
class IterationFlops:
    """FLOPs of one iteration (forward and backward to the image), by kind of work."""

    conv_forward: int
    conv_backward: int  # to the input only: the weights are frozen
    gram_forward: int
    gram_backward: int
    elementwise: int

    @property
    def matmul(self) -> int:
        """The matrix-product work: convolutions and Gram matrices, what a GEMM peak bounds."""
        return self.conv_forward + self.conv_backward + self.gram_forward + self.gram_backward

    @property
    def total(self) -> int:
        return self.matmul + self.elementwise

    def times(self, factor: int) -> IterationFlops:
        """The work of ``factor`` such iterations (or images of a batch)."""
        return IterationFlops(*(factor * v for v in asdict(self).values()))

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "matmul": self.matmul, "total": self.total}


def _input_size(layer: Layer, height: int, width: int) -> tuple[int, int]:
    """The spatial size of ``layer``'s input for a ``height``×``width`` image."""
    if layer.index == 0:
        return height, width
    return LAYERS[layer.index - 1].output_size(height, width)


def iteration_flops(
    height: int,
    width: int,
    style_layers: Iterable[str],
    content_layers: Iterable[str] = (),
    tv: bool = False,
    batch: int = 1,
) -> IterationFlops:
    """FLOPs of one iteration on ``batch`` images of ``height``×``width`` with these loss layers."""
    style_layers, content_layers = tuple(style_layers), tuple(content_layers)
    last = deepest(style_layers + content_layers)
    conv = gram = gram_back = 0
    pixels = height * width
    elementwise = 2 * 3 * pixels + 3 * pixels  # preprocessing (multiply-add), and its backward (multiply)
    for layer in network(last):
        h, w = layer.output_size(height, width)
        if layer.kind == "conv":
            conv += 2 * layer.in_channels * 9 * layer.channels * h * w
            elementwise += layer.channels * h * w  # the bias
        elif layer.kind == "relu":
            elementwise += 2 * layer.channels * h * w  # forward max(x, 0); backward: the gradient masked
        else:  # 2×2 pooling: about one operation per input element forward, one backward
            ih, iw = _input_size(layer, height, width)
            elementwise += 2 * layer.channels * ih * iw
    for name in style_layers:
        layer = LAYER[name]
        c, n = layer.channels, layer.output_size(height, width)[0] * layer.output_size(height, width)[1]
        gram += 2 * c * c * n
        gram_back += 2 * c * c * n
        # forward: scale, difference, square and sum over C²; backward: (G − A) scaled, and the
        # product's output scaled over C·n
        elementwise += 4 * c * c + 2 * c * c + c * n
    for name in content_layers:
        layer = LAYER[name]
        h, w = layer.output_size(height, width)
        # forward: difference, square, sum; backward: 2·weight·(a − target)
        elementwise += 3 * layer.channels * h * w + 2 * layer.channels * h * w
    if tv:  # two differences per pixel and channel, squared and summed; their gradients
        elementwise += 2 * 6 * 3 * pixels
    return IterationFlops(conv, conv, gram, gram_back, elementwise).times(batch)


def options_flops(options: Options, height: int, width: int, batch: int = 1) -> IterationFlops:
    """FLOPs of one iteration of a run with ``options`` on ``batch`` images of ``height``×``width``."""
    return iteration_flops(
        height, width, options.style_layers, options.content_layers, tv=options.tv_weight > 0, batch=batch
    )


def scale_flops(plan, index: int) -> int:
    """FLOPs of one step at scale ``index`` of a :class:`~nst_fast.plan.Plan`, for every image of its batch
    and every tile (a tiled scale runs its steps on each tile in turn)."""
    scale = plan.scales[index]
    return sum(options_flops(plan.options, t.height, t.width, plan.batch).total for t in scale.tiles)


def run_flops(plan, final_scale_steps: int | None = None) -> int:
    """FLOPs of a run that follows ``plan``: every scale's planned iterations, except that the last
    scale stops after ``final_scale_steps`` iterations when given (a run ended early)."""
    total = 0
    for index, scale in enumerate(plan.scales):
        last = index == len(plan.scales) - 1
        steps = final_scale_steps if last and final_scale_steps is not None else scale.steps
        total += steps * scale_flops(plan, index)
    return total
