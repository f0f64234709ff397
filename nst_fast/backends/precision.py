"""Precisions: what a requested precision means on a device, decided once per run by the plan."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import OptionsError

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """The precision a run uses on a device, and why it differs from the one asked for, if it does."""

    requested: str
    name: str
    autocast_dtype: torch.dtype | None
    note: str | None = None

    def __str__(self) -> str:
        return self.name + (f"; {self.note}" if self.note else "")


FP32 = Precision("fp32", "fp32", None)


def cpu_supports_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels here (AVX512-BF16 or AMX), where bf16 is fast."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """Map a requested precision onto what ``device`` can run well."""
    if requested not in PRECISIONS:
        raise OptionsError(f"unknown precision {requested!r}; use {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return resolve_precision("bf16" if bf16_ok else "fp16", device)
        if requested == "bf16" and not bf16_ok:
            return Precision(requested, "fp16", torch.float16, "this GPU has no bf16: fp16 with loss scaling")
        dtype = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
        return Precision(requested, requested, dtype)
    if device.type == "cpu":
        fast_bf16 = cpu_supports_bf16()
        if requested == "auto":
            return Precision(requested, "bf16" if fast_bf16 else "fp32", torch.bfloat16 if fast_bf16 else None)
        if requested == "fp16":
            # Measured here: fp16 convolutions on a CPU run ~400× slower than bf16 (no native kernels).
            if fast_bf16:
                return Precision(requested, "bf16", torch.bfloat16, "fp16 has no fast CPU kernels: using bf16")
            return Precision(requested, "fp32", None, "fp16 has no fast CPU kernels: using fp32")
        if requested == "tf32":
            return Precision(requested, "fp32", None, "TF32 is a GPU format: using fp32")
        if requested == "bf16" and not fast_bf16:
            return Precision(requested, "bf16", torch.bfloat16, "this CPU has no native bf16: expect it to be slow")
        return Precision(requested, requested, torch.bfloat16 if requested == "bf16" else None)
    # Other devices: autocast where torch supports it.
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(requested)
    return Precision(requested, requested if requested != "auto" else "fp32", dtype)
