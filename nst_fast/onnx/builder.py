"""A small builder of ONNX graphs with ``onnx.helper``: unique tensor names, shared constants, opset 17.

No tracing and no torch.onnx: :mod:`nst_fast.onnx.graphs` writes the forward and backward graphs node by
node with it.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..errors import OptionsError

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17: what older parsers (TensorRT's) expect
DTYPES = ("float32", "float16")


def dtype_name(dtype) -> str:
    if isinstance(dtype, torch.dtype):
        name = {torch.float32: "float32", torch.float16: "float16"}.get(dtype)
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
    if name not in DTYPES:
        raise OptionsError(f"the ONNX step graph is float32 or float16, not {dtype!r}")
    return name


class GraphBuilder:
    """Nodes, initializers, inputs and outputs of one graph, with unique tensor names."""

    def __init__(self, dtype: str = "float32"):
        self.dtype = dtype
        self.np_dtype = np.float16 if dtype == "float16" else np.float32
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._used: set[str] = set()
        self._consts: dict[tuple, str] = {}

    def name(self, hint: str) -> str:
        name, i = hint, 1
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def initializer(self, array: np.ndarray, hint: str, exact: bool = False) -> str:
        name = hint if exact else self.name(hint)
        if exact:
            if name in self._used:
                raise ValueError(f"tensor name {name!r} used twice")
            self._used.add(name)
        # np.array, not np.ascontiguousarray, which makes a 0-d array 1-d
        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def const(self, value, dtype=np.float32, hint: str = "const") -> str:
        """A small constant, shared by every node that uses the same value."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.initializer(array, hint)
        return self._consts[key]

    def ints(self, *values: int) -> str:
        return self.const(list(values), np.int64, "ints")

    def op(
        self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int | list[str] = 1, **attrs
    ) -> str | list[str]:
        if isinstance(outputs, int):
            names = [self.name(f"{hint or op_type}" + (f"_{i}" if outputs > 1 else "")) for i in range(outputs)]
        else:
            names = [self._exact(n) for n in outputs]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(f"node/{names[0]}"), **attrs))
        return names[0] if len(names) == 1 else names

    def _exact(self, name: str) -> str:
        if name in self._used:
            raise ValueError(f"tensor name {name!r} used twice")
        self._used.add(name)
        return name

    def input(self, name: str, elem: int, shape: list) -> str:
        self._exact(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, tensor: str, name: str, elem: int, shape: list | None) -> None:
        if tensor != name:
            self.op("Identity", [tensor], outputs=[name])
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def model(self, graph_name: str, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nst-fast", doc_string=doc
        )
        model.ir_version = IR_VERSION
        return model

    # Shorthands for the patterns below.
    def scalar_float(self, tensor: str, hint: str) -> str:
        return self.op("Cast", [tensor], hint, to=TensorProto.FLOAT)

    def numel(self, tensor: str, start: int, hint: str) -> str:
        """Π shape[start:] as a float32 scalar, computed in the graph."""
        dims = self.op("Shape", [tensor], f"{hint}_dims", start=start)
        return self.scalar_float(self.op("ReduceProd", [dims], f"{hint}_i64", keepdims=0), hint)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float32 array on the host."""
    return t.detach().to("cpu", torch.float32).contiguous().numpy()
