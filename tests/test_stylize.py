"""End to end: the reference optimization on the shared images, and the library API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import nst_fast
from nst_fast import Options, Stylizer
from nst_fast.errors import ImageError, OptionsError
from nst_fast.image import load_image, resize_longest

FAST = dict(steps=30, size=64)


@pytest.mark.slow
@pytest.mark.parametrize(
    "weights",
    [dict(style_weight=100.0), dict(normalize_losses=False, content_weight=10.0, style_weight=40.0)],
    ids=["normalized", "raw-formulas"],
)
def test_reference_lowers_the_loss_tenfold_and_changes_the_image(tubingen, starry_night, weights):
    losses = []
    stylizer = Stylizer(starry_night, size=128, steps=60, init="noise", backend="reference", **weights)
    result = stylizer.stylize_tensor(tubingen, callback=lambda it: losses.append(it.loss))
    assert len(losses) == 60
    assert losses[-1] * 10 <= losses[0], f"loss fell only from {losses[0]:.4g} to {losses[-1]:.4g}"
    content = resize_longest(load_image(tubingen), 128)
    style = resize_longest(load_image(starry_night), 128)
    assert result.shape == content.shape
    assert (result - content).abs().mean() > 0.05, "the output must not be the content image"
    assert result.shape != style.shape or (result - style).abs().mean() > 0.05
    assert result.min() >= 0 and result.max() <= 1 and torch.isfinite(result).all()


@pytest.mark.slow
@pytest.mark.parametrize("init", ["noise", "content+noise"])
def test_noise_inits_lower_the_loss(tubingen, the_scream, init):
    losses = []
    Stylizer(the_scream, size=64, steps=40, init=init, optimizer="adam", lr=0.05).stylize(
        tubingen, callback=lambda it: losses.append(it.loss)
    )
    assert losses[-1] * 3 <= losses[0]


def test_api_accepts_paths_pil_and_tensors(tubingen, starry_night):
    pil = Image.open(tubingen)
    tensor = load_image(tubingen)[0]
    outputs = [
        nst_fast.stylize(c, s, steps=3, size=48)
        for c, s in [
            (tubingen, starry_night),
            (str(tubingen), Image.open(starry_night)),
            (tensor, load_image(starry_night)),
        ]
    ]
    assert all(isinstance(o, Image.Image) and o.size == outputs[0].size for o in outputs)
    assert max(outputs[0].size) == 48 and outputs[0].size[0] > outputs[0].size[1]  # tubingen is landscape
    a, b = (torch.from_numpy(np.array(o)) for o in outputs[:2])
    assert torch.equal(a, b), "the same inputs given as path and PIL must give the same output"
    del pil


def test_stylizer_computes_style_targets_once(tubingen, starry_night, monkeypatch):
    stylizer = Stylizer(starry_night, **FAST)
    calls = []
    monkeypatch.setattr(nst_fast.stylizer, "style_targets", lambda *a, **k: calls.append(1))
    first = stylizer.stylize_tensor(tubingen)
    second = stylizer.stylize_tensor(load_image(tubingen).flip(-1))
    assert calls == [] and first.shape == second.shape and not torch.equal(first, second)


def test_callback_receives_each_iterate():
    seen = []
    nst_fast.stylize(torch.rand(3, 40, 48), torch.rand(3, 32, 32), callback=seen.append, steps=5, size=32)
    assert [it.step for it in seen] == [1, 2, 3, 4, 5]
    assert all(it.steps == 5 and set(it.losses) == {"content", "style"} for it in seen)
    assert all(seen[i].elapsed <= seen[i + 1].elapsed for i in range(4))
    assert seen[-1].image.shape == (1, 3, 27, 32) and seen[-1].to_pil().size == (32, 27)


@pytest.mark.parametrize(
    "options",
    [
        dict(init="content"),
        dict(init="content+noise", preserve_colors=True),
        dict(size=48, tile=32),
        dict(backend="reference", size=48, pyramid_start=24),
    ],
    ids=["content", "noise+colors", "tiled", "pyramid"],
)
def test_content_tensor_is_used_without_a_copy_and_left_unchanged(options):
    """The Stylizer reads a clean float32 content tensor in place (at print resolution a copy costs
    hundreds of MB), so no path of a run may write to it."""
    content, style = torch.rand(1, 3, 40, 48), torch.rand(3, 32, 32)
    before = content.clone()
    assert load_image(content, copy=False).data_ptr() == content.data_ptr()  # as the Stylizer reads it
    assert load_image(content).data_ptr() != content.data_ptr()  # the public default: a copy
    out = Stylizer(style, **{"steps": 4, "size": 48, **options}).stylize_tensor(content)
    assert torch.equal(content, before) and not torch.equal(out, content)


def test_seed_makes_runs_reproducible():
    c, s = torch.rand(3, 32, 32), torch.rand(3, 32, 32)
    kw = dict(steps=4, size=32, init="content+noise")
    a = Stylizer(s, **kw).stylize_tensor(c)
    b = Stylizer(s, **kw).stylize_tensor(c)
    d = Stylizer(s, seed=1, **kw).stylize_tensor(c)
    assert torch.equal(a, b) and not torch.equal(a, d)


def test_style_blend_matches_blended_targets():
    s1, s2 = torch.rand(3, 32, 32), torch.rand(3, 32, 32)
    blended = Stylizer([s1, s2], style_blend=[3, 1], size=32, steps=0)
    one, two = Stylizer(s1, size=32, steps=0), Stylizer(s2, size=32, steps=0)
    for name, target in blended.style_targets.items():
        assert torch.allclose(target, 0.75 * one.style_targets[name] + 0.25 * two.style_targets[name])
    with pytest.raises(OptionsError, match="2 style images"):
        Stylizer([s1, s2], style_blend=[1.0], size=32)


def test_too_small_images_and_bad_options_fail_clearly():
    with pytest.raises(ImageError, match="at least 16 px"):
        nst_fast.stylize(torch.rand(3, 8, 200), torch.rand(3, 32, 32), size=100, steps=1)
    with pytest.raises(OptionsError, match="unknown option"):
        nst_fast.stylize(torch.rand(3, 32, 32), torch.rand(3, 32, 32), sise=32)
    with (
        pytest.raises(OptionsError, match="no usable CUDA")
        if not torch.cuda.is_available()
        else pytest.raises(OptionsError, match="only")
    ):
        Stylizer(torch.rand(3, 32, 32), device="cuda" if not torch.cuda.is_available() else "cuda:99")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(style_weight=-1.0), "must not be negative"),
        (dict(content_weight=float("nan")), "finite"),
        (dict(style_weight="lots"), "must be a number"),
        (dict(style_layers="relu1_1,relu9_9"), "relu9_9"),
        (dict(style_layer_weights=(1.0, 2.0)), "2 style layer weights given for 5"),
        (dict(style_layer_weights="1,x,1,1,1"), "'x' is not a number"),
        (dict(size=0), "size must be positive"),
        (dict(steps=2.5), "integer"),
        (dict(init="zeros"), "or an image file; .zeros. is neither"),
        (dict(noise_ratio=1.5), "between 0 and 1"),
    ],
)
def test_options_are_validated(change, message):
    with pytest.raises(OptionsError, match=message):
        Options().replace(**change)


def test_options_accept_strings_and_lists():
    o = Options(style_layers=["relu1_1", "relu2_1"], style_layer_weights="0.5, 2", content_layers="relu3_2")
    assert o.style_layers == ("relu1_1", "relu2_1") and o.content_layers == ("relu3_2",)
    assert o.layer_weights == {"relu1_1": 0.5, "relu2_1": 2.0}
    assert Options(style_layers="relu1_1 relu2_1").layer_weights == {"relu1_1": 0.5, "relu2_1": 0.5}
    assert o.layers == ("relu3_2", "relu1_1", "relu2_1")


def test_weights_file_with_caffe_preprocessing(tmp_path):
    from nst_fast.weights import TORCHVISION_INDEX, load_weights

    state = {}
    for name, (w, b) in load_weights("caffe").convs.items():
        state[f"features.{TORCHVISION_INDEX[name]}.weight"], state[f"features.{TORCHVISION_INDEX[name]}.bias"] = w, b
    torch.save(state, tmp_path / "vgg19-caffe.pth")
    style = torch.rand(3, 32, 32)
    as_caffe = Stylizer(
        style, size=32, steps=0, weights=str(tmp_path / "vgg19-caffe.pth"), weights_preprocessing="caffe"
    )
    as_torchvision = Stylizer(style, size=32, steps=0, weights=str(tmp_path / "vgg19-caffe.pth"))
    bundled = Stylizer(style, size=32, steps=0)
    for name, target in bundled.style_targets.items():
        assert torch.equal(as_caffe.style_targets[name], target)
        assert not torch.allclose(as_torchvision.style_targets[name], target)


FIRST_AND_LATER_CALLS = """
import sys, torch
from nst_fast import Stylizer
stylizer = Stylizer(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)), size=64, steps=6,
                    precision=sys.argv[1])
content = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(2))
first, second = stylizer.stylize_tensor(content), stylizer.stylize_tensor(content)
print((first - second).abs().max().item())
"""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_first_call_in_a_process_gives_what_later_calls_give(precision):
    """The engine once changed the network's layout during the first run, after that run's content
    targets were computed: the first call in a process gave another image than every later one."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FIRST_AND_LATER_CALLS, precision], capture_output=True, text=True,
                         check=True, timeout=300)
    assert float(out.stdout.split()[-1]) == 0.0
