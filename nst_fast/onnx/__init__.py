"""ONNX export of nst-fast: the VGG-19 feature extractor, and the whole loss-and-gradient step as a plain
forward ONNX graph (its backward written out), so that any ONNX engine can run style transfer.

- :mod:`.builder`: the graph builder (names, constants, opset);
- :mod:`.graphs`: :func:`build_features_graph` (image → one output per layer) and
  :func:`build_step_graph` (image → loss, ∂loss/∂image and each term), with :func:`step_feeds`;
- :mod:`.checks`: :func:`check_features` and :func:`check_step`, against PyTorch in ONNX Runtime;
- :mod:`.export`: :func:`save`, :func:`export_features`, :func:`export_step` (checked, atomic files).

The ``onnxruntime`` backend that runs the step graph is :mod:`nst_fast.backends.onnxruntime`.
"""

from .builder import OPSET
from .checks import check_features, check_step
from .export import export_features, export_step, save
from .graphs import build_features_graph, build_step_graph, step_feeds

__all__ = [
    "OPSET",
    "build_features_graph",
    "build_step_graph",
    "check_features",
    "check_step",
    "export_features",
    "export_step",
    "save",
    "step_feeds",
]
