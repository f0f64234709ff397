"""The ``onnxruntime`` backend: the optimization loop with ONNX Runtime computing the loss and its gradient.

ONNX Runtime runs the step graph of :func:`nst_fast.onnx.graphs.build_step_graph` (targets and weights
as inputs, so that one graph — and one session, and one TensorRT engine — serves every image of a
configuration); torch's L-BFGS or Adam updates the image outside it, from the ``grad`` output.

Execution providers: TensorRT → CUDA → CPU, among those the installed onnxruntime has
(:func:`choose_providers`); ``--device cpu`` means CPU only, and ``NST_FAST_ORT_PROVIDERS`` (for example
``cuda`` or ``tensorrt,cuda,cpu``) chooses them explicitly. The choice is printed to stderr when a
session is created (logged on the ``nst_fast`` logger, which the CLI prints). On a GPU the image, targets, loss and gradient are torch CUDA tensors bound to the
session (IO binding): nothing crosses to the host per iteration but the loss values. Sessions are cached
per (graph, providers) for the process, and TensorRT's engines (a folder per graph) and timing cache on
disk, under ``$XDG_CACHE_HOME/nst-fast/tensorrt`` (``~/.cache/...``), so that a second run — in this
process or the next — builds neither.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from ..callbacks import Callback
from ..errors import OptionsError
from ..objective import StyleTransferLoss
from ..onnx.graphs import build_step_graph, step_feeds
from ..vgg import VGG19
from . import LoopSpec
from .reference import optimizer_loop

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PREFERENCE = (TENSORRT, CUDA, CPU)
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}
PROVIDERS_ENV = "NST_FAST_ORT_PROVIDERS"
# The loop's graph computes a convolution's input gradient with a Conv of the flipped, transposed
# weights: ~15% faster than ConvTranspose on ONNX Runtime's CPU provider, the same result.
CONV_BACKWARD = "conv"

log = logging.getLogger(__name__)


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover — a dependency of the package
        raise OptionsError(f"the onnxruntime backend needs the onnxruntime package ({e})") from None
    return onnxruntime


def choose_providers(requested: str | Iterable[str] | None = None) -> list[str]:
    """Execution providers, in order of preference, among those this onnxruntime has.

    ``requested`` None or "auto": TensorRT, CUDA, CPU — whichever are available. Otherwise a name or a
    comma-separated list ("tensorrt", "cuda", "cpu", or the full provider names), each of which must be
    available; CPU is appended as the fallback for any node the others do not take.
    """
    available = _ort().get_available_providers()
    if requested is None or (isinstance(requested, str) and requested.strip().lower() in ("", "auto")):
        return [p for p in PREFERENCE if p in available] or [CPU]
    items = requested.replace(",", " ").split() if isinstance(requested, str) else list(requested)
    chosen: list[str] = []
    for item in items:
        name = ALIASES.get(item.lower(), item)
        if name not in available:
            known = ", ".join(sorted({*ALIASES, *available}))
            raise OptionsError(
                f"onnxruntime execution provider {item!r} is not available in this installation "
                f"(available: {', '.join(available)}; names: {known})"
            )
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise OptionsError("no onnxruntime execution provider requested")
    if CPU not in chosen and CPU in available:
        chosen.append(CPU)
    return chosen


def requested_providers(requested: str | None) -> list[str]:
    """The providers for a run: ``NST_FAST_ORT_PROVIDERS`` when set, else those the plan asked for."""
    return choose_providers(os.environ.get(PROVIDERS_ENV, "").strip() or requested)


def trt_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nst-fast" / "tensorrt"


def _provider_options(provider: str, device_id: int, digest: str) -> dict[str, str]:
    if provider == TENSORRT:
        # TensorRT's engine names hash the graph's structure, not its weights: one directory per graph,
        # so that an engine built for other weights is never loaded. Kernel timings are shared.
        timing = trt_cache_dir()
        engines = timing / digest[:16]
        engines.mkdir(parents=True, exist_ok=True)
        return {
            "device_id": str(device_id),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(timing),
        }
    if provider == CUDA:
        return {"device_id": str(device_id)}
    return {}


_LOCK = threading.Lock()
_GRAPHS: OrderedDict[tuple, tuple[weakref.ref, bytes]] = OrderedDict()


def _graph_bytes(model: VGG19, loss_fn: StyleTransferLoss) -> bytes:
    """The serialized step graph (targets and weights as inputs) for ``model`` and the structure of
    ``loss_fn`` — its layers and whether it has a TV term —, built once per model and structure."""
    key = (id(model), tuple(loss_fn.content_targets), tuple(loss_fn.style_targets), bool(loss_fn.tv_weight))
    with _LOCK:
        cached = _GRAPHS.get(key)
        if cached is not None and cached[0]() is model:
            _GRAPHS.move_to_end(key)
            return cached[1]
    graph = build_step_graph(model, loss_fn, "inputs", torch.float32, conv_backward=CONV_BACKWARD).SerializeToString()
    with _LOCK:
        _GRAPHS[key] = (weakref.ref(model), graph)
        while len(_GRAPHS) > 2:
            _GRAPHS.popitem(last=False)
    return graph


_SESSIONS: OrderedDict[tuple, object] = OrderedDict()
_SESSIONS_MAX = 4


def session(graph: bytes, providers: list[str], device_id: int = 0):
    """An InferenceSession of ``graph`` on ``providers``, created once per (graph, providers, device)."""
    ort = _ort()
    digest = hashlib.sha256(graph).hexdigest()
    key = (digest, tuple(providers), device_id)
    with _LOCK:
        if key in _SESSIONS:
            _SESSIONS.move_to_end(key)
            return _SESSIONS[key]
        start = time.perf_counter()
        so = ort.SessionOptions()
        so.log_severity_level = 3  # errors only: no warnings on stderr
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with_options = [(p, _provider_options(p, device_id, digest)) for p in providers]
        sess = ort.InferenceSession(graph, so, providers=with_options)
        used = sess.get_providers()
        fallback = f" (fallback {', '.join(used[1:])})" if len(used) > 1 else ""
        log.info(
            f"onnxruntime {ort.__version__}: {used[0]}{fallback}; session created in "
            f"{time.perf_counter() - start:.1f} s"
        )
        _SESSIONS[key] = sess
        while len(_SESSIONS) > _SESSIONS_MAX:
            _SESSIONS.popitem(last=False)
        return sess


def clear_sessions() -> None:
    """Forget every cached session and graph."""
    with _LOCK:
        _SESSIONS.clear()
        _GRAPHS.clear()


class OrtStep:
    """Loss and gradient of ``loss_fn(model(image), image)`` by ONNX Runtime, for images shaped like
    ``like``; call it with a float32 image on :attr:`device` to get (loss, terms, gradient)."""

    def __init__(
        self, model: VGG19, loss_fn: StyleTransferLoss, like: torch.Tensor, providers: list[str] | None = None
    ):
        self.providers = providers or choose_providers(None)
        gpu = self.providers[0] in (TENSORRT, CUDA)
        if like.is_cuda and gpu:
            self.device = like.device
        elif gpu and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        device_id = (self.device.index or 0) if self.device.type == "cuda" else 0
        self.session = session(_graph_bytes(model, loss_fn), self.providers, device_id)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.terms = [n for n in self.outputs if n not in ("loss", "grad")]
        feeds = step_feeds(loss_fn, inputs=[i.name for i in self.session.get_inputs()])
        if self.device.type == "cuda":
            self._targets = {k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()}
            self._binding = None
            self._bound = None
        else:
            self._feeds = feeds

    def __call__(self, image: torch.Tensor) -> tuple[float, dict[str, float], torch.Tensor]:
        if self.device.type == "cuda":
            return self._run_bound(image)
        out = self.session.run(self.outputs, {"image": image.detach().contiguous().numpy(), **self._feeds})
        values = dict(zip(self.outputs, out))
        terms = {k: float(values[k]) for k in self.terms}
        return float(values["loss"]), terms, torch.from_numpy(values["grad"])

    def _run_bound(self, image: torch.Tensor) -> tuple[float, dict[str, float], torch.Tensor]:
        # Inputs and outputs are torch CUDA tensors bound by pointer; the binding is made again only when
        # the image's storage changes (optimizers update it in place, so normally once).
        key = (image.data_ptr(), tuple(image.shape))
        if self._bound != key:
            if not image.is_contiguous() or image.dtype != torch.float32 or image.device != self.device:
                raise ValueError("the bound image must be a contiguous float32 tensor on the session's device")
            binding = self.session.io_binding()
            dev, idx = "cuda", self.device.index or 0
            self._outs = {
                "loss": torch.empty((), device=self.device),
                "grad": torch.empty_like(image),
                **{k: torch.empty((), device=self.device) for k in self.terms},
            }
            for name, t in [("image", image), *self._targets.items()]:
                binding.bind_input(name, dev, idx, np.float32, list(t.shape), t.data_ptr())
            for name, t in self._outs.items():
                binding.bind_output(name, dev, idx, np.float32, list(t.shape), t.data_ptr())
            self._binding, self._bound = binding, key
        # ONNX Runtime runs on its own stream: torch's writes to the image must be finished first. The
        # run synchronizes its stream before it returns, so torch may read the outputs right after.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(self._binding)
        values = torch.stack([self._outs["loss"], *(self._outs[k] for k in self.terms)]).tolist()  # one copy
        return values[0], dict(zip(self.terms, values[1:])), self._outs["grad"]


def optimize(
    model: VGG19,
    loss_fn: StyleTransferLoss,
    image: torch.Tensor,
    spec: LoopSpec,
    callback: Callback | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """The reference's loop with ONNX Runtime computing the loss and gradient: optimize ``image`` for
    ``spec.steps`` evaluations of the loss and return it clamped to [0, 1]."""
    step_fn = OrtStep(model, loss_fn, image, requested_providers(spec.providers))
    if image.device == step_fn.device and image.dtype == torch.float32 and image.is_contiguous():
        x = image.detach()  # modified in place, as the reference does
    else:
        x = image.detach().to(step_fn.device, torch.float32).contiguous()
    x.requires_grad_(True)
    return optimizer_loop(x, spec, lambda x: step_fn(x.detach()), callback, stop).to(image.device)


def make_step(model: VGG19, loss_fn: StyleTransferLoss, image: torch.Tensor, spec: LoopSpec):
    """One loss-and-gradient evaluation of the step graph per call, returning the loss."""
    run = OrtStep(model, loss_fn, image, requested_providers(spec.providers))
    x = image.to(run.device, torch.float32).contiguous()

    def step() -> torch.Tensor:
        return torch.tensor(run(x)[0])

    return step
