"""Helpers of the benchmark suites: smoke mode, sizes, devices, machine facts for every result."""

from __future__ import annotations

import os

import torch

from nst_fast.bench import default_images, machine_info, synchronize  # noqa: F401 — re-exported

# NST_FAST_BENCH_SMOKE=1 (CI): one round at the smallest size, so that the suites never rot.
SMOKE = os.environ.get("NST_FAST_BENCH_SMOKE", "0") == "1"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def sizes(default: str, smoke: str) -> list[int]:
    """Image sizes: NST_FAST_BENCH_SIZES if set, else ``default`` (``smoke`` in smoke mode)."""
    text = os.environ.get("NST_FAST_BENCH_SIZES") or (smoke if SMOKE else default)
    return [int(s) for s in text.split(",")]


def rounds(full: int) -> int:
    return 1 if SMOKE else full
