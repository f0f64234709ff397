"""The torch backend (nst_fast.backends.engine) and its device-resident L-BFGS, against the reference."""

from __future__ import annotations

import pytest
import torch

from nst_fast import Stylizer, objective
from nst_fast.backends.lbfgs import DeviceLBFGS
from nst_fast.backends.precision import cpu_supports_bf16, resolve_precision
from nst_fast.errors import NstError
from nst_fast.image import load_image, resize_longest

CPU = torch.device("cpu")


def test_precision_on_cpu():
    assert resolve_precision("fp32", CPU).autocast_dtype is None
    tf32 = resolve_precision("tf32", CPU)
    assert tf32.name == "fp32" and "GPU" in tf32.note
    fp16 = resolve_precision("fp16", CPU)
    assert fp16.name in ("bf16", "fp32") and "fp16" in fp16.note and fp16.autocast_dtype != torch.float16
    auto = resolve_precision("auto", CPU)
    assert auto.name == ("bf16" if cpu_supports_bf16() else "fp32")
    with pytest.raises(NstError, match="unknown precision"):
        resolve_precision("fp8", CPU)


def test_device_lbfgs_follows_torch_lbfgs():
    torch.manual_seed(0)
    a = torch.randn(40, 40, dtype=torch.float64)
    a = (a @ a.T / 40 + torch.eye(40, dtype=torch.float64)).float()

    def f(x):
        return 0.5 * x @ a @ x + 0.1 * (x**4).sum() + x.sum()

    x0 = torch.randn(40)
    x1 = x0.clone().requires_grad_()
    opt = torch.optim.LBFGS(
        [x1], lr=1, max_iter=25, max_eval=25, tolerance_grad=-1, tolerance_change=-1, history_size=8
    )
    torch_trace = []

    def closure():
        opt.zero_grad()
        loss = f(x1)
        loss.backward()
        torch_trace.append(loss.item())
        return loss

    opt.step(closure)
    x2 = x0.clone()
    lbfgs = DeviceLBFGS(x2, lr=1, history=8)  # 8 < 25: the history wraps around
    ours = []
    for _ in range(25):
        xx = x2.clone().requires_grad_()
        loss = f(xx)
        loss.backward()
        ours.append(loss.item())
        lbfgs.step(xx.grad)
    assert ours[-1] < ours[0] - 1
    assert ours == pytest.approx(torch_trace, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(("n", "history", "steps"), [(30, 6, 20), (120, 48, 60)])
def test_compact_lbfgs_equals_the_two_loop_recursion(n, history, steps):
    from nst_fast.backends.lbfgs import CompactLBFGS

    torch.manual_seed(1)
    a = torch.randn(n, n, dtype=torch.float64)
    a = (a @ a.T / n + 0.5 * torch.eye(n, dtype=torch.float64)).float()

    def f(x):
        return 0.5 * x @ a @ x + 0.05 * (x**4).sum() - x.sum()

    x0 = torch.randn(n)
    traces = []
    for kind in (DeviceLBFGS, CompactLBFGS):
        x = x0.clone()
        opt = kind(x, lr=1, history=history)  # history < steps: the slots wrap around
        trace = []
        for _ in range(steps):
            xx = x.clone().requires_grad_()
            loss = f(xx)
            loss.backward()
            trace.append(loss.item())
            opt.step(xx.grad)
        traces.append(trace)
    assert traces[0][-1] < traces[0][0] - 1
    assert traces[1] == pytest.approx(traces[0], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("kind", ["DeviceLBFGS", "CompactLBFGS"])
def test_lbfgs_skips_a_pair_whose_y_is_noise(kind):
    """After a tiny first step, a bf16 network's gradient difference y is rounding noise: nearly
    orthogonal to s, with sᵀy of either sign. Such a pair, accepted because sᵀy > 0 by chance, had
    ρ = 1/sᵀy of ~10⁷ and sent the next step to a loss 80× the start (benchmarks/NOTES.md §9); it must
    be skipped, and a pair of real curvature (a quadratic's) kept."""
    import nst_fast.backends.lbfgs as lbfgs

    torch.manual_seed(0)
    n = 100_000
    g1 = torch.randn(n)
    x = torch.zeros(n)
    opt = getattr(lbfgs, kind)(x, lr=1.0, history=5)
    opt.step(g1)  # the first step: -g scaled by 1/‖g‖₁, tiny
    s = x.clone()
    noise = torch.randn(n) * 0.03 * g1.norm() / n**0.5
    noise += (1e-8 - noise @ s) / (s @ s) * s  # sᵀy small and positive, as by chance: 1e-8 > 1e-10
    before = x.clone()
    opt.step(g1 + noise)
    # Skipped, the step is -g (H₀ = I); used, it is hundreds of times longer.
    assert (x - before).abs().max() < 2 * g1.abs().max(), "a noise pair was used"
    # A quadratic with Hessian 2I: y = 2s exactly, cos(s, y) = 1.
    y = torch.randn(n)
    x.zero_()
    opt = getattr(lbfgs, kind)(x, lr=1.0, history=5)
    opt.step(y)
    s = x.clone()
    opt.step(y + 2 * s)
    assert opt.h_diag.item() == pytest.approx(0.5, rel=1e-4)  # sᵀy / yᵀy of the kept pair


def _judged(stylizer, content, image):
    loss_fn = objective.build_loss(stylizer.model, content, stylizer.style_targets, stylizer.options)
    return objective.evaluate_loss(stylizer.model, loss_fn, image)["total"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_engine_matches_reference_quality_at_equal_steps(tubingen, starry_night, precision):
    from conftest import skip_unless_native_bf16

    skip_unless_native_bf16(precision)
    content = resize_longest(load_image(tubingen), 96)
    ref = Stylizer(starry_night, size=96, steps=40, backend="reference")
    ref_image = ref.stylize_tensor(content)
    fast = Stylizer(starry_night, size=96, steps=40, backend="torch", precision=precision)
    seen = []
    fast_image = fast.stylize_tensor(content, callback=lambda it: seen.append(it.loss))
    assert len(seen) == 40 and all(torch.isfinite(torch.tensor(seen)))
    assert seen[-1] < seen[0] / 3
    assert torch.isfinite(fast_image).all() and fast_image.min() >= 0 and fast_image.max() <= 1
    ref_loss, fast_loss = _judged(ref, content, ref_image), _judged(ref, content, fast_image)
    assert fast_loss <= ref_loss * 1.05, f"{precision}: {fast_loss:.4g} against the reference's {ref_loss:.4g}"


def test_engine_adam_and_noise_init(tubingen, the_scream):
    seen = []
    Stylizer(the_scream, size=48, steps=20, backend="torch", optimizer="adam", init="noise", lr=0.05).stylize(
        tubingen, callback=seen.append
    )
    assert [it.step for it in seen] == list(range(1, 21))
    assert seen[-1].loss < seen[0].loss / 2


def test_engine_returns_its_best_iterate():
    # lr 3 overshoots: the loss is not monotonic, so the last iterate is not the best one.
    content, style = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(1)), torch.rand(3, 40, 40)
    stylizer = Stylizer(style, size=40, steps=12, backend="torch", precision="fp32", lr=3.0)
    seen = []
    out = stylizer.stylize_tensor(content, callback=lambda it: seen.append((it.loss, it.image.clone())))
    losses = [loss for loss, _ in seen]
    best = min(range(len(seen)), key=losses.__getitem__)
    assert best != len(seen) - 1, f"no spike to test against: {losses}"
    assert torch.equal(out, seen[best][1].clamp(0, 1).contiguous())


def test_compiled_steps_follow_the_eager_ones():
    content, style = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.rand(3, 32, 32)
    runs = {}
    for graph in ("eager", "compile"):
        seen = []
        Stylizer(style, size=32, steps=6, precision="fp32", graph=graph).stylize_tensor(content, callback=seen.append)
        runs[graph] = [it.loss for it in seen]
    assert runs["compile"] == pytest.approx(runs["eager"], rel=1e-3)


def test_cuda_graphs_need_a_cuda_device():
    with pytest.raises(NstError, match="needs a CUDA device"):
        Stylizer(torch.rand(3, 32, 32), size=32, steps=2, graph="cuda", device="cpu").stylize(torch.rand(3, 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_cuda_graph_steps_follow_the_eager_ones(optimizer):
    content, style = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3)), torch.rand(3, 64, 64)
    runs = {}
    for graph in ("eager", "cuda"):
        seen = []
        out = Stylizer(
            style, size=64, steps=12, precision="fp32", optimizer=optimizer, graph=graph, device="cuda"
        ).stylize_tensor(content, callback=lambda it: seen.append(it.loss))
        runs[graph] = (seen, out)
    assert runs["cuda"][0] == pytest.approx(runs["eager"][0], rel=2e-3)
    assert torch.allclose(runs["cuda"][1], runs["eager"][1], atol=2e-3)


def test_engine_stops_on_a_non_finite_loss():
    with pytest.raises(NstError, match="the loss became inf"):
        Stylizer(torch.rand(3, 32, 32), size=32, steps=3, backend="torch", tv_weight=1e300).stylize(
            torch.rand(3, 32, 32)
        )


def test_engine_callback_reads_are_lazy():
    seen = []
    Stylizer(torch.rand(3, 32, 32), size=32, steps=3, backend="torch").stylize(
        torch.rand(3, 32, 32), callback=seen.append
    )
    assert isinstance(seen[0]._loss, torch.Tensor), "the loss stays a tensor until read"
    assert isinstance(seen[0].loss, float) and set(seen[0].losses) == {"content", "style"}


def test_checkpointed_loss_equals_the_plain_loss(tubingen, starry_night):
    from nst_fast.backends.engine import checkpointed_loss

    stylizer = Stylizer(starry_night, size=48, tv_weight=0.5)
    content = resize_longest(load_image(tubingen), 48)
    loss_fn = objective.build_loss(stylizer.model, content, stylizer.style_targets, stylizer.options)
    x = torch.rand_like(content).requires_grad_()
    plain, plain_terms = loss_fn(stylizer.model(x), x)
    (plain_grad,) = torch.autograd.grad(plain, x)
    ckpt, ckpt_terms = checkpointed_loss(stylizer.model, loss_fn, x)
    (ckpt_grad,) = torch.autograd.grad(ckpt, x)
    assert set(ckpt_terms) == {"content", "style", "tv"}
    assert torch.allclose(ckpt, plain, rtol=1e-6) and torch.allclose(ckpt_grad, plain_grad, rtol=1e-5, atol=1e-9)


def test_checkpointing_runs_end_to_end():
    seen = []
    Stylizer(torch.rand(3, 40, 40), size=40, steps=4, backend="torch", checkpoint="on").stylize(
        torch.rand(3, 40, 40), callback=seen.append
    )
    assert len(seen) == 4 and seen[-1].loss < seen[0].loss


@pytest.mark.parametrize("size", [(64, 48), (96, 80)])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_memory_estimate_counts_what_autograd_keeps(size, pooling):
    """The estimate's kept bytes against the tensors autograd actually saves, counted by storage."""
    from nst_fast.memory import estimate
    from nst_fast.vgg import VGG19

    layers = ("relu4_2", "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    model = VGG19(layers, pooling=pooling)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    x = torch.rand(1, 3, *size, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    e = estimate(layers, *size, activation_bytes=4, checkpoint=False, pooling=pooling)
    assert e.kept == pytest.approx(sum(saved.values()), rel=0.02)
    assert e.weights == sum(p.numel() * 4 for p in model.parameters())
    small = estimate(layers, *size, activation_bytes=4, checkpoint=True, pooling=pooling)
    assert small.kept < e.kept / 5 and small.total < e.total


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("checkpoint", ["off", "on"])
def test_memory_estimate_against_the_allocators_peak(precision, checkpoint):
    """The whole estimate against what a run at 256 px really allocates on this CPU: it decides
    checkpointing and what the CLI says fits, so it must neither fall short nor overshoot by much.
    (Before the backward pass's gradients and oneDNN's weight copies were counted it fell 14-29% short.)"""
    from conftest import skip_unless_native_bf16
    from nst_fast.bench import measure_memory

    skip_unless_native_bf16(precision)
    images = torch.rand(1, 3, 192, 256), torch.rand(1, 3, 256, 256)
    row = measure_memory(256, precision, checkpoint, device="cpu", images=images)
    assert 0.8 <= row["peak_bytes"] / row["estimate_bytes"] <= 1.1, row


GARBAGE_AFTER_A_RUN = """
import gc, sys, torch
from nst_fast import Stylizer
stylizer = Stylizer(torch.rand(3, 64, 64), size=64, steps=2, **eval(sys.argv[1]))
gc.collect(); gc.disable(); gc.set_debug(gc.DEBUG_SAVEALL)
stylizer.stylize_tensor(torch.rand(1, 3, 48, 64))
gc.collect()

def real_tensor(o):  # not a fake tensor of the compiler's, nor a dead weak proxy
    try:
        return type(o) in (torch.Tensor, torch.nn.Parameter)
    except ReferenceError:
        return False

print(sum(o.numel() for o in gc.garbage if real_tensor(o)))
"""


@pytest.mark.parametrize(
    "options", [{"checkpoint": "on"}, {"graph": "compile"}, {"optimizer": "adam"}, {"backend": "reference"}]
)
def test_first_run_in_a_process_leaves_no_tensors_in_reference_cycles(options):
    """These paths import torch._dynamo on their first use (checkpointing, compilation, torch.optim),
    which, imported from inside a run, left the run's tensors in reference cycles, held until a full
    garbage collection. A fresh process, since only the first import does it."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", GARBAGE_AFTER_A_RUN, repr(options)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    # Not one image's worth (64 × 48 × 3 elements) of tensors: torch's own small cycles may hold a few.
    assert int(out.stdout.split()[-1]) < 64 * 48 * 3, out.stdout


PHOTOS = ["tubingen.jpg", "golden_gate.jpg", "hoovertowernight.jpg"]
PAINTINGS = ["starry_night.jpg", "the_scream.jpg", "shipwreck.jpg", "woman-with-hat-matisse.jpg"]


@pytest.mark.slow
@pytest.mark.parametrize("photo", PHOTOS)
def test_bf16_stays_finite_on_every_shared_pair(photo):
    from conftest import shared_image, skip_unless_native_bf16

    skip_unless_native_bf16()

    content = shared_image(photo)
    for painting in PAINTINGS:
        seen = []
        out = Stylizer(shared_image(painting), size=64, steps=8, backend="torch", precision="bf16").stylize_tensor(
            content, callback=seen.append
        )
        assert all(torch.isfinite(torch.tensor([it.loss, *it.losses.values()])).all() for it in seen), painting
        assert torch.isfinite(out).all() and seen[-1].loss < seen[0].loss, painting
