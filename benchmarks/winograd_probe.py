"""Would Winograd convolutions make a CPU iteration cheaper? (benchmarks/NOTES.md §13c)

An engine iteration in bf16 already runs VGG-19's 3×3 convolutions at this CPU's matrix-product rate
(§14), so the one way left to a cheaper iteration is fewer multiplications: Winograd's F(2×2, 3×3)
needs 2.25× fewer and F(4×4, 3×3) 4× fewer, paid for with transforms of the input and output (memory
traffic) and with rounding error, since bf16 rounds the transformed tiles. This measures, per VGG
convolution at a 256 px image (forward and input gradient, as an iteration runs them):

- ``direct``: the engine's convolution (autocast bf16, channels_last);
- ``gemm_f23`` / ``gemm_f43``: the batched matrix products alone of F(2,3) / F(4,3) — the bound no
  transform code can beat;
- ``proto_f23``: a whole F(2,3) convolution, prototype C++ transforms (vectorizable loops, no
  intrinsics) around torch.bmm, checked against float64 before it is timed;

and the relative error of each form in bf16 against a float64 convolution. ``end-to-end`` runs the
default command's work (512 px, default options) with and without the prototype in the layers where
it wins (conv4_2–conv5_1), and judges each output by the float32 reference loss. Nothing here is part
of the library.

    python benchmarks/winograd_probe.py                            # per layer; writes the results file
    python benchmarks/winograd_probe.py end-to-end --workload sample   # adds a with/without pair to it
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.cpp_extension import load_inline

from nst_fast.bench.machine import machine_info
from nst_fast.vgg import network

OUT = Path(__file__).parent / "results" / "cpu-epyc-2core-winograd.json"
SIDE = 256  # a square image's side: the layers' sizes below
# (in channels, out channels, side) of VGG-19's convolutions up to conv5_1, from the network's own table.
LAYERS = {
    layer.name: (layer.in_channels, layer.channels, layer.output_size(SIDE, SIDE)[0])
    for layer in network("conv5_1")
    if layer.kind == "conv"
}

# Lavin & Gray (2016): Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A, a correlation, as torch's conv2d.
BT2 = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
G2 = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
AT2 = [[1, 1, 1, 0], [0, 1, -1, -1]]
BT4 = [
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
]
G4 = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]
AT4 = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]

# F(2,3) in NHWC: per 4×4 input tile (stride 2, zero padding 1) Bᵀ d B into V[16, tiles, C];
# per tile of M = V @ U [16, tiles, K], Aᵀ m A + bias into a 2×2 output block.
PROTOTYPE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <vector>
template <typename T>
static void input_transform(const T* x, T* v, int64_t N, int64_t H, int64_t W, int64_t C) {
  const int64_t th = (H + 1) / 2, tw = (W + 1) / 2, P = N * th * tw;
  std::vector<T> zeros(C, T(0));
  at::parallel_for(0, P, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(32 * C);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (th * tw), i = p % (th * tw) / tw, j = p % tw;
      float* d = buf.data(); float* t = d + 16 * C;
      for (int a = 0; a < 4; ++a) for (int b = 0; b < 4; ++b) {
        const int64_t y = 2 * i - 1 + a, z = 2 * j - 1 + b;
        const T* __restrict__ s = (y >= 0 && y < H && z >= 0 && z < W) ? x + ((n * H + y) * W + z) * C : zeros.data();
        float* __restrict__ dk = d + (a * 4 + b) * C;
        for (int64_t c = 0; c < C; ++c) dk[c] = static_cast<float>(s[c]);
      }
      for (int b = 0; b < 4; ++b) {
        const float* __restrict__ d0 = d + b * C; const float* __restrict__ d1 = d + (4 + b) * C;
        const float* __restrict__ d2 = d + (8 + b) * C; const float* __restrict__ d3 = d + (12 + b) * C;
        float* __restrict__ t0 = t + b * C; float* __restrict__ t1 = t + (4 + b) * C;
        float* __restrict__ t2 = t + (8 + b) * C; float* __restrict__ t3 = t + (12 + b) * C;
        for (int64_t c = 0; c < C; ++c) {
          t0[c] = d0[c] - d2[c]; t1[c] = d1[c] + d2[c]; t2[c] = d2[c] - d1[c]; t3[c] = d1[c] - d3[c];
        }
      }
      for (int a = 0; a < 4; ++a) {
        const float* __restrict__ t0 = t + (a * 4) * C; const float* __restrict__ t1 = t + (a * 4 + 1) * C;
        const float* __restrict__ t2 = t + (a * 4 + 2) * C; const float* __restrict__ t3 = t + (a * 4 + 3) * C;
        T* __restrict__ o0 = v + ((a * 4) * P + p) * C; T* __restrict__ o1 = v + ((a * 4 + 1) * P + p) * C;
        T* __restrict__ o2 = v + ((a * 4 + 2) * P + p) * C; T* __restrict__ o3 = v + ((a * 4 + 3) * P + p) * C;
        for (int64_t c = 0; c < C; ++c) {
          o0[c] = T(t0[c] - t2[c]); o1[c] = T(t1[c] + t2[c]); o2[c] = T(t2[c] - t1[c]); o3[c] = T(t1[c] - t3[c]);
        }
      }
    }
  });
}
template <typename T>
static void output_transform(const T* m, const float* bias, T* y, int64_t N, int64_t H, int64_t W, int64_t K) {
  const int64_t th = (H + 1) / 2, tw = (W + 1) / 2, P = N * th * tw;
  at::parallel_for(0, P, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(28 * K);
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / (th * tw), i = p % (th * tw) / tw, j = p % tw;
      float* d = buf.data(); float* t = d + 16 * K; float* out = t + 8 * K;
      for (int k = 0; k < 16; ++k) {
        const T* __restrict__ s = m + (k * P + p) * K; float* __restrict__ dk = d + k * K;
        for (int64_t c = 0; c < K; ++c) dk[c] = static_cast<float>(s[c]);
      }
      for (int b = 0; b < 4; ++b) {
        const float* __restrict__ d0 = d + b * K; const float* __restrict__ d1 = d + (4 + b) * K;
        const float* __restrict__ d2 = d + (8 + b) * K; const float* __restrict__ d3 = d + (12 + b) * K;
        float* __restrict__ t0 = t + b * K; float* __restrict__ t1 = t + (4 + b) * K;
        for (int64_t c = 0; c < K; ++c) { t0[c] = d0[c] + d1[c] + d2[c]; t1[c] = d1[c] - d2[c] - d3[c]; }
      }
      for (int a = 0; a < 2; ++a) {
        const float* __restrict__ t0 = t + (a * 4) * K; const float* __restrict__ t1 = t + (a * 4 + 1) * K;
        const float* __restrict__ t2 = t + (a * 4 + 2) * K; const float* __restrict__ t3 = t + (a * 4 + 3) * K;
        float* __restrict__ y0 = out + (a * 2) * K; float* __restrict__ y1 = out + (a * 2 + 1) * K;
        for (int64_t c = 0; c < K; ++c) {
          const float b = bias ? bias[c] : 0.f;
          y0[c] = t0[c] + t1[c] + t2[c] + b; y1[c] = t1[c] - t2[c] - t3[c] + b;
        }
      }
      for (int a = 0; a < 2; ++a) for (int b = 0; b < 2; ++b) {
        const int64_t yy = 2 * i + a, z = 2 * j + b;
        if (yy >= H || z >= W) continue;
        T* __restrict__ dst = y + ((n * H + yy) * W + z) * K; const float* __restrict__ src = out + (a * 2 + b) * K;
        for (int64_t c = 0; c < K; ++c) dst[c] = T(src[c]);
      }
    }
  });
}
// x: N×C×H×W in channels_last memory; u: the transformed weights, 16×C×K.
torch::Tensor winograd_f23(torch::Tensor x, torch::Tensor u, c10::optional<torch::Tensor> bias) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = u.size(2);
  auto xn = x.permute({0, 2, 3, 1}).contiguous();
  auto v = torch::empty({16, N * ((H + 1) / 2) * ((W + 1) / 2), C}, x.options());
  // N×K×H×W in channels_last memory (N, H, W, K in order), not a permuted view: autograd forbids
  // in-place changes (VGG's ReLU) to a view made inside a custom Function.
  auto y = torch::empty({N, K, H, W}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  torch::Tensor b32;
  if (bias) b32 = bias->to(torch::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "winograd_f23", [&] {
    input_transform<scalar_t>(xn.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), N, H, W, C);
    auto m = torch::bmm(v, u);
    output_transform<scalar_t>(m.data_ptr<scalar_t>(), bias ? b32.data_ptr<float>() : nullptr,
                               y.data_ptr<scalar_t>(), N, H, W, K);
  });
  return y;
}
"""


