"""A trainable array with its gradient and the two knobs transfer learning needs."""
from __future__ import annotations


class Parameter:
    """``data`` (the array), ``grad`` (same shape, or None before any backward),
    ``lr_mult`` (this parameter's learning rate = optimizer lr * lr_mult) and ``frozen``
    (skipped by optimizers; layers skip computing its gradient).

    ``frozen`` is independent of a module's train/eval mode: a frozen batch-norm layer in
    training mode still normalises with batch statistics.
    """

    __slots__ = ("data", "grad", "lr_mult", "frozen")

    def __init__(self, data, lr_mult: float = 1.0, frozen: bool = False):
        self.data = data
        self.grad = None
        self.lr_mult = float(lr_mult)
        self.frozen = bool(frozen)

    @property
    def shape(self):
        return self.data.shape

    @property
    def requires_grad(self) -> bool:
        return not self.frozen

    def accumulate(self, g) -> None:
        """Add ``g`` to the gradient (gradients accumulate until ``zero_grad``)."""
        if g is None:
            return
        if self.grad is None:
            self.grad = g.copy() if g.base is not None or g is self.data else g
        else:
            self.grad += g

    def __repr__(self) -> str:
        flags = (" frozen" if self.frozen else "") + (f" lr_mult={self.lr_mult:g}" if self.lr_mult != 1 else "")
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}{flags})"
