"""Architecture analysis: per layer output shape, parameters, multiply-adds, activation memory
and receptive field, computed symbolically from the layers' attributes (no forward pass).

For an input of shape (C, H, W) (one example; everything scales with the batch size):

    Conv2d  (C, H, W) -> (O, HO, WO),  HO = (H + 2P - D(K-1) - 1) // S + 1
            params  O * C/groups * KH * KW (+ O bias)
            MACs    O * HO * WO * C/groups * KH * KW   (multiply-adds; bias adds not counted)
    Linear  (D,) -> (K,):  params K*D (+ K),  MACs K*D
    others  parameters as stored; MACs 0 (activations, pooling, batch norm and the residual
            additions are element-wise work, O(activations), and are not counted, as in the
            published VGG/ResNet figures)
    activation memory = elements of the layer's output * bytes per element (float32: 4)

Receptive field (the input window one output unit sees), per axis, with j the product of the
strides so far ("jump") and r the field so far, starting from r = j = 1:

    conv/pool with kernel K, dilation D, stride S:   r += (K - 1) * D * j;   j *= S
    global pooling or Flatten -> Linear over an H x W map: a kernel of H x W
    Residual / Concat: the largest field among the branches

So two stacked 3x3 convs see 5x5 and three see 7x7, the same as one 7x7 conv, with 27C^2
weights instead of 49C^2 (C channels in and out).

Containers are walked through the graph that says how they combine their children
(:mod:`cnnlab.models.graph`: Sequential, Residual, Concat and every GraphModule), so nested
blocks (ResNet, Inception) need no special case. A layer type without a rule here is probed by
one forward pass on zeros (batch 1) and counted with 0 multiply-adds.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .. import nn
from ..errors import CnnlabError, ShapeError
from .graph import Add, Seq, graph_of
from .vgg import AdaptiveAvgPool2d

# ------------------------------------------------------------------------------ bookkeeping


@dataclass(frozen=True)
class Field:
    """Receptive field state per axis: size r, jump j (input pixels between neighbouring
    outputs), and the spatial size (fh, fw) a Flatten folded into the vector (else 1, 1)."""

    rh: int = 1
    rw: int = 1
    jh: int = 1
    jw: int = 1
    fh: int = 1
    fw: int = 1

    def window(self, kh, kw, sh=1, sw=1, dh=1, dw=1) -> "Field":
        return replace(self, rh=self.rh + (kh - 1) * dh * self.jh,
                       rw=self.rw + (kw - 1) * dw * self.jw, jh=self.jh * sh, jw=self.jw * sw)

    def widest(self, other: "Field") -> "Field":
        return replace(self, rh=max(self.rh, other.rh), rw=max(self.rw, other.rw))


@dataclass
class LayerRow:
    """One line of the summary: a leaf layer, or the merge of a Residual (add) / Concat."""

    name: str
    kind: str
    input_shape: tuple
    output_shape: tuple
    params: int
    trainable: int
    macs: int
    activation_bytes: int
    receptive_field: tuple
    depth: int


@dataclass
class Summary:
    input_shape: tuple
    output_shape: tuple
    rows: list = field(default_factory=list)
    total_params: int = 0
    trainable_params: int = 0
    total_macs: int = 0
    activation_bytes: int = 0
    param_bytes: int = 0
    receptive_field: tuple = (1, 1)
    batch: int = 1

    def row(self, name: str) -> LayerRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise CnnlabError(f"no layer named {name!r} in the summary")

    def to_dict(self) -> dict:
        return {"input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
                "total_params": self.total_params, "trainable_params": self.trainable_params,
                "total_macs": self.total_macs, "activation_bytes": self.activation_bytes,
                "param_bytes": self.param_bytes, "receptive_field": list(self.receptive_field),
                "batch": self.batch,
                "layers": [{"name": r.name, "kind": r.kind, "output_shape": list(r.output_shape),
                            "params": r.params, "macs": r.macs,
                            "activation_bytes": r.activation_bytes,
                            "receptive_field": list(r.receptive_field)} for r in self.rows]}

    def __str__(self) -> str:
        return format_summary(self)


def _shape_str(s) -> str:
    return "x".join(str(v) for v in s)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (k, M, G; bytes use KiB/MiB/GiB when unit='B')."""
    if unit == "B":
        for u, k in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
            if n >= k:
                return f"{n / k:.2f} {u}"
        return f"{int(n)} B"
    for u, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= k:
            return f"{n / k:.2f}{u}"
    return f"{int(n)}"


