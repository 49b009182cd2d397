"""Optimizers. Each owns its per-parameter state (velocity, moments), keyed by position.

For every parameter p that is not frozen and has a gradient, with lr_p = lr * p.lr_mult and
g = p.grad + weight_decay * p.data (L2 decay folded into the gradient, as in PyTorch):

    SGD          p -= lr_p * g
    momentum     v = mu * v + g;            p -= lr_p * v
    Nesterov     v = mu * v + g;            p -= lr_p * (g + mu * v)
    RMSprop      s = a * s + (1 - a) g^2;   p -= lr_p * g / (sqrt(s) + eps)
    Adam         m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
                 p -= lr_p * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

where t counts the steps that updated p itself (a parameter frozen or without a gradient for a
while starts its own count when it starts training, as in PyTorch). Hyper-parameters are
checked when the optimizer is built (finite; lr > 0; weight decay, momentum, eps >= 0; Adam's
betas and RMSprop's alpha in [0, 1)).
"""
from __future__ import annotations

import numpy as np

import math

from ..backend import get_xp, to_device
from ..errors import CnnlabError


def _check(name: str, value, low: float, high: float | None = None, low_open=False,
           high_open=True) -> float:
    """``value`` as a float within [low, high) (the bounds' openness as given), else a
    CnnlabError naming the hyper-parameter."""
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low)
    if high is not None:
        ok = ok and (v < high if high_open else v <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        where = f"in {lo}{low:g}, {high:g}{hi}" if high is not None else \
            f"{'above' if low_open else 'at least'} {low:g}"
        raise CnnlabError(f"{name} must be a finite number {where}, got {value}")
    return v


class Optimizer:
    #: names of the per-parameter state arrays this optimizer keeps
    state_names: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        self.params = list(params)
        if not self.params:
            raise CnnlabError("optimizer got an empty parameter list")
        self.lr = _check("learning rate", lr, 0.0, low_open=True)
        self.weight_decay = _check("weight decay", weight_decay, 0.0)
        self.step_count = 0
        self.state: list[dict] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.step_count += 1
        for i, p in enumerate(self.params):
            if p.frozen or p.grad is None:
                continue
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            st = self.state[i]
            xp = get_xp(p.data)
            for name in self.state_names:
                if name not in st:
                    st[name] = xp.zeros_like(p.data)
                elif get_xp(st[name]) is not xp:        # the model moved (Module.to)
                    st[name] = to_device(st[name], "cpu" if xp is np else "gpu")
            st["step"] = st.get("step", 0) + 1          # this parameter's own step count
            self.update(p, g, st, self.lr * p.lr_mult)

    def update(self, p, g, st, lr) -> None:
        raise NotImplementedError

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Flat dict of arrays: ``state.<i>.<name>`` (per parameter: its state arrays and its
        own step count ``step``), plus ``step_count``, ``lr`` and ``num_params``."""
        out = {f"state.{i}.{k}": np.array(v) if k == "step" else v
               for i, st in enumerate(self.state) for k, v in st.items()}
        out["step_count"] = np.array(self.step_count)
        out["lr"] = np.array(self.lr)
        out["num_params"] = np.array(len(self.params))
        return out

    def load_state_dict(self, sd: dict) -> None:
        """Restore ``state_dict()``'s content; a CnnlabError (nothing changed) for the state
        of another optimizer kind or of another parameter list. State saved before the
        per-parameter step count existed gets the global count, as it was then used."""
        if "num_params" in sd and int(sd["num_params"]) != len(self.params):
            raise CnnlabError(f"optimizer state is for {int(sd['num_params'])} parameters, this "
                              f"optimizer has {len(self.params)}")
        state = [{} for _ in self.params]
        for k, v in sd.items():
            if not k.startswith("state."):
                continue
            _, i, name = k.split(".", 2)
            i = int(i)
            if name not in self.state_names and name != "step":
                raise CnnlabError(f"optimizer state {k} is not {type(self).__name__}'s (it keeps "
                                  f"{', '.join(self.state_names) or 'no state'})")
            if name == "step":
                if i < len(self.params):
                    state[i][name] = int(v)
                continue
            if i >= len(self.params) or np.shape(v) != np.shape(self.params[i].data):
                raise CnnlabError(f"optimizer state {k} does not match the model's parameters")
            xp = get_xp(self.params[i].data)
            state[i][name] = xp.asarray(to_device(v, "cpu") if xp is np else v).copy()
        step_count = int(sd["step_count"])
        for st in state:
            if st and "step" not in st:
                st["step"] = step_count
        self.step_count, self.lr, self.state = step_count, float(sd["lr"]), state


class SGD(Optimizer):
    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        momentum = _check("momentum", momentum, 0.0)
        if nesterov and momentum <= 0:
            raise CnnlabError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, bool(nesterov)
        self.state_names = ("velocity",) if momentum else ()

    def update(self, p, g, st, lr):
        if not self.momentum:
            p.data -= lr * g
            return
        v = st["velocity"]
        v *= self.momentum
        v += g
        p.data -= lr * (g + self.momentum * v if self.nesterov else v)


class RMSprop(Optimizer):
    state_names = ("square_avg",)

    def __init__(self, params, lr=0.001, alpha=0.99, eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.alpha, self.eps = _check("alpha", alpha, 0.0, 1.0), _check("eps", eps, 0.0)

    def update(self, p, g, st, lr):
        s = st["square_avg"]
        s *= self.alpha
        s += (1 - self.alpha) * g * g
        p.data -= lr * g / (get_xp(s).sqrt(s) + self.eps)


class Adam(Optimizer):
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        b1, b2 = betas
        self.b1, self.b2 = _check("beta1", b1, 0.0, 1.0), _check("beta2", b2, 0.0, 1.0)
        self.eps = _check("eps", eps, 0.0)

    def update(self, p, g, st, lr):
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * g * g
        t = st["step"]
        bc1, bc2 = 1 - self.b1 ** t, 1 - self.b2 ** t
        denom = get_xp(v).sqrt(v / bc2) + self.eps
        p.data -= (lr / bc1) * m / denom


OPTIMIZERS = {
    "sgd": lambda ps, lr, wd: SGD(ps, lr, weight_decay=wd),
    "momentum": lambda ps, lr, wd: SGD(ps, lr, momentum=0.9, weight_decay=wd),
    "nesterov": lambda ps, lr, wd: SGD(ps, lr, momentum=0.9, nesterov=True, weight_decay=wd),
    "rmsprop": lambda ps, lr, wd: RMSprop(ps, lr, weight_decay=wd),
    "adam": lambda ps, lr, wd: Adam(ps, lr, weight_decay=wd),
}


def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0) -> Optimizer:
    """Build an optimizer by name: sgd, momentum, nesterov, rmsprop, adam."""
    if name not in OPTIMIZERS:
        raise CnnlabError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](params, lr, weight_decay)
