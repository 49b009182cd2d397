"""The table of op cases: every op in cnnlab.functional registers its configurations here.

Both checks of tests/harness.py run on every case (tests/test_ops.py). The neural-style
losses (tests/test_style_losses.py) and whole blocks (tests/test_blocks.py) build their cases
with the same OpCase and run the same two checks on them in their own files.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF

import cnnlab.functional as F
from cnnlab.conv import ALGORITHMS, PASSES, ConvGeometry
from harness import OpCase

OP_CASES: list[OpCase] = []


def register(case: OpCase) -> OpCase:
    OP_CASES.append(case)
    return case


def normal(*shape):
    """Inputs {"x": standard normal of this shape}."""
    return lambda rng: {"x": rng.standard_normal(shape)}


def separated(rng, shape, spacing=1e-3):
    """Values at least ``spacing`` apart (no near-ties: max pool and ReLU stay differentiable)."""
    n = int(np.prod(shape))
    v = (rng.permutation(n) - n / 2) * spacing * 2 + spacing / 2
    return v.reshape(shape)


# ---------------------------------------------------------------- convolution (every algorithm)
CONV_CONFIGS = [
    # x shape,        w shape,       stride, padding, dilation, groups, bias
    ((2, 3, 7, 7), (4, 3, 3, 3), 1, 1, 1, 1, True),
    ((1, 2, 8, 9), (3, 2, 3, 3), 2, 0, 1, 1, True),
    ((2, 4, 9, 8), (6, 2, 3, 2), (2, 1), (1, 0), 2, 2, False),
    ((2, 3, 10, 10), (4, 3, 1, 5), 1, (0, 2), 1, 1, True),
    ((2, 3, 10, 10), (4, 3, 5, 1), 1, (2, 0), 1, 1, True),
    ((2, 3, 6, 6), (5, 3, 5, 5), 1, 2, 1, 1, True),
    ((1, 4, 11, 13), (4, 4, 3, 3), 1, 2, 1, 1, True),
    ((3, 2, 5, 5), (2, 2, 3, 3), 1, 0, 1, 1, True),
    ((2, 6, 6, 7), (6, 1, 3, 3), 1, 1, 1, 6, True),
    ((2, 4, 6, 7), (4, 2, 3, 3), 1, 1, 1, 2, True),       # groups 2 (FFT, Winograd too)
    ((1, 2, 5, 6), (3, 2, 7, 7), 1, 3, 1, 1, True),       # 7x7, padding 3, kernel > input
    ((2, 3, 1, 1), (4, 3, 1, 1), 1, 0, 1, 1, True),       # 1x1 kernel on a 1x1 map
    ((1, 2, 9, 9), (3, 2, 3, 3), 1, 2, 2, 1, False),      # dilation 2 alone
]


def _conv_case(cfg, algo):
    xs, ws, st, pd, dl, gr, bias = cfg

    def inputs(rng):
        d = {"x": rng.standard_normal(xs), "w": rng.standard_normal(ws)}
        if bias:
            d["b"] = rng.standard_normal(ws[0])
        return d

    def forward(d):
        return F.conv2d_forward(d["x"], d["w"], d.get("b"), st, pd, dl, gr, algo=algo)

    def backward(dout, cache):
        dx, dw, db = F.conv2d_backward(dout, cache)
        return {"x": dx, "w": dw, "b": db}

    def torch_forward(t):
        return TF.conv2d(t["x"], t["w"], t.get("b"), _p(st), _p(pd), _p(dl), gr)

    name = f"conv2d[{algo}]x{xs}w{ws}s{st}p{pd}d{dl}g{gr}"
    return OpCase(name, inputs, forward, backward, torch_forward)


def _p(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_algorithms_for(cfg):
    xs, ws, st, pd, dl, gr, _ = cfg
    g = ConvGeometry.of(xs, ws, st, pd, dl, gr)
    return [name for name, a in ALGORITHMS.items() if all(a.supports(g, p) is None for p in PASSES)]


for _cfg in CONV_CONFIGS:
    for _algo in conv_algorithms_for(_cfg):
        register(_conv_case(_cfg, _algo))


# ---------------------------------------------------------------- pooling
def _pool_case(kind, xs, k, s, p, include_pad=True):
    def inputs(rng):
        return {"x": separated(rng, xs)}

    if kind == "max":
        def forward(d):
            return F.max_pool_forward(d["x"], k, s, p)

        def backward(dout, cache):
            return {"x": F.max_pool_backward(dout, cache)}

        def torch_forward(t):
            return TF.max_pool2d(t["x"], k, s, p)
    else:
        def forward(d):
            return F.avg_pool_forward(d["x"], k, s, p, include_pad)

        def backward(dout, cache):
            return {"x": F.avg_pool_backward(dout, cache)}

        def torch_forward(t):
            return TF.avg_pool2d(t["x"], k, s, p, count_include_pad=include_pad)

    return register(OpCase(f"{kind}_pool x{xs} k{k} s{s} p{p} incl{include_pad}", inputs, forward,
                           backward, torch_forward))


for _kind in ("max", "avg"):
    _pool_case(_kind, (2, 3, 8, 8), 2, 2, 0)
    _pool_case(_kind, (2, 3, 7, 9), 2, 2, 0)          # the 2x2 path, odd last row/column
    _pool_case(_kind, (1, 2, 7, 9), 3, 2, 1)
    _pool_case(_kind, (2, 2, 5, 6), (2, 3), (1, 2), (1, 1))
    _pool_case(_kind, (3, 1, 9, 9), 3, 3, 0)
    _pool_case(_kind, (2, 2, 6, 5), 3, 1, 1)           # stride 1 (inception branches)
    _pool_case(_kind, (1, 2, 9, 10), 4, 2, 2)          # padding 2
_pool_case("avg", (2, 2, 7, 7), 3, 2, 1, include_pad=False)
_pool_case("avg", (1, 2, 8, 7), 4, 3, 2, include_pad=False)

register(OpCase(
    "global_avg_pool", normal(2, 3, 5, 4), lambda d: F.global_avg_pool_forward(d["x"]),
    lambda dout, c: {"x": F.global_avg_pool_backward(dout, c)},
    lambda t: TF.adaptive_avg_pool2d(t["x"], 1)))


# ---------------------------------------------------------------- activations
def _act_case(name, fwd, bwd, tfn, shape=(3, 4, 5), **kw):
    register(OpCase(name, lambda rng: {"x": separated(rng, shape, 1e-2)},
                    lambda d: fwd(d["x"], **kw), lambda dout, c: {"x": bwd(dout, c)},
                    lambda t: tfn(t["x"])))


_act_case("relu", F.relu_forward, F.relu_backward, TF.relu)
_act_case("leaky_relu", F.leaky_relu_forward, F.leaky_relu_backward,
          lambda x: TF.leaky_relu(x, 0.1), negative_slope=0.1)
_act_case("sigmoid", F.sigmoid_forward, F.sigmoid_backward, torch.sigmoid)
_act_case("tanh", F.tanh_forward, F.tanh_backward, torch.tanh)


# ---------------------------------------------------------------- linear, flatten
for _bias in (True, False):
    register(OpCase(
        f"linear bias={_bias}",
        (lambda b: lambda rng: {"x": rng.standard_normal((5, 7)), "w": rng.standard_normal((4, 7)),
                                **({"b": rng.standard_normal(4)} if b else {})})(_bias),
        lambda d: F.linear_forward(d["x"], d["w"], d.get("b")),
        lambda dout, c: dict(zip(("x", "w", "b"), F.linear_backward(dout, c))),
        lambda t: TF.linear(t["x"], t["w"], t.get("b"))))
register(OpCase("linear batch1", lambda rng: {"x": rng.standard_normal((1, 3)), "w": rng.standard_normal((2, 3)),
                                               "b": rng.standard_normal(2)},
                lambda d: F.linear_forward(d["x"], d["w"], d["b"]),
                lambda dout, c: dict(zip(("x", "w", "b"), F.linear_backward(dout, c))),
                lambda t: TF.linear(t["x"], t["w"], t["b"])))
register(OpCase("flatten", normal(2, 3, 4, 5), lambda d: F.flatten_forward(d["x"]),
                lambda dout, c: {"x": F.flatten_backward(dout, c)}, lambda t: torch.flatten(t["x"], 1)))


# ---------------------------------------------------------------- dropout, DropConnect
# The mask comes from a seeded generator; PyTorch gets the same mask, so the parity check
# tests the scaling and the gradient routing (torch's own RNG cannot be matched).
def _mask(shape, p, seed):
    return (np.random.default_rng(seed).random(shape) >= p) / (1 - p)


register(OpCase(
    "dropout p=0.3", normal(4, 3, 5, 5),
    lambda d: F.dropout_forward(d["x"], 0.3, np.random.default_rng(7)),
    lambda dout, c: {"x": F.dropout_backward(dout, c)},
    lambda t: t["x"] * torch.tensor(_mask((4, 3, 5, 5), 0.3, 7))))
register(OpCase(
    "dropout eval", normal(4, 6), lambda d: F.dropout_forward(d["x"], 0.5, None, training=False),
    lambda dout, c: {"x": F.dropout_backward(dout, c)}, lambda t: TF.dropout(t["x"], 0.5, training=False)))
register(OpCase(
    "dropconnect p=0.4",
    lambda rng: {"x": rng.standard_normal((5, 6)), "w": rng.standard_normal((3, 6)), "b": rng.standard_normal(3)},
    lambda d: F.dropconnect_forward(d["x"], d["w"], d["b"], 0.4, np.random.default_rng(3)),
    lambda dout, c: dict(zip(("x", "w", "b"), F.dropconnect_backward(dout, c))),
    lambda t: TF.linear(t["x"], t["w"] * torch.tensor(_mask((3, 6), 0.4, 3)), t["b"])))
register(OpCase(
    "dropconnect per-sample p=0.4",
    lambda rng: {"x": rng.standard_normal((5, 6)), "w": rng.standard_normal((3, 6)), "b": rng.standard_normal(3)},
    lambda d: F.dropconnect_forward(d["x"], d["w"], d["b"], 0.4, np.random.default_rng(3),
                                    per_sample=True),
    lambda dout, c: dict(zip(("x", "w", "b"), F.dropconnect_backward(dout, c))),
    lambda t: torch.einsum("nkd,nd->nk", t["w"] * torch.tensor(_mask((5, 3, 6), 0.4, 3)), t["x"])
    + t["b"]))
register(OpCase(
    "dropconnect eval",
    lambda rng: {"x": rng.standard_normal((5, 6)), "w": rng.standard_normal((3, 6)), "b": rng.standard_normal(3)},
    lambda d: F.dropconnect_forward(d["x"], d["w"], d["b"], 0.4, None, training=False),
    lambda dout, c: dict(zip(("x", "w", "b"), F.dropconnect_backward(dout, c))),
    lambda t: TF.linear(t["x"], t["w"], t["b"])))


# ---------------------------------------------------------------- batch norm
def _bn_case(shape, training):
    c = shape[1]
    rm, rv = np.linspace(-0.5, 0.5, c), np.linspace(0.5, 2.0, c)

    def inputs(rng):
        return {"x": rng.standard_normal(shape) * 2 + 1, "gamma": rng.standard_normal(c),
                "beta": rng.standard_normal(c)}

    def forward(d):
        return F.batchnorm_forward(d["x"], d["gamma"], d["beta"], rm, rv, training)

    def backward(dout, cache):
        return dict(zip(("x", "gamma", "beta"), F.batchnorm_backward(dout, cache)))

    def torch_forward(t):
        return TF.batch_norm(t["x"], torch.tensor(rm), torch.tensor(rv), t["gamma"], t["beta"],
                             training=training, eps=1e-5)

    register(OpCase(f"batchnorm x{shape} train={training}", inputs, forward, backward, torch_forward))


for _shape in ((6, 4), (3, 3, 4, 5), (1, 2, 3, 3)):
    for _tr in (True, False):
        _bn_case(_shape, _tr)


# ---------------------------------------------------------------- losses
_labels = np.array([0, 3, 1, 3, 2, 4])

for _ls in (0.0, 0.1):
    register(OpCase(
        f"softmax_cross_entropy smoothing={_ls}", lambda rng: {"s": rng.standard_normal((6, 5)) * 3},
        (lambda ls: lambda d: F.softmax_cross_entropy_forward(d["s"], _labels, ls))(_ls),
        lambda dout, c: {"s": F.softmax_cross_entropy_backward(dout, c)},
        (lambda ls: lambda t: TF.cross_entropy(t["s"], torch.tensor(_labels), label_smoothing=ls))(_ls),
        wrt=("s",)))

register(OpCase(
    "svm_hinge", lambda rng: {"s": rng.standard_normal((6, 5)) * 2},
    lambda d: F.svm_hinge_forward(d["s"], _labels),
    lambda dout, c: {"s": F.svm_hinge_backward(dout, c)},
    # torch's multi_margin_loss divides by K; cnnlab follows CS231n (sum over classes)
    lambda t: TF.multi_margin_loss(t["s"], torch.tensor(_labels)) * 5))
register(OpCase(
    "l2_penalty", lambda rng: {"w1": rng.standard_normal((3, 4)), "w2": rng.standard_normal(5)},
    lambda d: F.l2_penalty_forward([d["w1"], d["w2"]], 0.3),
    lambda dout, c: dict(zip(("w1", "w2"), F.l2_penalty_backward(dout, c))),
    lambda t: 0.15 * ((t["w1"] ** 2).sum() + (t["w2"] ** 2).sum())))
