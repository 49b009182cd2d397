"""``cnnlab bench conv``: the convolution benchmark (benchmarks/conv.py) from the command line.

The benchmark itself lives in the source tree's ``benchmarks/`` folder (it needs
PyTorch, a bench-only dependency); this command loads it from the checkout the
package was installed from (``pip install -e .``).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ..errors import CnnlabError

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load_benchmark():
    name = "cnnlab_benchmarks_conv"
    if name in sys.modules:
        return sys.modules[name]
    path = BENCHMARKS / "conv.py"
    if not path.is_file():
        raise CnnlabError(
            f"cnnlab bench conv runs {path}, which is not there: run it from a source "
            "checkout installed with `pip install -e .`")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _bench_subparsers(subparsers):
    """The `bench` command's sub-commands, creating `bench` if no other area has yet."""
    bench = subparsers.choices.get("bench")
    if bench is None:
        bench = subparsers.add_parser("bench",
                                      help="benchmarks against PyTorch, measured in one run")
        bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])
    for action in bench._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            return action
    return bench.add_subparsers(dest="bench_command", metavar="BENCHMARK")


WARM_SECONDS = 0.2  # untimed calls before each timing (benchmarks/common.best_time)


def add_bench_options(parser):
    """The options of benchmarks/conv.py and `cnnlab bench conv` (defined here, so that
    building the CLI does not load the benchmark, which puts benchmarks/ on sys.path)."""
    parser.add_argument("--settings", default="vgg224,style512,cifar32",
                        help="comma-separated: vgg224, style512, cifar32 (default: all three)")
    parser.add_argument("--layers", default="all",
                        help="comma-separated VGG-16 layer names, e.g. conv3_1,conv4_2 "
                             "(default all 13)")
    parser.add_argument("--algos", default="auto,im2col,winograd2,winograd4,fft",
                        help="algorithms to time besides torch; 'auto' is always included")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs, best kept (default 3)")
    parser.add_argument("--warm", type=float, default=WARM_SECONDS,
                        help="seconds of untimed calls before each timing, cnnlab and torch "
                             f"alike (default {WARM_SECONDS}): times of the steady state")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for cnnlab, numpy's BLAS and torch (default: the CPUs "
                             "available)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    parser.add_argument("--cache", action="store_true",
                        help="keep auto's choices in the disk cache "
                             "(~/.cache/cnnlab or $CNNLAB_CACHE)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread for everything, timed by the thread's CPU time: a "
                             "per-core comparison that other processes' load does not distort")
    parser.add_argument("--all", action="store_true",
                        help="also time fft where its cost estimate says it cannot win "
                             "(3x3 at batch 1: seconds and GiBs of kernel spectra per pass)")
    return parser


def register(subparsers) -> None:
    parser = _bench_subparsers(subparsers).add_parser(
        "conv", help="VGG-16 conv layers: every algorithm and auto's choice vs PyTorch",
        description="Time VGG-16's 13 conv layers with cnnlab's algorithms and PyTorch in the "
                    "same run (see docs/convolution.md).")
    add_bench_options(parser)
    parser.set_defaults(func=bench_conv)


def bench_conv(args) -> int:
    module = _load_benchmark()
    if args.repeat < 1:
        raise CnnlabError(f"--repeat must be >= 1, got {args.repeat}")
    if args.threads is not None and args.threads < 1:
        raise CnnlabError(f"--threads must be >= 1, got {args.threads}")
    try:
        return module.run(args)
    except ValueError as err:  # unknown setting, layer or algorithm name
        raise CnnlabError(str(err)) from None
    except SystemExit as err:  # torch missing
        if isinstance(err.code, str):
            raise CnnlabError(err.code) from None
        raise
    finally:
        sys.stdout.flush()
