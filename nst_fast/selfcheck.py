"""A self-check of the compiled CUDA operators, once per process and device, before their first use.

No CI machine has a GPU, so the CUDA kernels first run on a user's. Before the extension computes on a
CUDA device, :func:`passed` compares its three operators there with the reference operators (in
float64, which no TF32 setting touches) on two small random shapes that reach what real hardware could
get wrong: several output tiles, mirrored off-diagonal ones and a ragged edge, split-K slices reduced
across blocks, vector and scalar loads, a batched asymmetric target and a broadcast one; in float32,
bfloat16 and float16, contiguous and channels_last (12 cases, 48 outputs; a few milliseconds of small
launches expected). On a mismatch or a CUDA error it warns once, with the numbers, and from then on
``impl="auto"`` computes with the reference operators on that device (``impl="ext"`` raises
:class:`~nst_fast.errors.OptionsError`).

``NST_FAST_SELF_CHECK=0`` skips it. :func:`status` is the line that ``nst-fast info`` shows;
``python benchmarks/gpu.py selfcheck`` runs :func:`check` and prints every case.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass

import torch

ENV = "NST_FAST_SELF_CHECK"
# The device types whose compiled kernels are checked at their first use: CUDA only. The CPU kernels
# run in every test run; checking them again would cost their users time for nothing. (The tests add
# "cpu" to check the mechanism itself.)
DEVICE_TYPES: tuple[str, ...] = ("cuda",)

# B×C×H×W. C = 130: three tile rows, six tiles, a 2-wide ragged edge; H·W = 2145 is odd (scalar loads)
# and spans three split-K slices on any GPU with more than a few SMs; B = 2 with one target per item.
# C = 128, H·W = 2048: the 16-byte vector loads in both layouts, two slices, one broadcast C×C target.
SHAPES = ((2, 130, 33, 65), (1, 128, 32, 64))
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "channels_last")
# Largest absolute error relative to the largest reference value: far above float32 accumulation's
# rounding (about 1e-6 here), far below a lost split-K slice (a third of every sum here) or a wrong tile.
# The gradient is rounded to the features' dtype (bfloat16: 2^-8).
TOLERANCE = 1e-4
TOLERANCE_16BIT_GRAD = 2e-2

_lock = threading.Lock()
_verdicts: dict[str, Verdict] = {}  # per device ("cuda:0"), once per process


@dataclass(frozen=True)
class Case:
    """One output of one operator on one input, against float64."""

    output: str  # gram, loss, diff (the loss's G − A), grad (the backward)
    dtype: str
    layout: str
    shape: tuple[int, ...]
    error: float  # NaN where the output holds a NaN
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance  # False for NaN

    def __str__(self) -> str:
        shape = "×".join(map(str, self.shape))
        return (
            f"{self.output} {self.dtype} {self.layout} {shape}: relative error {self.error:.2g} "
            f"{'≤' if self.ok else '>'} {self.tolerance:g}"
        )


@dataclass(frozen=True)
class Verdict:
    device: str
    ok: bool
    detail: str  # the cases and time; the wrong cases or the error; or why it was skipped
    cases: tuple[Case, ...] = ()
    skipped: bool = False

    def __str__(self) -> str:
        if self.skipped:
            return f"skipped ({self.detail})"
        if self.ok:
            return f"passed on {self.device} ({self.detail})"
        return f"FAILED on {self.device}: {self.detail} — using the reference operators"


def passed(device: torch.device) -> bool:
    """Whether the compiled operators may compute on ``device``. The first call per process and device
    runs :func:`check` (under a lock: once, whichever thread comes first) and warns if it fails; later
    calls read its verdict."""
    verdict = _verdicts.get(_name(device))
    if verdict is None:
        verdict = _first_use(device)
    return verdict is not None and verdict.ok


def refusal(device: torch.device) -> str | None:
    """Why :func:`passed` refuses the compiled operators on ``device``, or None when it does not."""
    verdict = _verdicts.get(_name(device))
    if verdict is None:
        return (
            f"the compiled operators have not been self-checked on {_name(device)} yet, which cannot be "
            "done while a CUDA graph is captured or torch.compile traces: run them once outside first"
        )
    if verdict.ok:
        return None
    return f"the compiled operators failed their self-check on {verdict.device}: {verdict.detail}"


def check(device: torch.device | str) -> Verdict:
    """Compares the compiled operators on ``device`` with the reference operators now, whatever
    NST_FAST_SELF_CHECK says, and keeps nothing."""
    device = torch.device(device)
    name = _name(device)
    start = time.perf_counter()
    try:
        cases = _run_cases(device)
    except Exception as e:  # noqa: BLE001 — a CUDA error (launch, illegal address, no kernel image), or any other
        lines = str(e).strip().splitlines() or [""]
        return Verdict(name, False, f"{type(e).__name__}: {lines[0]}")
    ms = (time.perf_counter() - start) * 1000
    # The worst first: NaN (an element never written), then by error over tolerance.
    wrong = sorted(
        (c for c in cases if not c.ok), key=lambda c: -math.inf if math.isnan(c.error) else -c.error / c.tolerance
    )
    if wrong:
        shown = "; ".join(map(str, wrong[:3])) + ("; …" if len(wrong) > 3 else "")
        return Verdict(name, False, f"{len(wrong)} of {len(cases)} outputs wrong: {shown}", tuple(cases))
    return Verdict(name, True, f"{len(cases)} outputs, {ms:.0f} ms", tuple(cases))


def status(run: bool = True) -> str:
    """The self-check's result as one line (``nst-fast info``): "passed on cuda:0 (48 outputs, 9 ms)",
    "skipped (NST_FAST_SELF_CHECK=0)", "not run (no CUDA kernels in this build)", "FAILED on cuda:0: …
    — using the reference operators". With ``run``, the visible CUDA devices not checked yet are
    checked first."""
    from . import _ext

    if not (_ext.AVAILABLE and _ext.WITH_CUDA):
        return "not run (no CUDA kernels in this build)"
    if _disabled():
        return f"skipped ({ENV}=0)"
    if not torch.cuda.is_available():
        return "not run (no CUDA device)"
    if run:
        for index in range(torch.cuda.device_count()):
            passed(torch.device("cuda", index))
    found = [str(v) for name, v in sorted(_verdicts.items()) if name.startswith("cuda")]
    return "; ".join(found) or "not run yet (it runs at the first use of the CUDA operators)"


def _disabled() -> bool:
    return os.environ.get(ENV, "1").strip() == "0"


def _name(device: torch.device) -> str:
    if device.index is None and device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def _first_use(device: torch.device) -> Verdict | None:
    name = _name(device)
    if _disabled():
        return _verdicts.setdefault(name, Verdict(name, True, f"{ENV}=0", skipped=True))
    if torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        # Nothing may run on the device or wait for it now: the reference serves this call, and the
        # check runs at the next call outside.
        return None
    with _lock:
        verdict = _verdicts.get(name)
        if verdict is None:
            verdict = _verdicts[name] = check(device)
            if not verdict.ok:
                warnings.warn(
                    f"nst_fast: {refusal(device)}; the reference operators compute on {name} for the rest "
                    "of this process. Please report it with the output of `nst-fast info`",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return verdict


def _relative_error(out: torch.Tensor, ref: torch.Tensor, what: str) -> torch.Tensor:
    # Compared explicitly: a wrong shape would broadcast, and a wrong dtype or layout is a bug too.
    if out.shape != ref.shape or out.dtype != ref.dtype:
        raise ValueError(f"{what} returned {out.dtype} {tuple(out.shape)}, expected {ref.dtype} {tuple(ref.shape)}")
    return (out.double() - ref.double()).abs().max() / ref.double().abs().max()


def _run_cases(device: torch.device) -> list[Case]:
    from .ops import accumulation_dtype, gram_ref, style_loss_ref

    nst = torch.ops.nst_fast
    gen = torch.Generator(device=device).manual_seed(0x5E1F)  # the caller's random state stays as it was
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    errors, labels = [], []
    with on_device, torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        one = torch.ones((), device=device)
        for shape in SHAPES:
            b, c, h, w = shape
            scale = 1.0 / (h * w)
            values = torch.rand(shape, generator=gen, device=device) * 2 + 0.05
            targets = torch.rand((b, c, c), generator=gen, device=device)  # asymmetric, as any target may be
            target = targets if b > 1 else targets[0]
            for dtype in DTYPES:
                for layout in LAYOUTS:
                    x = values.to(dtype)
                    if layout == "channels_last":
                        x = x.contiguous(memory_format=torch.channels_last)
                    x64 = x.double().requires_grad_()
                    loss64 = style_loss_ref(x64, target.double(), scale)
                    (grad64,) = torch.autograd.grad(loss64, x64)
                    gram64 = gram_ref(x64.detach(), scale)
                    acc = accumulation_dtype(dtype)
                    gram = nst.gram(x, scale)
                    loss, diff = nst.style_loss(x, target, scale)
                    grad = nst.style_loss_backward(one, x, diff, scale)
                    grad_tolerance = TOLERANCE if dtype == torch.float32 else TOLERANCE_16BIT_GRAD
                    for output, out, ref, tolerance in (
                        ("gram", gram, gram64.to(acc), TOLERANCE),
                        ("loss", loss, loss64.detach().to(acc), TOLERANCE),
                        ("diff", diff, (gram64 - target.double()).to(acc), TOLERANCE),
                        ("grad", grad, grad64.to(dtype), grad_tolerance),
                    ):
                        label = (output, str(dtype).removeprefix("torch."), layout, shape, tolerance)
                        errors.append(_relative_error(out, ref, " ".join(map(str, label[:4]))))
                        labels.append(label)
        measured = torch.stack(errors).tolist()  # the one wait for the device
    return [
        Case(output, dtype, layout, shape, error, tolerance)
        for (output, dtype, layout, shape, tolerance), error in zip(labels, measured)
    ]
