"""The ``cnnlab`` command: one argparse parser, sub-commands registered by each area.

Each module in :data:`COMMAND_MODULES` has ``register(subparsers)``, which adds its
sub-commands with ``set_defaults(func=handler)``; ``handler(args) -> int`` is the exit code.
A :class:`~cnnlab.errors.CnnlabError` (a problem the user can fix: a wrong shape, an
unknown name, a missing or damaged file) or an OSError is printed as one line
``cnnlab: <message>`` with exit code 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

# OpenBLAS's idle worker threads busy-wait for about 0.1 s after every multi-threaded call
# (2^28 cycles), on the cores cnnlab's own thread pool needs next (docs/convolution.md,
# "Threads"); 2^4 cycles lets them sleep at once: small_vgg training on 2 threads went from
# 370 to 404 img/s. Only for this process, only if numpy is not loaded yet (OpenBLAS reads
# it at load time), and a value the user set wins.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import __version__
from .errors import CnnlabError

#: the modules whose ``register(subparsers)`` add sub-commands, in --help order
COMMAND_MODULES = (
    "cnnlab.train.commands",
    "cnnlab.train.tricks_commands",
    "cnnlab.data.commands",
    "cnnlab.data.pack_commands",
    "cnnlab.conv.commands",
    "cnnlab.models.commands",
    "cnnlab.transfer.commands",
    "cnnlab.style.commands",
)


def experiment_subparsers(subparsers):
    """The sub-parsers of ``cnnlab experiment NAME``, creating ``experiment`` on first use
    (several areas add their experiments there)."""
    exp = subparsers.choices.get("experiment")
    if exp is None:
        exp = subparsers.add_parser("experiment", help="reproducible experiments from the docs")
        inner = exp.add_subparsers(dest="experiment", metavar="NAME")
        inner.required = True
        return inner
    return next(a for a in exp._actions if isinstance(a, argparse._SubParsersAction))


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with the fix (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cnnlab",
        description="Convolutional networks in practice: train, evaluate and inspect CNNs "
                    "written out in NumPy. `cnnlab COMMAND --help` explains each command.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback when a command fails")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``cnnlab`` script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv                  # accepted before or after the sub-command
    argv = (["--debug"] if debug else []) + [a for a in argv if a != "--debug"]
    chooser = sys.modules.get("cnnlab.conv.chooser")
    notify = chooser.CHOOSER.notify if chooser is not None else None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except CnnlabError as err:
        if debug:
            traceback.print_exc()       # the traceback, and still the documented exit code
        print(f"cnnlab: {_one_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:     # `cnnlab data info | head`: the reader left; nothing to say
        try:
            sys.stdout = open(os.devnull, "w")      # no second error while exiting
        except OSError:
            pass
        return 141
    except OSError as err:
        if debug:
            traceback.print_exc()
        if err.filename:
            print(f"cnnlab: cannot use {err.filename}: {err.strerror or err}; check the path "
                  f"and its permissions (--debug shows the traceback)", file=sys.stderr)
        else:
            print(f"cnnlab: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    finally:    # a command may have pointed the conv chooser's reports at the terminal
        chooser = sys.modules.get("cnnlab.conv.chooser")
        if chooser is not None:
            chooser.CHOOSER.notify = notify


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    return " ".join(text.split()) if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
