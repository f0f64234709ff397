"""The nst_fast:: operators: the extension against the reference and float64, registration, fallback,
and the self-check of the compiled operators (nst_fast.selfcheck)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from nst_fast import _ext, ops, selfcheck
from nst_fast.errors import OptionsError

needs_ext = pytest.mark.skipif(not _ext.AVAILABLE, reason=f"nst_fast._C not built ({_ext.IMPORT_ERROR})")
# CUDA runs wherever a GPU and the extension's CUDA kernels are present, and is skipped, saying so, elsewhere.
CUDA_MARKS = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and _ext.WITH_CUDA), reason="needs a CUDA GPU and the extension's CUDA kernels"
    ),
]


def cuda_only(test):
    for mark in CUDA_MARKS:
        test = mark(test)
    return test


SHAPES = [(1, 3, 7, 5), (2, 64, 9, 11), (3, 16, 1, 1), (2, 8, 33, 17)]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA_MARKS)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def feats(shape, dtype=torch.float32, channels_last=False, device="cpu"):
    x = (torch.rand(shape) * 2 + 0.05).to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def target_for(x, batch=1, symmetric=True):
    # Gram targets are symmetric; the operators must also be right for any other target.
    c = x.shape[1]
    m = torch.rand(batch, c, c, dtype=torch.float64)
    return ((m + m.transpose(1, 2)) / 2 if symmetric else m).float().to(x.device)


def f64_style_loss(x, a, scale):
    f = x.double().reshape(x.shape[0], x.shape[1], -1)
    g = scale * f @ f.transpose(1, 2)
    return ((g - a.double()) ** 2).sum()


def assert_close(x, y, rtol):
    x, y = x.double(), y.double()
    err = ((x - y).abs().max() / y.abs().max()).item()
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def misaligned(x):
    """x's values in a view that starts one element into its allocation, with x's strides (so its layout):
    not 16-byte aligned, which sends the CUDA kernels to their scalar loads."""
    storage = torch.empty(x.numel() + 1, dtype=x.dtype, device=x.device)
    y = storage[1:].as_strided(x.shape, x.stride())
    y.copy_(x)
    assert y.data_ptr() % 16 != 0
    return y


def workspace_bytes(b, c):
    """nst_gram_workspace_bytes: the split-K partial sums and one arrival counter per upper-triangle tile."""
    tiles = -(-c // 64)
    return 4 * b * c * c + 4 * b * tiles * (tiles + 1) // 2


def poison(device, *sizes):
    """Hands the CUDA caching allocator's next blocks of these byte sizes over full of 0xFF bytes (NaN as
    float32, a huge count as unsigned), so that an output element a kernel fails to write shows, as does
    a workspace it fails to clear. Nothing on a CPU."""
    if torch.device(device).type != "cuda":
        return
    torch.cuda.empty_cache()  # else an older free block of a fitting size could be handed out instead
    blocks = [torch.full((n,), 255, dtype=torch.uint8, device=device) for n in sizes]
    del blocks


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_ext_gram_matches_reference_and_float64(shape, dtype, channels_last, device):
    x = feats(shape, dtype, channels_last, device)
    # Poison memory and free it at once: the CUDA caching allocator hands this block to the output
    # below, so an element the kernel fails to write shows as NaN.
    torch.full((shape[0], shape[1], shape[1]), float("nan"), device=device)
    scale = 1.0 / (shape[2] * shape[3])
    out = ops.gram(x, scale, impl="ext")
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == (shape[0], shape[1], shape[1])
    f = x.double().reshape(shape[0], shape[1], -1)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close(out, scale * f @ f.transpose(1, 2), rtol)
    assert_close(out, ops.gram(x, scale, impl="ref"), rtol)


# The CPU kernels' row blocks and conversion chunks: C ≥ 64 is computed in row blocks above the diagonal
# and mirrored (C = 65, 129, 301: a shorter last block); a bf16/fp16 map larger than one conversion chunk
# (100×101 positions at C = 64, 50×47 at C = 256) is accumulated, and its gradient written, chunk by
# chunk, the last chunk a shorter one.
BLOCK_SHAPES = [
    (2, 512, 5, 7),
    (1, 301, 4, 4),
    (2, 64, 100, 101),
    (1, 256, 33, 31),
    (2, 65, 9, 9),
    (1, 129, 6, 5),
    (2, 256, 50, 47),
]
# The CUDA kernels' paths, besides those shapes: 64×64 output tiles (C = 65, 130, 512: several, the
# off-diagonal ones mirrored, ragged edges); split-K, H·W > 1024 cut into slices whose partial sums
# meet in the workspace through atomics and per-tile arrival counters; 16-byte loads where F's rows
# allow them (NCHW: H·W a multiple of 8 for bf16/fp16, of 4 for float32; NHWC: C a multiple of 8),
# scalar ones elsewhere; several batch items.
TILE_SHAPES = [
    (3, 3, 41, 53),  # H·W = 2173, odd: scalar loads, three slices
    (1, 64, 64, 64),  # 4096: vector loads in both layouts, four slices
    (3, 64, 30, 90),  # 2700 = 4·675: NCHW vector loads for float32 only
    (3, 65, 33, 34),  # 1122, even but not a multiple of 4; three tiles, two of them ragged
    (1, 130, 48, 50),  # 2400 = 8·300: six tiles; NHWC scalar (C = 130)
    (3, 130, 1, 4097),  # the sanitizer's shape: five slices, the last one shorter
    (1, 512, 40, 41),  # 1640 = 8·205: 36 tiles, two slices
    (3, 512, 36, 36),  # 1296 = 8·162: 36 tiles per item, two slices
    (3, 512, 7, 9),  # 63: one slice
]


def _block_cases():
    """(device, shape, target, placement): every shape with a broadcast 1×C×C target; on CUDA also one
    asymmetric target per batch item where B > 1, and each case again in a misaligned view."""
    cases = [pytest.param("cpu", s, "1×C×C", "aligned", id=f"cpu-{'x'.join(map(str, s))}") for s in BLOCK_SHAPES]
    for s in TILE_SHAPES + BLOCK_SHAPES:
        for target in ["1×C×C"] + (["B×C×C"] if s[0] > 1 else []):
            for placement in ("aligned", "misaligned"):
                name = f"cuda-{'x'.join(map(str, s))}-{target.replace('×', '')}-{placement}"
                cases.append(pytest.param("cuda", s, target, placement, id=name, marks=CUDA_MARKS))
    return cases


@needs_ext
@pytest.mark.parametrize("device, shape, target, placement", _block_cases())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_gram_blocks_tiles_and_chunks(device, shape, target, placement, dtype, channels_last):
    """Gram matrix, style loss (an asymmetric target) and gradient against float64, at shapes that reach
    the CPU kernels' blocks and chunks and the CUDA kernels' tiles, split-K slices and load paths; on
    CUDA, into outputs and workspaces poisoned with NaN, and from misaligned views too."""
    b, c, h, w = shape
    x = feats(shape, dtype, channels_last, device)
    x = (misaligned(x) if placement == "misaligned" else x).requires_grad_()
    scale = 1.0 / (h * w)
    x64 = x.detach().double().requires_grad_()
    f = x64.reshape(b, c, -1)
    expected = scale * f @ f.transpose(1, 2)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    poison(device, 4 * b * c * c, workspace_bytes(b, c))
    assert_close(ops.gram(x.detach(), scale, impl="ext"), expected.detach(), rtol)
    a = target_for(x.detach(), b if target == "B×C×C" else 1, symmetric=False)
    a = a.to(torch.float64 if dtype == torch.float64 else torch.float32)
    poison(device, 4 * b * c * c, 4, workspace_bytes(b, c))
    loss = ops.style_loss(x, a, scale, impl="ext")
    expected_loss = ((expected - a.double()) ** 2).sum()
    assert_close(loss, expected_loss, 1e-4 if dtype != torch.float64 else 1e-10)
    poison(device, x.numel() * x.element_size())
    (grad,), (expected_grad,) = torch.autograd.grad(loss, x), torch.autograd.grad(expected_loss, x64)
    assert grad.dtype == dtype
    assert grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close(grad, expected_grad, 1e-10 if dtype == torch.float64 else 1e-4 if dtype == torch.float32 else 2e-2)


@needs_ext
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("target_batch", [0, 1, "B"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("device", DEVICES)
def test_ext_style_loss_and_gradient(shape, dtype, channels_last, target_batch, symmetric, device):
    x = feats(shape, dtype, channels_last, device).requires_grad_()
    scale = 1.0 / (shape[2] * shape[3])
    a = target_for(x, shape[0] if target_batch == "B" else 1, symmetric)
    a = a[0] if target_batch == 0 else a
    a = a.to(torch.float64) if dtype == torch.float64 else a
    loss = ops.style_loss(x, a, scale, impl="ext")
    (grad,) = torch.autograd.grad(loss, x)
    assert loss.dim() == 0 and grad.dtype == dtype and grad.shape == x.shape
    assert grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    x64 = x.detach().double().requires_grad_()
    expected = f64_style_loss(x64, a.double() if a.dim() == 3 else a.double()[None], scale)
    (expected_grad,) = torch.autograd.grad(expected, x64)
    rtol = 1e-10 if dtype == torch.float64 else 1e-4 if dtype == torch.float32 else 2e-2
    assert_close(loss, expected, rtol)
    assert_close(grad, expected_grad, rtol)

    ref = ops.style_loss(x, a, scale, impl="ref")
    (ref_grad,) = torch.autograd.grad(ref, x)
    assert_close(loss, ref, rtol)
    assert_close(grad, ref_grad, rtol)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    x = feats((2, 5, 3, 4), torch.float64, device=device).requires_grad_()
    a = target_for(x, 2, symmetric=False).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda f, t: ops.style_loss(f, t, 0.1, impl="ext"), (x, a))
    assert torch.autograd.gradcheck(
        lambda f, t: ops.style_loss(f, t, 0.1, impl="ext"), (x, a[:1].detach().requires_grad_())
    )
    assert torch.autograd.gradcheck(lambda f: ops.gram(f, 0.3, impl="ext"), (x,))
    x_cl = feats((2, 5, 3, 4), torch.float64, channels_last=True, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda f: ops.style_loss(f, a[0].detach(), 0.1, impl="ext"), (x_cl,))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_opcheck(layout, device):
    x = feats((2, 8, 5, 3), channels_last=layout == "channels_last", device=device)
    if layout == "transposed":
        x = feats((2, 8, 3, 5), device=device).transpose(2, 3)  # dense, but neither contiguous nor channels_last
    a = target_for(x, symmetric=False)
    grad = torch.tensor(1.5, device=device)
    diff = ops.gram(x, 0.2, impl="ext") - a
    torch.library.opcheck(torch.ops.nst_fast.gram.default, (x.requires_grad_(), 0.2))
    torch.library.opcheck(torch.ops.nst_fast.style_loss.default, (x, a, 0.2))
    torch.library.opcheck(torch.ops.nst_fast.style_loss_backward.default, (grad, x.detach(), diff, 0.2))


@needs_ext
def test_torch_compile_traces_the_ops_fullgraph():
    x = feats((2, 8, 6, 5)).requires_grad_()
    a = target_for(x)

    def loss_fn(f):
        return ops.style_loss(f, a, 1 / 30, impl="ext") + ops.gram(f, 0.5, impl="ext").sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    (grad,) = torch.autograd.grad(loss, x)
    expected = loss_fn(x)
    (expected_grad,) = torch.autograd.grad(expected, x)
    assert_close(loss, expected, 1e-6)
    assert_close(grad, expected_grad, 1e-6)


@needs_ext
def test_diff_output_is_not_differentiable():
    x = feats((1, 4, 3, 3)).requires_grad_()
    loss, diff = torch.ops.nst_fast.style_loss(x, target_for(x), 0.5)
    assert loss.requires_grad and not diff.requires_grad


@cuda_only
@pytest.mark.parametrize("shape", [(1, 64, 1024, 1024), (3, 128, 511, 509)], ids=["relu1_1-1024px", "B3-odd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_large_hw_split_k(shape, dtype, channels_last):
    """A relu1_1-sized map of a 1024 px image, and three items of an odd-sized 128-channel map: hundreds
    of split-K slices reduced across blocks."""
    b, c, h, w = shape
    x = feats(shape, dtype, channels_last, "cuda")
    scale = 1.0 / (h * w)
    f = x.double().reshape(b, c, -1)
    assert_close(ops.gram(x, scale, impl="ext"), scale * f @ f.transpose(1, 2), 1e-4)
    a = target_for(x, b, symmetric=False)
    xg = x.clone().requires_grad_()
    loss = ops.style_loss(xg, a, scale, impl="ext")
    (grad,) = torch.autograd.grad(loss, xg)
    ref = ops.style_loss(xg, a, scale, impl="ref")
    (ref_grad,) = torch.autograd.grad(ref, xg)
    assert_close(loss, ref, 1e-3)
    assert_close(grad.float(), ref_grad.float(), 2e-2 if dtype != torch.float32 else 1e-4)


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_split_k_is_stable_over_repeats(dtype):
    """One split-K Gram and loss, 50 times: ~256 slices per tile meet in the workspace through float32
    atomics, in an order that changes from run to run, so results may differ by rounding only. A slice
    lost or added twice (a race on an arrival counter) would be off by about 1/256 of the sums."""
    x = feats((2, 64, 512, 512), dtype, device="cuda")
    a = target_for(x, 2)
    scale = 1.0 / (512 * 512)
    grams = torch.stack([ops.gram(x, scale, impl="ext") for _ in range(50)])
    losses = torch.stack([ops.style_loss(x, a, scale, impl="ext") for _ in range(50)])
    f = x.double().reshape(2, 64, -1)
    expected = scale * f @ f.transpose(1, 2)
    assert_close(grams.median(0).values, expected, 1e-4)
    worst = ((grams - grams.median(0).values).abs().amax((1, 2, 3)) / expected.abs().max()).double()
    assert worst.max() <= 1e-5, f"runs {worst.gt(1e-5).nonzero().flatten().tolist()} off by up to {worst.max():.3g}"
    spread = ((losses - losses.median()).abs() / losses.median()).max().item()
    assert spread <= 1e-5, f"losses spread by {spread:.3g}: {losses.tolist()}"


@cuda_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_graph_replays_with_new_inputs(dtype, channels_last):
    """The three operators captured in one CUDA graph and replayed four times on new features: each
    replay must give its own features' results, so the workspace's partial sums and arrival counters
    (and the loss) must be cleared inside the graph, not once at capture."""
    shape = (2, 130, 33, 65)  # six tiles per item, three split-K slices (H·W = 2145)
    scale = 1.0 / (33 * 65)
    x = feats(shape, dtype, channels_last, "cuda")
    a = target_for(x, 2, symmetric=False)
    grad = torch.ones((), device="cuda")

    def run():
        gram = torch.ops.nst_fast.gram(x, scale)
        loss, diff = torch.ops.nst_fast.style_loss(x, a, scale)
        return gram, loss, torch.ops.nst_fast.style_loss_backward(grad, x, diff, scale)

    side = torch.cuda.Stream()  # warm-up off the capturing stream, as torch.cuda.graph wants
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gram, loss, dx = run()
    for _ in range(4):
        x.copy_(feats(shape, dtype, channels_last, "cuda"))
        graph.replay()
        torch.cuda.synchronize()
        x64 = x.double().requires_grad_()
        f = x64.reshape(2, 130, -1)
        expected = scale * f @ f.transpose(1, 2)
        expected_loss = ((expected - a.double()) ** 2).sum()
        (expected_grad,) = torch.autograd.grad(expected_loss, x64)
        assert_close(gram, expected.detach(), 1e-5)
        assert_close(loss, expected_loss.detach(), 1e-4)
        assert_close(dx, expected_grad, 1e-4 if dtype == torch.float32 else 2e-2)


def test_impl_argument_is_checked():
    with pytest.raises(ValueError, match="impl"):
        ops.gram(feats((1, 3, 4, 4)), impl="fast")


def test_style_target_shape_is_checked():
    with pytest.raises(ValueError, match="does not fit"):
        ops.style_loss(feats((2, 4, 3, 3)), torch.rand(5, 5), 1.0)


def test_package_works_without_the_extension(tmp_path):
    """With nst_fast._C unimportable, the package warns once and computes with the reference."""
    code = """
