"""Loads the compiled extension ``nst_fast._C`` once; the package works without it."""

from __future__ import annotations

import warnings

import torch  # noqa: F401 — loads libtorch, which _C links against

try:
    from . import _C  # registers the nst_fast:: operators with PyTorch
except ImportError as e:  # not built, or built against another torch
    _C = None
    IMPORT_ERROR: str | None = " ".join(str(e).split())
    warnings.warn(
        f"nst_fast._C is not available ({IMPORT_ERROR}); using the pure-PyTorch implementation. "
        "Rebuild with: pip install --no-build-isolation -e .",
        RuntimeWarning,
        stacklevel=2,
    )
else:
    IMPORT_ERROR = None

AVAILABLE: bool = _C is not None
# CUDA builds register CUDA kernels for the operators: the dispatcher knows.
WITH_CUDA: bool = AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key("nst_fast::gram", "CUDA")
