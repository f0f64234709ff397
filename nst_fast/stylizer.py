"""The library API: :class:`Stylizer` (style targets computed once, many content images) and :func:`stylize`."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from . import reference
from .callbacks import Callback, Iterate
from .color import preserve_colors
from .errors import ImageError, OptionsError
from .image import load_image, longest_side_shape, resize_longest, tensor_to_pil
from .ops import check_impl
from .options import Options
from .tiling import Tile, optimize_tiles, tile_grid
from .vgg import VGG19
from .weights import load_weights


def loop(backend: str):
    """The optimization loop of ``backend``: (model, loss_fn, initial image, options, callback) → image.

    Every loop has the signature of :func:`nst_fast.reference.optimize`, optimizes the loss that
    ``loss_fn`` defines, and reports each iterate to the callback.
    """
    if backend == "reference":
        return reference.optimize
    if backend == "torch":
        from .engine import optimize

        return optimize
    if backend == "onnxruntime":
        from .onnx.backend import optimize

        return optimize
    raise OptionsError(f"unknown backend {backend!r}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else must name a device that is there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise OptionsError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionsError(f"device {name!r} requested, but this machine has no usable CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionsError(f"device {name!r} requested, but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    elif device.type in ("mps", "xpu"):
        backend = getattr(torch.backends, "mps", None) if device.type == "mps" else getattr(torch, "xpu", None)
        if backend is None or not backend.is_available():
            raise OptionsError(f"device {name!r} requested, but it is not available here; use --device cpu")
    elif device.type != "cpu":
        raise OptionsError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


class Stylizer:
    """Stylizes content images with one style (or a blend of styles), whose targets are computed once.

    Args:
        style: a style image (path, PIL image or tensor), or a sequence of them to blend.
        options: an :class:`Options`; keyword arguments override its fields.
        style_blend: one weight per style image (default: equal).

    >>> stylizer = Stylizer("starry_night.jpg", size=256)          # doctest: +SKIP
    >>> stylizer.stylize("tubingen.jpg").save("out.png")           # doctest: +SKIP
    """

    def __init__(self, style, options: Options | None = None, *, style_blend: Sequence[float] | None = None,
                 **overrides):  # fmt: skip
        self.options = (options or Options()).replace(**overrides)
        opts = self.options
        styles = list(style) if isinstance(style, (list, tuple)) else [style]
        if not styles:
            raise OptionsError("at least one style image is needed")
        blend = [1.0] * len(styles) if style_blend is None else [float(w) for w in style_blend]
        if len(blend) != len(styles):
            raise OptionsError(f"{len(blend)} style blend weights given for {len(styles)} style images")
        if not all(math.isfinite(w) and w >= 0 for w in blend) or max(blend) <= 0:
            raise OptionsError(f"style blend weights must be finite, non-negative and not all zero, got {blend}")
        blend = [w / max(blend) for w in blend]  # no overflow in their sum
        self.device = resolve_device(opts.device)
        check_impl(opts.impl, self.device)
        weights = load_weights(opts.weights, opts.weights_preprocessing)
        self.model = VGG19(opts.layers, weights, opts.pooling).to(self.device)
        originals = [load_image(s, opts.max_pixels, copy=False) for s in styles]
        # Style targets once per pyramid scale, for every content image this stylizer will see.
        self.style_targets_by_size = {}
        for size in opts.scales():
            style_size = max(1, round(size * opts.style_scale))
            images = [self._prepare(image, style_size, "style", "--size or --style-scale") for image in originals]
            self.style_targets_by_size[size] = reference.style_targets(self.model, images, blend, opts.style_layers)
        self.style_targets = self.style_targets_by_size[opts.size]

    def _prepare(self, image: torch.Tensor, size: int, what: str, raise_what: str = "--size") -> torch.Tensor:
        image = resize_longest(image, size)
        h, w = image.shape[-2:]
        if min(h, w) < self.options.min_size:
            raise ImageError(
                f"the {what} image is {w}×{h} px at this size; layers up to {self.model.last_layer} need at "
                f"least {self.options.min_size} px on each side (raise {raise_what} or choose shallower layers)"
            )
        return image.to(self.device)

    @property
    def precision(self):
        """The :class:`nst_fast.engine.Precision` the torch backend runs in here (fp32 for the others)."""
        from .engine import resolve_precision

        return resolve_precision(self.options.precision if self.options.backend == "torch" else "fp32", self.device)

    def describe_precision(self) -> str:
        p = self.precision
        return p.name + (f"; {p.note}" if p.note else "")

    def plan(self, content) -> list[tuple[int, list[Tile]]]:
        """The run's scales, coarsest first, each with its tiles (one covering the image when it is
        not tiled), for ``content`` (a path, PIL image or tensor)."""
        original = load_image(content, self.options.max_pixels, copy=False)
        steps = []
        for size in self.options.scales():
            steps.append((size, self._tiles(*longest_side_shape(*original.shape[-2:], size))))
        return steps

    def _tiles(self, height: int, width: int, options: Options | None = None) -> list[Tile]:
        opts = options or self.options
        if not opts.tile or max(height, width) <= opts.tile:
            return [Tile(0, 0, height, width)]
        return tile_grid(height, width, opts.tile, opts.overlap)

    def total_steps(self, content) -> int:
        """Optimizer iterations a run on ``content`` takes, over every scale and tile."""
        return sum(self.options.steps_at(i) * len(tiles) for i, (_, tiles) in enumerate(self.plan(content)))

    def memory_estimate(self, content, **overrides):
        """The estimated peak memory of stylizing ``content`` (see :mod:`nst_fast.memory`): that of the
        scale whose piece optimized at once — the whole image, or one tile — needs most. ``overrides``
        are Options fields to estimate with instead (``tile=1024``, ``checkpoint="on"``, ...). On a CPU
        it includes the content image at its own resolution (``source``), which the run keeps."""
        from .engine import memory_estimate, resolve_precision, use_checkpointing

        opts = self.options.replace(**overrides)
        image = load_image(content, opts.max_pixels, copy=False)
        precision = resolve_precision(opts.precision if opts.backend == "torch" else "fp32", self.device)
        peak = None
        for size in opts.scales():
            height, width = longest_side_shape(*image.shape[-2:], size)
            first = self._tiles(height, width, opts)[0]
            piece = torch.empty(1, 3, first.height, first.width, device=self.device)  # its shape and device
            checkpoint = opts.backend == "torch" and use_checkpointing(opts, self.model, piece, precision)
            estimate = memory_estimate(opts, self.model, piece, precision, checkpoint)
            if (first.height, first.width) != (height, width):  # the canvas, content, a band and its preview
                estimate = dataclasses.replace(estimate, canvas=(2 * height + 2 * first.height) * width * 3 * 4)
            peak = estimate if peak is None or estimate.total > peak.total else peak
        if self.device.type == "cpu":  # on a GPU the source stays in host memory
            peak = dataclasses.replace(peak, source=image.numel() * image.element_size())
        return peak

    def stylize_tensor(self, content, callback: Callback | None = None) -> torch.Tensor:
        """Like :meth:`stylize`, returning a 1×3×H×W float tensor in [0, 1] on the CPU.

        Above ``pyramid_start`` the image is optimized coarse to fine: at each scale of
        :meth:`Options.scales`, starting from the previous scale's result, upscaled. A scale larger
        than ``tile`` is optimized tile by tile (:mod:`nst_fast.tiling`).
        """
        opts = self.options
        if opts.backend != "torch" or opts.optimizer == "adam":
            # torch.optim imports torch._dynamo on first use, from inside the run; imported first, off
            # the stack, it leaves none of the run's tensors in reference cycles (see that function).
            from .engine import import_off_the_stack

            import_off_the_stack("torch._dynamo")
        original = load_image(content, opts.max_pixels, copy=False)  # only read
        total = self.total_steps(original)
        optimize = loop(opts.backend)
        image = None
        done, start = 0, time.perf_counter()
        with _deterministic(opts.deterministic):
            for i, size in enumerate(opts.scales()):
                content_i = self._prepare(original, size, "content")
                if image is None:
                    image = reference.initial_image(content_i, opts)
                else:
                    image = F.interpolate(image, size=content_i.shape[-2:], mode="bicubic", align_corners=False)
                    image = image.clamp_(0, 1)
                steps = opts.steps_at(i)
                tiles = self._tiles(*content_i.shape[-2:])
                targets = self.style_targets_by_size[size]
                if len(tiles) == 1:
                    loss_fn = reference.build_loss(self.model, content_i, targets, opts)
                    image = optimize(self.model, loss_fn, image, opts.replace(steps=steps),
                                     _offset(callback, done, total, time.perf_counter() - start))  # fmt: skip
                else:
                    def report(k: int, preview, done=done) -> Callback | None:  # the k-th tile's callback
                        return _offset(callback, done + k * steps, total, time.perf_counter() - start, preview)

                    self._optimize_tiles(image, content_i, targets, tiles, steps, report)
                done += steps * len(tiles)
        if opts.preserve_colors:
            image = preserve_colors(image, content_i)
        return image.cpu()

    def _optimize_tiles(self, image: torch.Tensor, content: torch.Tensor, targets, tiles: list[Tile], steps: int,
                        report) -> None:  # fmt: skip
        """Optimize ``image`` (in place) tile by tile, ``steps`` iterations each."""
        opts = self.options
        optimize = loop(opts.backend)
        # Content normalized by the whole image's energy, so that every tile weighs content alike.
        energies = reference.content_energies(self.model, [content[(..., *t.box)] for t in tiles], opts.content_layers)
        count = itertools.count()

        def work(tile: Tile, pixels: torch.Tensor, preview) -> torch.Tensor:
            loss_fn = reference.build_loss(self.model, content[(..., *tile.box)], targets, opts, energies)
            return optimize(self.model, loss_fn, pixels, opts.replace(steps=steps), report(next(count), preview))

        optimize_tiles(image, tiles, work)

    def stylize(self, content, callback: Callback | None = None) -> Image.Image:
        """Stylize ``content`` (path, PIL image or tensor) and return the result as a PIL image."""
        return tensor_to_pil(self.stylize_tensor(content, callback))


def _offset(callback: Callback | None, done: int, total: int, elapsed: float, preview=None) -> Callback | None:
    """A callback for one scale (or one tile of it) that reports steps and time as parts of the whole
    run, and — for a tile — the whole canvas with the tile blended in as the image (``preview``)."""
    if callback is None:
        return None

    def report(it: Iterate) -> None:
        image = it._image if preview is None else (lambda: preview(it.image))
        callback(Iterate(done + it.step, total, it._loss, it._losses, elapsed + it.elapsed, image, it.device))

    return report


@contextlib.contextmanager
def _deterministic(enabled: bool):
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def stylize(content, style, callback: Callback | None = None, **options) -> Image.Image:
    """Stylize one content image with ``style`` (one image or a list to blend); keyword arguments are
    :class:`Options` fields. Returns a PIL image."""
    style_blend = options.pop("style_blend", None)
    return Stylizer(style, style_blend=style_blend, **options).stylize(content, callback)


