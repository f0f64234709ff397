"""The ONNX graphs of a :class:`nst_fast.vgg.VGG19`, written node by node (:mod:`nst_fast.onnx.builder`).

Two graphs:

- **features**: ``image`` (N×3×H×W RGB in [0, 1], float32) → one output per requested layer, named after
  it; the weights' preprocessing (channel flip, scale, mean, std) is inside; H and W are dynamic.
- **step**: ``image`` → ``loss`` (the total that :class:`~nst_fast.losses.StyleTransferLoss` computes),
  ``grad`` (∂loss/∂image) and one scalar per loss term (``content``, ``style``, ``tv``). An ONNX engine
  has no backward, so the backward is written out as forward ops:

  ============================  =================================================================
  forward                       gradient with respect to its input
  ============================  =================================================================
  Conv (3×3, pad 1)             ConvTranspose with the same weights (or Conv with the flipped,
                                transposed weights: ``conv_backward="conv"``)
  Relu                          the gradient where the output is > 0, else 0 (Greater + Where)
  AveragePool 2×2               the gradient × 1/4 on each pixel of its window
  MaxPool 2×2                   the gradient on the window's maximum only — the first one in raster
                                order when several are equal, as PyTorch's kernels choose (the
                                window's four pixels are compared one by one with the pooled value:
                                SpaceToDepth, Equal, And/Not, Where, DepthToSpace; no Indices output,
                                no MaxUnpool)
  pools, odd sizes              the last row/column that the floor-mode pool drops gets zero
                                gradient (Pad by one, then Slice to the input's size)
  normalized Gram N = F·Fᵀ/HW   Σ(N − A)²/(4C²) → (N − A + (N − A)ᵀ)·F/(2C²·HW)  (= 4·s·(N − A)·F
                                /(4C²) for a symmetric target A)
  content Σ(F − P)²/(4CHW)      (F − P)/(2CHW)
  TV (mean squared neighbour    2/n·(d[i−1] − d[i]) per direction, d the neighbour differences
  differences)
  ============================  =================================================================

  H·W and C·H·W are computed in the graph (Shape, ReduceProd), so one graph serves every image size.
  The style Gram targets and content activations are either graph inputs (``targets="inputs"``: one
  graph serves many images; the terms' weights, which normalization derives from the targets, are then
inputs too) or
  initializers (``targets="initializers"``: a self-contained graph for one content image's size).

Only standard opset-17 operators that TensorRT's ONNX parser accepts are used. The float16 variant runs
the network (forward and backward) in float16, with float32 inputs, outputs, losses and Gram matrices;
its backward is scaled so that the largest incoming gradient is 1 (and unscaled in float32 at the end),
which keeps small gradients from flushing to zero in float16.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import torch
from onnx import TensorProto

from ..errors import OptionsError
from ..objective import StyleTransferLoss
from ..vgg import LAYER, VGG19, check_layers, deepest
from .builder import GraphBuilder, dtype_name, to_numpy

TARGET_MODES = ("inputs", "initializers")
CONV_BACKWARDS = ("convtranspose", "conv")
_FP16_GRAD_SCALE = 1.0  # the float16 backward starts with its largest gradient at this magnitude


def _check_model_layers(model: VGG19, layers: Iterable[str], what: str) -> tuple[str, ...]:
    layers = check_layers(layers)
    missing = [n for n in layers if n not in model.body]
    if missing:
        raise OptionsError(f"{what} layer {missing[0]} is deeper than the network, which ends at {model.last_layer}")
    return layers


def _forward(b: GraphBuilder, model: VGG19, image: str, last: str) -> dict[str, tuple[str, str]]:
    """The network up to ``last``: {layer: (its input tensor, its output tensor)}; outputs are named after
    their layers. The preprocessed image is the tensor ``input``."""
    prep = model.preprocess
    x = image
    if prep.preprocessing.bgr:
        x = b.op("Gather", [x, b.ints(2, 1, 0)], "bgr", axis=1)
    mul = b.initializer(to_numpy(prep.mul), "preprocess_mul")
    add = b.initializer(to_numpy(prep.add), "preprocess_add")
    x = b.op("Add", [b.op("Mul", [x, mul], "scaled"), add], "input")
    if b.dtype == "float16":
        x = b.op("Cast", [x], "input_fp16", to=TensorProto.FLOAT16)
    tensors = {}
    for name, module in model.body.items():
        if isinstance(module, torch.nn.Conv2d):
            w = b.initializer(to_numpy(module.weight).astype(b.np_dtype), f"{name}.weight", exact=True)
            bias = b.initializer(to_numpy(module.bias).astype(b.np_dtype), f"{name}.bias", exact=True)
            y = b.op("Conv", [x, w, bias], outputs=[name], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        elif isinstance(module, torch.nn.ReLU):
            y = b.op("Relu", [x], outputs=[name])
        elif isinstance(module, torch.nn.MaxPool2d):
            y = b.op("MaxPool", [x], outputs=[name], kernel_shape=[2, 2], strides=[2, 2])
        elif isinstance(module, torch.nn.AvgPool2d):
            y = b.op("AveragePool", [x], outputs=[name], kernel_shape=[2, 2], strides=[2, 2])
        else:  # pragma: no cover — VGG19 builds only these
            raise TypeError(f"cannot export layer {name}: {type(module).__name__}")
        tensors[name] = (x, y)
        x = y
        if name == last:
            break
    return tensors


def _image_input(b: GraphBuilder) -> str:
    return b.input("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])


def build_features_graph(model: VGG19, layers: Iterable[str] | None = None) -> onnx.ModelProto:
    """The truncated extractor: ``image`` → one float32 output per layer of ``layers`` (default: the
    model's), named after it."""
    layers = _check_model_layers(model, model.layers if layers is None else layers, "requested")
    if not layers:
        raise OptionsError("name at least one layer to export")
    repeated = sorted({n for n in layers if layers.count(n) > 1})
    if repeated:
        raise OptionsError(f"layer {repeated[0]} is named more than once")
    b = GraphBuilder("float32")
    tensors = _forward(b, model, _image_input(b), deepest(layers))
    for name in layers:
        channels = LAYER[name].channels
        b.output(tensors[name][1], name, TensorProto.FLOAT, ["batch", channels, f"{name}_height", f"{name}_width"])
    doc = (
        f"nst-fast VGG-19 features ({model.weights_source}, {model.pooling} pooling): image N×3×H×W RGB in "
        f"[0, 1] → {', '.join(layers)}"
    )
    return b.model("nst_fast_features", doc)


# --- the loss-and-gradient step ---------------------------------------------------------------------


def _style_target_array(target: torch.Tensor) -> np.ndarray:
    array = to_numpy(target)
    return array[None] if array.ndim == 2 else array


def step_feeds(loss_fn: StyleTransferLoss, inputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """What a step graph exported with ``targets="inputs"`` needs besides ``image``, for ``loss_fn``'s
    targets and weights: {input name: float32 array}; only those among ``inputs`` (a session's input
    names) when given."""
    feeds = {f"content_target.{n}": to_numpy(t) for n, t in loss_fn.content_targets.items()}
    feeds.update({f"style_target.{n}": _style_target_array(t) for n, t in loss_fn.style_targets.items()})
    feeds.update({f"weight.{k}": np.array(v, dtype=np.float32) for k, v in loss_fn.term_weights().items()})
    if inputs is not None:
        wanted = set(inputs)
        feeds = {k: v for k, v in feeds.items() if k in wanted}
    return feeds


def build_step_graph(
    model: VGG19,
    loss_fn: StyleTransferLoss,
    targets: str = "inputs",
    dtype=torch.float32,
    conv_backward: str = "convtranspose",
) -> onnx.ModelProto:
    """The graph ``image`` → (``loss``, ``grad`` = ∂loss/∂image, and the terms ``content``, ``style``,
    ``tv`` that ``loss_fn`` has) that computes what ``loss_fn(model(image), image)`` and its backward do.

    Args:
        targets: "inputs" — the targets are inputs ``content_target.<layer>`` (N×C×h×w activations) and
            ``style_target.<layer>`` (N×C×C normalized Grams), and the terms' weights are inputs
            ``weight.content.<layer>``, ``weight.style.<layer>``, ``weight.tv`` (float32 scalars; with
            normalized losses they depend on the targets) — :func:`step_feeds` gives them all for a
            loss; "initializers" — all baked in.
        dtype: float32, or float16 for the network's forward and backward (inputs and outputs stay float32).
        conv_backward: "convtranspose" (the convolutions' own weights) or "conv" (a Conv with flipped,
            transposed copies of them: faster on some engines, twice the weights).
    """
    if targets not in TARGET_MODES:
        raise OptionsError(f"targets must be 'inputs' or 'initializers', got {targets!r}")
    if conv_backward not in CONV_BACKWARDS:
        raise OptionsError(f"conv_backward must be one of {', '.join(CONV_BACKWARDS)}, got {conv_backward!r}")
    dtype = dtype_name(dtype)
    content_layers = _check_model_layers(model, loss_fn.content_targets, "content")
    style_layers = _check_model_layers(model, loss_fn.style_targets, "style")
    if not content_layers and not style_layers:
        raise OptionsError("the loss has no content or style layer: there is nothing to differentiate")

    b = GraphBuilder(dtype)
    image = _image_input(b)
    last = deepest([*content_layers, *style_layers])
    tensors = _forward(b, model, image, last)
    as_inputs = targets == "inputs"
    weights = {f"weight.{k}": v for k, v in loss_fn.term_weights().items()}

    def weight(key: str) -> str:
        value = np.array(weights[key], dtype=np.float32)
        if as_inputs:
            return b.input(key, TensorProto.FLOAT, [])
        return b.initializer(value, key, exact=True)

    def fp32(layer: str) -> str:
        act = tensors[layer][1]
        return act if dtype == "float32" else b.op("Cast", [act], f"{layer}_fp32", to=TensorProto.FLOAT)

    upstream: dict[str, list[str]] = {}  # layer → float32 gradients of the loss terms at its output
    terms: dict[str, list[str]] = {"content": [], "style": [], "tv": []}

    for name in content_layers:
        a = fp32(name)
        key = f"content_target.{name}"
        if as_inputs:
            shape = ["content_batch", LAYER[name].channels, f"{name}_height", f"{name}_width"]
            t = b.input(key, TensorProto.FLOAT, shape)
        else:
            t = b.initializer(to_numpy(loss_fn.content_targets[name]), key, exact=True)
        w = weight(f"weight.content.{name}")
        diff = b.op("Sub", [a, t], f"content_diff.{name}")
        chw = b.numel(a, 1, f"content_chw.{name}")
        sq = b.op("ReduceSum", [b.op("Mul", [diff, diff], f"content_sq.{name}")], f"content_sum.{name}", keepdims=0)
        loss = b.op("Div", [sq, b.op("Mul", [chw, b.const(4.0)], f"content_4chw.{name}")], f"content_loss.{name}")
        terms["content"].append(b.op("Mul", [loss, w], f"content_term.{name}"))
        coef = b.op("Div", [w, b.op("Mul", [chw, b.const(2.0)], f"content_2chw.{name}")], f"content_coef.{name}")
        upstream.setdefault(name, []).append(b.op("Mul", [diff, coef], f"content_grad.{name}"))

    for name in style_layers:
        a = fp32(name)
        c = LAYER[name].channels
        key = f"style_target.{name}"
        if as_inputs:
            t = b.input(key, TensorProto.FLOAT, ["style_batch", c, c])
        else:
            t = b.initializer(_style_target_array(loss_fn.style_targets[name]), key, exact=True)
        w = weight(f"weight.style.{name}")
        f = b.op("Reshape", [a, b.ints(0, 0, -1)], f"style_F.{name}")
        gram = b.op("MatMul", [f, b.op("Transpose", [f], f"style_Ft.{name}", perm=[0, 2, 1])], f"style_gram.{name}")
        s = b.op("Reciprocal", [b.numel(a, 2, f"style_hw.{name}")], f"style_s.{name}")
        d = b.op("Sub", [b.op("Mul", [gram, s], f"style_N.{name}"), t], f"style_diff.{name}")
        sq = b.op("ReduceSum", [b.op("Mul", [d, d], f"style_sq.{name}")], f"style_sum.{name}", keepdims=0)
        loss = b.op("Mul", [sq, b.const(1.0 / (4 * c * c))], f"style_loss.{name}")
        terms["style"].append(b.op("Mul", [loss, w], f"style_term.{name}"))
        sym = b.op("Add", [d, b.op("Transpose", [d], f"style_diffT.{name}", perm=[0, 2, 1])], f"style_sym.{name}")
        coef = b.op("Mul", [b.op("Mul", [s, w], f"style_sw.{name}"), b.const(1.0 / (2 * c * c))], f"style_coef.{name}")
        g = b.op("Mul", [b.op("MatMul", [sym, f], f"style_symF.{name}"), coef], f"style_gradF.{name}")
        upstream.setdefault(name, []).append(
            b.op("Reshape", [g, b.op("Shape", [a], f"style_shape.{name}")], f"style_grad.{name}")
        )

    tv_grad = None
    if loss_fn.tv_weight:
        tv_term, tv_grad = _tv(b, image, weight("weight.tv"))
        terms["tv"].append(tv_term)

    # Backward through the network, deepest layer first.
    scale = None
    if dtype == "float16":
        peaks = [
            b.op("ReduceMax", [b.op("Abs", [g], "abs_grad")], "peak_grad", keepdims=0)
            for gs in upstream.values()
            for g in gs
        ]
        peak = b.op("Max", [*peaks, b.const(1e-30)], "peak")
        scale = b.op("Div", [b.const(_FP16_GRAD_SCALE), peak], "grad_scale")
        upstream = {
            n: [b.op("Cast", [b.op("Mul", [g, scale], "scaled_grad")], "grad_fp16", to=TensorProto.FLOAT16) for g in gs]
            for n, gs in upstream.items()
        }
    zero = b.const(0.0, b.np_dtype, "zero")
    g = None
    for name in reversed(list(tensors)):
        incoming = ([g] if g is not None else []) + upstream.get(name, [])
        g = incoming[0] if len(incoming) == 1 else b.op("Sum", incoming, f"grad_sum.{name}")
        x, y = tensors[name]
        module = model.body[name]
        if isinstance(module, torch.nn.Conv2d):
            if conv_backward == "convtranspose":
                g = b.op(
                    "ConvTranspose", [g, f"{name}.weight"], f"grad_in.{name}", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
                )
            else:
                flipped = to_numpy(module.weight).transpose(1, 0, 2, 3)[:, :, ::-1, ::-1].astype(b.np_dtype)
                w_t = b.initializer(flipped, f"{name}.weight_flipped_t", exact=True)
                g = b.op("Conv", [g, w_t], f"grad_in.{name}", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        elif isinstance(module, torch.nn.ReLU):
            g = b.op("Where", [b.op("Greater", [y, zero], f"relu_mask.{name}"), g, zero], f"grad_in.{name}")
        else:
            g = _pool_backward(b, name, x, y, g, isinstance(module, torch.nn.MaxPool2d), LAYER[name].channels)
    if scale is not None:
        g = b.op("Div", [b.op("Cast", [g], "grad_input_fp32", to=TensorProto.FLOAT), scale], "grad_input_unscaled")
    g = b.op("Mul", [g, "preprocess_mul"], "grad_scaled_image")
    if model.preprocess.preprocessing.bgr:
        g = b.op("Gather", [g, b.ints(2, 1, 0)], "grad_rgb", axis=1)
    if tv_grad is not None:
        g = b.op("Add", [g, tv_grad], "grad_with_tv")

    present = {k: v for k, v in terms.items() if v}
    sums = {k: v[0] if len(v) == 1 else b.op("Sum", v, f"{k}_sum") for k, v in present.items()}
    total = next(iter(sums.values())) if len(sums) == 1 else b.op("Sum", list(sums.values()), "total")
    b.output(total, "loss", TensorProto.FLOAT, [])
    b.output(g, "grad", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    for k, t in sums.items():
        b.output(t, k, TensorProto.FLOAT, [])
    doc = (
        f"nst-fast loss and gradient ({model.weights_source}, {model.pooling} pooling, {dtype}, targets as "
        f"{targets}): content {', '.join(content_layers) or '-'}; style {', '.join(style_layers) or '-'}"
        + ("; tv" if loss_fn.tv_weight else "")
    )
    return b.model("nst_fast_step", doc)


def _pool_backward(b: GraphBuilder, name: str, x: str, y: str, g: str, is_max: bool, channels: int) -> str:
    """∂/∂x of a 2×2, stride-2, floor-mode pool, given g = ∂/∂y.

    The window's pixels are gathered as four phase images (SpaceToDepth of x cropped to 2·Hp×2·Wp), the
    gradient of each phase is computed, and DepthToSpace interleaves them back: exact, and no Resize.
    """
    hw_pooled = b.op("Shape", [y], f"pool_hw.{name}", start=2)
    hw_even = b.op("Mul", [hw_pooled, b.ints(2, 2)], f"pool_hw_even.{name}")
    if is_max:
        x_even = b.op("Slice", [x, b.ints(0, 0), hw_even, b.ints(2, 3)], f"pool_x_even.{name}")
        phases = b.op("SpaceToDepth", [x_even], f"pool_phases.{name}", blocksize=2)
        parts = b.op(
            "Split", [phases, b.ints(channels, channels, channels, channels)], f"pool_phase.{name}", outputs=4, axis=1
        )
        zero = b.const(0.0, b.np_dtype, "zero")
        grads, taken = [], None
        # Raster order in the window: (0,0), (0,1), (1,0), (1,1); the first maximum gets the gradient.
        for i, part in enumerate(parts):
            mask = b.op("Equal", [part, y], f"pool_is_max{i}.{name}")
            if taken is not None:
                mask = b.op("And", [mask, b.op("Not", [taken], f"pool_free{i}.{name}")], f"pool_first_max{i}.{name}")
            if i < 3:
                taken = mask if taken is None else b.op("Or", [taken, mask], f"pool_taken{i}.{name}")
            grads.append(b.op("Where", [mask, g, zero], f"pool_grad{i}.{name}"))
    else:
        quarter = b.op("Mul", [g, b.const(0.25, b.np_dtype, "quarter")], f"pool_grad_quarter.{name}")
        grads = [quarter] * 4
    stacked = b.op("Concat", grads, f"pool_grad_phases.{name}", axis=1)
    g_even = b.op("DepthToSpace", [stacked], f"pool_grad_even.{name}", blocksize=2, mode="DCR")
    # Floor mode drops an odd last row/column: give it zero gradient, and the gradient x's shape.
    padded = b.op("Pad", [g_even, b.ints(0, 0, 0, 0, 0, 0, 1, 1)], f"pool_grad_padded.{name}", mode="constant")
    hw = b.op("Shape", [x], f"pool_in_hw.{name}", start=2)
    return b.op("Slice", [padded, b.ints(0, 0), hw, b.ints(2, 3)], f"grad_in.{name}")


def _tv(b: GraphBuilder, image: str, w: str) -> tuple[str, str]:
    """γ·TV of the (float32) image and its gradient."""
    big = 2**62
    total, grad = [], []
    for axis, label in ((2, "v"), (3, "h")):
        later = b.op("Slice", [image, b.ints(1), b.ints(big), b.ints(axis)], f"tv_later_{label}")
        earlier = b.op("Slice", [image, b.ints(0), b.ints(-1), b.ints(axis)], f"tv_earlier_{label}")
        d = b.op("Sub", [later, earlier], f"tv_d_{label}")
        # Mean over C·(H−1)·W (or C·H·(W−1)) per image; 0 for a side of 1 pixel, as tv_loss skips it.
        n = b.op("Max", [b.numel(d, 1, f"tv_n_{label}"), b.const(1.0)], f"tv_count_{label}")
        sq = b.op("ReduceSum", [b.op("Mul", [d, d], f"tv_sq_{label}")], f"tv_sum_{label}", keepdims=0)
        total.append(b.op("Div", [sq, n], f"tv_mean_{label}"))
        gd = b.op(
            "Mul",
            [d, b.op("Div", [b.op("Mul", [w, b.const(2.0)], f"tv_2w_{label}"), n], f"tv_coef_{label}")],
            f"tv_gd_{label}",
        )
        before = [0] * 8
        after = [0] * 8
        before[axis] = 1  # pad at the start: element i holds gd[i-1]
        after[4 + axis] = 1  # pad at the end: element i holds gd[i]
        prev = b.op("Pad", [gd, b.ints(*before)], f"tv_prev_{label}")
        following = b.op("Pad", [gd, b.ints(*after)], f"tv_next_{label}")
        grad.append(b.op("Sub", [prev, following], f"tv_grad_{label}"))
    term = b.op("Mul", [b.op("Add", total, "tv_loss"), w], "tv_term")
    return term, b.op("Add", grad, "tv_grad")
