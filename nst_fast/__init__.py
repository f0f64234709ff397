"""nst-fast: fast, dependable neural style transfer (Gatys, Ecker & Bethge 2015).

    import nst_fast
    nst_fast.stylize("photo.jpg", "painting.jpg", size=512).save("out.png")
"""

from . import _ext  # noqa: F401 — loads the compiled operators, or warns once and falls back
from .callbacks import Iterate
from .errors import ImageError, NstError, OptionsError, WeightsError
from .image import load_image, save_image
from .options import Options
from .stylizer import Stylizer, stylize
from .vgg import LAYER_NAMES, VGG19
from .weights import load_weights

__version__ = "0.1.0"
__all__ = [
    "LAYER_NAMES", "VGG19", "ImageError", "Iterate", "NstError", "Options", "OptionsError", "Stylizer",
    "WeightsError", "load_image", "load_weights", "save_image", "stylize",
]  # fmt: skip
