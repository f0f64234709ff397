"""ONNX export and the onnxruntime backend (CPU provider): features and the loss-and-gradient step graph
against PyTorch, the analytic max-pool backward, the loop's contract, `nst-fast export`."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

ort = pytest.importorskip("onnxruntime")

from nst_fast import Options, Stylizer  # noqa: E402
from nst_fast.cli import main  # noqa: E402
from nst_fast.errors import NstError, OptionsError  # noqa: E402
from nst_fast.backends import LoopSpec  # noqa: E402
from nst_fast.backends import onnxruntime as backend  # noqa: E402
from nst_fast.losses import style_target  # noqa: E402
from nst_fast.objective import StyleTransferLoss, build_loss  # noqa: E402
from nst_fast.onnx import builder, export, graphs  # noqa: E402
from nst_fast.vgg import VGG19  # noqa: E402
from nst_fast.weights import load_weights  # noqa: E402

STYLE = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# What TensorRT's ONNX parser takes, and all the step graph may use.
ALLOWED_OPS = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Max",
    "Abs",
    "Reciprocal",
    "Cast",
    "Identity",
    "Gather",
    "Shape",
    "ReduceProd",
    "ReduceSum",
    "ReduceMax",
    "Reshape",
    "Transpose",
    "MatMul",
    "Conv",
    "ConvTranspose",
    "Relu",
    "MaxPool",
    "AveragePool",
    "Greater",
    "Equal",
    "And",
    "Not",
    "Or",
    "Where",
    "Slice",
    "Split",
    "Concat",
    "SpaceToDepth",
    "DepthToSpace",
    "Pad",
}


@pytest.fixture(scope="module")
def caffe():
    return load_weights("caffe")


def session(proto: onnx.ModelProto):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def make_loss(model, content_layers, style_layers, size, tv=0.0, seed=1, style_size=None):
    gen = torch.Generator().manual_seed(seed)
    content = torch.rand(1, 3, *size, generator=gen)
    style = torch.rand(1, 3, *(style_size or size), generator=gen)
    with torch.no_grad():
        a_c, a_s = model(content), model(style)
    return StyleTransferLoss(
        {n: a_c[n] for n in content_layers},
        {n: style_target(a_s[n]) for n in style_layers},
        {n: 1.0 / (i + 1) for i, n in enumerate(style_layers)},
        content_weight=1.5,
        style_weight=20.0,
        tv_weight=tv,
        impl="ref",
    )


def autograd64(model, loss_fn, image32):
    """Loss, terms and ∂loss/∂image by torch autograd in float64 at the same (float32) image."""
    model64 = copy.deepcopy(model).double()
    loss64 = StyleTransferLoss(
        {k: v.double() for k, v in loss_fn.content_targets.items()},
        {k: v.double() for k, v in loss_fn.style_targets.items()},
        loss_fn.layer_weights,
        loss_fn.content_weight,
        loss_fn.style_weight,
        loss_fn.tv_weight,
        impl="ref",
    )
    image = image32.double().requires_grad_(True)
    loss, terms = loss64(model64(image), image)
    loss.backward()
    return loss.item(), {k: v.item() for k, v in terms.items()}, image.grad.numpy()


# --- features --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_features_match_pytorch_at_two_sizes_from_one_file(caffe, tmp_path, pooling):
    layers = ("conv1_1", "relu2_1", "pool2", "relu4_2", "relu5_1")
    model = VGG19(layers, caffe, pooling)
    path = tmp_path / "features.onnx"
    export.export_features(model, path, layers)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    assert [o.name for o in proto.graph.output] == list(layers)
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == ["height", "width"]
    sess = session(proto)
    gen = torch.Generator().manual_seed(0)
    for size in ((48, 64), (67, 45)):
        image = torch.rand(1, 3, *size, generator=gen)
        with torch.no_grad():
            ref = model(image)
        for name, out in zip(layers, sess.run(None, {"image": image.numpy()})):
            assert out.shape == tuple(ref[name].shape)
            assert rel(out, ref[name].numpy()) < 1e-4, (size, name)


def test_features_reject_layers_deeper_than_the_model(caffe):
    with pytest.raises(OptionsError, match="deeper than the network"):
        graphs.build_features_graph(VGG19(["relu2_1"], caffe), ["relu3_1"])


# --- the step graph --------------------------------------------------------------------------------

CASES = [
    # pooling, content layers, style layers, image size (H, W), tv weight, targets
    ("avg", ["relu4_2"], STYLE, (64, 48), 0.0, "inputs"),
    ("max", ["relu4_2"], STYLE, (67, 45), 0.0, "inputs"),  # odd sides: floor pooling drops rows
    ("max", ["conv3_1"], ["relu1_1", "pool2", "relu3_1"], (45, 33), 2.0, "inputs"),
    ("avg", ["relu2_2"], ["conv1_2", "relu2_2"], (33, 31), 0.5, "initializers"),
    ("max", [], ["relu1_2", "relu3_2"], (40, 56), 0.0, "initializers"),
]


@pytest.mark.parametrize("pooling, content, style, size, tv, targets", CASES)
def test_step_graph_matches_autograd(caffe, pooling, content, style, size, tv, targets):
    model = VGG19([*content, *style], caffe, pooling)
    loss_fn = make_loss(model, content, style, size, tv, style_size=(size[0] + 8, size[1] - 4))
    proto = graphs.build_step_graph(model, loss_fn, targets)
    onnx.checker.check_model(proto, full_check=True)
    sess = session(proto)
    inputs = {i.name for i in sess.get_inputs()}
    assert (inputs == {"image"}) == (targets == "initializers")
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2))
    feeds = {"image": image.numpy(), **{k: v for k, v in graphs.step_feeds(loss_fn).items() if k in inputs}}
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(None, feeds)))
    # The oracle is torch autograd in float64 at the same image: the float32 engines differ from it by
    # ~1e-7, and from each other by as much as 5e-4 where a ReLU or a pool flips on a rounding difference.
    loss, terms, grad = autograd64(model, loss_fn, image)
    assert set(names) == {"loss", "grad", *terms}
    assert out["loss"].shape == () and out["grad"].shape == image.shape and out["grad"].dtype == np.float32
    assert abs(out["loss"] - loss) / loss < 1e-4
    for k, v in terms.items():
        assert abs(out[k] - v) / v < 1e-4, k
    assert rel(out["grad"], grad) < 1e-4
    # ... and torch's own float32 autograd, which the loops compare with.
    x = image.clone().requires_grad_(True)
    loss32, _ = loss_fn(model(x), x)
    loss32.backward()
    assert abs(out["loss"] - loss32.item()) / loss32.item() < 1e-4
    assert rel(out["grad"], x.grad.numpy()) < 2e-3


def test_one_inputs_graph_serves_other_sizes_and_targets(caffe):
    model = VGG19(["relu2_1", "relu3_1"], caffe, "max")
    sess = session(graphs.build_step_graph(model, make_loss(model, ["relu3_1"], ["relu2_1"], (32, 32))))
    for size in ((40, 24), (37, 53)):
        loss_fn = make_loss(model, ["relu3_1"], ["relu2_1"], size, seed=size[0])
        image = torch.rand(1, 3, *size)
        loss, grad = sess.run(["loss", "grad"], {"image": image.numpy(), **graphs.step_feeds(loss_fn)})
        ref_loss, _, ref_grad = autograd64(model, loss_fn, image)
        assert abs(loss - ref_loss) / ref_loss < 1e-4 and rel(grad, ref_grad) < 1e-4


def test_step_graph_uses_standard_ops_only(caffe):
    model = VGG19(["relu4_2", *STYLE], caffe, "max")
    loss_fn = make_loss(model, ["relu4_2"], STYLE, (32, 32), tv=1.0)
    for dtype in ("float32", "float16"):
        proto = graphs.build_step_graph(model, loss_fn, "inputs", dtype)
        ops = {n.op_type for n in proto.graph.node}
        assert ops <= ALLOWED_OPS, ops - ALLOWED_OPS
        assert "MaxUnpool" not in ops
        assert all(len(n.output) == 1 for n in proto.graph.node if n.op_type == "MaxPool"), "no Indices output"
        assert proto.opset_import[0].version == 17 and proto.opset_import[0].domain == ""
        elem = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
        assert set(elem.values()) == {onnx.TensorProto.FLOAT}, "float32 interface in both variants"
        weights = {t.name: t.data_type for t in proto.graph.initializer}
        expected = onnx.TensorProto.FLOAT16 if dtype == "float16" else onnx.TensorProto.FLOAT
        assert weights["conv1_1.weight"] == weights["conv5_1.weight"] == expected


def test_float16_step_is_close_to_float32(caffe):
    model = VGG19(["relu4_2", *STYLE], caffe, "avg")
    loss_fn = make_loss(model, ["relu4_2"], STYLE, (48, 48))
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(3))
    feeds = {"image": image.numpy(), **graphs.step_feeds(loss_fn)}
    out32 = session(graphs.build_step_graph(model, loss_fn, dtype=torch.float32)).run(["loss", "grad"], feeds)
    try:
        sess16 = session(graphs.build_step_graph(model, loss_fn, dtype=torch.float16))
    except Exception as e:  # noqa: BLE001 — an onnxruntime without CPU float16 kernels
        pytest.skip(f"this onnxruntime cannot run float16 convolutions on the CPU: {e}")
    out16 = sess16.run(["loss", "grad"], feeds)
    assert np.isfinite(out16[1]).all()
    assert abs(out16[0] - out32[0]) / out32[0] < 1e-2
    assert rel(out16[1], out32[1]) < 5e-2


def test_max_pool_backward_sends_ties_to_the_first_maximum():
    """The pool backward alone, on integers with many ties and odd sides, against torch: exact."""
    b = builder.GraphBuilder("float32")
    x = b.input("x", onnx.TensorProto.FLOAT, ["n", 5, "h", "w"])
    g = b.input("g", onnx.TensorProto.FLOAT, ["n", 5, "hp", "wp"])
    y = b.op("MaxPool", [x], outputs=["y"], kernel_shape=[2, 2], strides=[2, 2])
    b.output(graphs._pool_backward(b, "pool", x, y, g, True, 5), "dx", onnx.TensorProto.FLOAT, None)
    sess = session(b.model("pool_backward", ""))
    gen = torch.Generator().manual_seed(0)
    for h, w in ((6, 8), (7, 9), (5, 4)):
        xt = torch.randint(0, 3, (2, 5, h, w), generator=gen).double().requires_grad_(True)
        yt = torch.nn.functional.max_pool2d(xt, 2)
        gt = torch.rand(yt.shape, generator=gen, dtype=torch.float64)
        yt.backward(gt)
        (dx,) = sess.run(None, {"x": xt.detach().float().numpy(), "g": gt.float().numpy()})
        np.testing.assert_array_equal(dx, xt.grad.float().numpy())


def test_step_graph_rejects_layers_the_model_lacks(caffe):
    loss_fn = make_loss(VGG19(["relu1_1", "relu3_1"], caffe), ["relu3_1"], ["relu1_1"], (16, 16))
    with pytest.raises(OptionsError, match="deeper than the network"):
        graphs.build_step_graph(VGG19(["relu2_1"], caffe), loss_fn)
    with pytest.raises(OptionsError, match="targets must be"):
        graphs.build_step_graph(VGG19(["relu1_1", "relu3_1"], caffe), loss_fn, targets="baked")


# --- the onnxruntime loop --------------------------------------------------------------------------


def test_choose_providers():
    available = ort.get_available_providers()
    auto = backend.choose_providers()
    assert auto[-1] == "CPUExecutionProvider" and all(p in available for p in auto)
    assert auto == [p for p in backend.PREFERENCE if p in available]
    assert backend.choose_providers("cpu") == ["CPUExecutionProvider"]
    if "TensorrtExecutionProvider" not in available:
        with pytest.raises(OptionsError, match="'tensorrt' is not available"):
            backend.choose_providers("tensorrt")
    with pytest.raises(OptionsError, match="not available"):
        backend.choose_providers("npu")


def small_stylizer(**overrides) -> Stylizer:
    gen = torch.Generator().manual_seed(5)
    options = dict(size=40, content_layers=("relu3_1",), style_layers=("relu1_1", "relu2_1", "relu3_1"), steps=4)
    return Stylizer(torch.rand(3, 40, 40, generator=gen), **{**options, **overrides})


def test_loop_reports_every_step_like_the_reference():
    content = torch.rand(3, 32, 40, generator=torch.Generator().manual_seed(6))
    for optimizer in ("lbfgs", "adam"):
        traces = {}
        for name in ("reference", "onnxruntime"):
            its = []
            out = small_stylizer(backend=name, optimizer=optimizer).stylize_tensor(content, its.append)
            assert out.shape == (1, 3, 32, 40) and out.min() >= 0 and out.max() <= 1
            traces[name] = its
        ref, onx = traces["reference"], traces["onnxruntime"]
        assert [it.step for it in onx] == [1, 2, 3, 4] and all(it.steps == 4 for it in onx)
        assert all(set(it.losses) == {"content", "style"} and it.elapsed >= 0 for it in onx)
        assert all(it.image.shape == (1, 3, 32, 40) for it in onx)
        assert onx[0].loss == pytest.approx(ref[0].loss, rel=1e-4)
        assert onx[-1].loss == pytest.approx(ref[-1].loss, rel=2e-2)


def test_sessions_are_cached_between_runs(monkeypatch):
    stylizer = small_stylizer(backend="onnxruntime", steps=1)
    content = torch.rand(3, 40, 32)
    backend.clear_sessions()
    created = []
    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: created.append(1) or real(*a, **k))
    stylizer.stylize_tensor(content)
    stylizer.stylize_tensor(torch.rand(3, 32, 40))  # another image, another size: the same session
    assert len(created) == 1


def test_non_finite_loss_stops_with_one_line():
    stylizer = small_stylizer(backend="onnxruntime")
    content = torch.rand(1, 3, 40, 40)
    loss_fn = build_loss(stylizer.model, content, stylizer.style_targets, stylizer.options)
    with pytest.raises(NstError, match="the loss became nan at step 1"):
        backend.optimize(stylizer.model, loss_fn, torch.full_like(content, float("nan")), LoopSpec(steps=4))


def test_onnxruntime_stylization_lowers_the_loss_as_torch_does(tubingen, starry_night):
    options = Options(size=64, steps=15)
    finals = {}
    for name in ("reference", "onnxruntime"):
        its = []
        Stylizer(starry_night, options, backend=name).stylize_tensor(tubingen, its.append)
        assert its[-1].loss < 0.5 * its[0].loss
        finals[name] = its[-1].loss
    assert finals["onnxruntime"] == pytest.approx(finals["reference"], rel=0.05)


def test_bench_registers_the_backend():
    from nst_fast import bench

    assert ("onnxruntime", "fp32") in bench.configurations("cpu")
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(1, 3, 32, 32, generator=gen), torch.rand(1, 3, 32, 32, generator=gen))
    m = bench.measure_step("onnxruntime", "fp32", size=32, device="cpu", rounds=2, warmup=1, images=images)
    r = bench.measure_step("reference", "fp32", size=32, device="cpu", rounds=2, warmup=1, images=images)
    assert m.ms_median > 0 and m.loss == pytest.approx(r.loss, rel=1e-4)


# --- nst-fast export -------------------------------------------------------------------------------


def run(argv, capsys):
    code = main(["export", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_features_command(tmp_path, capsys):
    path = tmp_path / "vgg.onnx"
    code, _, err = run(["features", "--layers", "relu1_1,relu3_1", "--pooling", "max", "-o", path], capsys)
    assert code == 0 and "checked against PyTorch" in err and "wrote" in err
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["relu1_1", "relu3_1"]
    assert {n.op_type for n in proto.graph.node} >= {"MaxPool", "Conv", "Relu"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg.onnx"]


def test_export_step_command(images, tmp_path, capsys):
    content, style = images
    small = ["--size", "32", "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1"]
    baked, inputs = tmp_path / "baked.onnx", tmp_path / "inputs.onnx"
    code, _, err = run(
        ["step", "--content", content, "--style", style, *small, "--tv-weight", "1", "-o", baked], capsys
    )
    assert code == 0 and "targets as initializers" in err, err
    proto = onnx.load(baked)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["loss", "grad", "content", "style", "tv"]
    feeds_path = tmp_path / "feeds.npz"
    code, _, err = run(
        [
            "step",
            "--content",
            content,
            "--style",
            style,
            *small,
            "--targets",
            "inputs",
            "--feeds",
            feeds_path,
            "--dtype",
            "float16",
            "-q",
            "-o",
            inputs,
        ],
        capsys,
    )
    assert code == 0 and err == ""
    feeds = dict(np.load(feeds_path))
    proto = onnx.load(inputs)
    assert {i.name for i in proto.graph.input} == {"image", *feeds}
    code, _, err = run(["step", *small, "-o", tmp_path / "generic.onnx"], capsys)
    assert code == 0 and "targets as inputs" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["content.png", "style.png", "baked.onnx", "inputs.onnx", "feeds.npz", "generic.onnx"]
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["features", "--layers", "relu9_1", "-o", "{tmp}/f.onnx"], "unknown VGG-19 layer 'relu9_1'"),
        (["features", "-o", "{tmp}/f.txt"], "must end in .onnx"),
        (["features", "-o", "{tmp}/missing/f.onnx"], "output directory does not exist"),
        (["step", "--content", "{content}", "-o", "{tmp}/s.onnx"], "--content and --style go together"),
        (["step", "--targets", "initializers", "-o", "{tmp}/s.onnx"], "bakes in the targets"),
        (
            ["step", "--content", "{content}", "--style", "{style}", "--feeds", "{tmp}/f.npz", "-o", "{tmp}/s.onnx"],
            "--feeds writes the inputs",
        ),
        (
            ["step", "--content", "{tmp}/nope.png", "--style", "{style}", "--size", "32", "-o", "{tmp}/s.onnx"],
            "nope.png",
        ),
        (["step", "--style-weight", "-1", "-o", "{tmp}/s.onnx"], "style_weight must not be negative"),
        (["bogus", "-o", "{tmp}/s.onnx"], "invalid choice"),
        ([], "required"),
    ],
)
def test_export_bad_input_is_one_line_and_writes_nothing(images, tmp_path, capsys, argv, message):
    content, style = images
    argv = [a.format(tmp=tmp_path, content=content, style=style) for a in argv]
    try:
        code, _, err = run(argv, capsys)
    except SystemExit as e:  # argparse
        code, err = e.code, capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content.png", "style.png"]
