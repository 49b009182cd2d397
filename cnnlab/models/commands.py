"""``cnnlab summary`` and ``cnnlab zoo``.

    cnnlab summary MODEL [--input 3x224x224] [--batch N] [--classes K] [--json]
    cnnlab zoo list
    cnnlab zoo info NAME [--check]
    cnnlab zoo pack RUN --name NAME [-o PATH]
    cnnlab zoo export MODEL -o weights.npz|weights.safetensors
    cnnlab zoo import WEIGHTS.pth [--arch NAME] -o model.safetensors

MODEL is a registered architecture (``cnnlab summary --list``), a zoo name, a model file, a
`cnnlab train` checkpoint or run folder, or a torchvision .pth file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from ..errors import CnnlabError


def register(subparsers) -> None:
    """Add ``summary`` and ``zoo`` to ``subparsers``."""
    p = subparsers.add_parser(
        "summary", help="per-layer output shapes, parameters, multiply-adds, memory, receptive field",
        description="Print a table of every layer of a network: output shape, parameters, "
                    "multiply-adds, activation memory (float32) and receptive field, with "
                    "totals. Shapes are derived from the layers' settings, so even VGG-16 at "
                    "224x224 is instant.")
    p.add_argument("model", metavar="MODEL", nargs="?",
                   help="architecture name (see --list), zoo name, model file, checkpoint or .pth")
    p.add_argument("--input", metavar="CxHxW", default=None,
                   help="input shape of one example, e.g. 3x224x224 (default: the model's own)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="batch size for the memory and multiply-add totals (default 1)")
    p.add_argument("--classes", type=int, default=None, metavar="K",
                   help="number of classes for architectures built by name")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--list", action="store_true", help="list the architectures and exit")
    p.set_defaults(func=summary_command)

    z = subparsers.add_parser("zoo", help="pretrained models shipped with cnnlab; import/export",
                              description="List, inspect, create, import and export model files "
                                          "(weights + architecture, preprocessing, classes, "
                                          "reproducing command and accuracy).")
    zs = z.add_subparsers(dest="zoo_command", metavar="{list,info,pack,export,import}")
    zs.required = True
    zl = zs.add_parser("list", help="the shipped models with their accuracy")
    zl.set_defaults(func=zoo_list_command)
    zi = zs.add_parser("info", help="metadata of a zoo model or model file")
    zi.add_argument("name", metavar="NAME")
    zi.add_argument("--check", action="store_true",
                    help="measure the test accuracy again and compare with the recorded one")
    zi.set_defaults(func=zoo_info_command)
    zp = zs.add_parser("pack", help="make a zoo model file from a `cnnlab train` run")
    zp.add_argument("run", metavar="RUN", help="run folder or checkpoint file")
    zp.add_argument("--name", required=True, help="entry name, e.g. lenet-fashion-mnist")
    zp.add_argument("-o", "--output", default=None,
                    help="where to write (default cnnlab/zoo/files/NAME.safetensors)")
    zp.set_defaults(func=zoo_pack_command)
    ze = zs.add_parser("export", help="write a model's state_dict for PyTorch (torchvision names)")
    ze.add_argument("model", metavar="MODEL")
    ze.add_argument("-o", "--output", required=True, help="weights.npz or weights.safetensors")
    ze.set_defaults(func=zoo_export_command)
    zm = zs.add_parser("import", help="make a cnnlab model file from a torchvision .pth")
    zm.add_argument("weights", metavar="WEIGHTS", help=".pth (or .npz/.safetensors) state_dict")
    zm.add_argument("--arch", default=None, help="architecture (default: detected from the keys)")
    zm.add_argument("--classes", type=int, default=None, metavar="K",
                    help="classes the last layer predicts (default: read from its weight)")
    zm.add_argument("-o", "--output", required=True, help="model.safetensors or model.npz")
    zm.set_defaults(func=zoo_import_command)


def _load_for_summary(args):
    from .registry import MODELS, default_input, get_model

    if args.model in MODELS:
        model = get_model(args.model, num_classes=args.classes)
        return model, args.input or default_input(args.model), args.model
    from ..zoo import entry_names, resolve

    if not os.path.exists(args.model) and args.model not in entry_names():
        raise CnnlabError(f"unknown model {args.model!r}: not an architecture "
                          f"({', '.join(MODELS)}), not a zoo model "
                          f"({', '.join(entry_names()) or 'none'}) and no such file")
    model, info = resolve(args.model)
    return model, args.input or info.input_shape, info.name or args.model


def summary_command(args: argparse.Namespace) -> int:
    from .registry import MODELS
    from .summary import format_summary, summarize

    if args.list or not args.model:
        width = max(len(n) for n in MODELS)
        for name, spec in MODELS.items():
            print(f"{name:<{width}}  {'x'.join(map(str, spec.input_shape)):>11}  {spec.description}")
        return 0
    if args.batch < 1:
        raise CnnlabError(f"--batch must be at least 1, got {args.batch}")
    if args.classes is not None and args.classes < 1:
        raise CnnlabError(f"--classes must be at least 1, got {args.classes}")
    model, shape, name = _load_for_summary(args)
    s = summarize(model, shape, batch=args.batch)
    if args.json:
        print(json.dumps({"model": name, **s.to_dict()}, indent=1))
    else:
        from ..transfer.layers import display_names
        print(f"{name}")
        print(format_summary(s, display_names(model)))
    return 0


def zoo_list_command(args) -> int:
    from ..zoo import entry_path, list_entries

    entries = list_entries()
    if not entries:
        print("no models shipped")
        return 0
    print(f"{'name':<28} {'arch':<10} {'input':<8} {'test acc':>8}  {'size':>8}  trained on")
    for info in entries:
        size = os.path.getsize(entry_path(info.name)) / 2 ** 20
        acc = info.accuracy.get("test")
        print(f"{info.name:<28} {info.arch:<10} {'x'.join(map(str, info.input_shape)):<8} "
              f"{100 * acc:7.2f}%  {size:6.2f}MB  {info.dataset}")
    return 0


def zoo_info_command(args) -> int:
    from ..zoo import resolve

    model, info = resolve(args.name)
    print(info.describe())
    print(f"  preprocessing: pixels / 255, mean {info.preprocessing.get('mean')}, std "
          f"{info.preprocessing.get('std')}")
    print(f"  classes: {', '.join(info.classes)}")
    if info.extra:
        print("  " + ", ".join(f"{k} {v}" for k, v in info.extra.items()))
    if args.check:
        from ..zoo.pack import check_entry
        recorded, measured = check_entry(args.name)
        print(f"  check: recorded {100 * recorded:.2f}%, measured now {100 * measured:.2f}%"
              + ("" if abs(recorded - measured) < 1e-9 else "  (DIFFERENT)"))
        return 0 if abs(recorded - measured) < 1e-9 else 1
    return 0


def zoo_pack_command(args) -> int:
    from ..zoo.pack import pack_run

    path, info = pack_run(args.run, args.name, args.output)
    size = os.path.getsize(path) / 2 ** 20
    print(f"wrote {path} ({size:.2f} MB): {info.arch}, test accuracy "
          f"{100 * info.accuracy['test']:.2f}% on {info.accuracy['split']}")
    return 0


def zoo_export_command(args) -> int:
    from ..io import save_arrays
    from ..zoo import export_state_dict, resolve

    model, info = resolve(args.model)
    sd = export_state_dict(model)
    save_arrays(args.output, dict(sd), {"arch": info.arch, "source": str(args.model)})
    reader = ("safetensors.torch.load_file(path)" if str(args.output).lower().endswith(
        ".safetensors") else "{k: torch.from_numpy(v) for k, v in np.load(path).items() "
        "if k != '__metadata__'}")
    print(f"wrote {args.output}: {len(sd)} arrays in PyTorch naming (load with "
          f"model.load_state_dict({reader}))")
    return 0


def zoo_import_command(args) -> int:
    from ..zoo import ModelInfo, load_torchvision, save_model
    from ..zoo.entries import find_classes

    if args.classes is not None and args.classes < 1:
        raise CnnlabError(f"--classes must be at least 1, got {args.classes}")
    from .registry import default_input
    model = load_torchvision(args.weights, arch=args.arch, num_classes=args.classes)
    shape = tuple(default_input(model.arch))
    imagenet = shape == (3, 224, 224)   # torchvision's own models: ImageNet preprocessing
    preprocessing = ({"scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                      "std": [0.229, 0.224, 0.225]} if imagenet else {"scale": 1 / 255})
    if not imagenet:
        print(f"cnnlab: note: {model.arch} imported with input {'x'.join(map(str, shape))} "
              f"and no mean/std normalisation recorded; edit the model file's preprocessing "
              f"if the weights were trained with one", file=sys.stderr)
    info = ModelInfo(arch=model.arch, num_classes=find_classes(model), in_channels=shape[0],
                     input_shape=shape, preprocessing=preprocessing,
                     dataset="imported",
                     command=f"cnnlab zoo import {args.weights}"
                             + (f" --arch {args.arch}" if args.arch else "")
                             + (f" --classes {args.classes}" if args.classes else "")
                             + f" -o {args.output}",
                     name=os.path.basename(args.output))
    save_model(args.output, model, info)
    print(f"wrote {args.output}: {model.arch}, {info.num_classes} classes")
    return 0
