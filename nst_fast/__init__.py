"""nst-fast: fast, dependable neural style transfer (Gatys, Ecker & Bethge 2015).

    import nst_fast
    nst_fast.stylize("photo.jpg", "painting.jpg", size=512).save("out.png")

Where things are: the options (:mod:`.options`), the plan of a run (:mod:`.plan`), the loss
(:mod:`.losses` for the formulas, :mod:`.objective` for the loss a run minimizes), the network
(:mod:`.vgg`), the backends and their loops (:mod:`.backends`: reference, engine, onnxruntime), the
fused operators (:mod:`.ops`, kernels in csrc/), the API (:mod:`.stylizer`), the command (:mod:`.cli`)
and the benchmarks (:mod:`.bench`).
"""

__version__ = "0.1.0"

from . import _ext  # noqa: E402, F401 — loads the compiled operators, or warns once and falls back
from .callbacks import Iterate  # noqa: E402
from .control import Cancel  # noqa: E402
from .errors import (  # noqa: E402
    Cancelled,
    DivergedError,
    ImageError,
    MemoryFitError,
    NstError,
    OptionsError,
    WeightsError,
)
from .image import load_image, save_image  # noqa: E402
from .options import Options  # noqa: E402
from .plan import Plan  # noqa: E402
from .stylizer import Stylizer, stylize  # noqa: E402
from .vgg import LAYER_NAMES, VGG19  # noqa: E402
from .weights import load_weights  # noqa: E402

__all__ = [
    "LAYER_NAMES",
    "VGG19",
    "Cancel",
    "Cancelled",
    "DivergedError",
    "ImageError",
    "Iterate",
    "MemoryFitError",
    "NstError",
    "Options",
    "OptionsError",
    "Plan",
    "Stylizer",
    "WeightsError",
    "load_image",
    "load_weights",
    "save_image",
    "stylize",
]
