"""The one test harness every op goes through.

An :class:`OpCase` describes one op on one configuration:
  * ``inputs(rng)`` -> dict of float64 arrays: the differentiable inputs and parameters;
  * ``consts`` -> non-differentiable arguments (labels, masks' seeds, ...), passed to both sides;
  * ``forward(inputs)`` -> (out, cache) with cnnlab; ``backward(dout, cache)`` -> dict of grads;
  * ``torch_forward(tensors)`` -> the same op in PyTorch (float64 autograd).

:func:`check_gradients` compares ``backward`` with centred differences of
L = sum(forward(inputs) * R) for a fixed random R, on a sample of coordinates of every input.
:func:`check_against_torch` compares ``forward`` and every gradient with PyTorch's autograd.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

GRAD_RTOL = 1e-6      # numerical vs analytic, float64, h = 1e-6
TORCH_RTOL = 1e-9     # cnnlab vs PyTorch, float64
MAX_COORDS = 24       # coordinates sampled per input for the numerical check


@dataclass
class OpCase:
    name: str
    inputs: Callable[[np.random.Generator], dict]
    forward: Callable[[dict], tuple]
    backward: Callable[[object, object], dict]
    torch_forward: Callable[[dict], object] | None = None
    seed: int = 0
    wrt: tuple = ()                     # names to check; default: every input
    torch_rtol: float = TORCH_RTOL
    grad_rtol: float = GRAD_RTOL
    tags: tuple = field(default_factory=tuple)

    def __str__(self) -> str:
        return self.name

    def make_inputs(self):
        return self.inputs(np.random.default_rng(self.seed))

    def names(self, inputs):
        return self.wrt or tuple(inputs)


def rel_error(a, b) -> float:
    """max |a - b| / max(|b|), with a floor so that all-zero gradients compare sanely."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch {a.shape} vs {b.shape}")
    scale = max(float(np.abs(b).max(initial=0.0)), float(np.abs(a).max(initial=0.0)), 1e-12)
    return float(np.abs(a - b).max(initial=0.0)) / scale


def _upstream(out, rng):
    return rng.standard_normal(np.shape(out)) if np.ndim(out) else np.float64(1.0)


def check_gradients(case: OpCase, h: float = 1e-6):
    """Analytic gradients of every input equal centred differences (float64)."""
    inputs = case.make_inputs()
    out, cache = case.forward(inputs)
    rng = np.random.default_rng(case.seed + 1)
    R = _upstream(out, rng)
    grads = case.backward(R, cache)

    def loss():
        o, _ = case.forward(inputs)
        return float(np.sum(np.asarray(o, dtype=np.float64) * R))

    for name in case.names(inputs):
        x = inputs[name]
        assert grads[name] is not None, f"{case}: no gradient for {name}"
        assert np.shape(grads[name]) == x.shape, f"{case}: grad {name} has shape {np.shape(grads[name])}"
        flat = x.reshape(-1)
        picks = rng.choice(flat.size, size=min(MAX_COORDS, flat.size), replace=False)
        num = np.empty(len(picks))
        for k, i in enumerate(picks):
            old = flat[i]
            flat[i] = old + h
            lp = loss()
            flat[i] = old - h
            lm = loss()
            flat[i] = old
            num[k] = (lp - lm) / (2 * h)
        ana = np.asarray(grads[name]).reshape(-1)[picks]
        err = rel_error(ana, num)
        assert err <= case.grad_rtol, f"{case}: gradient of {name} off by {err:.2e} (numerical check)"


def check_against_torch(case: OpCase):
    """Forward output and every gradient equal PyTorch's (float64 autograd)."""
    import torch

    inputs = case.make_inputs()
    tensors = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in inputs.items()}
    out, cache = case.forward({k: v.copy() for k, v in inputs.items()})
    t_out = case.torch_forward(tensors)
    err = rel_error(out, t_out.detach().numpy())
    assert err <= case.torch_rtol, f"{case}: forward differs from PyTorch by {err:.2e}"
    R = _upstream(out, np.random.default_rng(case.seed + 1))
    grads = case.backward(R, cache)
    t_out.backward(torch.tensor(R, dtype=t_out.dtype))
    for name in case.names(inputs):
        tg = tensors[name].grad
        tg = np.zeros(inputs[name].shape) if tg is None else tg.numpy()
        err = rel_error(grads[name], tg)
        assert err <= case.torch_rtol, f"{case}: gradient of {name} differs from PyTorch by {err:.2e}"