def weight_transform(weight: torch.Tensor, g) -> torch.Tensor:
    """K×C×3×3 → (a·a)×C×K, U = G g Gᵀ per (k, c), in float64."""
    g = torch.tensor(g, dtype=torch.float64)
    a = g.shape[0]
    return torch.einsum("ai,kcij,bj->abck", g, weight.double(), g).reshape(a * a, weight.shape[1], weight.shape[0])


def winograd_reference(x, weight, bt, g, at, rounding) -> torch.Tensor:
    """Winograd F(m, 3) in float64 by einsum, with ``rounding`` applied to V and U (bf16 or none)."""
    bt, at = torch.tensor(bt, dtype=torch.float64), torch.tensor(at, dtype=torch.float64)
    a, m = bt.shape[0], at.shape[0]
    n, c, h, w = x.shape
    tiles = F.pad(x, (1, a, 1, a)).unfold(2, a, m).unfold(3, a, m)[:, :, : -(-h // m), : -(-w // m)]
    v = torch.einsum("ai,ncxyij,bj->abnxyc", bt, tiles, bt).reshape(a * a, -1, c)
    out = torch.bmm(rounding(v), rounding(weight_transform(weight, g)))
    th, tw = tiles.shape[2], tiles.shape[3]
    y = torch.einsum("ia,abnxyk,jb->nkxiyj", at, out.reshape(a, a, n, th, tw, -1), at)
    return y.reshape(n, -1, th * m, tw * m)[:, :, :h, :w]


class WinogradF23(torch.autograd.Function):
    """The prototype as an autograd function: ∂/∂x of a 3×3 convolution (padding 1) is the convolution
    of the output gradient with the flipped, transposed kernel, so the backward is the same operator."""

    @staticmethod
    def forward(ctx, x, u, u_backward, bias, ext):
        ctx.save_for_backward(u_backward)
        ctx.ext = ext
        return ext.winograd_f23(x.contiguous(memory_format=torch.channels_last), u, bias)

    @staticmethod
    def backward(ctx, grad):
        (u_backward,) = ctx.saved_tensors
        return ctx.ext.winograd_f23(grad.contiguous(memory_format=torch.channels_last), u_backward, None), *[None] * 4


def median_ms(fn, rounds: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def forward_and_input_gradient(conv):
    def run(x):
        def once():
            xi = x.detach().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = conv(xi)
            torch.autograd.grad(y, xi, y)

        return once

    return run


class PrototypeConv(torch.nn.Module):
    """A VGG convolution that runs the F(2,3) prototype under bf16 autocast (the engine's loop) and
    itself otherwise (the content targets, in float32)."""

    def __init__(self, conv: torch.nn.Conv2d, ext):
        super().__init__()
        self.conv, self.ext = conv, ext
        weight = conv.weight.detach()
        self.u = weight_transform(weight, G2).bfloat16()
        self.u_backward = weight_transform(weight.flip(2, 3).transpose(0, 1), G2).bfloat16()
        self.bias = conv.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled("cpu"):
            return self.conv(x)
        with torch.autocast("cpu", enabled=False):
            return WinogradF23.apply(x.bfloat16(), self.u, self.u_backward, self.bias, self.ext)


def end_to_end(ext, workload: str, out: Path) -> None:
    """The default command's optimization, without and with the prototype in conv4_2–conv5_1."""
    sys.path.insert(0, str(Path(__file__).parent))
    import schedule as sch

    from nst_fast import Options, Stylizer

    content, style = sch.workload_images(workload)
    records = []
    for form in ("direct", "winograd"):
        stylizer = Stylizer(style, Options(size=512, device="cpu"))
        if form == "winograd":
            for name in ("conv4_2", "conv4_3", "conv4_4", "conv5_1"):
                stylizer.model.body[name] = PrototypeConv(stylizer.model.body[name], ext)
        ticks = [time.perf_counter()]
        start = ticks[0]
        output = stylizer.stylize_tensor(content, lambda it: ticks.append(time.perf_counter()))
        seconds = time.perf_counter() - start
        iterations = [b - a for a, b in zip(ticks, ticks[1:])]
        records.append(
            {
                "workload": workload,
                "form": form,
                "seconds": round(seconds, 2),
                "median_iteration_s": round(statistics.median(iterations), 4),
                "iterations": len(iterations),
                "output_loss": sch.Judge(content, style, 512)(output),
                "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
        print(records[-1], flush=True)
    data = json.loads(out.read_text())
    data.setdefault("end_to_end", []).extend(records)
    out.write_text(json.dumps(data, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="layers", choices=("layers", "end-to-end"))
    parser.add_argument("--workload", default="sample")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as build:
        ext = load_inline(
            "winograd_probe", cpp_sources=PROTOTYPE, functions=["winograd_f23"], extra_cflags=["-O3"],
            build_directory=build,
        )  # fmt: skip
    if args.what == "end-to-end":
        end_to_end(ext, args.workload, args.out)
        return

    # The prototype is a correct convolution (odd sizes, with bias) before any timing: float64 data,
    # to its float32 arithmetic.
    for c, k, h, w in [(3, 5, 7, 9), (16, 8, 6, 5), (64, 64, 33, 20)]:
        conv = torch.nn.Conv2d(c, k, 3, padding=1).double()
        x = torch.randn(2, c, h, w, dtype=torch.float64, requires_grad=True)
        flipped = conv.weight.flip(2, 3).transpose(0, 1)
        y = WinogradF23.apply(x, weight_transform(conv.weight, G2), weight_transform(flipped, G2), conv.bias, ext)
        ref = conv(x)
        grad = torch.randn_like(ref)
        error = max(
            (y - ref).abs().max().item(),
            (torch.autograd.grad(y, x, grad)[0] - torch.autograd.grad(ref, x, grad)[0]).abs().max().item(),
        )
        assert error < 1e-5, f"the prototype is wrong at {(c, k, h, w)}: {error}"

    rows = []
    for name, (c, k, side) in LAYERS.items():
        conv = torch.nn.Conv2d(c, k, 3, padding=1)
        x = torch.randn(1, c, side, side).contiguous(memory_format=torch.channels_last)
        row = {"layer": name, "in": c, "out": k, "side": side}
        row["direct_ms"] = median_ms(forward_and_input_gradient(conv)(x), args.rounds)
        for form, tile in (("gemm_f23", 4), ("gemm_f43", 6)):
            tiles = (-(-side // (tile - 2))) ** 2
            v = torch.randn(tile * tile, tiles, c).bfloat16()
            u = torch.randn(tile * tile, c, k).bfloat16()
            ut = torch.randn(tile * tile, k, c).bfloat16()
            g = torch.randn(tile * tile, tiles, k).bfloat16()
            row[f"{form}_ms"] = median_ms(lambda: (torch.bmm(v, u), torch.bmm(g, ut)), args.rounds)
        row["proto_f23_ms"] = median_ms(forward_and_input_gradient(PrototypeConv(conv, ext))(x), args.rounds)
        rows.append(row)
        print({key: round(val, 2) if isinstance(val, float) else val for key, val in row.items()}, flush=True)

    # Rounding: bf16 direct against bf16 Winograd, relative to a float64 convolution.
    def bf16(t):
        return t.to(torch.bfloat16).double()

    accuracy = []
    for c, side, kind in [
        (64, 32, "gaussian"),
        (256, 16, "gaussian"),
        (256, 16, "relu, smoothed"),
        (512, 16, "relu, smoothed"),
    ]:
        x = torch.randn(1, c, side, side, dtype=torch.float64)
        if kind != "gaussian":  # non-negative and spatially correlated, as VGG's activations are
            x = F.relu(F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1))
        weight = torch.randn(c, c, 3, 3, dtype=torch.float64) / (3 * c**0.5)
        ref = F.conv2d(x, weight, padding=1)

        def rel(y):
            return ((y - ref).norm() / ref.norm()).item()

        accuracy.append(
            {
                "channels": c,
                "side": side,
                "input": kind,
                "direct_bf16": rel(F.conv2d(bf16(x), bf16(weight), padding=1)),
                "f23_bf16": rel(winograd_reference(x, weight, BT2, G2, AT2, bf16)),
                "f43_bf16": rel(winograd_reference(x, weight, BT4, G4, AT4, bf16)),
                "f43_float64": rel(winograd_reference(x, weight, BT4, G4, AT4, lambda t: t)),
            }
        )
        print(accuracy[-1], flush=True)

    total = {key: sum(r[key] for r in rows) for key in ("direct_ms", "gemm_f23_ms", "gemm_f43_ms", "proto_f23_ms")}
    # The best an iteration could do: every convolution with ≥ 128 channels at its matrix-product bound.
    best = sum(min(r["direct_ms"], r["gemm_f23_ms"]) for r in rows)
    best43 = sum(min(r["direct_ms"], r["gemm_f43_ms"]) for r in rows)
    summary = {"total_ms": total, "bound_f23_ms": best, "bound_f43_ms": best43}
    print(summary)
    record = {
        "machine": machine_info(),
        "rounds": args.rounds,
        "layers": rows,
        "accuracy": accuracy,
        "summary": summary,
    }
    record["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if args.out.exists():  # keep the end-to-end pairs measured before
        record["end_to_end"] = json.loads(args.out.read_text()).get("end_to_end", [])
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
