"""The nst_fast:: operators: the extension against the reference and float64, registration, fallback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nst_fast import _ext, ops

needs_ext = pytest.mark.skipif(not _ext.AVAILABLE, reason=f"nst_fast._C not built ({_ext.IMPORT_ERROR})")

SHAPES = [(1, 3, 7, 5), (2, 64, 9, 11), (3, 16, 1, 1), (2, 8, 33, 17)]
# CUDA runs wherever a GPU and the extension's CUDA kernels are present, and is skipped, saying so, elsewhere.
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not (torch.cuda.is_available() and _ext.WITH_CUDA), reason="needs a CUDA GPU and the extension's CUDA kernels")]),
]  # fmt: skip
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


@needs_ext
@pytest.mark.parametrize("shape", [(2, 512, 5, 7), (1, 301, 4, 4), (2, 64, 100, 101), (1, 256, 33, 31), (2, 65, 9, 9),
                                   (1, 129, 6, 5), (2, 256, 50, 47)])  # fmt: skip
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_gram_blocks_and_chunks(shape, dtype, channels_last):
    """C ≥ 64 is computed in row blocks above the diagonal and mirrored (C = 65, 129, 301: a shorter
    last block); a bf16/fp16 map larger than one conversion chunk (100×101 positions at C = 64, 50×47
    at C = 256) is accumulated, and its gradient written, chunk by chunk, the last chunk a shorter one."""
    x = feats(shape, dtype, channels_last).requires_grad_()
    scale = 1.0 / (shape[2] * shape[3])
    x64 = x.detach().double().requires_grad_()
    f = x64.reshape(shape[0], shape[1], -1)
    expected = scale * f @ f.transpose(1, 2)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close(ops.gram(x.detach(), scale, impl="ext"), expected.detach(), rtol)
    a = target_for(x.detach(), symmetric=False).to(torch.float64 if dtype == torch.float64 else torch.float32)
    loss = ops.style_loss(x, a, scale, impl="ext")
    expected_loss = ((expected - a.double()) ** 2).sum()
    assert_close(loss, expected_loss, 1e-4 if dtype != torch.float64 else 1e-10)
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
    assert torch.autograd.gradcheck(lambda f, t: ops.style_loss(f, t, 0.1, impl="ext"), (x, a[:1].detach().requires_grad_()))
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


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and _ext.WITH_CUDA), reason="needs a CUDA GPU and CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_large_hw_split_k(dtype, channels_last):
    """A relu1_1-sized map of a 1024 px image: many split-K slices reduced across blocks."""
    x = feats((1, 64, 1024, 1024), dtype, channels_last, "cuda")
    scale = 1.0 / (1024 * 1024)
    f = x.double().reshape(1, 64, -1)
    assert_close(ops.gram(x, scale, impl="ext"), scale * f @ f.transpose(1, 2), 1e-4)
    a = target_for(x)
    xg = x.clone().requires_grad_()
    loss = ops.style_loss(xg, a, scale, impl="ext")
    (grad,) = torch.autograd.grad(loss, xg)
    ref = ops.style_loss(xg, a, scale, impl="ref")
    (ref_grad,) = torch.autograd.grad(ref, xg)
    assert_close(loss, ref, 1e-3)
    assert_close(grad.float(), ref_grad.float(), 2e-2 if dtype != torch.float32 else 1e-4)


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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
