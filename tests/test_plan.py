"""The plan (nst_fast.plan): every decision about a run made once, from options, shape and device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nst_fast
import nst_fast.image
import nst_fast.memory
from nst_fast import MemoryFitError, Options, Plan, Stylizer
from nst_fast.cli import main
from nst_fast.errors import ImageError, OptionsError
from nst_fast.plan import AS_FLAG, fit_advice, lbfgs_history, schedule
from nst_fast.tiling import tile_grid

CPU = torch.device("cpu")


def test_a_plan_holds_the_scales_tiles_steps_and_the_loop_of_each():
    options = Options(size=256, pyramid_start=64, steps=20, pyramid_steps=8, tile=96)
    plan = Plan.resolve(options, (300, 400), CPU)
    assert [(s.size, s.height, s.width) for s in plan.scales] == [(64, 48, 64), (128, 96, 128), (256, 192, 256)]
    tiles = [len(tile_grid(s.height, s.width, 96, options.overlap)) if s.size > 96 else 1 for s in plan.scales]
    assert [len(s.tiles) for s in plan.scales] == tiles == [1, 2, 12] and [s.steps for s in plan.scales] == [20, 8, 8]
    assert plan.total_steps == 20 + 8 * 2 + 8 * 12
    for scale in plan.scales:
        piece = scale.tiles[0]
        assert scale.loop.precision == plan.precision and scale.loop.history == lbfgs_history(
            3 * piece.height * piece.width
        )
        assert scale.loop.optimizer == "lbfgs" and scale.loop.learning_rate == 1.0 and scale.loop.graph == "eager"
    # The run's peak is its largest scale's, plus (on a CPU) the content as loaded.
    largest = max(plan.scales, key=lambda s: s.estimate.total).estimate
    assert plan.estimate.total == largest.total + 300 * 400 * 3 * 4
    assert plan.scales[-1].estimate.canvas > 0 and plan.scales[0].estimate.canvas == 0
    assert schedule(options) == tuple((s.size, s.steps) for s in plan.scales)


def test_the_reference_and_onnxruntime_run_in_float32_whatever_is_asked():
    for backend in ("reference", "onnxruntime"):
        plan = Plan.resolve(Options(size=64, backend=backend, precision="bf16", checkpoint="on"), (64, 64), CPU)
        assert plan.precision.name == "fp32" and not any(s.loop.checkpoint for s in plan.scales)
    assert (
        Plan.resolve(Options(size=64, device="cpu", backend="onnxruntime"), (64, 64), CPU).scales[0].loop.providers
        == "cpu"
    )


def test_checkpointing_auto_follows_the_free_memory(monkeypatch):
    options = Options(size=128)
    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: 2**40)
    assert not Plan.resolve(options, (96, 128), CPU).scales[0].loop.checkpoint
    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: 2**20)
    tight = Plan.resolve(options, (96, 128), CPU)
    assert tight.scales[0].loop.checkpoint and not tight.fits
    assert not Plan.resolve(options.replace(checkpoint="off"), (96, 128), CPU).scales[0].loop.checkpoint


def test_a_plan_that_does_not_fit_names_changes_that_do(monkeypatch):
    options = Options(size=256, checkpoint="off")
    whole = Plan.resolve(options, (192, 256), CPU).estimate.beyond_loaded
    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: whole // 2)
    plan = Plan.resolve(options, (192, 256), CPU)
    found = plan.suggestions()
    assert any("tile" in c for c in found) and any("size" in c for c in found)
    for change in found:  # each one really fits, by the same estimate
        assert plan.replace(**change).estimate.beyond_loaded <= whole // 2, change
    # The library names Options fields; the error keeps the changes for a front end to spell its own way.
    with pytest.raises(MemoryFitError, match="MiB is free on cpu; by the estimate, any of these would fit: ") as e:
        plan.check_fits()
    assert all(f"{k}={v!r}" in str(e.value) for c in found for k, v in c.items()) and "--" not in str(e.value)
    assert e.value.changes == found and str(e.value).startswith(e.value.reason)
    assert fit_advice(found, AS_FLAG).endswith(", ".join(f"--{k} {v}" for c in found for k, v in c.items()))


def test_too_small_content_and_cuda_graphs_on_a_cpu_are_refused_when_planned():
    with pytest.raises(
        ImageError, match="content image is 3×200 px at this size; layers up to relu5_1 need at least 16"
    ):
        Plan.resolve(Options(size=200), (400, 6), CPU)
    with pytest.raises(OptionsError, match="needs a CUDA device"):
        Plan.resolve(Options(size=64, graph="cuda"), (64, 64), CPU)


def test_only_the_stylizers_own_plan_runs():
    stylizer = Stylizer(torch.rand(3, 48, 48), size=48, steps=2)
    content = torch.rand(1, 3, 40, 48)
    out = stylizer.stylize_tensor(content, plan=stylizer.plan(content))
    assert out.shape == content.shape
    with pytest.raises(ValueError, match="other options"):
        stylizer.stylize_tensor(content, plan=stylizer.plan(content, tile=32))
    with pytest.raises(ValueError, match="image"):
        stylizer.stylize_tensor(content, plan=stylizer.plan(torch.rand(1, 3, 48, 48)))


def test_a_cli_run_decodes_each_content_image_once(images, tmp_path, monkeypatch, capsys):
    content, style = images
    second = tmp_path / "photos"
    second.mkdir()
    for name in ("a.png", "b.png"):
        (second / name).write_bytes(content.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    decoded = []
    read = nst_fast.image.read_image
    monkeypatch.setattr(
        nst_fast.image, "read_image", lambda path, *a, **k: decoded.append(Path(path).name) or read(path, *a, **k)
    )
    # A pyramid and tiles: several scales, several estimates — and still one decode per image.
    argv = [second, style, "-o", out, "--size", "64", "--pyramid-start", "32", "--tile", "48", "--steps", "2"]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    assert sorted(decoded) == ["a.png", "b.png", "style.png"]


def test_a_style_scaled_beyond_the_pixel_limit_or_memory_is_refused_before_it_is_resized(monkeypatch):
    """``style_scale`` multiplies the style's size; the result must stay within ``max_pixels`` like any
    input's (a style_scale of 100 once ran VGG-19 on 6400×4000 px before the first iteration)."""
    import nst_fast.stylizer

    from nst_fast.plan import check_style_size, style_tile

    options = Options(size=64, style_scale=100, max_pixels=2**24)
    with pytest.raises(ImageError, match=r"style image would be 6400×4000 = 25600000 px .* style scale 100"):
        check_style_size(options, 400, 640)
    check_style_size(options.replace(style_scale=2), 400, 640)
    with pytest.raises(ImageError, match="style image is 3×2 px"):  # and big enough for the layers
        check_style_size(options.replace(style_scale=0.05), 400, 640)
    # Beyond free memory, the style goes through the network in tiles: refused only if none fits.
    scaled = options.replace(style_scale=20)  # 1280×800 px
    need = nst_fast.memory.forward_bytes(options.layers, 800, 1280)
    assert style_tile(scaled, 800, 1280, need) is None
    tile = style_tile(scaled, 800, 1280, need - 1)
    assert tile == 640 and nst_fast.memory.forward_bytes(options.layers, 640, 640) <= need - 1
    assert style_tile(scaled.replace(tile=512), 800, 1280, None) == 512  # --tile: the content's tiles' side
    smallest = nst_fast.memory.forward_bytes(options.layers, 224, 224)  # 2 × 80 px margins + 4 × 16
    assert style_tile(scaled, 800, 1280, smallest) == 224
    with pytest.raises(MemoryFitError, match=r"style image's targets at 1280×800 px .* in the smallest tiles 28 MiB"):
        check_style_size(scaled, 400, 640, free_bytes=smallest - 1)
    resized = []
    monkeypatch.setattr(nst_fast.stylizer, "resize_longest", lambda *a: resized.append(a) or a[0])
    with pytest.raises(ImageError, match="lower --size or --style-scale"):
        Stylizer(torch.rand(3, 400, 640), options)
    assert resized == [], "refused before any resize"


