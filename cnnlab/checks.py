"""Checks of command-line values, each raising a one-line CnnlabError that names the option.

    at_least(args.batch_size, 1, "--batch-size")
    positive_number(args.lr, "--lr")          # > 0 and finite
    non_negative_number(args.tv_weight, "--tv-weight")
"""
from __future__ import annotations

import math
from pathlib import Path

from .errors import CnnlabError


def at_least(value, low: int, flag: str) -> None:
    """``value`` (an int, or None for "not given") must be >= ``low``."""
    if value is not None and value < low:
        raise CnnlabError(f"{flag} must be at least {low}, got {value}")


def positive_number(value, flag: str) -> None:
    """``value`` (or None) must be a finite number above 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise CnnlabError(f"{flag} must be a positive finite number, got {value:g}")


def non_negative_number(value, flag: str) -> None:
    """``value`` (or None) must be a finite number, 0 or more."""
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise CnnlabError(f"{flag} must be a finite number, 0 or more, got {value:g}")


def writable_file(path, flag: str) -> None:
    """``path`` (or None) can be written as a file: its folder exists and it is not a folder
    itself; checked before long work whose result it will hold."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise CnnlabError(f"cannot write {flag} {target}: it is a folder")
    if not target.parent.is_dir():
        raise CnnlabError(f"cannot write {flag} {target}: folder {target.parent} does not exist")
