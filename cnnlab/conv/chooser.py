"""Which algorithm runs a given convolution pass.

``select(g, pass_, algo, dtype)`` returns the algorithm object. ``algo`` is a
registered name (forced: an error if it cannot handle ``g``) or "auto".
For now "auto" means im2col; the measuring chooser replaces this.
"""
from __future__ import annotations

from ..errors import UnsupportedConfigError
from .algorithm import ALGORITHMS

DEFAULT_ALGO = "im2col"


def eligible(g, pass_: str) -> list[str]:
    """Names of the registered algorithms that can run ``pass_`` on geometry ``g``."""
    return [name for name, a in ALGORITHMS.items() if a.supports(g, pass_) is None]


def select(g, pass_: str, algo: str = "auto", dtype=None):  # noqa: ARG001 - dtype used by the tuner
    """Return the algorithm that will run ``pass_`` of the convolution ``g``."""
    if algo == "auto":
        algo = DEFAULT_ALGO
    if algo not in ALGORITHMS:
        raise UnsupportedConfigError(
            f"unknown convolution algorithm {algo!r}; choose one of {sorted(ALGORITHMS)} or 'auto'"
        )
    a = ALGORITHMS[algo]
    reason = a.supports(g, pass_)
    if reason is not None:
        raise UnsupportedConfigError(
            f"conv algorithm {algo!r} cannot run {pass_} for {g.describe()} ({reason}); "
            f"algorithms that can: {', '.join(eligible(g, pass_))}"
        )
    return a
