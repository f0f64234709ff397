"""The library API: :class:`Stylizer` (style targets computed once, many content images) and :func:`stylize`.

A run is planned (:class:`~nst_fast.plan.Plan`: scales, tiles, steps, precision, memory) and then
executed here: at each scale of the plan, the content's targets and the loss are built
(:mod:`nst_fast.objective`) and the plan's backend optimizes the image, whole or tile by tile.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from . import memory
from .backends import get as get_backend
from .backends.precision import Precision
from .callbacks import Callback, Iterate
from .color import preserve_colors
from .control import Cancel, Stop
from .errors import Cancelled, OptionsError, counted
from .image import load_image, resize_longest, tensor_to_pil
from .objective import StyleTransferLoss, build_loss, content_energies, initial_image, style_targets
from .ops import check_impl
from .options import Options
from .plan import (
    Plan,
    ScalePlan,
    channels_last,
    check_image_size,
    check_style_size,
    resolve_device,
    resolve_impl,
    schedule,
    style_side,
)
from .tiling import Tile, optimize_tiles
from .vgg import VGG19
from .weights import load_weights


class Stylizer:
    """Stylizes content images with one style (or a blend of styles), whose targets are computed once.

    Args:
        style: a style image (path, PIL image or tensor), or a sequence of them to blend.
        options: an :class:`Options`; keyword arguments override its fields.
        style_blend: one weight per style image (default: equal).

    >>> stylizer = Stylizer("starry_night.jpg", size=256)          # doctest: +SKIP
    >>> stylizer.stylize("tubingen.jpg").save("out.png")           # doctest: +SKIP
    """

    def __init__(
        self, style, options: Options | None = None, *, style_blend: Sequence[float] | None = None, **overrides
    ):
        self.options = (options or Options()).replace(**overrides)
        opts = self.options
        styles = list(style) if isinstance(style, (list, tuple)) else [style]
        if not styles:
            raise OptionsError("at least one style image is needed")
        blend = [1.0] * len(styles) if style_blend is None else [float(w) for w in style_blend]
        if len(blend) != len(styles):
            raise OptionsError(
                f"{counted(len(blend), 'style blend weight')} given for {counted(len(styles), 'style image')}"
            )
        if not all(math.isfinite(w) and w >= 0 for w in blend) or max(blend) <= 0:
            raise OptionsError(f"style blend weights must be finite, non-negative and not all zero, got {blend}")
        blend = [w / max(blend) for w in blend]  # no overflow in their sum
        self.device = resolve_device(opts.device)
        _process_settings(opts, self.device)
        check_impl(opts.impl, self.device)
        weights = load_weights(opts.weights, opts.weights_preprocessing)
        self.model = VGG19(opts.layers, weights, opts.pooling).to(self.device)
        if channels_last(opts, self.device):
            # Once, here, before any target is computed: a layout changed by the first run would give
            # that run's targets other rounding than every later run's (a first call in a process gave
            # another image than the second, up to 103/255 apart).
            self.model.to(memory_format=torch.channels_last)
        originals = [load_image(s, opts.max_pixels, copy=False) for s in styles]
        # Checked before any is resized (a refused size allocates nothing): each style's tiles per scale.
        free = memory.available_bytes(self.device)
        tiles = [check_style_size(opts, *image.shape[-2:], free_bytes=free) for image in originals]
        # Style targets once per scale of the schedule, for every content image this stylizer will see.
        self.style_targets_by_size = {}
        for size, _ in schedule(opts):
            images = [resize_longest(image, style_side(opts, size)).to(self.device) for image in originals]
            at_size = [t[size] for t in tiles]
            self.style_targets_by_size[size] = style_targets(self.model, images, blend, opts.style_layers, at_size)
        self.style_targets = self.style_targets_by_size[opts.size]

    @property
    def precision(self) -> Precision:
        """The precision runs compute in here, as the backend resolves the requested one."""
        return get_backend(self.options.backend).resolve_precision(self.options.precision, self.device)

    def plan(self, content, **overrides) -> Plan:
        """The :class:`Plan` of stylizing ``content`` (a path, PIL image or tensor; only its shape is
        used). ``overrides`` are Options fields to plan with instead, for a what-if (``tile=1024``,
        ``checkpoint="on"``, ...): only a plan without them can be executed by this stylizer."""
        shape = content.shape[-2:] if isinstance(content, torch.Tensor) else load_image(content).shape[-2:]
        return Plan.resolve(self.options.replace(**overrides), tuple(shape), self.device)

    def loss_for(self, content, size: int | None = None) -> tuple[torch.Tensor, StyleTransferLoss]:
        """The content image resized to ``size`` (default: the final scale) on the device, and the loss a
        run optimizes there: what the benchmarks time and the ONNX export bakes in."""
        size = self.options.size if size is None else size
        image = resize_longest(load_image(content, self.options.max_pixels, copy=False), size).to(self.device)
        check_image_size(self.options, *image.shape[-2:])
        impl = resolve_impl(self.options, self.device)
        return image, build_loss(self.model, image, self.style_targets_by_size[size], self.options, impl=impl)

    def stylize_tensor(
        self,
        content,
        callback: Callback | None = None,
        *,
        plan: Plan | None = None,
        cancel: Cancel | None = None,
        max_time: float | None = None,
    ) -> torch.Tensor:
        """Like :meth:`stylize`, returning a 1×3×H×W float tensor in [0, 1] on the CPU.

        The run follows ``plan`` (default: :meth:`plan` of ``content``): at each of its scales, starting
        from the previous scale's result upscaled, the image is optimized whole or tile by tile
        (:mod:`nst_fast.tiling`). Past ``max_time`` seconds (this call's deadline; default: the option's)
        it stops, between two iterations, and returns the best image it has, upscaled to full size;
        ``cancel`` (a :class:`~nst_fast.control.Cancel`) ends it, between two iterations, with
        :class:`~nst_fast.errors.Cancelled`.
        """
        original = load_image(content, self.options.max_pixels, copy=False)  # only read
        plan = plan or Plan.resolve(self.options, tuple(original.shape[-2:]), self.device)
        self._check_executable(plan, original)
        return self._run([original], plan, callback, Stop(self._max_time(max_time), cancel))[0]

    def _max_time(self, max_time: float | None) -> float | None:
        """A call's deadline in seconds: ``max_time`` if given (checked as the option is), else the option's."""
        return self.options.max_time if max_time is None else self.options.replace(max_time=max_time).max_time

    def stylize_many(
        self,
        contents,
        callback: Callback | None = None,
        *,
        batch_size: int | None = None,
        cancel: Cancel | None = None,
        cancel_each: Sequence[Cancel | None] | None = None,
        on_result: Callable[[int, torch.Tensor], object] | None = None,
        max_time: float | None = None,
    ) -> list[torch.Tensor | None]:
        """Stylize several content images; returns their 1×3×H×W tensors in the order given.

        Images whose runs are alike (:attr:`Plan.batch_key`: the same size at every scale, untiled, the
        torch backend) are optimized together, ``batch_size`` (default: the option's) at a time, as one
        B×3×H×W batch: one network pass for all, each image with its own content targets, loss, L-BFGS
        and best iterate, so that each gets what it would alone (to rounding: a batch's convolutions
        may round differently). The others run one by one. ``callback`` sees each run's iterates (a batch's
        image is the whole batch, its loss their sum, :attr:`Iterate.indices` whose each row is);
        ``cancel`` ends the current run and the rest with :class:`~nst_fast.errors.Cancelled`.
        ``cancel_each`` gives each image a token of its own: a cancelled image leaves its batch between
        two iterations (the others go on, as they would have, and faster), gets None as its result and
        no ``on_result``. ``on_result(index, image)`` receives each image as soon as its run ends (to
        save it before the others are done). ``max_time`` (default: the option's) is each run's deadline:
        a batch's, or an image's alone.
        """
        max_time = self._max_time(max_time)
        size = self.options.batch_size if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise OptionsError(f"batch_size must be a positive integer, got {size!r}")
        contents = list(contents)
        if cancel_each is not None and len(cancel_each) != len(contents):
            raise OptionsError(
                f"{counted(len(cancel_each), 'cancel_each token')} given for {counted(len(contents), 'content image')}"
            )
        originals = [load_image(c, self.options.max_pixels, copy=False) for c in contents]
        plans = [Plan.resolve(self.options, tuple(o.shape[-2:]), self.device) for o in originals]
        groups: dict[object, list[int]] = {}
        for i, plan in enumerate(plans):
            key = plan.batch_key
            groups.setdefault(("alone", i) if key is None else key, []).append(i)
        results: list[torch.Tensor | None] = [None] * len(originals)
        for members in groups.values():
            for first in range(0, len(members), size):
                chunk = members[first : first + size]
                shape = tuple(originals[chunk[0]].shape[-2:])
                plan = (
                    plans[chunk[0]] if len(chunk) == 1 else Plan.resolve(self.options, shape, self.device, len(chunk))
                )
                tokens = None if cancel_each is None else [cancel_each[i] for i in chunk]
                stop = Stop(max_time, cancel, tokens)
                out, held = self._run([originals[i] for i in chunk], plan, callback, stop, chunk)
                for position, image in zip(held, out.split(1) if held else []):
                    i = chunk[position]
                    results[i] = image
                    if on_result is not None:
                        on_result(i, image)
        return results

    def _run(
        self,
        originals: list[torch.Tensor],
        plan: Plan,
        callback: Callback | None,
        stop: Stop,
        indices: list[int] | None = None,
    ) -> tuple[torch.Tensor | None, list[int]]:
        """Optimize ``originals`` (one image, or a batch whose plan makes them alike) as ``plan`` says.
        Returns the images of those not cancelled (``stop.members``), and their positions in
        ``originals``; ``indices`` are their numbers in the iterates' :attr:`~Iterate.indices`."""
        opts = self.options
        image = None
        held = list(range(len(originals)))  # the images the run still holds
        done, start = 0, time.perf_counter()
        for index, scale in enumerate(plan.scales):
            _raise_if_cancelled(stop)
            rows, held = _still_wanted(held, stop)
            if not held:
                return None, []
            if rows is not None and image is not None:
                image = image[rows]
            content_i = _batch([resize_longest(originals[p], scale.size) for p in held]).to(self.device)
            if image is None:  # each image's own start: noise as it would have alone
                image = _batch([initial_image(c[None], opts) for c in content_i])
            else:
                image = F.interpolate(image, size=content_i.shape[-2:], mode="bicubic", align_corners=False)
                image = image.clamp_(0, 1)
            if stop.expired:  # past the deadline: only carried up to full size
                continue
            targets = self.style_targets_by_size[scale.size]
            elapsed = time.perf_counter() - start
            # Under a deadline, every scale gets its share; a batch's tokens are those of the images held.
            scale_stop = stop.share(plan.work_share(index)).subset(held)
            if not scale.tiled:
                loss_fn = build_loss(self.model, content_i, targets, opts, impl=plan.impl)
                numbers = None if indices is None else [indices[p] for p in held]
                report = _shifted(callback, done, plan.total_steps, elapsed, indices=numbers)
                image = plan.backend.optimize(self.model, loss_fn, image, scale.loop, report, scale_stop)
            else:
                self._optimize_tiles(plan, scale, image, content_i, targets, callback, done, start, scale_stop)
            _raise_if_cancelled(stop)
            done += scale.iterations
        rows, held = _still_wanted(held, stop)  # cancelled during the last scale: no output
        if not held:
            return None, []
        if rows is not None:
            image, content_i = image[rows], content_i[rows]
        if opts.preserve_colors:
            image = preserve_colors(image, content_i)
        return image.cpu(), held

    def _check_executable(self, plan: Plan, content: torch.Tensor) -> None:
        if plan.options != self.options or plan.device != self.device:
            raise ValueError("this plan was made with other options or for another device: it can only be estimated")
        if plan.content_shape != tuple(content.shape[-2:]):
            raise ValueError(f"this plan is for a {plan.content_shape} image, not {tuple(content.shape[-2:])}")

    def _optimize_tiles(
        self,
        plan: Plan,
        scale: ScalePlan,
        image: torch.Tensor,
        content: torch.Tensor,
        targets,
        callback: Callback | None,
        done: int,
        start: float,
        stop: Stop,
    ) -> None:
        """Optimize ``image`` (in place) tile by tile, each tile's iterations reported as a part of the run."""
        opts = self.options
        # Content normalized by the whole image's energy, so that every tile weighs content alike.
        pieces = [content[(..., *t.box)] for t in scale.tiles]
        energies = content_energies(self.model, pieces, opts.content_layers)
        count = itertools.count()

        def work(tile: Tile, pixels: torch.Tensor, preview) -> torch.Tensor:
            if stop():  # the remaining tiles keep the pixels they start from
                return pixels
            loss_fn = build_loss(self.model, content[(..., *tile.box)], targets, opts, energies, impl=plan.impl)
            index = next(count)
            before = done + index * scale.steps
            report = _shifted(callback, before, plan.total_steps, time.perf_counter() - start, preview)
            tile_stop = stop.share(1 / (len(scale.tiles) - index))  # the time left, shared by the tiles left
            return plan.backend.optimize(self.model, loss_fn, pixels, scale.loop, report, tile_stop)

        optimize_tiles(image, list(scale.tiles), work)

    def stylize(
        self,
        content,
        callback: Callback | None = None,
        *,
        cancel: Cancel | None = None,
        max_time: float | None = None,
    ) -> Image.Image:
        """Stylize ``content`` (path, PIL image or tensor) and return the result as a PIL image; ``cancel``
        and ``max_time`` (this call's deadline in seconds) as for :meth:`stylize_tensor`."""
        return tensor_to_pil(self.stylize_tensor(content, callback, cancel=cancel, max_time=max_time))


def _batch(images: list[torch.Tensor]) -> torch.Tensor:
    """Images as one batch; one image as it is (at print resolution a copy is hundreds of MB)."""
    return images[0] if len(images) == 1 else torch.cat(images)


def _still_wanted(held: list[int], stop: Stop) -> tuple[list[int] | None, list[int]]:
    """Of a batch's images (positions ``held``), those whose tokens are not cancelled, and the rows of the
    batch's tensors that are theirs (None: every row, nothing left it)."""
    still = stop.wanted(held)
    return (None if still == held else [held.index(p) for p in still]), still


def _shifted(
    callback: Callback | None, done: int, total: int, elapsed: float, preview=None, indices: list[int] | None = None
) -> Callback | None:
    """A callback for one scale (or one tile of it) that reports steps and time as parts of the whole
    run, and — for a tile — the whole canvas with the tile blended in as the image (``preview``);
    ``indices`` number a batch's images (the contents' positions given to stylize_many)."""
    if callback is None:
        return None

    def report(it: Iterate) -> None:
        image = None if preview is None else (lambda: preview(it.image))
        callback(it.shifted(done, total, elapsed, image, indices))

    return report


def _process_settings(options: Options, device: torch.device) -> None:
    """The settings PyTorch keeps for the whole process, and no thread-local equivalent: set here, once,
    when a Stylizer is made — never switched during a run, where another thread's run would see them.
    Only on a GPU: on a CPU every run is deterministic and TF32 does not exist."""
    if device.type != "cuda":
        return
    if options.deterministic:
        # cuBLAS is deterministic only with a fixed workspace, read when its first handle is made.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    if get_backend(options.backend).resolve_precision(options.precision, device).name == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def _raise_if_cancelled(stop: Stop) -> None:
    """The run's own token (not one image's of a batch) ends it with :class:`Cancelled`."""
    if stop.cancel is not None and stop.cancel.cancelled:
        raise Cancelled("the run was cancelled")


def stylize(content, style, callback: Callback | None = None, **options) -> Image.Image:
    """Stylize one content image with ``style`` (one image or a list to blend); keyword arguments are
    :class:`Options` fields. Returns a PIL image."""
    style_blend, cancel = options.pop("style_blend", None), options.pop("cancel", None)
    return Stylizer(style, style_blend=style_blend, **options).stylize(content, callback, cancel=cancel)
