"""The Python parts of benchmarks/gpu_check.sh and benchmarks/gpu_bench.sh, one subcommand each:

    python benchmarks/gpu.py selfcheck           the compiled operators' self-check, every case printed
    python benchmarks/gpu.py sanitize            the workload that compute-sanitizer watches
    python benchmarks/gpu.py kernels --out F     the operators' kernels timed per dtype and layout at the
                                                 style-layer shapes, and a split-K sweep (NOTES.md §10)
    python benchmarks/gpu.py profile             one launch of each kernel, for ncu's counters
    python benchmarks/gpu.py quality --out F     time-to-quality for the backends named

Each takes --device (default cuda); with --device cpu (and small sizes) they run on the CPU kernels,
which is how CI dry-runs the GPU scripts, so that a lent GPU is never spent on a typo.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

from nst_fast import bench, ops, selfcheck

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LAYOUTS = ("NCHW", "NHWC")
# VGG-19's style layers: name, channels, and the map's side as a fraction of the image's.
LAYERS = [("relu1_1", 64, 1), ("relu2_1", 128, 2), ("relu3_1", 256, 4), ("relu4_1", 512, 8), ("relu5_1", 512, 16)]


def features(shape, dtype, layout, device, misaligned=False, on_host=False):
    """Random features in ``layout``; on_host: made on the host and copied over, so that initcheck sees
    every byte written (else made on the device: a 2048 px relu1_1 map is 1 GiB); misaligned: in a view
    one element into its allocation (the kernels' scalar loads)."""
    gen = torch.Generator(device="cpu" if on_host else device).manual_seed(0)
    x = torch.rand(shape, generator=gen, device=gen.device).mul_(2).add_(0.05).to(dtype)
    if layout == "NHWC":
        x = x.contiguous(memory_format=torch.channels_last)
    if not misaligned:
        return x.to(device)
    storage = torch.empty(x.numel() + 1, dtype=dtype, device=device)
    view = storage[1:].as_strided(x.shape, x.stride())
    view.copy_(x)
    return view


def self_check(args) -> int:
    """nst_fast.selfcheck.check, run ROUNDS times (the first includes one-time set-up such as cuBLAS's;
    the later ones show the check's own cost), every case printed the first time."""
    from nst_fast import _ext

    if not _ext.AVAILABLE or (args.device.startswith("cuda") and not _ext.WITH_CUDA):
        print(f"self-check: no compiled operators for {args.device} ({_ext.IMPORT_ERROR or 'built without CUDA'})")
        return 1
    for run in range(1, args.rounds + 1):
        verdict = selfcheck.check(args.device)
        if run == 1:
            for case in verdict.cases:
                print(f"  {'ok  ' if case.ok else 'FAIL'} {case}")
        print(f"self-check run {run}: {verdict}", flush=True)
    return 0 if verdict.ok else 1


def sanitize(args) -> int:
    """Every kernel on shapes that reach split-K (H·W = 4097: five slices on an H200, the last shorter)
    and several tiles (C = 130: six, with mirrored off-diagonal ones and a ragged edge), bf16 and fp32
    in both layouts, fp16 in one, and misaligned views (scalar loads up to the last element)."""
    cases = [((2, 130, 1, 4097), d, layout, False) for d in ("bf16", "fp32") for layout in LAYOUTS]
    cases += [((2, 130, 1, 4097), "fp16", "NHWC", False), ((2, 130, 1, 4097), "bf16", "NCHW", True)]
    cases += [((3, 3, 1, 37), "fp32", "NHWC", True), ((1, 64, 33, 33), "fp16", "NCHW", True)]
    nst = torch.ops.nst_fast
    one = torch.ones((), device=args.device)
    finite = True
    for shape, dtype, layout, misaligned in cases:
        x = features(shape, DTYPES[dtype], layout, args.device, misaligned, on_host=True)
        b, c = shape[:2]
        target = torch.rand(b, c, c, generator=torch.Generator().manual_seed(1)).to(args.device)  # one per item
        scale = 1.0 / (shape[2] * shape[3])
        gram = nst.gram(x, scale)
        loss, diff = nst.style_loss(x, target, scale)
        grad = nst.style_loss_backward(one, x, diff, scale)
        finite &= bool(gram.isfinite().all() and loss.isfinite() and grad.isfinite().all())
    bench.synchronize(torch.device(args.device))
    print(f"sanitize: {len(cases)} cases × 3 operators on {args.device}: {'ok' if finite else 'NON-FINITE OUTPUT'}")
    return 0 if finite else 1


def profile(args) -> int:
    """One launch per kernel (ncu profiles each): the loss and the backward at relu3_1 of a SIZE px image
    (C = 256, (SIZE/4)²) per dtype and layout, and the Gram at relu1_1 (C = 64, SIZE²; at 1024 px about
    780 split-K slices on an H200)."""
    nst = torch.ops.nst_fast
    one = torch.ones((), device=args.device)
    side = args.size // 4
    for torch_dtype in DTYPES.values():
        for layout in LAYOUTS:
            x = features((1, 256, side, side), torch_dtype, layout, args.device)
            _, diff = nst.style_loss(x, torch.rand(256, 256, device=args.device), 1 / side**2)
            nst.style_loss_backward(one, x, diff, 1 / side**2)
    for layout in LAYOUTS:
        nst.gram(features((1, 64, args.size, args.size), torch.bfloat16, layout, args.device), 1 / args.size**2)
    bench.synchronize(torch.device(args.device))
    print(f"profile: {len(DTYPES) * len(LAYOUTS) * 2 + len(LAYOUTS)} kernel launches on {args.device}")
    return 0


def milliseconds(fn, device: torch.device, rounds: int) -> float:
    """Median over ``rounds`` calls after a warm-up call: CUDA events on a GPU, the host clock on a CPU."""
    fn()
    times = []
    for _ in range(rounds):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def time_operators(x: torch.Tensor, target: torch.Tensor, rounds: int) -> dict[str, float]:
    """Milliseconds of each operator on ``x`` (and of the eager reference Gram, for scale)."""
    nst = torch.ops.nst_fast
    scale = 1.0 / (x.shape[2] * x.shape[3])
    one = torch.ones((), device=x.device)
    _, diff = nst.style_loss(x, target, scale)
    return {
        "gram_ms": milliseconds(lambda: nst.gram(x, scale), x.device, rounds),
        "style_loss_ms": milliseconds(lambda: nst.style_loss(x, target, scale), x.device, rounds),
        "backward_ms": milliseconds(lambda: nst.style_loss_backward(one, x, diff, scale), x.device, rounds),
        "ref_gram_ms": milliseconds(lambda: ops.gram_ref(x, scale), x.device, rounds),
    }


def kernels(args) -> int:
    """The three operators per style layer of a SIZE px image (square maps, batch 1), dtype and layout,
    with the eager reference Gram for scale; then the Gram at C = 64 on maps of growing H·W, whose split
    count grows until it meets the GPU's block count (over-splitting shows as a higher time per position
    below that point). Effective bandwidth: the features' bytes read once; TFLOP/s: 2·C²·H·W (a full
    product's count, although the kernels skip the lower triangle)."""
    device = torch.device(args.device)
    rows, sweep = [], []
    print(
        f"{'layer':8} {'C':>4} {'side':>5} dtype layout {'gram':>8} {'loss':>8} {'backward':>8} {'ref gram':>8}  GB/s"
    )
    for layer, c, div in LAYERS:
        side = args.size // div
        target = torch.rand(c, c, device=device)
        for dtype, torch_dtype in DTYPES.items():
            for layout in LAYOUTS:
                x = features((1, c, side, side), torch_dtype, layout, device)
                t = time_operators(x, target, args.rounds)
                row = {"layer": layer, "channels": c, "side": side, "dtype": dtype, "layout": layout, **t}
                row["gram_gb_per_s"] = x.numel() * x.element_size() / t["gram_ms"] / 1e6
                row["gram_tflop_per_s"] = 2 * c * c * side**2 / t["gram_ms"] / 1e9
                rows.append(row)
                print(
                    f"{layer:8} {c:4d} {side:5d} {dtype:5} {layout:6} {t['gram_ms']:8.3f} {t['style_loss_ms']:8.3f} "
                    f"{t['backward_ms']:8.3f} {t['ref_gram_ms']:8.3f}  {row['gram_gb_per_s']:.0f}",
                    flush=True,
                )
    print("split-K sweep, C = 64: Gram ms and µs per million positions")
    nst = torch.ops.nst_fast
    for side in (args.size // 8, args.size // 4, args.size // 2, args.size):
        for dtype in ("bf16", "fp16"):
            for layout in LAYOUTS:
                x = features((1, 64, side, side), DTYPES[dtype], layout, device)
                ms = milliseconds(partial(nst.gram, x, 1.0 / side**2), device, args.rounds)
                sweep.append({"hw": side**2, "dtype": dtype, "layout": layout, "gram_ms": ms})
                print(f"  H·W = {side}² {dtype} {layout}: {ms:.3f} ms, {ms * 1e3 / (side**2 / 1e6):.1f} µs/Mpos")
    facts = {"machine": bench.machine_info(), "self_check": selfcheck.status(), "size": args.size, "ops": rows}
    facts["split_sweep"] = sweep
    Path(args.out).write_text(json.dumps(facts, indent=1) + "\n")
    return 0


def quality(args) -> int:
    """bench.time_to_quality for the backends named, recorded as benchmarks/test_quality.py records it
    (a pytest-benchmark file, which benchmarks/report.py reads)."""
    start = time.perf_counter()
    results = bench.time_to_quality(args.size, args.steps, args.device, args.backends.split(","))
    extra = {**bench.machine_info(), "size": args.size, "steps": args.steps, "results": [vars(r) for r in results]}
    record = {"name": "test_time_to_quality", "extra_info": extra, "stats": {"median": time.perf_counter() - start}}
    Path(args.out).write_text(json.dumps({"benchmarks": [record]}, indent=1) + "\n")
    for r in results:
        reached = "not reached" if r.seconds_to_target is None else f"{r.seconds_to_target:.1f} s"
        print(f"{r.backend:12} {r.precision:5} target {reached:>12}  loss after {r.steps}: {r.loss_at_steps:.4g}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (("selfcheck", self_check), ("sanitize", sanitize), ("profile", profile), ("kernels", kernels))
    for name, fn in commands + (("quality", quality),):
        p = sub.add_parser(name, help=fn.__doc__.split("\n")[0])
        p.set_defaults(fn=fn)
        p.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run (default: %(default)s)")
        if name in ("kernels", "profile"):
            size = 2048 if name == "kernels" else 1024
            p.add_argument("--size", type=int, default=size, help="image size (px) whose style layers run")
        if name in ("kernels", "selfcheck"):
            rounds = 5 if name == "kernels" else 2
            p.add_argument("--rounds", type=int, default=rounds, help="timed calls per measurement, or runs")
        if name == "quality":
            p.add_argument("--size", type=int, default=512)
            p.add_argument("--steps", type=int, default=300)
            p.add_argument("--backends", default="torch", help="besides the reference (default: %(default)s)")
        if name in ("kernels", "quality"):
            p.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"{args.command}: no CUDA device here (use --device cpu for a dry run)", file=sys.stderr)
        return 1
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
