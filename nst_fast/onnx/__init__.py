"""ONNX export of nst-fast: the VGG-19 feature extractor, and the whole loss-and-gradient step as a plain
forward ONNX graph (built from the analytic backward), so that any ONNX engine can run style transfer.

- :func:`export_features` / :func:`build_features_graph`: image → one output per requested layer.
- :func:`export_step` / :func:`build_step_graph`: image → (loss, ∂loss/∂image, and each loss term),
  with the targets as graph inputs (one graph serves many images) or baked in as initializers.
- :mod:`nst_fast.onnx.backend`: the ``onnxruntime`` optimization loop that runs the step graph.
"""

from .export import (
    OPSET,
    build_features_graph,
    build_step_graph,
    check_features,
    check_step,
    export_features,
    export_step,
    save,
    step_feeds,
)

__all__ = [
    "OPSET", "build_features_graph", "build_step_graph", "check_features", "check_step", "export_features",
    "export_step", "save", "step_feeds",
]  # fmt: skip
