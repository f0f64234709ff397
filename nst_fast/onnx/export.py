"""Writing ONNX graphs to files: checked with onnx.checker, written atomically."""

from __future__ import annotations

import os
from collections.abc import Iterable

import onnx
import torch

from ..atomic import atomic_save
from ..objective import StyleTransferLoss
from ..vgg import VGG19
from .graphs import build_features_graph, build_step_graph


def save(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Check ``model`` with onnx.checker and write it to ``path`` atomically."""
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    atomic_save(path, lambda f: f.write(data))


def export_features(model: VGG19, path: str | os.PathLike, layers: Iterable[str] | None = None) -> onnx.ModelProto:
    """Write the feature extractor for ``layers`` (default: the model's) to ``path``, checked, atomically."""
    proto = build_features_graph(model, layers)
    save(proto, path)
    return proto


def export_step(
    model: VGG19,
    loss_fn: StyleTransferLoss,
    path: str | os.PathLike,
    targets: str = "inputs",
    dtype=torch.float32,
    conv_backward: str = "convtranspose",
) -> onnx.ModelProto:
    """Write :func:`build_step_graph`'s graph to ``path``, checked, atomically."""
    proto = build_step_graph(model, loss_fn, targets, dtype, conv_backward)
    save(proto, path)
    return proto
