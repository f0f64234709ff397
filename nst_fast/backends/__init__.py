"""The backends: every way nst-fast can run an optimization, listed once in :data:`BACKENDS`.

A backend is a module with two functions over the same problem (a VGG-19, a
:class:`~nst_fast.objective.StyleTransferLoss`, an initial image) and a :class:`LoopSpec` from the plan:

- ``optimize(model, loss_fn, image, spec, callback=None, stop=None) -> image``: the whole loop,
  ``spec.steps`` evaluations of the loss, each reported to the callback as an
  :class:`~nst_fast.callbacks.Iterate`; ended early, between two iterations, when ``stop()`` is true
  (a :class:`~nst_fast.control.Stop`);
- ``make_step(model, loss_fn, image, spec) -> step``: one iteration of that loop as a function
  returning the loss, which the benchmarks time.

Options (its choices), the stylizer, the plan, ``nst-fast info``, ``nst-fast bench`` and the docs read
the table below and nothing else. Modules are imported on first use, so that ``import nst_fast``
does not import onnxruntime.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from ..errors import OptionsError
from .precision import FP32, Precision, cpu_supports_bf16, resolve_precision


@dataclass(frozen=True)
class LoopSpec:
    """What one optimization loop runs, as the plan decided it."""

    steps: int
    optimizer: str = "lbfgs"
    learning_rate: float = 1.0
    precision: Precision = FP32
    checkpoint: bool = False  # recompute each VGG block in the backward pass (the engine)
    graph: str = "eager"  # eager, compile or cuda (the engine)
    history: int = 100  # L-BFGS curvature pairs kept (the engine; the torch.optim loops keep 100)
    providers: str | None = None  # onnxruntime execution providers asked for (None: its preference)
    tol: float | None = None  # end early when the best loss gains less than this over Plateau.WINDOW steps
    winograd: frozenset[str] = frozenset()  # convolutions run by Winograd (the engine; nst_fast.conv)
    channels_last: bool = False  # the activations' layout (the engine: the Stylizer's network's, plan.channels_last)

    def with_steps(self, steps: int) -> LoopSpec:
        return dataclasses.replace(self, steps=steps)


@dataclass(frozen=True)
class Backend:
    """One backend: its name, what it is, where it lives and what it can run."""

    name: str
    summary: str
    module: str  # the module with optimize() and make_step()
    precisions: tuple[str, ...] = ("fp32",)  # precisions it runs in on any device
    gpu_precisions: tuple[str, ...] = ()  # and, on a CUDA device, these too
    honours_precision: bool = False  # False: always float32, whatever Options.precision says
    requires: str | None = None  # a Python package it needs
    channels_last: bool = False  # may run the network in channels_last layout (plan.channels_last decides)
    engine: bool = False  # honours --checkpoint and --graph, and optimizes batches (each image its own L-BFGS)

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        if self.requires and importlib.util.find_spec(self.requires) is None:
            return f"needs the {self.requires} package, which is not installed"
        return None

    def implementation(self) -> ModuleType:
        why = self.unavailable()
        if why:
            raise OptionsError(f"the {self.name} backend {why}")
        return importlib.import_module(self.module)

    @property
    def optimize(self) -> Callable:
        return self.implementation().optimize

    @property
    def make_step(self) -> Callable:
        return self.implementation().make_step

    def precisions_on(self, device: torch.device, native_only: bool = True) -> tuple[str, ...]:
        """The precisions worth measuring on ``device``: those it runs natively (bf16 on a CPU only with
        native bf16 kernels: emulated, a bf16 convolution took about 7.5× a float32 one on an AVX2 EPYC,
        benchmarks/NOTES.md §15); with
        ``native_only`` False, every precision the backend can run there."""
        found = self.precisions + (self.gpu_precisions if device.type == "cuda" else ())
        if native_only and device.type == "cpu" and not cpu_supports_bf16():
            found = tuple(p for p in found if p != "bf16")
        return found

    def resolve_precision(self, requested: str, device: torch.device) -> Precision:
        return resolve_precision(requested if self.honours_precision else "fp32", device)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "reference",
            "plain float32 PyTorch with torch.optim: the oracle every fast path is checked against",
            "nst_fast.backends.reference",
        ),
        Backend(
            "torch",
            "the fast engine: mixed precision, fused operators, device-resident L-BFGS, CUDA graphs",
            "nst_fast.backends.engine",
            precisions=("fp32", "bf16"),
            gpu_precisions=("tf32", "fp16"),
            honours_precision=True,
            channels_last=True,
            engine=True,
        ),
        Backend(
            "onnxruntime",
            "the loss-and-gradient step as an ONNX graph in ONNX Runtime (TensorRT, CUDA or CPU)",
            "nst_fast.backends.onnxruntime",
            requires="onnxruntime",
        ),
    )
}
DEFAULT_BACKEND = "torch"


def get(name: str) -> Backend:
    """The backend called ``name``, or :class:`OptionsError` naming the ones there are."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise OptionsError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}") from None