STYLE_FORWARD = """
import sys, torch
from nst_fast import Options
from nst_fast.memory import forward_bytes, process_status_kb
from nst_fast.objective import style_targets
from nst_fast.vgg import VGG19
from nst_fast.weights import load_weights
count, layers = int(sys.argv[1]), tuple(sys.argv[2].split(","))
o = Options(style_layers=layers)
model = VGG19(o.layers, load_weights(o.weights, None), o.pooling).to(memory_format=torch.channels_last)
images = [torch.rand(1, 3, 1024, 1024) for _ in range(count)]
base = process_status_kb("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # the peak resident set from here
style_targets(model, images, [1.0] * count, o.style_layers)
print((process_status_kb("VmHWM") - base) * 1024 / forward_bytes(o.layers, 1024, 1024))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize(
    ("count", "layers"),
    [(1, "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"), (2, "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"),
     (1, "conv1_1,conv2_1,conv3_1,conv4_1,conv5_1")],
)  # fmt: skip
def test_the_style_forward_estimate_matches_the_measured_peak(count, layers):
    """The style's forward pass at 1024² px, in a fresh process: its peak resident set over the estimate,
    with two style images (one's activations at a time) and with convolutions requested (their ReLUs
    then not in place)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", STYLE_FORWARD, str(count), layers],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert 0.85 < float(out.stdout.split()[-1]) < 1.2


