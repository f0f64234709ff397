"""Checks of the exported graphs against PyTorch: ONNX Runtime (CPU) on random images, against the
network's activations and against torch autograd in float64."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import torch

from ..losses import style_target
from ..objective import StyleTransferLoss
from ..vgg import LAYER, VGG19
from .builder import to_numpy
from .graphs import step_feeds


def _cpu_session(proto: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def check_features(proto: onnx.ModelProto, model: VGG19, sizes=((48, 40), (37, 64)), seed: int = 0) -> float:
    """Run ``proto`` in ONNX Runtime (CPU) on random images of ``sizes`` and compare every output with
    ``model``'s activations; return the largest relative error (‖onnx − torch‖ / ‖torch‖)."""
    session = _cpu_session(proto)
    names = [o.name for o in session.get_outputs()]
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for h, w in sizes:
        image = torch.rand(1, 3, h, w, generator=gen)
        with torch.no_grad():
            ref = {k: to_numpy(v) for k, v in _on_cpu(model)(image).items()}
        for name, out in zip(names, session.run(names, {"image": image.numpy()})):
            worst = max(worst, _relative(out, ref[name]))
    return worst


def _on_cpu(model: VGG19) -> VGG19:
    return model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()


def check_step(
    proto: onnx.ModelProto, model: VGG19, loss_fn: StyleTransferLoss, size: tuple[int, int] | None = None, seed: int = 0
) -> tuple[float, float]:
    """Run the step graph ``proto`` of ``loss_fn`` in ONNX Runtime (CPU) on a random image and compare the
    loss and gradient with torch autograd in float64; return their relative errors.

    Graphs with targets as inputs are fed ``loss_fn``'s targets (at ``size``, default their own) — or,
    given a ``size`` that does not fit them, targets computed from random images of that size.
    """
    session = _cpu_session(proto)
    inputs = {i.name for i in session.get_inputs()}
    gen = torch.Generator().manual_seed(seed)
    model64 = copy.deepcopy(model).cpu().double()
    content_shape = next((tuple(t.shape[-2:]) for t in loss_fn.content_targets.values()), None)
    if size is None:
        size = _image_size(model, loss_fn) or (48, 40)
    if content_shape is not None and LAYER[next(iter(loss_fn.content_targets))].output_size(*size) != content_shape:
        if "image" in inputs and any(k.startswith("content_target.") for k in inputs):
            loss_fn = _random_loss(model64, loss_fn, size, gen)
        else:
            raise ValueError(f"a graph with its content targets baked in takes one image size; {size} does not fit")
    targets64 = StyleTransferLoss(
        {k: v.detach().cpu().double() for k, v in loss_fn.content_targets.items()},
        {k: v.detach().cpu().double() for k, v in loss_fn.style_targets.items()},
        loss_fn.layer_weights,
        loss_fn.content_weight,
        loss_fn.style_weight,
        loss_fn.tv_weight,
        content_layer_weights=loss_fn.content_layer_weights,
        impl="ref",
    )
    # The same float32 image for both: the gradient is discontinuous where a ReLU or a max-pool switches, so
    # even the rounding of the image to float32 would change it by more than the engines differ.
    image32 = torch.rand(1, 3, *size, generator=gen)
    image = image32.double().requires_grad_(True)
    loss, _ = targets64(model64(image), image)
    loss.backward()
    feeds = step_feeds(loss_fn, inputs)
    out = dict(zip(["loss", "grad"], session.run(["loss", "grad"], {"image": image32.numpy(), **feeds})))
    return _relative(out["loss"], loss.detach().numpy()), _relative(out["grad"], image.grad.numpy())


def _image_size(model: VGG19, loss_fn: StyleTransferLoss) -> tuple[int, int] | None:
    """An image size whose activations fit the content targets (the smallest), if there are any."""
    for layer, t in loss_fn.content_targets.items():
        h, w = (int(d) * LAYER[layer].stride for d in t.shape[-2:])
        return h, w
    return None


def _random_loss(model64: VGG19, loss_fn: StyleTransferLoss, size, gen) -> StyleTransferLoss:
    with torch.no_grad():
        content = model64(torch.rand(1, 3, *size, generator=gen, dtype=torch.float64))
        style = model64(torch.rand(1, 3, *size, generator=gen, dtype=torch.float64))
    return StyleTransferLoss(
        {k: content[k].float() for k in loss_fn.content_targets},
        {k: style_target(style[k], impl="ref").float() for k in loss_fn.style_targets},
        loss_fn.layer_weights,
        loss_fn.content_weight,
        loss_fn.style_weight,
        loss_fn.tv_weight,
        content_layer_weights=loss_fn.content_layer_weights,
    )