import sys, warnings
sys.modules["nst_fast._C"] = None  # makes `from . import _C` raise ImportError
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, nst_fast
    from nst_fast import _ext, losses, ops
assert not _ext.AVAILABLE
assert sum("nst_fast._C is not available" in str(w.message) for w in caught) == 1, caught
a = torch.rand(1, 4, 5, 5, dtype=torch.float64) + 0.1
assert torch.allclose(ops.gram(a), ops.gram_ref(a))
try:
    ops.gram(a, impl="ext")
except nst_fast.OptionsError as e:  # as when a Stylizer is asked for it
    assert "not loaded" in str(e)
else:
    raise AssertionError("impl='ext' without the extension must fail")
img = nst_fast.stylize(torch.rand(3, 40, 40), torch.rand(3, 40, 40), size=32, steps=2,
                       style_layers="relu1_1,relu2_1", content_layers="relu2_2")
assert img.size == (32, 32)
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --- the self-check of the compiled operators (nst_fast.selfcheck) -----------------------------------
# It concerns the CUDA kernels; here it is applied to the CPU kernels, on one small shape, with faulty
# operators registered over the extension's CPU kernels for the length of a test.


@pytest.fixture
def cpu_self_check(monkeypatch):
    monkeypatch.setattr(selfcheck, "DEVICE_TYPES", ("cpu", "cuda"))
    monkeypatch.setattr(selfcheck, "_verdicts", {})  # none kept from, or left for, other tests
    monkeypatch.setattr(selfcheck, "SHAPES", ((2, 70, 5, 7),))
    monkeypatch.delenv(selfcheck.ENV, raising=False)
    return selfcheck


