"""``nst-fast export features|step``: the VGG-19 feature extractor, or a stylization's whole
loss-and-gradient step, as a checked ONNX graph."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from ..atomic import atomic_save
from ..errors import OptionsError
from ..objective import placeholder_loss
from ..onnx import build_features_graph, build_step_graph, check_features, check_step, save, step_feeds
from ..options import parse_floats, split_list
from ..stylizer import Stylizer
from ..vgg import VGG19, check_layers
from ..weights import load_weights
from .common import EXIT_OK, ArgumentParser, add_option_flags, check_writable, options_from, say_unless

# Options that shape an exported graph (the rest — steps, optimizer, seed, ... — belong to the loop).
FEATURES_OPTIONS = ("pooling", "weights", "weights_preprocessing")
STEP_OPTIONS = (
    "size",
    "style_scale",
    "content_layers",
    "style_layers",
    "style_layer_weights",
    "content_weight",
    "style_weight",
    "normalize_losses",
    "tv_weight",
    "pooling",
    "weights",
    "weights_preprocessing",
    "device",
)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="nst-fast export",
        description="Write an ONNX graph (opset 17, dynamic height and width, checked with onnx.checker and "
        "against PyTorch in ONNX Runtime) that any ONNX engine runs: the VGG-19 feature extractor, or the whole "
        "loss-and-gradient step of a stylization (image → loss, ∂loss/∂image) with its backward written out.",
        epilog="examples:\n  nst-fast export features --layers relu1_1,relu4_2 -o vgg.onnx\n"
        "  nst-fast export step --content photo.jpg --style starry_night.jpg --size 512 -o step.onnx\n"
        "  nst-fast export step -o step.onnx                     # targets and weights as inputs\n"
        "  nst-fast export step --content photo.jpg --style starry_night.jpg --targets inputs \\\n"
        "      --feeds feeds.npz -o step.onnx                   # and the inputs for these images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="kind", required=True, metavar="{features,step}")
    features = sub.add_parser(
        "features",
        help="the truncated feature extractor: image → one output per layer",
        description="The VGG-19 feature extractor, truncated after the deepest layer, with "
        "one output per layer (named after it) and the weights' preprocessing inside: its "
        "input is RGB in [0, 1], N×3×H×W, float32.",
    )
    features.add_argument(
        "--layers",
        default=None,
        metavar="A,B,...",
        help="layers to output (default: the default content and style layers)",
    )
    add_option_flags(features, FEATURES_OPTIONS)
    step = sub.add_parser(
        "step",
        help="the loss-and-gradient step: image → (loss, ∂loss/∂image)",
        description="The loss of a stylization and its gradient with respect to the image "
        "(outputs loss, grad, and one scalar per term), with standard ops only.",
    )
    step.add_argument("--content", default=None, help="content image: its activations are the content targets")
    step.add_argument("--style", action="append", default=None, help="style image (repeat to blend)")
    step.add_argument("--style-blend", default=None, metavar="W1,W2,...", help="blend weights of the style images")
    step.add_argument(
        "--targets",
        choices=("inputs", "initializers"),
        default=None,
        help="targets and weights as graph inputs (one graph for many images) or baked in "
        "(default: initializers when --content and --style are given, else inputs)",
    )
    step.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="precision of the network inside (inputs and outputs stay float32) (default: %(default)s)",
    )
    step.add_argument(
        "--conv-backward",
        choices=("convtranspose", "conv"),
        default="convtranspose",
        help="a convolution's input gradient as ConvTranspose with its weights, or Conv with "
        "flipped copies (default: %(default)s)",
    )
    step.add_argument(
        "--feeds",
        metavar="FILE.npz",
        default=None,
        help="also write the graph's inputs for these images (targets as inputs): name → array",
    )
    add_option_flags(step, STEP_OPTIONS)
    for p in (features, step):
        p.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
        p.add_argument(
            "--no-check",
            dest="check",
            action="store_false",
            help="skip running the graph in ONNX Runtime against PyTorch",
        )
        p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return parser


def run(args: argparse.Namespace) -> int:
    check_writable(args.output, (".onnx",))
    options = options_from(args)
    say = say_unless(args.quiet)
    if args.kind == "features":
        layers = options.layers if args.layers is None else split_list(args.layers)
        if not layers:
            raise OptionsError("--layers must name at least one layer")
        layers = check_layers(layers)
        model = VGG19(layers, load_weights(options.weights, options.weights_preprocessing), options.pooling)
        proto = build_features_graph(model, layers)
        if args.check:
            error = check_features(proto, model)
            _checked(error, 1e-4, "features graph")
            say(f"checked against PyTorch in ONNX Runtime: relative error {error:.1e}")
        save(proto, args.output)
        say(f"wrote {args.output} ({_megabytes(args.output)}): image → {', '.join(layers)}")
        return EXIT_OK
    return _export_step(args, options, say)


def _export_step(args: argparse.Namespace, options, say) -> int:
    if args.feeds is not None:
        check_writable(args.feeds, (".npz",))
    have_images = args.content is not None or args.style is not None
    if have_images and (args.content is None or not args.style):
        raise OptionsError("--content and --style go together (or give neither, for targets as inputs)")
    targets = args.targets or ("initializers" if have_images else "inputs")
    if targets == "initializers" and not have_images:
        raise OptionsError("--targets initializers bakes in the targets of --content and --style: give both")
    if args.feeds is not None and not (have_images and targets == "inputs"):
        raise OptionsError("--feeds writes the inputs of a graph with --targets inputs for --content and --style")
    if have_images:
        blend = None if args.style_blend is None else parse_floats("style blend weights", args.style_blend)
        stylizer = Stylizer(args.style, options, style_blend=blend)
        model = stylizer.model
        _, loss_fn = stylizer.loss_for(args.content)
    else:
        if args.style_blend is not None:
            raise OptionsError("--style-blend needs --style images")
        model = VGG19(options.layers, load_weights(options.weights, options.weights_preprocessing), options.pooling)
        loss_fn = placeholder_loss(options)
    proto = build_step_graph(model, loss_fn, targets, args.dtype, args.conv_backward)
    if args.check:
        loss_error, grad_error = check_step(proto, model, loss_fn, None if have_images else (48, 40))
        # The gradient is discontinuous where a ReLU or a max-pool switches, and float32 rounding switches a
        # few of them at large sizes (~5e-4 at 512 px): its bound catches a wrong graph, not those.
        fp32 = args.dtype == "float32"
        _checked(loss_error, 1e-3 if fp32 else 1e-2, "step graph's loss")
        _checked(grad_error, 1e-2 if fp32 else 1e-1, "step graph's gradient")
        say(
            f"checked against torch autograd in ONNX Runtime: loss {loss_error:.1e}, gradient {grad_error:.1e} "
            "relative error"
        )
    if args.feeds is not None:
        feeds = step_feeds(loss_fn)
        atomic_save(args.feeds, lambda f: np.savez(f, **feeds))
        say(f"wrote {args.feeds}: {', '.join(feeds)}")
    save(proto, args.output)
    inputs = ", ".join(i.name for i in proto.graph.input)
    say(
        f"wrote {args.output} ({_megabytes(args.output)}, {args.dtype}, targets as {targets}): "
        f"{inputs} → {', '.join(o.name for o in proto.graph.output)}"
    )
    return EXIT_OK


def _checked(error: float, tolerance: float, what: str) -> None:
    if not math.isfinite(error) or error > tolerance:
        raise RuntimeError(
            f"the exported {what} differs from PyTorch by {error:.1e} (relative; over "
            f"{tolerance:.0e}): not trusted — please report this"
        )


def _megabytes(path: str) -> str:
    return f"{Path(path).stat().st_size / 2**20:.1f} MiB"
