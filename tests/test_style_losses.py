"""Neural-style losses in the shared harness: numerical gradients and PyTorch parity.

Cases: the Gram matrix, content loss, style loss (both normalisations, batch and a
target of another size) and total variation, checked here with the harness's two checks
(float64 gradients and PyTorch parity).
"""
import numpy as np
import pytest
import torch

from cnnlab.style import losses as L
from harness import OpCase, check_against_torch, check_gradients
from op_cases import OP_CASES, register

STYLE_CASES: list[OpCase] = []


def _case(case):
    STYLE_CASES.append(case)
    if all(c.name != case.name for c in OP_CASES):
        register(case)
    return case


def torch_gram(f, scale=1.0):
    F_ = f.reshape(f.shape[0], f.shape[1], -1)
    return scale * F_ @ F_.transpose(1, 2)


def torch_content(f, p, weight, mode):
    d = f - p
    return weight * (0.5 * (d * d).sum() if mode == "gatys" else (d * d).mean())


def torch_style(f, a, weight, mode):
    n, c = f.shape[:2]
    m = f.shape[2] * f.shape[3]
    if mode == "gatys":
        return weight * ((torch_gram(f) - a) ** 2).sum() / (4.0 * c * c * m * m)
    return weight * ((torch_gram(f, 1.0 / (c * m)) - a) ** 2).sum() / (c * c)


def torch_tv(x, weight):
    core = x[:, :, :-1, :-1]
    return weight * 0.5 * (((core - x[:, :, :-1, 1:]) ** 2).sum() + ((core - x[:, :, 1:, :-1]) ** 2).sum())


for _shape, _scale in (((1, 4, 5, 6), 1.0), ((2, 3, 4, 4), 0.25)):
    _case(OpCase(
        f"style.gram x{_shape} scale={_scale}", lambda rng, s=_shape: {"f": rng.standard_normal(s)},
        lambda d, sc=_scale: L.gram_forward(d["f"], sc),
        lambda dout, c: {"f": L.gram_backward(dout, c)},
        lambda t, sc=_scale: torch_gram(t["f"], sc)))

_P = np.random.default_rng(11).standard_normal((1, 4, 5, 6))
for _mode in L.MODES:
    _case(OpCase(
        f"style.content_loss {_mode}", lambda rng: {"f": rng.standard_normal((1, 4, 5, 6))},
        lambda d, m=_mode: L.content_loss_forward(d["f"], _P, 2.5, m),
        lambda dout, c: {"f": L.content_loss_backward(dout, c)},
        lambda t, m=_mode: torch_content(t["f"], torch.tensor(_P), 2.5, m)))

# style target from another image size (5x7 positions vs 4x6): the Gatys target is rescaled
_S = np.random.default_rng(12).standard_normal((1, 3, 5, 7))
for _mode in L.MODES:
    _A = L.style_target(_S, _mode, positions=24)
    for _n in (1, 2):
        _case(OpCase(
            f"style.style_loss {_mode} batch={_n}", lambda rng, n=_n: {"f": rng.standard_normal((n, 3, 4, 6))},
            lambda d, m=_mode, a=_A: L.style_loss_forward(d["f"], a, 7.0, m),
            lambda dout, c: {"f": L.style_loss_backward(dout, c)},
            lambda t, m=_mode, a=_A: torch_style(t["f"], torch.tensor(a), 7.0, m)))

for _shape in ((1, 3, 5, 6), (2, 2, 4, 3)):
    _case(OpCase(
        f"style.tv_loss x{_shape}", lambda rng, s=_shape: {"x": rng.standard_normal(s)},
        lambda d: L.tv_loss_forward(d["x"], 0.3),
        lambda dout, c: {"x": L.tv_loss_backward(dout, c)},
        lambda t: torch_tv(t["x"], 0.3)))


@pytest.mark.parametrize("case", STYLE_CASES, ids=str)
def test_gradients_match_numerical(case):
    check_gradients(case)


@pytest.mark.parametrize("case", STYLE_CASES, ids=str)
def test_matches_pytorch(case):
    check_against_torch(case)


def test_gatys_style_gradient_is_papers_formula():
    """dE/dF = (1 / (N^2 M^2)) ((F)^T (G - A))^T, the formula of Gatys et al. (before the ReLU mask)."""
    rng = np.random.default_rng(3)
    f, a = rng.standard_normal((1, 5, 3, 4)), rng.standard_normal((1, 5, 5))
    a = a + a.transpose(0, 2, 1)
    loss, cache = L.style_loss_forward(f, a, 1.0, "gatys")
    F_ = f.reshape(5, 12)
    G = F_ @ F_.T
    assert loss == pytest.approx(((G - a[0]) ** 2).sum() / (4 * 25 * 144), rel=1e-12)
    expected = (F_.T @ (G - a[0])).T / (25 * 144)
    np.testing.assert_allclose(L.style_loss_backward(1.0, cache).reshape(5, 12), expected, rtol=1e-12)


def test_normalized_gradients_have_unit_l1_norm_times_weight():
    rng = np.random.default_rng(4)
    f, p = rng.standard_normal((1, 3, 4, 4)), rng.standard_normal((1, 3, 4, 4))
    _, c = L.content_loss_forward(f, p, 3.0, "johnson", normalize_gradients=True)
    assert np.abs(L.content_loss_backward(1.0, c)).sum() == pytest.approx(3.0, rel=1e-6)
    _, c = L.style_loss_forward(f, L.style_target(p, "johnson"), 2.0, "johnson", normalize_gradients=True)
    assert np.abs(L.style_loss_backward(1.0, c)).sum() == pytest.approx(2.0, rel=1e-6)


def test_bad_mode_and_shapes_are_reported():
    f = np.zeros((1, 2, 3, 3))
    with pytest.raises(ValueError, match="normalisation"):
        L.content_loss_forward(f, f, mode="caffe")
    with pytest.raises(ValueError, match="channels"):
        L.style_loss_forward(f, np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="content target"):
        L.content_loss_forward(f, np.zeros((1, 2, 3, 4)))


def test_every_loss_is_summed_over_the_batch():
    """Stacking one sample twice doubles each loss, johnson's content loss included (it was
    the mean over the whole batch)."""
    rng = np.random.default_rng(4)
    f, p = rng.standard_normal((1, 3, 4, 5)), rng.standard_normal((1, 3, 4, 5))
    two = lambda a: np.concatenate([a, a])       # noqa: E731
    for mode in ("gatys", "johnson"):
        one = L.content_loss_forward(f, p, 1.0, mode)[0]
        assert L.content_loss_forward(two(f), two(p), 1.0, mode)[0] == pytest.approx(2 * one)
