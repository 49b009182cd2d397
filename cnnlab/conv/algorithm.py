"""The one signature every convolution algorithm implements, and the registry.

An algorithm computes the three passes of a bias-free convolution for a
:class:`~cnnlab.conv.geometry.ConvGeometry` ``g``:

    forward(x, w, g)          x (N,C,H,W), w (O,C/G,KH,KW) -> y  (N,O,HO,WO)
    backward_data(dy, w, g)   dy (N,O,HO,WO)               -> dx (N,C,H,W)
    backward_weight(dy, x, g) dy, x                         -> dw (O,C/G,KH,KW)

``supports(g, pass_)`` returns None when the algorithm can run that pass on
that geometry, or a short reason ("stride 2", "dilation 2") when it cannot; the
passes of an algorithm that does not handle everything check it themselves
(``require``) and raise UnsupportedConfigError rather than compute a wrong result.
``workspace_bytes(g, pass_, itemsize)`` is the extra memory it allocates
beyond its inputs and output. Bias is not part of the algorithm: the
functional layer adds it (and sums dy for its gradient).

Prepared weights (for weights that do not change between calls, e.g. a frozen
layer): an algorithm whose forward / data gradient starts with a transform of
``w`` alone (Winograd's U = G w G^T, FFT's kernel spectra) can compute it once:

    prepare(w, g, pass_)          -> an opaque object, or None (nothing worth keeping);
                                     with ``prepare_reuses = True`` also ``reuse=``: an
                                     earlier object of the same key whose memory may be
                                     overwritten (a training step reuses the previous
                                     step's U instead of allocating it again)
    prepared_key(g, pass_)        -> hashable: prepared objects with equal keys (and the
                                     same w) are interchangeable; None: no preparation
    prepared_bytes(g, pass_, itemsize)  the memory that object holds
    forward(x, w, g, prepared=P) / backward_data(dy, w, g, prepared=P)

give the same result as without ``prepared`` (bit for bit) and skip the transform.
The caller owns the object and must drop it when w changes
(:class:`cnnlab.conv.prepared.WeightCache` does that for a layer).

Saved input transforms (a training step, :mod:`cnnlab.conv.step`): an algorithm with
``saves_input`` (Winograd, im2col) accepts ``forward(x, w, g, save=d)``, which also leaves
in the dict ``d`` what it derived from x alone (Winograd's input tiles V, im2col's column
matrices), and ``backward_weight(dy, x, g, saved=d)``, which then skips that transform;
``saved_bytes(g, itemsize)`` is the memory kept. Same results, bit for bit.
"""
from __future__ import annotations

from ..backend import module_name
from ..errors import UnsupportedConfigError

PASSES = ("forward", "backward_data", "backward_weight")


class ConvAlgorithm:
    """Base class; subclasses set ``name`` and implement the passes."""

    name = "?"
    saves_input = False     # True: forward(..., save=dict) / backward_weight(..., saved=dict)
    saved_name = "input"    # what that keeps, for messages ("V", "columns")
    prepare_reuses = False  # True: prepare(..., reuse=) accepted (older algorithms: no reuse)
    array_modules = ("numpy", "cupy")   # the array modules its passes are written for

    def supports(self, g, pass_: str) -> str | None:  # noqa: ARG002 - default: everything
        return None

    def require(self, g, pass_: str, origin: str = "", xp=None) -> None:
        """UnsupportedConfigError naming the configuration and the algorithms that can run it,
        unless ``supports(g, pass_)`` and the arrays' module ``xp`` (None: numpy) is one of
        ``array_modules`` (``origin``: how this algorithm came to be asked)."""
        module = module_name(xp)
        if module not in self.array_modules:
            raise UnsupportedConfigError(
                f"conv algorithm {self.name!r}{origin} runs on {', '.join(self.array_modules)} "
                f"arrays only, not {module}; on the GPU use im2col (auto's choice there) or "
                f"direct")
        reason = self.supports(g, pass_)
        if reason is not None:
            from .chooser import eligible
            raise UnsupportedConfigError(
                f"conv algorithm {self.name!r}{origin} cannot run {pass_} for {g.describe()} "
                f"({reason}); algorithms that can: {', '.join(eligible(g, pass_))}")

    def forward(self, x, w, g, prepared=None):
        raise NotImplementedError

    def backward_data(self, dy, w, g, prepared=None):
        raise NotImplementedError

    def backward_weight(self, dy, x, g):
        raise NotImplementedError

    def workspace_bytes(self, g, pass_: str, itemsize: int) -> int:  # noqa: ARG002
        return 0

    # -- prepared weights (default: none) ----------------------------------------------
    def prepared_key(self, g, pass_: str):  # noqa: ARG002
        return None

    def prepare(self, w, g, pass_: str, reuse=None):  # noqa: ARG002
        return None

    def prepared_bytes(self, g, pass_: str, itemsize: int) -> int:  # noqa: ARG002
        return 0

    @staticmethod
    def _groups(g):
        """Per group: (input channel start, end, output channel start, end)."""
        og, cg = g.o // g.groups, g.c // g.groups
        return [(i * cg, (i + 1) * cg, i * og, (i + 1) * og) for i in range(g.groups)]

    def run(self, pass_: str, a, b, g, prepared=None):
        """Dispatch by pass name: (x, w) for forward, (dy, w) / (dy, x) for the gradients;
        ``prepared`` (from ``prepare``) only for the passes that read w."""
        if prepared is None:
            return getattr(self, pass_)(a, b, g)
        return getattr(self, pass_)(a, b, g, prepared=prepared)

    def __repr__(self) -> str:
        return f"<conv algorithm {self.name}>"


ALGORITHMS: dict[str, ConvAlgorithm] = {}


def register(algorithm: ConvAlgorithm) -> ConvAlgorithm:
    """Add an algorithm instance to the registry under its ``name``."""
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm
