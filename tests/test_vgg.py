"""VGG-19: layer names, truncation, pooling, preprocessing, and every weights source and layout."""

from __future__ import annotations

import importlib.resources
import urllib.error

import pytest
import torch

from nst_fast import VGG19, weights
from nst_fast.errors import OptionsError, WeightsError
from nst_fast.vgg import LAYER_NAMES, Preprocess, min_image_side
from nst_fast.weights import CAFFE, CONV_NAMES, TORCHVISION, TORCHVISION_INDEX, load_weights


@pytest.fixture(scope="module")
def caffe():
    return load_weights("caffe")


def test_layer_names():
    assert len(LAYER_NAMES) == 16 * 2 + 5
    assert LAYER_NAMES[:6] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1")
    assert LAYER_NAMES[-3:] == ("conv5_4", "relu5_4", "pool5")
    assert [n for n in LAYER_NAMES if n.startswith("pool")] == [f"pool{i}" for i in range(1, 6)]
    assert LAYER_NAMES.index("relu4_2") < LAYER_NAMES.index("pool4")


def test_bundled_caffe_weights_decode_the_codebook(caffe):
    assert set(caffe.convs) == set(CONV_NAMES) and caffe.preprocessing == CAFFE
    resource = importlib.resources.files(weights.CAFFE_PACKAGE) / weights.CAFFE_FILE
    with importlib.resources.as_file(resource) as path:
        raw = torch.load(path, weights_only=True)
    for name in CONV_NAMES:
        w, b = caffe.convs[name]
        assert w.shape == weights.conv_shape(name) and b.shape == w.shape[:1] and w.dtype == torch.float32
        key = f"block{name[4]}_conv{name[6]}"
        q, table = raw[f"{key}_W_q"], raw[f"{key}_W_table"]
        assert torch.equal(w, table[q.long()])
        assert torch.equal(b, raw[f"{key}_b"].float())
        assert len(w.unique()) > 100, "a codebook of 256 values, mostly used"
    # Caffe's first layer sees 0–255 inputs: its weights are small.
    assert caffe.convs["conv1_1"][0].abs().max() < 1


def test_preprocessing_maps_the_mean_colour_to_zero():
    for prep in (CAFFE, TORCHVISION):
        mean_rgb = torch.tensor(prep.mean[::-1] if prep.bgr else prep.mean) / prep.scale
        out = Preprocess(prep)(mean_rgb.view(1, 3, 1, 1).expand(1, 3, 4, 4))
        assert out.abs().max() < 1e-5


def test_caffe_preprocessing_is_bgr_0_255():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    out = Preprocess(CAFFE)(red)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([-103.939, -116.779, 255 - 123.68]))


def test_returns_requested_layers_and_truncates(caffe):
    model = VGG19(["relu1_1", "conv3_1", "relu3_1"], caffe)
    assert list(model.body)[-1] == "relu3_1" and model.last_layer == "relu3_1"
    assert sum(1 for n in model.body if n.startswith("conv")) == 5
    out = model(torch.rand(2, 3, 64, 48))
    assert list(out) == ["relu1_1", "conv3_1", "relu3_1"]
    assert out["relu1_1"].shape == (2, 64, 64, 48)
    assert out["relu3_1"].shape == (2, 256, 16, 12)
    # The requested convolution output is not overwritten by its in-place ReLU.
    assert (out["conv3_1"] < 0).any()
    assert torch.equal(out["relu3_1"], out["conv3_1"].clamp(min=0))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_pooling(caffe, pooling):
    model = VGG19(["pool1", "conv2_1"], caffe, pooling)
    relu = VGG19(["relu1_2"], caffe)
    x = torch.rand(1, 3, 8, 8)
    a = relu(x)["relu1_2"]
    expected = torch.nn.functional.max_pool2d(a, 2) if pooling == "max" else torch.nn.functional.avg_pool2d(a, 2)
    assert torch.allclose(model(x)["pool1"], expected)


def test_frozen(caffe):
    model = VGG19(["relu2_1"], caffe)
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    model(x)["relu2_1"].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_unknown_layer_and_pooling():
    with pytest.raises(OptionsError, match="relu6_1"):
        VGG19(["relu6_1"])
    with pytest.raises(OptionsError, match="pooling"):
        VGG19(["relu1_1"], pooling="median")


