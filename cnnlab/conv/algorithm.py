"""The one signature every convolution algorithm implements, and the registry.

An algorithm computes the three passes of a bias-free convolution for a
:class:`~cnnlab.conv.geometry.ConvGeometry` ``g``:

    forward(x, w, g)          x (N,C,H,W), w (O,C/G,KH,KW) -> y  (N,O,HO,WO)
    backward_data(dy, w, g)   dy (N,O,HO,WO)               -> dx (N,C,H,W)
    backward_weight(dy, x, g) dy, x                         -> dw (O,C/G,KH,KW)

``supports(g, pass_)`` returns None when the algorithm can run that pass on
that geometry, or a short reason ("stride 2", "dilation 2") when it cannot.
``workspace_bytes(g, pass_, itemsize)`` is the extra memory it allocates
beyond its inputs and output. Bias is not part of the algorithm: the
functional layer adds it (and sums dy for its gradient).
"""
from __future__ import annotations

PASSES = ("forward", "backward_data", "backward_weight")


class ConvAlgorithm:
    """Base class; subclasses set ``name`` and implement the passes."""

    name = "?"

    def supports(self, g, pass_: str) -> str | None:  # noqa: ARG002 - default: everything
        return None

    def forward(self, x, w, g):
        raise NotImplementedError

    def backward_data(self, dy, w, g):
        raise NotImplementedError

    def backward_weight(self, dy, x, g):
        raise NotImplementedError

    def workspace_bytes(self, g, pass_: str, itemsize: int) -> int:  # noqa: ARG002
        return 0

    @staticmethod
    def _groups(g):
        """Per group: (input channel start, end, output channel start, end)."""
        og, cg = g.o // g.groups, g.c // g.groups
        return [(i * cg, (i + 1) * cg, i * og, (i + 1) * og) for i in range(g.groups)]

    def run(self, pass_: str, a, b, g):
        """Dispatch by pass name: (x, w) for forward, (dy, w) / (dy, x) for the gradients."""
        return getattr(self, pass_)(a, b, g)

    def __repr__(self) -> str:
        return f"<conv algorithm {self.name}>"


ALGORITHMS: dict[str, ConvAlgorithm] = {}


def register(algorithm: ConvAlgorithm) -> ConvAlgorithm:
    """Add an algorithm instance to the registry under its ``name``."""
    ALGORITHMS[algorithm.name] = algorithm
    return algorithm
