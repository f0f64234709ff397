"""Images in and out: PIL images, paths and tensors ↔ float32 RGB tensors in [0, 1], N×3×H×W."""

from __future__ import annotations

import functools
import io
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tifffile
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from .atomic import atomic_save, unwritable
from .errors import ImageError


def load_image(source, max_pixels: int | None = None, copy: bool = True) -> torch.Tensor:
    """A path, PIL image or tensor → 1×3×H×W float32 RGB in [0, 1] on the CPU.

    EXIF orientation is applied. Tensors may be 3×H×W or 1×3×H×W, floating point in [0, 1]. Files
    above ``max_pixels`` (default :data:`MAX_PIXELS`) are refused before they are decoded. ``copy=False``
    returns a tensor that is float32 on the CPU and in [0, 1] already as it is (a view of it), for
    callers that only read it: at print resolution a float32 copy is hundreds of MB.
    """
    if isinstance(source, torch.Tensor):
        return _check_tensor(source, copy)
    if isinstance(source, Image.Image):
        return pil_to_tensor(source)
    if isinstance(source, (str, os.PathLike)):
        source = Path(source).expanduser()  # as Options checks --init: a quoted '~/a.png' reaches here as is
        image = read_image(source, max_pixels)  # every check, for every format
        if _tiff_16bit_rgb(source):
            return _read_tiff_16bit(source)
        return pil_to_tensor(image)
    raise ImageError(f"expected an image path, PIL image or tensor, got {type(source).__name__}")


# The guard against decompression bombs: image files above this many pixels are refused before they
# are decoded (Options.max_pixels, --max-pixels, changes it). 2^28 px is 16384×16384.
MAX_PIXELS = 2**28


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image file, or raise :class:`ImageError` naming the problem. A leading ``~``
    is the user's home directory, as in a shell."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"expected an image file, got a directory: {path}")
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    pillow_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the check below replaces Pillow's, with our limit
    try:
        with Image.open(path) as im:
            if im.width * im.height > limit:
                raise ImageError(
                    f"image too large: {path} is {im.width}×{im.height} px, above the limit of "
                    f"{limit} px (a decompression bomb?); --max-pixels raises the limit"
                )
            im.load()
            return ImageOps.exif_transpose(im)
    except UnidentifiedImageError:
        raise ImageError(f"not an image (or a format Pillow cannot read): {path}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot read image {path}: {' '.join(str(e).split())}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def header_shape(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) of an image file as stored, from its header alone (nothing is decoded): to plan a
    run before reading the image. EXIF orientation is not applied — it may swap the two, which changes
    neither the pixels a run optimizes nor, by the estimate, its memory. :class:`ImageError` if the file
    cannot be read or is above ``max_pixels`` (default :data:`MAX_PIXELS`), as :func:`read_image`."""
    path = Path(path).expanduser()
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check, at open; ours (the limit) follows. Opening reads the header only.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageError(f"cannot read image {path}") from None
    if width * height > limit:
        raise ImageError(f"image too large: {path} is {width}×{height} px, above the limit of {limit} px")
    return height, width


def _tiff_16bit_rgb(path) -> bool:
    """Whether ``path`` is a TIFF of 16-bit RGB (which Pillow decodes to 8 bits) with no rotation to apply."""
    with Image.open(path) as image:
        tags = getattr(image, "tag_v2", None) if image.format == "TIFF" else None
    if tags is None:
        return False
    rgb16 = tags.get(258) in ((16, 16, 16), (16, 16, 16, 16)) and tags.get(262) == 2  # BitsPerSample, RGB
    return rgb16 and tags.get(274, 1) == 1  # Orientation: none


def _read_tiff_16bit(path) -> torch.Tensor:
    try:
        array = tifffile.imread(path)
    except Exception as e:  # noqa: BLE001 — tifffile raises many types for damaged files
        raise ImageError(f"cannot read image {path}: {' '.join(str(e).split())}") from None
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or array.dtype != np.uint16:
        raise ImageError(f"cannot read image {path}: unexpected 16-bit TIFF layout {array.shape} {array.dtype}")
    array = array.astype(np.float32) / 65535.0
    if array.shape[-1] == 4:
        array = array[..., :3] * array[..., 3:] + (1.0 - array[..., 3:])  # over white, as other formats
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).contiguous()


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """Any Pillow image → 1×3×H×W float32 RGB in [0, 1].

    16-bit and 32-bit integer images keep their precision (scaled by 65535 when they fit 16 bits);
    float images are taken as [0, 1]; transparent images are composited over white.
    """
    if image.width < 2 or image.height < 2:
        raise ImageError(f"image is {image.width}×{image.height} px: too small to stylize")
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if image.mode != "F":
            array = array / (65535.0 if array.max(initial=0) <= 65535 else float(np.iinfo(np.int32).max))
        array = np.repeat(array[..., None], 3, axis=2)
    elif image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        array = rgba[..., :3] * alpha + (1.0 - alpha)  # over white
    else:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0)
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """1×3×H×W or 3×H×W float in [0, 1] → 8-bit RGB PIL image."""
    image = image.detach()
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"expected a single image, got a batch of {image.shape[0]}")
        image = image[0]
    array = image.float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def _check_tensor(image: torch.Tensor, copy: bool = True) -> torch.Tensor:
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ImageError(f"an image tensor must be 3×H×W or 1×3×H×W RGB, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ImageError(f"an image tensor must be floating point in [0, 1], got {image.dtype}")
    if image.numel() == 0:
        raise ImageError(f"the image tensor is empty, shape {tuple(image.shape)}")
    lo, hi = (v.item() for v in torch.aminmax(image.detach()))  # NaN propagates to both, ±inf shows
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ImageError("the image tensor holds NaN or infinite values")
    image = image.detach()
    if not copy and image.dtype == torch.float32 and image.device.type == "cpu" and lo >= 0 and hi <= 1:
        return image
    return image.float().cpu().clamp(0, 1)


def longest_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The height and width of a ``height``×``width`` image resized so that its longest side is ``size``."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_longest(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize N×3×H×W so that its longest side is ``size`` px, keeping the aspect ratio (antialiased)."""
    h, w = image.shape[-2:]
    new_h, new_w = longest_side_shape(h, w, size)
    if (new_h, new_w) == (h, w):
        return image
    out = F.interpolate(image, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(0, 1)


def output_format(path: str | os.PathLike) -> str:
    """The Pillow format that ``path``'s extension names, or :class:`ImageError`."""
    ext = Path(path).suffix.lower()
    formats = Image.registered_extensions()
    if ext not in formats or formats[ext] not in Image.SAVE:
        raise ImageError(f"unknown output image extension {ext or '(none)'!r} in {path}; use .png, .jpg, .webp or .tif")
    return formats[ext]


def check_output_path(path: str | os.PathLike, bit_depth: int = 8, probe: bool = True) -> Path:
    """Check, before any work, that an RGB image of ``bit_depth`` bits per channel can be encoded and
    written at ``path``. ``probe``: also create (and remove) a temporary file beside it, as the save will."""
    path = Path(path)
    fmt = output_format(path)
    if bit_depth not in (8, 16):
        raise ImageError(f"bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and fmt != "TIFF":
        raise ImageError(f"16-bit output is written as TIFF: use a .tif or .tiff output path, not {path.name}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ImageError(f"output directory does not exist: {parent}")
    if path.is_dir():
        raise ImageError(f"output path is a directory: {path}")
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except Exception:  # noqa: BLE001 — Pillow raises many types for formats it cannot write RGB in
        raise ImageError(f"cannot write an RGB image as {fmt} ({path.suffix}); use .png, .jpg, .webp or .tif") from None
    problem = None if os.access(parent, os.W_OK | os.X_OK) else "not writable"
    if problem is None and probe:
        problem = unwritable(parent)
    if problem:
        raise ImageError(f"cannot write the output {path}: {problem} (in {parent})")
    return path


def save_image(image: torch.Tensor | Image.Image, path: str | os.PathLike, bit_depth: int = 8, **save_args) -> Path:
    """Write ``image`` atomically: into a temporary file beside ``path``, then renamed over it.

    A failure leaves any existing file at ``path`` untouched. ``bit_depth`` 16 writes a 16-bit-per-channel
    TIFF (deflate-compressed, with the sRGB profile): the whole precision of a float result.
    """
    path = check_output_path(path, bit_depth, probe=False)  # atomic_save's own temporary file is the probe
    fmt = output_format(path)
    if "icc_profile" not in save_args and fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        save_args["icc_profile"] = srgb_profile()  # the pixels are sRGB: say so
    if bit_depth == 16:
        pixels = _as_tensor(image)[0].permute(1, 2, 0).mul(65535).round_().to(torch.int32).numpy().astype("uint16")
        encoded = io.BytesIO()  # tifffile wants a named file or a buffer, not the temporary's descriptor
        tifffile.imwrite(encoded, pixels, photometric="rgb", compression="zlib", iccprofile=save_args["icc_profile"])
        return atomic_save(path, lambda f: f.write(encoded.getbuffer()))
    pil = image if isinstance(image, Image.Image) else tensor_to_pil(image)
    if fmt not in ("JPEG", "WEBP"):
        save_args.pop("quality", None)
    return atomic_save(path, lambda f: pil.save(f, format=fmt, **save_args))


def _as_tensor(image: torch.Tensor | Image.Image) -> torch.Tensor:
    if isinstance(image, Image.Image):
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return _check_tensor(image)


# The creation date written into the embedded profile's header: LittleCMS stamps the current time there
# (bytes 24-35 of an ICC header), which made two runs' output files differ in those bytes alone.
PROFILE_DATE = (2026, 1, 1, 0, 0, 0)


@functools.lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """The sRGB ICC profile embedded in every output, the same bytes in every process."""
    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    profile[24:36] = struct.pack(">6H", *PROFILE_DATE)  # no profile ID (bytes 84-99) covers the date
    return bytes(profile)