def test_min_image_side():
    assert min_image_side(["relu1_1"]) == 1
    assert min_image_side(["relu2_1"]) == 2
    assert min_image_side(["relu1_1", "relu5_1"]) == 16
    assert min_image_side(["pool5"]) == 32


def _torchvision_layout(w: weights.VGGWeights) -> dict[str, torch.Tensor]:
    state = {}
    for name, (weight, bias) in w.convs.items():
        i = TORCHVISION_INDEX[name]
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = weight.clone(), bias.clone()
    state["classifier.0.weight"] = torch.zeros(2, 2)  # extra keys are ignored
    return state


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_file_in_torchvision_layout(caffe, tmp_path, suffix):
    path = tmp_path / f"vgg19{suffix}"
    state = _torchvision_layout(caffe)
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    loaded = load_weights(path)
    assert loaded.preprocessing == TORCHVISION
    assert all(torch.equal(loaded.convs[n][0], caffe.convs[n][0]) for n in CONV_NAMES)
    # Caffe weights converted to torchvision's layout (as neural-style-pt ships them) keep Caffe's inputs.
    as_caffe = load_weights(path, preprocessing="caffe")
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(VGG19(["relu3_1"], as_caffe)(x)["relu3_1"], VGG19(["relu3_1"], caffe)(x)["relu3_1"])


def test_local_file_in_caffe_layout(caffe, tmp_path):
    state = {}
    for name, (weight, bias) in caffe.convs.items():
        key = f"block{name[4]}_conv{name[6]}"
        state[f"{key}_W"], state[f"{key}_b"] = weight, bias
    torch.save(state, tmp_path / "caffe.pth")
    loaded = load_weights(tmp_path / "caffe.pth")
    assert loaded.preprocessing == CAFFE
    assert all(torch.equal(loaded.convs[n][1], caffe.convs[n][1]) for n in CONV_NAMES)


def test_bad_weights_files(caffe, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "missing.pth")
    state = _torchvision_layout(caffe)
    state["features.10.weight"] = torch.zeros(256, 128, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"conv3_1 has weight \(256, 128, 5, 5\)"):
        load_weights(tmp_path / "shape.pth")
    del state["features.34.bias"]
    state["features.10.weight"] = caffe.convs["conv3_1"][0]
    torch.save(state, tmp_path / "missing_key.pth")
    with pytest.raises(WeightsError, match="features.34.bias"):
        load_weights(tmp_path / "missing_key.pth")
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="layout"):
        load_weights(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_weights(tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="preprocessing"):
        load_weights("caffe", preprocessing="bgr")


def test_torchvision_weights_offline_fail_with_alternatives(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    weights._torchvision_hub.cache_clear()
    with pytest.raises(WeightsError) as e:
        load_weights("torchvision")
    message = str(e.value)
    assert "name resolution" in message and "'caffe'" in message and ".safetensors" in message
    assert "\n" not in message


def test_torchvision_weights_through_the_hub(caffe, monkeypatch):
    calls = []

    def fake_hub(url, **kwargs):
        calls.append(url)
        return _torchvision_layout(caffe)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_hub)
    weights._torchvision_hub.cache_clear()
    try:
        loaded = load_weights("torchvision")
        assert calls == [weights.TORCHVISION_URL] and loaded.preprocessing == TORCHVISION
    finally:
        weights._torchvision_hub.cache_clear()


def test_the_receptive_field_and_the_context_a_piece_needs():
    """The geometry behind tiled style targets (objective.style_grams): 156 px for relu5_1 (each 3×3
    convolution adds two positions of its input, each pooling one), and half of it, on the 16 px grid of
    relu5_1's stride, as context: 80 px."""
    from nst_fast.vgg import context_margin, receptive_field

    assert [receptive_field(n) for n in ("conv1_1", "pool1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")] == [
        3, 6, 10, 24, 68, 156,
    ]  # fmt: skip
    assert context_margin(("relu1_1", "relu5_1")) == 80 and context_margin(("relu1_1", "relu3_1")) == 12
