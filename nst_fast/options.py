"""Every option of a stylization, once: its default, type, choices, range and help.

:class:`Options` is the one source that the API, the CLI (its flags are generated from these fields)
and the benchmarks read. Validation is driven by each field's metadata; only the rules that tie
fields together are written out in :meth:`Options._check_together`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from .backends import BACKENDS, DEFAULT_BACKEND
from .backends.precision import PRECISIONS
from .conv import CONVS
from .errors import OptionsError, counted
from .image import MAX_PIXELS
from .ops import IMPLS
from .vgg import POOLINGS, check_layers, min_image_side
from .weights import PREPROCESSINGS

INITS = ("content", "content+noise", "noise")
OPTIMIZERS = ("lbfgs", "adam")
GRAPHS = ("auto", "eager", "compile", "cuda")
CHECKPOINTS = ("auto", "on", "off")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}


def _opt(default, help: str, *, choices=None, minimum=None, maximum=None, positive=False, rule=None):  # noqa: A002
    """A field with its metadata: ``choices``; a range (``minimum``/``maximum`` inclusive, or ``positive``:
    above zero), described in errors as ``rule`` when given."""
    meta = {
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "positive": positive,
        "rule": rule,
    }
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Options:
    """Options of a stylization. ``Options().replace(size=256)`` returns a validated copy."""

    size: int = _opt(512, "longest side of the output image, in pixels", minimum=1)
    style_scale: float = _opt(1.0, "style image's longest side as a multiple of --size", positive=True)
    steps: int = _opt(120, "optimizer iterations (loss evaluations), at the coarsest scale", minimum=0)
    pyramid_start: int = _opt(
        512,
        "sizes above this run coarse to fine: optimized at size/2^k ≤ this first, then upscaled and "
        "re-optimized at each doubling (0: one scale)",
        minimum=0,
    )
    pyramid_steps: int | None = _opt(None, "iterations at each finer pyramid scale (default: steps / 2)", minimum=0)
    tol: float | None = _opt(
        None,
        "end a scale early once its best loss improves by less than this fraction over 10 iterations (default: never)",
        minimum=0,
    )
    batch_size: int = _opt(
        1,
        "content images optimized together, as one batch, where their runs are alike (torch backend, the "
        "same size at every scale, untiled, no checkpointing): each with its own loss and L-BFGS",
        minimum=1,
    )
    max_time: float | None = _opt(
        None,
        "stop after this many seconds and return the best image so far, at full size (default: no limit)",
        positive=True,
    )
    tile: int = _opt(
        0,
        "scales whose longest side exceeds this are optimized in overlapping tiles of at most this many px, "
        "blended without seams, against the whole style's targets: for sizes beyond memory (0: never)",
        minimum=0,
        rule="zero (no tiling) or a size in px",
    )
    tile_overlap: int | None = _opt(
        None, "overlap of neighbouring tiles in px (default: tile / 8, at least 32 where the tile allows)", minimum=0
    )
    content_layers: tuple[str, ...] = _opt(("relu4_2",), "VGG-19 layers compared with the content image")
    style_layers: tuple[str, ...] = _opt(
        ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), "VGG-19 layers whose Gram matrices are matched"
    )
    style_layer_weights: tuple[float, ...] | None = _opt(
        None, "weight λ of each style layer (default: equal weights summing to 1)", minimum=0
    )
    content_weight: float = _opt(1.0, "content weight α", minimum=0)
    style_weight: float = _opt(20.0, "style weight β", minimum=0)
    normalize_losses: bool = _opt(
        True,
        "divide each loss term by its target's own scale, so that α, β and λ mean the same for any "
        "weights, pooling or layer (off: the raw formulas)",
    )
    tv_weight: float = _opt(0.0, "total-variation weight (smoothness)", minimum=0)
    pooling: str = _opt("avg", "VGG-19 pooling: avg (as Gatys et al.) or max", choices=POOLINGS)
    weights: str = _opt("caffe", "VGG-19 weights: caffe (bundled), torchvision (downloaded once), or a file")
    weights_preprocessing: str | None = _opt(
        None,
        "input preprocessing of a weights file, if not its layout's: caffe or torchvision",
        choices=tuple(PREPROCESSINGS),
    )
    init: str = _opt("content", "initial image: content, content+noise, noise, or an image file")
    noise_ratio: float = _opt(0.5, "share of noise in the content+noise initial image", minimum=0, maximum=1)
    optimizer: str = _opt("lbfgs", "optimizer", choices=OPTIMIZERS)
    lr: float | None = _opt(None, "learning rate (default: 1.0 for lbfgs, 0.02 for adam)", positive=True)
    max_pixels: int = _opt(MAX_PIXELS, "refuse image files above this many pixels (decompression bombs)", minimum=1)
    seed: int = _opt(
        0, "random seed of the noise in the initial image", minimum=0, maximum=2**63 - 1, rule="between 0 and 2**63 - 1"
    )
    deterministic: bool = _opt(False, "bit-reproducible runs: deterministic algorithms only (slower)")
    preserve_colors: bool = _opt(False, "keep the content's colours: the result's luminance with the content's chroma")
    device: str = _opt("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    backend: str = _opt(
        DEFAULT_BACKEND,
        "optimization loop: " + ", ".join(f"{b.name} ({b.summary.split(':')[0]})" for b in BACKENDS.values()),
        choices=tuple(BACKENDS),
    )
    precision: str = _opt(
        "auto",
        "torch backend's precision: auto (bf16 where the device runs it fast, else fp32), fp32, "
        "tf32, bf16, fp16 (on a CPU: bf16)",
        choices=PRECISIONS,
    )
    checkpoint: str = _opt(
        "auto",
        "torch backend: recompute each VGG block in the backward pass to save memory: on, off, or auto "
        "(on when the estimate exceeds free memory)",
        choices=CHECKPOINTS,
    )
    graph: str = _opt(
        "auto",
        "torch backend: how each step runs: eager, compile (the network through torch.compile), "
        "cuda (evaluation, gradient and update captured once in a CUDA graph and replayed), auto (eager)",
        choices=GRAPHS,
    )
    impl: str = _opt("auto", "Gram/style-loss operators: auto, ext (compiled extension), ref (PyTorch)", choices=IMPLS)
    conv: str = _opt(
        "auto",
        "torch backend's 3×3 convolutions: direct (oneDNN), winograd (NNPACK's F(6×6,3×3); float32 on a CPU; "
        "every convolution from conv1_2 on), auto (winograd in a float32, uncheckpointed CPU run of one image, "
        "from conv2_1 on where positions × the smaller channel count reach 2^19, as measured faster; else direct)",
        choices=CONVS,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f, getattr(self, f.name)))
        self._check_together()

    def replace(self, **changes) -> Options:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise OptionsError(f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    @property
    def layer_weights(self) -> dict[str, float]:
        """λ_l per style layer."""
        if self.style_layer_weights is None:
            n = len(self.style_layers)
            return {name: 1.0 / n for name in self.style_layers}
        return dict(zip(self.style_layers, self.style_layer_weights))

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the network must return, content first, without repeats."""
        return tuple(dict.fromkeys([*self.content_layers, *self.style_layers]))

    @property
    def overlap(self) -> int:
        """Tile overlap in px."""
        return max(min(32, self.tile // 4), self.tile // 8) if self.tile_overlap is None else self.tile_overlap

    @property
    def min_size(self) -> int:
        return min_image_side(self.layers)

    def _check_together(self) -> None:
        for name in ("content_layers", "style_layers"):
            layers = check_layers(getattr(self, name))
            repeated = sorted({n for n in layers if layers.count(n) > 1})
            if repeated:
                raise OptionsError(f"{name} names {', '.join(repeated)} more than once")
        if not self.style_layers:
            raise OptionsError("style_layers must name at least one layer")
        if self.style_layer_weights is not None and len(self.style_layer_weights) != len(self.style_layers):
            raise OptionsError(
                f"{counted(len(self.style_layer_weights), 'style layer weight')} given for "
                f"{counted(len(self.style_layers), 'style layer')} ({', '.join(self.style_layers)})"
            )
        if self.tile and self.tile < self.min_size:
            raise OptionsError(f"tile must be at least {self.min_size} px for the chosen layers, got {self.tile}")
        if self.tile and 2 * self.overlap >= self.tile:
            raise OptionsError(f"tile_overlap must be less than half the tile ({self.tile} px), got {self.overlap}")
        if self.init not in INITS and not Path(self.init).expanduser().is_file():
            raise OptionsError(f"init must be {', '.join(INITS)} or an image file; {self.init!r} is neither")


def value_type(f: dataclasses.Field) -> str:
    """What a field holds: "int", "float", "bool", "str", "names" (a tuple of strings) or "floats"."""
    annotation = str(f.type)
    if annotation.startswith("tuple[str"):
        return "names"
    if annotation.startswith("tuple[float"):
        return "floats"
    return annotation.split(" ")[0]


def _checked(f: dataclasses.Field, value):
    """``value`` for field ``f``, coerced where the API allows it (a list or a comma-separated string for
    a tuple), or :class:`OptionsError` naming the field and what it must be."""
    name, kind, meta = f.name, value_type(f), f.metadata
    if value is None and "None" in str(f.type):
        return None
    if kind == "names":
        items = split_list(value) if isinstance(value, str) else tuple(value)
        if not all(isinstance(v, str) for v in items):
            raise OptionsError(f"{name} must name layers, got {value!r}")
        return items
    if kind == "floats":
        items = parse_floats(name, value) if isinstance(value, str) else tuple(value)
        for item in items:
            _in_range(name, _number(name, item), meta, integer=False)
        return items
    if kind == "bool":
        if not isinstance(value, bool):
            raise OptionsError(f"{name} must be True or False, got {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionsError(f"{name} must be an integer, got {value!r}")
        return _in_range(name, value, meta, integer=True)
    if kind == "float":
        return _in_range(name, _number(name, value), meta, integer=False)
    if not isinstance(value, str):
        raise OptionsError(f"{name} must be a string, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise OptionsError(f"{name} must be one of {', '.join(meta['choices'])}, got {value!r}")
    return value


def _number(name: str, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionsError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise OptionsError(f"{name} must be a finite number, got {value}")
    return value


def _in_range(name: str, value, meta, integer: bool):
    low, high, positive = meta["minimum"], meta["maximum"], meta["positive"]
    if (positive and value <= 0) or (low is not None and value < low) or (high is not None and value > high):
        if meta["rule"]:
            rule = meta["rule"]
        elif positive or low == 1:
            rule = "positive"
        elif high is not None:
            rule = f"between {low} and {high}"
        else:
            rule = "zero or more" if integer else "not negative"
        verb = "must not be" if rule == "not negative" else "must be"
        raise OptionsError(f"{name} {verb} {rule.removeprefix('not ')}, got {value}")
    return value


def split_list(text: str) -> tuple[str, ...]:
    """ "a,b c" → ("a", "b", "c")."""
    return tuple(v for v in text.replace(",", " ").split() if v)


def parse_floats(name: str, text: str) -> tuple[float, ...]:
    """ "0.5,1e3" → (0.5, 1000.0), or an :class:`OptionsError` naming ``name`` and the bad item."""
    values = []
    for item in split_list(text):
        try:
            values.append(float(item))
        except ValueError:
            raise OptionsError(f"{name}: {item!r} is not a number") from None
    return tuple(values)
