"""Winograd F(6×6, 3×3) (NNPACK) against oneDNN's direct convolutions, per VGG-19 layer, in float32 on a
CPU: the measurement behind nst_fast.conv's rule (benchmarks/NOTES.md §15).

For each convolution up to conv5_1 at each image size, forward and input gradient as an engine
iteration runs them (medians of 7 after one warm-up): ``direct`` (NCHW), ``direct_cl`` (channels_last,
what the engine runs), ``winograd`` (nst_fast.conv, the input gradient as the convolution of the output
gradient with the flipped, transposed weights); the relative error of each against float64; and, in a
fresh process per layer, the workspace NNPACK allocates at the layer's first call (its resident-set
growth less the output's size).

    python benchmarks/winograd_fp32.py --sizes 128,256,512,1024 --out benchmarks/results/cpu-epyc-avx2-2core-winograd-fp32.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nst_fast import conv
from nst_fast.bench.machine import device_details, machine_info
from nst_fast.vgg import network

ROUNDS = 7


def median_ms(fn) -> float:
    fn()
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def layer_tensors(layer, height: int, width: int):
    g = torch.Generator().manual_seed(layer.index)
    module = nn.Conv2d(layer.in_channels, layer.channels, 3, padding=1).requires_grad_(False)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (2 / (9 * layer.in_channels)) ** 0.5)
    h, w = layer.output_size(height, width)
    x = torch.rand(1, layer.in_channels, h, w, generator=g)
    up = torch.randn(1, layer.channels, h, w, generator=g)
    return module, x, up


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def measure(layer, height: int, width: int) -> dict:
    module, x, up = layer_tensors(layer, height, width)
    cl = nn.Conv2d(layer.in_channels, layer.channels, 3, padding=1).requires_grad_(False)
    cl.load_state_dict(module.state_dict())
    cl = cl.to(memory_format=torch.channels_last)

    def timed(fn, x):
        x = x.detach().requires_grad_()

        def step():
            torch.autograd.grad(fn(x), x, up)

        return median_ms(step), fn(x), torch.autograd.grad((fn(x) * up).sum(), x)[0]

    t_direct, y_direct, g_direct = timed(lambda x: conv.direct_conv(x, module), x)
    xcl = x.contiguous(memory_format=torch.channels_last)
    t_cl, _, _ = timed(lambda x: conv.direct_conv(x, cl), xcl)
    t_wino, y_wino, g_wino = timed(lambda x: conv.winograd_conv(x, module), x)
    x64 = x.double().requires_grad_()
    y64 = F.conv2d(x64, module.weight.double(), module.bias.double(), padding=1)
    (g64,) = torch.autograd.grad((y64 * up.double()).sum(), x64)
    h, w = layer.output_size(height, width)
    return {
        "layer": layer.name,
        "in_channels": layer.in_channels,
        "out_channels": layer.channels,
        "positions": [h, w],
        "ms": {"direct": round(t_direct, 2), "direct_cl": round(t_cl, 2), "winograd": round(t_wino, 2)},
        "speedup_vs_best_direct": round(min(t_direct, t_cl) / t_wino, 3),
        "relative_error": {
            "direct": relative(y_direct, y64.detach()),
            "winograd": relative(y_wino, y64.detach()),
            "winograd_input_gradient": relative(g_wino, g64),
            "direct_input_gradient": relative(g_direct, g64),
        },
    }


WORKSPACE_PROBE = r"""
import sys, torch
from nst_fast import conv
from nst_fast.vgg import LAYER
from benchmarks.winograd_fp32 import layer_tensors
def rss():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024
layer, h, w = LAYER[sys.argv[1]], int(sys.argv[2]), int(sys.argv[3])
module, x, up = layer_tensors(layer, h, w)
conv.winograd_conv(torch.zeros(1, layer.in_channels, 8, 8), module)  # initialized, on a small call
before = rss()
y = conv.winograd_conv(x, module)
print(rss() - before - y.numel() * 4)
"""


def workspace(layer, height: int, width: int) -> int:
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", WORKSPACE_PROBE, layer.name, str(height), str(width)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128,256,512,1024", help="longest sides; images are 4:3 landscape")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not conv.available():
        sys.exit("NNPACK is not available here")
    rule = f"nst_fast.conv.winograd_layers: from conv2_1 on, positions × min(in, out channels) >= {conv.MIN_WORK}"
    record = {"machine": machine_info(), "device": device_details("cpu"), "rounds": ROUNDS, "rule": rule, "sizes": {}}
    for size in (int(s) for s in args.sizes.split(",")):
        height, width = size * 3 // 4, size
        rows = []
        for layer in network("conv5_1"):
            if layer.kind != "conv":
                continue
            row = measure(layer, height, width)
            row["workspace_bytes"] = workspace(layer, height, width)
            input_bytes = layer.in_channels * row["positions"][0] * row["positions"][1] * 4
            row["workspace_per_input_byte"] = round(row["workspace_bytes"] / input_bytes, 2)
            rows.append(row)
            ms = row["ms"]
            print(
                f"{size:5d} {layer.name:8s} direct {ms['direct']:8.1f} cl {ms['direct_cl']:8.1f} "
                f"winograd {ms['winograd']:8.1f} ms  x{row['speedup_vs_best_direct']:.2f}  "
                f"err {row['relative_error']['winograd']:.1e}  workspace {row['workspace_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )
        best_direct = sum(min(r["ms"]["direct"], r["ms"]["direct_cl"]) for r in rows)
        chosen = conv.winograd_layers(("relu5_1",), height, width)
        with_rule = sum(r["ms"]["winograd"] if r["layer"] in chosen else r["ms"]["direct_cl"] for r in rows)
        engine_now = sum(r["ms"]["direct_cl"] for r in rows)
        record["sizes"][str(size)] = {
            "image": [height, width],
            "layers": rows,
            "all_convolutions_ms": {
                "direct_cl": round(engine_now, 1),
                "best_direct": round(best_direct, 1),
                "with_the_rule": round(with_rule, 1),
            },
            "rule_layers": sorted(chosen),
        }
        print(
            f"{size:5d} all: direct_cl {engine_now:.0f} ms, with the rule {with_rule:.0f} ms "
            f"(x{engine_now / with_rule:.2f})",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
