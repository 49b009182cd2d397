"""``cnnlab style`` and ``cnnlab weights fetch``.

    cnnlab style [CONTENT STYLE[,STYLE...]] [-o OUT.png] [options]
    cnnlab weights fetch {vgg19,vgg16,vgg19-caffe,vgg16-caffe} [--dir DIR] [--quiet]

``register(subparsers)`` adds both; handlers return an exit code and let CnnlabError
reach the CLI, which prints it as one line.
"""
from __future__ import annotations

import argparse
import re
import sys
import time

from ..errors import CnnlabError
from .weights import SOURCES, fetch_weights, get_source


def register(subparsers) -> None:
    _register_style(subparsers)
    _register_weights(subparsers)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help unless the help already says its default or
    there is none to say (None, False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def _register_style(subparsers):
    p = subparsers.add_parser(
        "style", help="neural style transfer (Gatys et al.) with VGG-16/19",
        description="Render CONTENT in the style of STYLE (several, comma-separated, are blended) "
                    "by optimising the image so that its VGG features match the content image's "
                    "and its Gram matrices the style images'. Without images, a demo with the "
                    "shipped photo and painting. Writes OUT, OUT_<iteration> every --save-every "
                    "iterations, OUT_sheet.png (contact sheet) and OUT_losses.png (loss plot).",
        formatter_class=_DefaultsFormatter)
    p.add_argument("content", nargs="?", default=None, metavar="CONTENT", help="content image")
    p.add_argument("styles", nargs="?", default=None, metavar="STYLE[,STYLE...]",
                   help="style image(s), comma-separated")
    p.add_argument("-o", "--output", default="out.png", metavar="OUT.png", help="output image")
    g = p.add_argument_group("images")
    g.add_argument("--image-size", type=int, default=512, help="longest side of the output, pixels")
    g.add_argument("--style-blend-weights", default=None, metavar="W1,W2,...",
                   help="relative weight of each style image (normalised to sum 1; default equal)")
    g.add_argument("--style-scale", type=float, default=1.0,
                   help="style images are resized to this times --image-size")
    g.add_argument("--multiscale", default=None, metavar="S1,S2,...",
                   help="run at each size in turn (e.g. 256,512), each started from the previous "
                        "result; replaces --image-size")
    g.add_argument("--original-colors", action="store_true",
                   help="keep the content image's colours: luminance-only transfer (YUV)")
    g = p.add_argument_group("losses")
    g.add_argument("--content-weight", type=float, default=5.0)
    g.add_argument("--style-weight", type=float, default=100.0)
    g.add_argument("--tv-weight", type=float, default=1e-3,
                   help="total-variation weight (image in 0-255 grey levels); 0 turns it off")
    g.add_argument("--content-layers", default="relu4_2")
    g.add_argument("--style-layers", default="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1")
    g.add_argument("--style-layer-weights", default=None, metavar="W1,W2,...",
                   help="weight of each style layer (default: 1/number of layers with gatys, "
                        "1 with johnson)")
    g.add_argument("--normalization", choices=("gatys", "johnson"), default="gatys",
                   help="loss definitions: Gatys et al.'s sums, or jcjohnson/neural-style's means")
    g.add_argument("--normalize-gradients", action="store_true",
                   help="divide each loss term's gradient by its L1 norm (jcjohnson)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--init", choices=("random", "image"), default="random",
                   help="start from faint noise or from the content image")
    g.add_argument("--init-image", default=None, metavar="FILE", help="start from this image")
    g.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs",
                   help="L-BFGS (history 100) or Adam")
    g.add_argument("--learning-rate", type=float, default=None,
                   help="L-BFGS step scale (default 1), or Adam's step in grey levels "
                        "(0-255 pixel units, default 10)")
    g.add_argument("--num-iterations", type=int, default=1000)
    g.add_argument("--print-every", type=int, default=50, help="0: never")
    g.add_argument("--save-every", type=int, default=100, help="save OUT_<iteration>; 0: never")
    g.add_argument("--seed", type=int, default=0, help="random init and random weights")
    g = p.add_argument_group("network")
    g.add_argument("--model", choices=("vgg16", "vgg19"), default=None,
                   help="default: vgg19, or what --weights holds")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help=".pth (torchvision or Caffe-converted), .mat (MatConvNet), .npz or "
                        ".safetensors; 'random' for untrained weights; default: a file fetched "
                        "by `cnnlab weights fetch`, else random")
    g.add_argument("--pooling", choices=("max", "avg"), default=None,
                   help="default: max with trained weights, avg with random ones")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=style_command)


