"""Every option of a stylization, with its default: the one source that the API and the CLI both read."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import OptionsError
from .vgg import POOLINGS, check_layers, min_image_side

INITS = ("content", "content+noise", "noise")
BACKENDS = ("torch", "reference", "onnxruntime")  # the loop that runs the optimization (stylizer.loop)
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
OPTIMIZERS = ("lbfgs", "adam")
GRAPHS = ("auto", "eager", "compile", "cuda")
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}


def _opt(default, help: str, **kw):  # noqa: A002 — the metadata key argparse uses
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class Options:
    """Options of a stylization. ``Options().replace(size=256)`` returns a validated copy."""

    size: int = _opt(512, "longest side of the output image, in pixels")
    style_scale: float = _opt(1.0, "style image's longest side as a multiple of --size")
    steps: int = _opt(120, "optimizer iterations (loss evaluations), at the coarsest scale")
    pyramid_start: int = _opt(
        512, "sizes above this run coarse to fine: optimized at size/2^k ≤ this first, then upscaled and "
        "re-optimized at each doubling (0: one scale)"
    )
    pyramid_steps: int | None = _opt(None, "iterations at each finer pyramid scale (default: steps / 2)")
    tile: int = _opt(
        0, "scales whose longest side exceeds this are optimized in overlapping tiles of at most this many px, "
        "blended without seams, against the whole style's targets: for sizes beyond memory (0: never)"
    )
    tile_overlap: int | None = _opt(
        None, "overlap of neighbouring tiles in px (default: tile / 8, at least 32 where the tile allows)"
    )
    content_layers: tuple[str, ...] = _opt(("relu4_2",), "VGG-19 layers compared with the content image")
    style_layers: tuple[str, ...] = _opt(
        ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"), "VGG-19 layers whose Gram matrices are matched"
    )
    style_layer_weights: tuple[float, ...] | None = _opt(
        None, "weight λ of each style layer (default: equal weights summing to 1)"
    )
    content_weight: float = _opt(1.0, "content weight α")
    style_weight: float = _opt(20.0, "style weight β")
    normalize_losses: bool = _opt(
        True, "divide each loss term by its target's own scale, so that α, β and λ mean the same for any "
        "weights, pooling or layer (off: the raw formulas)"
    )
    tv_weight: float = _opt(0.0, "total-variation weight (smoothness)")
    pooling: str = _opt("avg", "VGG-19 pooling: avg (as Gatys et al.) or max", choices=POOLINGS)
    weights: str = _opt("caffe", "VGG-19 weights: caffe (bundled), torchvision (downloaded once), or a file")
    weights_preprocessing: str | None = _opt(
        None, "input preprocessing of a weights file, if not its layout's: caffe or torchvision",
        choices=("caffe", "torchvision"),
    )
    init: str = _opt("content", "initial image: content, content+noise, noise, or an image file")
    noise_ratio: float = _opt(0.5, "share of noise in the content+noise initial image")
    optimizer: str = _opt("lbfgs", "optimizer", choices=OPTIMIZERS)
    lr: float | None = _opt(None, "learning rate (default: 1.0 for lbfgs, 0.02 for adam)")
    max_pixels: int = _opt(2**28, "refuse image files above this many pixels (decompression bombs)")
    seed: int = _opt(0, "random seed of the noise in the initial image")
    deterministic: bool = _opt(False, "bit-reproducible runs: deterministic algorithms only (slower)")
    preserve_colors: bool = _opt(False, "keep the content's colours: the result's luminance with the content's chroma")
    device: str = _opt("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    backend: str = _opt(
        "torch", "optimization loop: torch (the fast engine), reference (plain fp32 PyTorch), onnxruntime",
        choices=BACKENDS,
    )
    precision: str = _opt(
        "auto", "torch backend's precision: auto (bf16 where the device runs it fast, else fp32), fp32, "
        "tf32, bf16, fp16 (on a CPU: bf16)", choices=PRECISIONS,
    )
    checkpoint: str = _opt(
        "auto", "torch backend: recompute each VGG block in the backward pass to save memory: on, off, or auto "
        "(on when the estimate exceeds free memory)", choices=("auto", "on", "off"),
    )
    graph: str = _opt(
        "auto", "torch backend: how each step runs: eager, compile (the network through torch.compile), "
        "cuda (evaluation, gradient and update captured once in a CUDA graph and replayed), auto (eager)",
        choices=GRAPHS,
    )
    impl: str = _opt("auto", "Gram/style-loss operators: auto, ext (compiled extension), ref (PyTorch)")

    def __post_init__(self) -> None:
        self._validate()

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

    def scales(self) -> list[int]:
        """The image sizes of the coarse-to-fine pyramid, coarsest first, ending at ``size``."""
        sizes = [self.size]
        while self.pyramid_start and sizes[0] > self.pyramid_start and sizes[0] // 2 >= self.min_size:
            sizes.insert(0, sizes[0] // 2)
        return sizes

    def steps_at(self, index: int) -> int:
        """Iterations at pyramid scale ``index`` (0: the coarsest)."""
        if index == 0:
            return self.steps
        return self.steps // 2 if self.pyramid_steps is None else self.pyramid_steps

    @property
    def overlap(self) -> int:
        """Tile overlap in px."""
        return max(min(32, self.tile // 4), self.tile // 8) if self.tile_overlap is None else self.tile_overlap

    @property
    def min_size(self) -> int:
        return min_image_side(self.layers)

    def _validate(self) -> None:
        # Coerce sequences given as lists (the API) into tuples, so Options stays hashable and frozen.
        for name in ("content_layers", "style_layers", "style_layer_weights"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = parse_floats(name, value) if name == "style_layer_weights" else split_list(value)
            if value is not None and not isinstance(value, tuple):
                value = tuple(value)
            object.__setattr__(self, name, value)
        for name in ("size", "steps", "seed", "pyramid_start", "max_pixels", "tile"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise OptionsError(f"{name} must be an integer, got {value!r}")
        if not 0 <= self.seed < 2**63:
            raise OptionsError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")
        for name in ("normalize_losses", "deterministic", "preserve_colors"):
            if not isinstance(getattr(self, name), bool):
                raise OptionsError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("weights", "device", "impl", "pooling", "init", "optimizer", "backend", "precision", "checkpoint",
                     "graph"):  # fmt: skip
            if not isinstance(getattr(self, name), str):
                raise OptionsError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.weights_preprocessing not in (None, "caffe", "torchvision"):
            raise OptionsError(f"weights_preprocessing must be caffe or torchvision, got {self.weights_preprocessing!r}")
        if self.size < 1:
            raise OptionsError(f"size must be positive, got {self.size}")
        if self.steps < 0:
            raise OptionsError(f"steps must be zero or more, got {self.steps}")
        if self.max_pixels < 1:
            raise OptionsError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.pyramid_start < 0:
            raise OptionsError(f"pyramid_start must be zero or more, got {self.pyramid_start}")
        overlap = self.tile_overlap
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0):
            raise OptionsError(f"tile_overlap must be an integer of zero or more, got {self.tile_overlap!r}")
        if self.tile < 0:
            raise OptionsError(f"tile must be zero (no tiling) or a size in px, got {self.tile}")
        if self.tile and self.tile < self.min_size:
            raise OptionsError(f"tile must be at least {self.min_size} px for the chosen layers, got {self.tile}")
        if self.tile and 2 * self.overlap >= self.tile:
            raise OptionsError(f"tile_overlap must be less than half the tile ({self.tile} px), got {self.overlap}")
        if self.pyramid_steps is not None and (isinstance(self.pyramid_steps, bool) or not isinstance(self.pyramid_steps, int)
                                               or self.pyramid_steps < 0):  # fmt: skip
            raise OptionsError(f"pyramid_steps must be an integer of zero or more, got {self.pyramid_steps!r}")
        for name in ("style_scale", "content_weight", "style_weight", "tv_weight", "noise_ratio", "lr"):
            value = getattr(self, name)
            if value is not None:
                _non_negative(name, value)
        if self.style_scale <= 0:
            raise OptionsError(f"style_scale must be positive, got {self.style_scale}")
        if self.lr is not None and self.lr <= 0:
            raise OptionsError(f"lr must be positive, got {self.lr}")
        if self.noise_ratio > 1:
            raise OptionsError(f"noise_ratio must be between 0 and 1, got {self.noise_ratio}")
        for name in ("content_layers", "style_layers"):
            layers = check_layers(getattr(self, name))
            repeated = sorted({n for n in layers if layers.count(n) > 1})
            if repeated:
                raise OptionsError(f"{name} names {', '.join(repeated)} more than once")
        if not self.style_layers:
            raise OptionsError("style_layers must name at least one layer")
        if self.style_layer_weights is not None:
            if len(self.style_layer_weights) != len(self.style_layers):
                raise OptionsError(
                    f"{len(self.style_layer_weights)} style layer weights given for "
                    f"{len(self.style_layers)} style layers ({', '.join(self.style_layers)})"
                )
            for w in self.style_layer_weights:
                _non_negative("style_layer_weights", w)
        if self.init not in INITS and not Path(self.init).expanduser().is_file():
            raise OptionsError(f"init must be {', '.join(INITS)} or an image file; {self.init!r} is neither")
        for name, allowed in (("pooling", POOLINGS), ("optimizer", OPTIMIZERS), ("backend", BACKENDS),
                              ("precision", PRECISIONS), ("checkpoint", ("auto", "on", "off")),
                              ("graph", GRAPHS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise OptionsError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.impl not in ("auto", "ext", "ref"):
            raise OptionsError(f"impl must be auto, ext or ref, got {self.impl!r}")


def split_list(text: str) -> tuple[str, ...]:
    """"a,b c" → ("a", "b", "c")."""
    return tuple(v for v in text.replace(",", " ").split() if v)


def parse_floats(name: str, text: str) -> tuple[float, ...]:
    """"0.5,1e3" → (0.5, 1000.0), or an :class:`OptionsError` naming ``name`` and the bad item."""
    values = []
    for item in split_list(text):
        try:
            values.append(float(item))
        except ValueError:
            raise OptionsError(f"{name}: {item!r} is not a number") from None
    return tuple(values)


def _non_negative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionsError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise OptionsError(f"{name} must be a finite number, got {value}")
    if value < 0:
        raise OptionsError(f"{name} must not be negative, got {value}")
