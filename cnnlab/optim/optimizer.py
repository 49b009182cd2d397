"""Optimizers. Each owns its per-parameter state (velocity, moments), keyed by position.

For every parameter p that is not frozen and has a gradient, with lr_p = lr * p.lr_mult and
g = p.grad + weight_decay * p.data (L2 decay folded into the gradient, as in PyTorch):

    SGD          p -= lr_p * g
    momentum     v = mu * v + g;            p -= lr_p * v
    Nesterov     v = mu * v + g;            p -= lr_p * (g + mu * v)
    RMSprop      s = a * s + (1 - a) g^2;   p -= lr_p * g / (sqrt(s) + eps)
    Adam         m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
                 p -= lr_p * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
"""
from __future__ import annotations

import numpy as np

from ..backend import get_xp
from ..errors import CnnlabError


class Optimizer:
    #: names of the per-parameter state arrays this optimizer keeps
    state_names: tuple[str, ...] = ()

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        self.params = list(params)
        if not self.params:
            raise CnnlabError("optimizer got an empty parameter list")
        if lr <= 0:
            raise CnnlabError(f"learning rate must be positive, got {lr}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
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
            for name in self.state_names:
                if name not in st:
                    st[name] = get_xp(p.data).zeros_like(p.data)
            self.update(p, g, st, self.lr * p.lr_mult)

    def update(self, p, g, st, lr) -> None:
        raise NotImplementedError

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Flat dict of arrays: ``state.<i>.<name>`` plus scalars under ``hparams``."""
        out = {f"state.{i}.{k}": v for i, st in enumerate(self.state) for k, v in st.items()}
        out["step_count"] = np.array(self.step_count)
        out["lr"] = np.array(self.lr)
        return out

    def load_state_dict(self, sd: dict) -> None:
        self.step_count = int(sd["step_count"])
        self.lr = float(sd["lr"])
        self.state = [{} for _ in self.params]
        for k, v in sd.items():
            if k.startswith("state."):
                _, i, name = k.split(".", 2)
                i = int(i)
                if i >= len(self.params) or np.shape(v) != np.shape(self.params[i].data):
                    raise CnnlabError(f"optimizer state {k} does not match the model's parameters")
                self.state[i][name] = get_xp(self.params[i].data).asarray(v).copy()


class SGD(Optimizer):
    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        if nesterov and momentum <= 0:
            raise CnnlabError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
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
        self.alpha, self.eps = float(alpha), float(eps)

    def update(self, p, g, st, lr):
        s = st["square_avg"]
        s *= self.alpha
        s += (1 - self.alpha) * g * g
        p.data -= lr * g / (get_xp(s).sqrt(s) + self.eps)


class Adam(Optimizer):
    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        self.b1, self.b2 = (float(b) for b in betas)
        self.eps = float(eps)

    def update(self, p, g, st, lr):
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * g * g
        t = self.step_count
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