def test_free_gpu_memory_counts_what_the_caching_allocator_holds_unused(monkeypatch):
    """In a long-lived process PyTorch keeps freed GPU blocks reserved: the driver does not see them as
    free, but a run can use them (checked without a GPU, from the allocator's figures)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 50 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 20 * 2**30)
    assert nst_fast.memory.available_bytes(torch.device("cuda", 0)) == 33 * 2**30


def test_the_style_check_uses_the_devices_free_memory(monkeypatch):
    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: 2**20)
    with pytest.raises(MemoryFitError, match="style image's targets at 64×64 px"):
        Stylizer(torch.rand(3, 64, 64), size=64)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_a_style_in_tiles_has_the_whole_images_targets(pooling, monkeypatch):
    """Each tile contributes its core's Gram matrix, whose features are the whole image's (margins of half
    the receptive field, tiles on the deepest stride's grid): the same targets to float rounding, at
    sides that are no multiples of 16 and tiles that leave short last cores. Narrower margins break it."""
    import nst_fast.objective
    from nst_fast.objective import style_grams

    stylizer = Stylizer(torch.rand(3, 64, 64), size=64, precision="fp32", pooling=pooling)
    layers = stylizer.options.style_layers
    gen = torch.Generator().manual_seed(3)
    for shape in [(1, 3, 300, 413), (1, 3, 517, 260)]:
        image = torch.rand(*shape, generator=gen)
        whole = style_grams(stylizer.model, image, layers)
        for tile in (200, 257):
            tiled = style_grams(stylizer.model, image, layers, tile)
            for name in layers:
                assert torch.allclose(tiled[name], whole[name], rtol=1e-4, atol=1e-5 * whole[name].abs().max())
    monkeypatch.setattr(nst_fast.objective, "context_margin", lambda layers: 16)
    tiled = style_grams(stylizer.model, image, layers, 200)
    assert not torch.allclose(tiled["relu5_1"], whole["relu5_1"], rtol=1e-3, atol=1e-3 * whole["relu5_1"].abs().max())


def test_a_style_too_large_for_memory_is_tiled_not_refused(monkeypatch):
    """The Stylizer runs a style whose forward pass would not fit through the network in tiles, to the
    same targets as a run with room for the whole image."""
    style = torch.rand(3, 300, 413, generator=torch.Generator().manual_seed(4))
    whole = Stylizer(style, size=300, precision="fp32").style_targets
    free = 30 * 2**20  # room for a 224 px tile's forward pass, not for the 300×218 px style's
    monkeypatch.setattr(nst_fast.memory, "available_bytes", lambda device: free)
    assert nst_fast.memory.forward_bytes(Options().layers, 218, 300) > free
    tiled = Stylizer(style, size=300, precision="fp32").style_targets
    for name, target in whole.items():
        assert torch.allclose(tiled[name], target, rtol=1e-4, atol=1e-5 * target.abs().max())