def _register_weights(subparsers):
    p = subparsers.add_parser(
        "weights", help="download pretrained VGG weights for neural style",
        description="Download published VGG weights into the cache ($CNNLAB_CACHE/weights, else "
                    "~/.cache/cnnlab/weights), where `cnnlab style` finds them.")
    sub = p.add_subparsers(dest="weights_command", metavar="COMMAND", required=True)
    f = sub.add_parser(
        "fetch", help="download one weights file and verify its sha256",
        description="Download with a progress bar and check the sha256 (the full published "
                    "digest where one is known, else the 8-digit prefix in the file name). "
                    "CNNLAB_MIRROR=URL downloads URL/weights/FILENAME instead.")
    f.add_argument("name", choices=list(SOURCES), metavar="NAME",
                   help=", ".join(f"{s.name} ({s.filename})" for s in SOURCES.values()))
    f.add_argument("--dir", default=None, help="folder to put the file in (default: the cache)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=fetch_command)


def style_command(args) -> int:
    from .stylize import StyleInterrupted

    if args.styles is None and args.content is not None:
        raise CnnlabError("give a style image after the content image (or neither for the demo)")
    t0 = time.perf_counter()
    try:
        result = _run_style(args)
    except StyleInterrupted as stop:
        print(f"cnnlab: {stop}", file=sys.stderr)
        return 130
    except CnnlabError as err:      # the Python API's parameter names, as the flags to type
        raise CnnlabError(re.sub(r"\b(" + "|".join(_PARAMETERS) + r")\b",
                                 lambda m: "--" + m.group(1).replace("_", "-"), str(err))) from None
    style = result.history["style"]
    if len(result.scales) > 1:          # losses at different sizes do not compare: the last's
        style = [(n, v) for n, v in style if n >= result.scales[-1][1]]
    if style:
        drop = style[0][1] / style[-1][1] if style[-1][1] > 0 else float("inf")
        at = f" at {result.scales[-1][0]} px" if len(result.scales) > 1 else ""
        change = f"style loss{at} {style[0][1]:.4g} -> {style[-1][1]:.4g} ({drop:.0f}x)"
    else:
        change = "no iteration recorded a loss"
    print(f"{result.paths['output']}: {result.image.shape[1]}x{result.image.shape[0]}, "
          f"{result.iterations} iterations ({result.evaluations} evaluations) in "
          f"{time.perf_counter() - t0:.1f} s with {result.network}; {change}; also "
          f"{result.paths['sheet']}, {result.paths['plot']}")
    return 0


_PARAMETERS = ("num_iterations", "learning_rate", "content_weight", "style_weight", "tv_weight",
               "style_scale", "print_every", "save_every", "multiscale", "image_size",
               "style_blend_weights", "style_layer_weights", "init_image")


def _run_style(args):
    """``stylize`` with the command's options; Ctrl-C raises StyleInterrupted once the image
    so far is saved."""
    from .stylize import stylize
    return stylize(
        args.content, args.styles, args.output, image_size=args.image_size,
        style_blend_weights=args.style_blend_weights, style_scale=args.style_scale,
        content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
        content_layers=args.content_layers, style_layers=args.style_layers,
        style_layer_weights=args.style_layer_weights, init=args.init, init_image=args.init_image,
        optimizer=args.optimizer, learning_rate=args.learning_rate,
        num_iterations=args.num_iterations, print_every=args.print_every,
        save_every=args.save_every, pooling=args.pooling,
        normalize_gradients=args.normalize_gradients, seed=args.seed,
        original_colors=args.original_colors, multiscale=args.multiscale, model=args.model,
        weights=args.weights, normalization=args.normalization, progress=not args.quiet)


def fetch_command(args) -> int:
    source = get_source(args.name)
    path = fetch_weights(args.name, args.dir, progress=not args.quiet)
    check = "sha256 verified" if source.sha256 else f"sha256 prefix {source.sha256_prefix} verified"
    print(f"{args.name}: {path} ({path.stat().st_size / 1e6:.1f} MB, {check}); "
          f"{source.preprocessing.name} preprocessing")
    return 0
