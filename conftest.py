"""Shared by tests/ and benchmarks/: where the project's test images are.

NST_FAST_IMAGES names the folder (the photos and paintings in ../shared/images beside the checkout,
by default); the benchmarks' default images (nst_fast.bench.default_images) read the same variable.
"""

import os
from pathlib import Path

os.environ.setdefault("NST_FAST_IMAGES", str(Path(__file__).resolve().parent.parent / "shared" / "images"))