def override(request, op, fn):
    """Registers fn as the CPU kernel of nst_fast::<op> until the end of the test."""
    lib = torch.library.Library("nst_fast", "IMPL")
    request.addfinalizer(lib._destroy)  # the extension's own kernel serves again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        lib.impl(op, fn, "CPU")


def gram_missing_a_mirrored_tile(feats, scale):
    g = ops.gram_ref(feats, scale)
    g[:, 64:, :64] = 0  # rows 64-69 below the diagonal never written back
    return g


def backward_wrong_in_bf16(grad, feats, diff, scale):
    b, c, h, w = feats.shape
    f = feats.reshape(b, c, h * w).to(diff.dtype)
    out = ((diff + diff.transpose(1, 2)) @ f * (2 * scale * grad.to(diff.dtype))).reshape(feats.shape)
    return out.to(feats.dtype) * (2 if feats.dtype == torch.bfloat16 else 1)


def style_loss_raising(feats, target, scale):
    raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be seen later")


FAULTS = {  # operator, kernel, what the self-check says (every Gram wrong; both bf16 gradients; the error)
    "lost tile": ("gram", gram_missing_a_mirrored_tile, "6 of 24 outputs wrong: gram "),
    "bf16 gradient": ("style_loss_backward", backward_wrong_in_bf16, "2 of 24 outputs wrong: grad bfloat16 "),
    "CUDA error": ("style_loss", style_loss_raising, "RuntimeError: CUDA error: an illegal memory access was"),
}


