"""The plan of a run: every decision about it, made once, before any work.

:meth:`Plan.resolve` takes the options, the content image's shape and the device, and decides the
backend, the precision, how steps run (``graph``), the schedule — the scales, coarsest first, each
with its tiles, its steps and whether it recomputes activations (checkpointing) — and the memory the
run needs against what is free. The stylizer executes a plan; the CLI prints it, checks that it fits
and, when it does not, reports the single changes that would (:meth:`Plan.suggestions`); a server
admits or refuses a request by it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import conv, memory, ops
from .backends import Backend, LoopSpec, get
from .backends.precision import Precision
from .errors import ImageError, MemoryFitError, OptionsError
from .image import longest_side_shape
from .memory import MemoryEstimate
from .options import Options
from .tiling import Tile, tile_grid
from .vgg import LAYER, context_margin, deepest

GIB = 2**30


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


def resolve_graph(requested: str, device: torch.device) -> str:
    """How the engine's steps run: ``eager``, ``compile`` (torch.compile'd network) or ``cuda`` (captured
    CUDA graph).

    ``auto`` is eager: torch.compile needs a compiler at run time and spent 8–20 s compiling each image
    size on this project's CPU, about what it saves in a default run (120 steps at 512 px; benchmarks/
    NOTES.md §7); on a GPU the captured graph has not been measured yet.
    """
    if requested == "cuda" and device.type != "cuda":
        raise OptionsError(f"graph 'cuda' captures CUDA graphs and needs a CUDA device, not {device.type}")
    return "eager" if requested == "auto" else requested


def check_image_size(options: Options, height: int, width: int, what: str = "content", remedy: str = "--size"):
    """Raise :class:`ImageError` unless an image of ``height``×``width`` reaches every layer of ``options``."""
    if min(height, width) < options.min_size:
        raise ImageError(
            f"the {what} image is {width}×{height} px at this size; layers up to {deepest(options.layers)} need "
            f"at least {options.min_size} px on each side (raise {remedy} or choose shallower layers)"
        )


def style_side(options: Options, size: int) -> int:
    """The longest side of the style image at a scale of ``size`` px: ``size`` × ``style_scale``."""
    return max(1, round(size * options.style_scale))


def check_style_size(
    options: Options,
    height: int,
    width: int,
    max_pixels: int | None = None,
    free_bytes: int | None = None,
    remedy: str = "--size or --style-scale",
) -> dict[int, int | None]:
    """Check a style image of ``height``×``width``, resized for every scale of ``options``: it must reach
    every layer and stay within ``max_pixels`` (default: ``options.max_pixels``) — else
    :class:`ImageError` — and its forward pass, tiled if need be, must fit in ``free_bytes`` (if given)
    — else :class:`MemoryFitError`. Returns {scale size: :func:`style_tile`}: how its targets are
    computed. The plan's estimate covers the optimized image, not the style's forward pass, which runs
    before the first iteration, where no deadline or cancel reaches: unchecked, a ``style_scale`` of 100
    ran VGG-19 on 6400×4000 px for minutes."""
    limit = options.max_pixels if max_pixels is None else max_pixels
    tiles = {}
    for size, _ in schedule(options):
        h, w = longest_side_shape(height, width, style_side(options, size))
        if h * w > limit:
            raise ImageError(
                f"the style image would be {w}×{h} = {h * w} px at size {size} × style scale "
                f"{options.style_scale:g}, above the limit of {limit} px; lower {remedy}"
            )
        check_image_size(options, h, w, what="style", remedy=remedy)
        tiles[size] = style_tile(options, h, w, free_bytes, remedy)
    return tiles


def style_tile(
    options: Options, height: int, width: int, free_bytes: int | None, remedy: str = "--size or --style-scale"
) -> int | None:
    """The side of the tiles a style image of ``height``×``width`` goes through the network in (None:
    whole; objective.style_grams): ``--tile`` (at least the smallest tile with a core) where the style is
    larger, as the content's tiles; else the whole image if its forward pass fits in ``free_bytes``, or
    the largest tile, halving, that does.
    :class:`MemoryFitError` if not even the smallest does."""
    side = max(height, width)
    stride = LAYER[deepest(options.layers)].stride
    smallest = 2 * context_margin(options.layers) + 4 * stride  # a core of 4 positions at the deepest layer
    if options.tile and side > max(options.tile, smallest):
        return max(options.tile, smallest)
    need = memory.forward_bytes(options.layers, height, width)
    if free_bytes is None or need <= free_bytes:
        return None
    tile = side
    while tile > smallest:
        tile = max(smallest, tile // 2 // stride * stride)
        if memory.forward_bytes(options.layers, min(tile, height), min(tile, width)) <= free_bytes:
            return tile
    least = memory.forward_bytes(options.layers, min(smallest, height), min(smallest, width))
    raise MemoryFitError(
        f"the style image's targets at {width}×{height} px (style scale {options.style_scale:g}) need about "
        f"{memory.readable(need)}, and in the smallest tiles {memory.readable(least)}, but "
        f"{memory.readable(free_bytes)} is free; lower {remedy}"
    )


def resolve_impl(options: Options, device: torch.device) -> str:
    """The operators a run computes with: as asked, except that a deterministic run on CUDA uses the
    reference operators (the CUDA kernels add split-K partial sums with atomics, in no fixed order). On
    a CPU every operator is deterministic already."""
    if options.deterministic and device.type == "cuda" and options.impl == "auto":
        return "ref"
    return options.impl


def winograd_possible(options: Options, backend: Backend, precision: Precision, graph: str, device: torch.device):
    """Whether a run of these options may compute convolutions by Winograd (:mod:`nst_fast.conv`): the
    engine, asked for ``auto`` or ``winograd``, in float32, eagerly, on a CPU with NNPACK."""
    return (
        options.conv != "direct"
        and backend.engine
        and device.type == "cpu"
        and precision.autocast_dtype is None
        and graph == "eager"
        and conv.available()
    )


def channels_last(options: Options, device: torch.device) -> bool:
    """The layout of a Stylizer's network and its runs' activations, decided once, when it is made:
    channels_last for the engine (oneDNN's and cuDNN's layout, NOTES §1), but NCHW where its runs may
    compute convolutions by Winograd, which reads and writes NCHW: converting at every such layer cost
    back half of what it saved (NOTES §15). "May": Winograd possible for these options, not checkpointed,
    and chosen by the rule for a square image at the largest scale or tile. (A Stylizer used only for
    batches runs NCHW with direct convolutions: batches keep them, but the layout is decided before any
    batch is seen; ``conv="direct"`` keeps channels_last.)"""
    backend = get(options.backend)
    if not backend.channels_last:
        return False
    precision = backend.resolve_precision(options.precision, device)
    graph = resolve_graph(options.graph, device)
    if not winograd_possible(options, backend, precision, graph, device) or options.checkpoint == "on":
        return True
    # Where even a square image at the largest scale (or tile) would run no layer by Winograd, none will.
    side = min(options.size, options.tile or options.size)
    return options.conv == "auto" and not conv.winograd_layers(options.layers, side, side)


def resolve_winograd(
    options: Options,
    backend: Backend,
    precision: Precision,
    graph: str,
    checkpoint: bool,
    device: torch.device,
    batch: int,
    height: int,
    width: int,
) -> frozenset[str]:
    """The convolutions a scale of ``height``×``width`` runs by Winograd (:mod:`nst_fast.conv`).

    ``auto``: the measured rule, in float32 eager runs of one image on a CPU without checkpointing (a
    checkpointed run is short of memory, and NNPACK's workspace is a part of it; a batch's NNPACK path
    is another algorithm, not measured). ``winograd``: every convolution from conv1_2 on, where it can
    run at all; :class:`OptionsError` where it cannot."""
    if options.conv == "winograd" and not backend.engine:
        raise OptionsError(
            f"conv 'winograd' is the torch backend's; backend {backend.name!r} computes its own convolutions"
        )
    if options.conv == "direct" or not backend.engine:
        return frozenset()
    possible = winograd_possible(options, backend, precision, graph, device)
    if options.conv == "winograd":
        if not possible:
            raise OptionsError(
                "conv 'winograd' runs NNPACK's float32 CPU convolutions: it needs a CPU with NNPACK, precision "
                f"fp32 and graph eager (here: device {device.type}, precision {precision.name}, graph {graph}"
                f"{'' if conv.available() else ', no NNPACK'})"
            )
        return conv.winograd_layers(options.layers, height, width, everywhere=True)
    if not possible or checkpoint or batch > 1:
        return frozenset()
    return conv.winograd_layers(options.layers, height, width)


def lbfgs_history(numel: int, budget_bytes: int = GIB) -> int:
    """Curvature pairs the engine keeps: 100 (the reference's) while they fit ``budget_bytes``, at least 5."""
    return max(5, min(100, budget_bytes // (8 * numel)))


def schedule(options: Options) -> tuple[tuple[int, int], ...]:
    """(size, steps) of each scale, coarsest first, ending at ``size``: above ``pyramid_start`` the image is
    optimized at size/2^k ≤ pyramid_start first, then upscaled and re-optimized at each doubling.

    Below 512 px one scale is the default by measurement: a pass at half size first reached the loss of
    120 full-size iterations 21% sooner on one image pair and 7% later on another (benchmarks/NOTES.md §13).
    """
    sizes = [options.size]
    while options.pyramid_start and sizes[0] > options.pyramid_start and sizes[0] // 2 >= options.min_size:
        sizes.insert(0, sizes[0] // 2)
    finer = options.steps // 2 if options.pyramid_steps is None else options.pyramid_steps
    return tuple((size, options.steps if i == 0 else finer) for i, size in enumerate(sizes))


@dataclass(frozen=True)
class ScalePlan:
    """One scale of a run: the image's size there, its tiles (one covering it when not tiled), and the
    loop each tile runs."""

    size: int  # longest side
    height: int
    width: int
    tiles: tuple[Tile, ...]
    loop: LoopSpec
    estimate: MemoryEstimate  # this scale's peak: one piece optimized at once, and the canvas when tiled

    @property
    def steps(self) -> int:
        return self.loop.steps

    @property
    def tiled(self) -> bool:
        return len(self.tiles) > 1

    @property
    def iterations(self) -> int:
        return self.loop.steps * len(self.tiles)

    @property
    def work(self) -> int:
        """Pixel-iterations: what an iteration costs grows with the pixels it covers."""
        return self.loop.steps * sum(t.height * t.width for t in self.tiles)


@dataclass(frozen=True)
class Plan:
    """Everything decided about one run on one content image."""

    options: Options
    device: torch.device
    backend: Backend
    precision: Precision
    graph: str
    impl: str  # the Gram/style-loss operators: as asked, but "ref" where deterministic needs them
    content_shape: tuple[int, int]  # (height, width) of the content image as loaded
    scales: tuple[ScalePlan, ...]
    estimate: MemoryEstimate  # the run's peak: the largest scale's, and on a CPU the loaded content
    free_bytes: int | None  # free memory on the device when planned (None: unknown)
    batch: int = 1  # content images optimized together (the estimate counts them all)

    @classmethod
    def resolve(cls, options: Options, content_shape: tuple[int, int], device: torch.device, batch: int = 1) -> Plan:
        """The plan for ``options`` on a content image of ``content_shape`` (height, width) on ``device``,
        or on ``batch`` such images optimized together (see :attr:`batch_key`)."""
        backend = get(options.backend)
        engine = backend.engine
        precision = backend.resolve_precision(options.precision, device)
        graph = resolve_graph(options.graph, device) if engine else "eager"
        impl = resolve_impl(options, device)
        free = memory.available_bytes(device)
        providers = "cpu" if options.device == "cpu" else None
        layout = channels_last(options, device)
        scales = []
        for size, steps in schedule(options):
            height, width = longest_side_shape(*content_shape, size)
            check_image_size(options, height, width)
            tiles = _tiles(options, height, width)
            piece = tiles[0]
            history = lbfgs_history(3 * piece.height * piece.width)

            def winograd_with(checkpoint: bool, piece=piece) -> frozenset[str]:
                return resolve_winograd(
                    options, backend, precision, graph, checkpoint, device, batch, piece.height, piece.width
                )

            def estimate_with(checkpoint: bool, winograd: frozenset[str], piece=piece, history=history):
                return _estimate(
                    options, piece.height, piece.width, precision, checkpoint, device, impl, batch, history, winograd
                )

            winograd = winograd_with(checkpoint=False)
            estimate = estimate_with(False, winograd)
            if winograd and options.conv == "auto" and free is not None and estimate.beyond_loaded > free:
                direct = estimate_with(False, frozenset())
                if direct.beyond_loaded <= free:  # NNPACK's workspace alone is too much: direct, not recomputed
                    winograd, estimate = frozenset(), direct
            checkpoint = engine and (
                options.checkpoint == "on"
                or (options.checkpoint == "auto" and free is not None and estimate.beyond_loaded > free)
            )
            if checkpoint:
                winograd = winograd_with(checkpoint=True)
                estimate = estimate_with(True, winograd)
            if len(tiles) > 1:  # the canvas, the content, a band of tiles and its preview, at full size
                estimate = dataclasses.replace(estimate, canvas=(2 * height + 2 * piece.height) * width * 3 * 4)
            loop = LoopSpec(
                steps,
                options.optimizer,
                options.learning_rate,
                precision,
                checkpoint,
                graph,
                history,
                providers,
                options.tol,
                winograd,
                layout,
            )
            scales.append(ScalePlan(size, height, width, tuple(tiles), loop, estimate))
        peak = max((s.estimate for s in scales), key=lambda e: e.total)
        if device.type == "cpu":  # the content as loaded, kept for every scale; on a GPU it stays on the host
            peak = dataclasses.replace(peak, source=batch * content_shape[0] * content_shape[1] * 3 * 4)
        return cls(
            options, device, backend, precision, graph, impl, tuple(content_shape), tuple(scales), peak, free, batch
        )

    def replace(self, **changes) -> Plan:
        """The plan of the same content on the same device with ``changes`` to the options."""
        return Plan.resolve(self.options.replace(**changes), self.content_shape, self.device, self.batch)

    @property
    def batch_key(self) -> tuple | None:
        """Runs with equal keys can be optimized together, as one batch: the engine's, untiled, without
        checkpointing or CUDA graphs, of the same size at every scale. None: this run goes alone."""
        alike = self.backend.engine and self.graph != "cuda"
        if not alike or any(s.tiled or s.loop.checkpoint for s in self.scales):
            return None
        return tuple((s.height, s.width) for s in self.scales)

    def work_share(self, index: int) -> float:
        """The share of the time left at the start of scale ``index`` that it may spend under a deadline:
        its planned work over that of itself and the scales after it."""
        left = sum(s.work for s in self.scales[index:])
        return 1.0 if left == 0 else self.scales[index].work / left

    @property
    def total_steps(self) -> int:
        """Optimizer iterations the run takes, over every scale and tile."""
        return sum(s.iterations for s in self.scales)

    @property
    def fits(self) -> bool:
        """Whether the run fits in the memory that was free, by the estimate (unknown free memory: yes)."""
        return self.free_bytes is None or self.estimate.beyond_loaded <= self.free_bytes

    def check_fits(self) -> None:
        """Raise :class:`MemoryFitError`, naming the single changes that would fit, unless the run fits."""
        if self.fits:
            return
        reason = (
            f"this run needs about {memory.readable(self.estimate.beyond_loaded)} but "
            f"{memory.readable(self.free_bytes)} is free on {self.device}"
        )
        changes = self.suggestions()
        raise MemoryFitError(f"{reason}; {fit_advice(changes)}", reason, changes)

    def suggestions(self) -> list[dict[str, object]]:
        """The single option changes that would fit in the free memory, by the estimate, as Options fields
        (``[{"checkpoint": "on"}, {"tile": 512}, {"size": 768}]``)."""
        opts, free = self.options, self.free_bytes

        def fits(**change) -> bool:
            try:
                return free is None or self.replace(**change).estimate.beyond_loaded <= free
            except (ImageError, OptionsError):  # a change that cannot run at all does not fit
                return False

        candidates = []
        if any(s.loop.winograd for s in self.scales):  # NNPACK's workspace
            candidates.append({"conv": "direct"})
        if self.backend.engine and opts.checkpoint != "on":
            candidates.append({"checkpoint": "on"})
        if self.backend.honours_precision and self.precision.autocast_dtype is None:
            candidates.append({"precision": "bf16"})
        found = [change for change in candidates if fits(**change)]
        largest = opts.tile or opts.size
        smallest = max(64, 2 * opts.min_size, 2 * opts.tile_overlap + 1 if opts.tile_overlap is not None else 0)
        tile = next((t for t in (largest >> k for k in range(1, 8)) if t >= smallest and fits(tile=t)), None)
        if tile:
            found.append({"tile": tile})
        size = opts.size * 3 // 4
        while size >= opts.min_size and not fits(size=size):
            size = size * 3 // 4
        if size >= opts.min_size:
            found.append({"size": size})
        return found


@dataclass(frozen=True)
class Spelling:
    """How a front end names an option and its value: the library as Options fields (``tile=512``), the
    CLI as flags (``--tile 512``), the server as a request's JSON options (``"tile": 512``)."""

    name: Callable[[str], str]
    joiner: str
    value: Callable[[object], str]

    def change(self, name: str, value: object) -> str:
        return f"{self.name(name)}{self.joiner}{self.value(value)}"


AS_FIELD = Spelling(str, "=", repr)
AS_FLAG = Spelling(lambda name: "--" + name.replace("_", "-"), " ", str)
AS_REQUEST = Spelling(json.dumps, ": ", json.dumps)


def fit_advice(changes: list[dict[str, object]], spelling: Spelling = AS_FIELD) -> str:
    """The advice of a :class:`MemoryFitError`: ``changes`` (:meth:`Plan.suggestions`) in ``spelling``."""
    if not changes:
        names = ", ".join(map(spelling.name, ("conv", "checkpoint", "precision", "tile", "size")))
        return f"no single change of {names} would fit; free some memory"
    return "by the estimate, any of these would fit: " + ", ".join(
        spelling.change(name, value) for change in changes for name, value in change.items()
    )


def _tiles(options: Options, height: int, width: int) -> list[Tile]:
    if not options.tile or max(height, width) <= options.tile:
        return [Tile(0, 0, height, width)]
    return tile_grid(height, width, options.tile, options.overlap)


def _estimate(
    options: Options,
    height: int,
    width: int,
    precision: Precision,
    checkpoint: bool,
    device: torch.device,
    impl: str,
    batch: int,
    history: int,
    winograd: frozenset[str] = frozenset(),
) -> MemoryEstimate:
    """One piece's peak: an image of ``height``×``width`` optimized at once."""
    return memory.estimate(
        options.layers,
        height,
        width,
        activation_bytes=2 if precision.autocast_dtype is not None else 4,
        checkpoint=checkpoint,
        optimizer=options.optimizer,
        history=history,
        batch=batch,
        float32_loss_copies=impl == "ref" or not ops.extension_serves(device),
        pooling=options.pooling,
        workspace=conv.workspace_bytes(winograd, height, width, batch),
    )