def format_summary(s: Summary, aliases: dict | None = None) -> str:
    """The summary as a fixed-width table with a totals block; ``aliases`` (dotted name ->
    conventional name, e.g. {"0": "conv1"}) are shown next to the names."""
    aliases = aliases or {}
    head = ("layer", "type", "output", "params", "MACs", "act. mem", "RF")
    lines = []
    for r in s.rows:
        rf = f"{r.receptive_field[0]}x{r.receptive_field[1]}"
        label = f"{r.name} ({aliases[r.name]})" if r.name in aliases else r.name
        lines.append(("  " * r.depth + label, r.kind, _shape_str(r.output_shape),
                      f"{r.params:,}", f"{r.macs:,}", human(r.activation_bytes * s.batch, "B"), rf))
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    fmt = lambda cols: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(cols, widths)))
    out = [fmt(head), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [fmt(l) for l in lines]
    out.append("-" * len(out[1]))
    out.append(f"input {_shape_str(s.input_shape)} (batch {s.batch})  ->  output "
               f"{_shape_str(s.output_shape)}")
    out.append(f"parameters:        {s.total_params:,} ({human(s.total_params)}; trainable "
               f"{s.trainable_params:,}; {human(s.param_bytes, 'B')})")
    out.append(f"multiply-adds:     {s.total_macs * s.batch:,} ({human(s.total_macs * s.batch)})")
    out.append(f"activation memory: {human(s.activation_bytes * s.batch, 'B')} "
               f"(all layer outputs, forward)")
    out.append(f"receptive field:   {s.receptive_field[0]}x{s.receptive_field[1]}")
    return "\n".join(out)


# ----------------------------------------------------------------------------- leaf rules

#: type -> rule(module, shape, field) -> (out_shape, macs, field); looked up along the MRO
RULES: dict = {}


def rule(*types):
    def deco(fn):
        for t in types:
            RULES[t] = fn
        return fn
    return deco


def _spatial(module, shape):
    if len(shape) != 3:
        raise ShapeError(f"{type(module).__name__} expects a (C, H, W) input, got {_shape_str(shape)}")
    return shape


def _out(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@rule(nn.Conv2d)
def _conv(m, shape, f):
    c, h, w = _spatial(m, shape)
    if c != m.in_channels:
        raise ShapeError(f"Conv2d expects {m.in_channels} input channels, got {_shape_str(shape)}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = m.kernel_size, m.stride, m.padding, m.dilation
    ho, wo = _out(h, kh, sh, ph, dh), _out(w, kw, sw, pw, dw)
    if ho < 1 or wo < 1:
        raise ShapeError(f"Conv2d kernel {kh}x{kw} does not fit a {h}x{w} input")
    macs = m.out_channels * ho * wo * (c // m.groups) * kh * kw
    return (m.out_channels, ho, wo), macs, f.window(kh, kw, sh, sw, dh, dw)


@rule(nn.Linear)
def _linear(m, shape, f):
    if len(shape) != 1 or shape[0] != m.in_features:
        raise ShapeError(f"Linear expects ({m.in_features},) features, got {_shape_str(shape)}")
    # a Linear over a flattened fh x fw map is a conv with an fh x fw kernel
    return (m.out_features,), m.in_features * m.out_features, replace(
        f.window(f.fh, f.fw), fh=1, fw=1)


def _pool_params(m):
    from ..functional import pool_params
    return pool_params(m.kernel_size, m.stride, m.padding)


@rule(nn.MaxPool2d, nn.AvgPool2d)
def _pool(m, shape, f):
    c, h, w = _spatial(m, shape)
    (kh, kw), (sh, sw), (ph, pw) = _pool_params(m)
    ho, wo = _out(h, kh, sh, ph), _out(w, kw, sw, pw)
    if ho < 1 or wo < 1:        # as the forward itself says (cnnlab.functional.pool)
        raise ShapeError(f"pool kernel {kh}x{kw} does not fit input {h}x{w}")
    return (c, ho, wo), 0, f.window(kh, kw, sh, sw)


@rule(nn.GlobalAvgPool2d)
def _gap(m, shape, f):
    c, h, w = _spatial(m, shape)
    return (c, 1, 1), 0, f.window(h, w)


@rule(nn.Flatten)
def _flatten(m, shape, f):
    fh, fw = (shape[1], shape[2]) if len(shape) == 3 else (1, 1)
    return (int(np.prod(shape)),), 0, replace(f, fh=fh, fw=fw)


@rule(nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Dropout, nn.Identity, nn.BatchNorm1d,
      nn.BatchNorm2d)
def _same(m, shape, f):
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        want = 1 if isinstance(m, nn.BatchNorm1d) else 3
        if len(shape) != want or shape[0] != m.num_features:
            raise ShapeError(f"{type(m).__name__}({m.num_features}) got input {_shape_str(shape)}")
    return tuple(shape), 0, f


@rule(AdaptiveAvgPool2d)
def _adaptive(m, shape, f):
    c, h, w = _spatial(m, shape)
    oh, ow = m.output_size
    # windows are ceil(H/OH) wide and start floor(H/OH) apart (exact when OH divides H)
    kh, kw = -(-h // oh), -(-w // ow)
    return (c, oh, ow), 0, f.window(kh, kw, max(h // oh, 1), max(w // ow, 1))


def _probe(m, shape, f):
    """Fallback for layers without a rule: one forward pass on zeros (batch 1, eval mode)."""
    modes = [(x, x.training) for x in m.modules()]
    m.eval()
    try:
        dtype = next((p.data.dtype for p in m.parameters()), np.float32)
        out = m.forward(np.zeros((1, *shape), dtype=dtype))
    finally:
        for x, t in modes:
            x.training = t
    return tuple(out.shape[1:]), 0, f


def _rule_for(m):
    for t in type(m).__mro__:
        if t in RULES:
            return RULES[t]
    if hasattr(m, "summary_rule"):
        return type(m).summary_rule
    return _probe


# ------------------------------------------------------------------------------- traversal


class _Walker:
    def __init__(self, itemsize):
        self.rows = []
        self.itemsize = itemsize

    def module(self, m, name, shape, f, depth):
        g = graph_of(m)
        if g is None:
            return self.leaf(m, name, shape, f, depth)
        return self.node(m, g, name, shape, f, depth)

    def leaf(self, m, name, shape, f, depth):
        out, macs, f2 = _rule_for(m)(m, tuple(shape), f)
        own = list(m._params.values())
        params = sum(int(np.prod(p.shape)) for p in own)
        trainable = sum(int(np.prod(p.shape)) for p in own if not p.frozen)
        self.rows.append(LayerRow(name or type(m).__name__, type(m).__name__, tuple(shape),
                                  tuple(out), params, trainable, int(macs),
                                  int(np.prod(out)) * self.itemsize, (f2.rh, f2.rw), depth))
        return tuple(out), f2

    def node(self, m, g, name, shape, f, depth):
        if g is None:
            return tuple(shape), f
        if isinstance(g, str):
            child = m._modules[g]
            return self.module(child, f"{name}.{g}" if name else g, shape, f, depth)
        if isinstance(g, Seq):
            for item in g.items:
                shape, f = self.node(m, item, name, shape, f, depth)
            return shape, f
        outs = [self.node(m, item, name, shape, f, depth + 1) for item in g.items]
        if isinstance(g, Add):
            shapes = {o[0] for o in outs}
            if len(shapes) != 1:
                raise ShapeError(f"{name or type(m).__name__}: added branches have different "
                                 f"shapes {sorted(shapes)}")
            out = outs[0][0]
            kind = "add"
        else:
            rest = {o[0][1:] for o in outs}
            if len(rest) != 1:
                raise ShapeError(f"{name or type(m).__name__}: concatenated branches differ in "
                                 f"spatial size {sorted(rest)}")
            out = (sum(o[0][0] for o in outs), *outs[0][0][1:])
            kind = "concat"
        f2 = outs[0][1]
        for _, fo in outs[1:]:
            f2 = f2.widest(fo)
        self.rows.append(LayerRow(f"{name or type(m).__name__} ({kind})", kind, tuple(shape), out,
                                  0, 0, 0, int(np.prod(out)) * self.itemsize, (f2.rh, f2.rw),
                                  depth))
        return out, f2


def parse_shape(spec) -> tuple:
    """'3x224x224' or (3, 224, 224) -> (3, 224, 224); a single number is a feature vector."""
    if isinstance(spec, str):
        try:
            dims = tuple(int(v) for v in spec.lower().replace(",", "x").split("x") if v)
        except ValueError:
            raise CnnlabError(f"input shape {spec!r} is not like 3x224x224 (C x H x W)") from None
    else:
        dims = tuple(int(v) for v in spec)
    if not dims or min(dims) < 1 or len(dims) not in (1, 3):
        raise CnnlabError(f"input shape {spec!r} must be CxHxW (e.g. 3x224x224) or D")
    return dims


def summarize(model, input_shape, batch: int = 1) -> Summary:
    """Summarize ``model`` for one input of ``input_shape`` (C, H, W) (or "CxHxW").

    Activation memory and the printed MACs scale with ``batch``; the stored per-layer numbers
    are per example. Raises ShapeError naming the layer whose input does not fit.
    """
    shape = parse_shape(input_shape)
    params = model.parameters()
    itemsize = params[0].data.dtype.itemsize if params else 4
    walker = _Walker(itemsize)
    try:
        out, f = walker.module(model, "", shape, Field(), 0)
    except ShapeError as e:
        where = walker.rows[-1].name if walker.rows else "the input"
        raise ShapeError(f"{e} (after {where}; input {_shape_str(shape)})") from None
    seen, total, trainable, nbytes = set(), 0, 0, 0
    for p in params:
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = int(np.prod(p.shape))
        total += n
        trainable += 0 if p.frozen else n
        nbytes += n * p.data.dtype.itemsize
    leaves = [r for r in walker.rows]
    return Summary(shape, tuple(out), walker.rows, total, trainable,
                   sum(r.macs for r in leaves), sum(r.activation_bytes for r in leaves), nbytes,
                   (f.rh, f.rw), batch)


def receptive_field(model, input_shape) -> tuple:
    """(height, width) of the input window one output unit of ``model`` sees."""
    return summarize(model, input_shape).receptive_field


def summary(model, input_shape, batch: int = 1) -> str:
    """The printable summary table (what ``Module.summary`` / ``cnnlab summary`` show)."""
    return format_summary(summarize(model, input_shape, batch))