@needs_ext
@pytest.mark.parametrize("fault", FAULTS)
def test_self_check_catches_a_faulty_operator_and_falls_back(cpu_self_check, request, fault):
    op, fn, expected_message = FAULTS[fault]
    calls = []
    override(request, op, lambda *args: calls.append(op) or fn(*args))
    x = feats((2, 70, 5, 7), torch.bfloat16).requires_grad_()
    a = target_for(x, 2, symmetric=False)
    with pytest.warns(RuntimeWarning, match="failed their self-check on cpu") as caught:
        loss = ops.style_loss(x, a, 1 / 35)  # the first use checks the operators
    assert len(caught) == 1 and expected_message in str(caught[0].message), caught[0].message
    assert calls and not ops.extension_serves(torch.device("cpu"))
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: not again
        (grad,) = torch.autograd.grad(loss, x)
        ref = ops.style_loss_ref(x, a, 1 / 35)
        (ref_grad,) = torch.autograd.grad(ref, x)
        assert torch.equal(loss, ref) and torch.equal(grad, ref_grad)
        assert torch.equal(ops.gram(x.detach(), 0.5), ops.gram_ref(x.detach(), 0.5))
    assert calls == []  # the reference computed all of it
    with pytest.raises(OptionsError, match="impl 'ext': the compiled operators failed their self-check on cpu: ") as e:
        ops.gram(x, 0.5, impl="ext")
    assert expected_message in str(e.value)
    assert str(selfcheck._verdicts["cpu"]).startswith("FAILED on cpu: ")


@needs_ext
def test_self_check_passes_correct_operators_and_uses_them(cpu_self_check, request):
    calls = []
    override(request, "gram", lambda feats, scale: calls.append("gram") or ops.gram_ref(feats, scale))
    x = feats((2, 70, 5, 7), torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.gram(x, 0.5)
    verdict = selfcheck._verdicts["cpu"]
    assert verdict.ok and len(verdict.cases) == 3 * 2 * 4, verdict  # dtypes × layouts × outputs
    assert all(case.error <= case.tolerance for case in verdict.cases)
    assert str(verdict).startswith("passed on cpu (24 outputs, ")
    calls.clear()
    ops.gram(x, 0.5)
    assert calls == ["gram"]  # the extension's operator computes
    del selfcheck._verdicts["cpu"]
    assert selfcheck.check("cpu").ok  # the extension's own CPU kernels


@needs_ext
def test_self_check_is_skipped_when_switched_off(cpu_self_check, request, monkeypatch):
    monkeypatch.setenv(selfcheck.ENV, "0")
    override(request, "gram", gram_missing_a_mirrored_tile)
    x = feats((2, 70, 5, 7))
    assert torch.equal(ops.gram(x, 0.5), gram_missing_a_mirrored_tile(x, 0.5))  # unchecked: the extension serves
    assert str(selfcheck._verdicts["cpu"]) == "skipped (NST_FAST_SELF_CHECK=0)"


@needs_ext
def test_self_check_waits_while_a_graph_is_traced(cpu_self_check):
    """Under torch.compile nothing may run on the device: the reference is traced in, and the operators
    are checked at the next call outside (then a recompilation takes the extension)."""
    x = feats((1, 70, 4, 4)).requires_grad_()
    a = target_for(x)
    compiled = torch.compile(lambda f: ops.style_loss(f, a, 1 / 16), fullgraph=True, backend="aot_eager")
    assert_close(compiled(x), ops.style_loss_ref(x, a, 1 / 16), 1e-6)
    assert "cpu" not in selfcheck._verdicts
    assert ops.extension_serves(torch.device("cpu")) and selfcheck._verdicts["cpu"].ok
    assert_close(compiled(x), ops.style_loss_ref(x, a, 1 / 16), 1e-6)


def test_self_check_status_line(monkeypatch):
    monkeypatch.setattr(selfcheck, "_verdicts", {})
    if not _ext.WITH_CUDA:
        assert selfcheck.status() == "not run (no CUDA kernels in this build)"
    monkeypatch.setattr(_ext, "WITH_CUDA", True)
    monkeypatch.setattr(_ext, "AVAILABLE", True)
    monkeypatch.setenv(selfcheck.ENV, "0")
    assert selfcheck.status() == "skipped (NST_FAST_SELF_CHECK=0)"
    monkeypatch.delenv(selfcheck.ENV)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert selfcheck.status(run=False) == "not run yet (it runs at the first use of the CUDA operators)"
    selfcheck._verdicts["cuda:0"] = selfcheck.Verdict("cuda:0", True, "48 outputs, 7 ms")
    selfcheck._verdicts["cuda:1"] = selfcheck.Verdict("cuda:1", False, "RuntimeError: CUDA error: no kernel image")
    assert selfcheck.status(run=False) == (
        "passed on cuda:0 (48 outputs, 7 ms); FAILED on cuda:1: RuntimeError: CUDA "
        "error: no kernel image — using the reference operators"
    )


@cuda_only
def test_cuda_self_check_passes():
    verdict = selfcheck.check("cuda")
    assert verdict.ok, "\n".join([str(verdict)] + [str(c) for c in verdict.cases if not c.ok])
    assert len(verdict.cases) == len(selfcheck.SHAPES) * 3 * 2 * 4
