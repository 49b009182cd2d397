"""Neural style end to end: cnnlab's loss and image gradient against PyTorch autograd on the same
VGG weights (float64, small images, truncated nets), L-BFGS, colours, the API and the CLI."""
import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from cnnlab import conv, nn
from cnnlab.errors import CnnlabError
from cnnlab.style import losses as L
from cnnlab.style.colors import original_colors, rgb_to_yuv
from cnnlab.style.lbfgs import LBFGS
from cnnlab.style.stylize import build_network, make_objective, stylize
from cnnlab.style.vgg_features import VGGFeatures
from cnnlab.style.weights import CAFFE, RANDOM, TORCHVISION

RTOL = 1e-8


def smooth_image(rng, h, w):
    """A random image with some spatial structure, RGB in [0, 1]."""
    base = rng.random((h // 4 + 2, w // 4 + 2, 3))
    img = np.kron(base, np.ones((4, 4, 1)))[:h, :w]
    return np.clip(img + 0.05 * rng.standard_normal((h, w, 3)), 0, 1)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# ----------------------------------------------------------------------------- torch reference
class NormGrad(torch.autograd.Function):
    """Identity whose backward divides the unweighted gradient by its L1 norm (jcjohnson)."""

    @staticmethod
    def forward(ctx, f, weight):
        ctx.weight = weight
        return f.view_as(f)

    @staticmethod
    def backward(ctx, g):
        d = g / ctx.weight
        return ctx.weight * d / (d.abs().sum() + 1e-8), None


def torch_features(net, x):
    feats, h = {}, x
    for name, m in zip(net.names, net.features):
        if isinstance(m, nn.Conv2d):
            h = TF.conv2d(h, torch.tensor(m.weight.data), torch.tensor(m.bias.data), padding=1)
        elif isinstance(m, nn.ReLU):
            h = TF.relu(h)
        elif isinstance(m, nn.AvgPool2d):
            h = TF.avg_pool2d(h, 2)
        else:
            h = TF.max_pool2d(h, 2)
        feats[name] = h
    return feats


def torch_gram(f, mode):
    F_ = f.reshape(f.shape[0], f.shape[1], -1)
    g = F_ @ F_.transpose(1, 2)
    return g / (F_.shape[1] * F_.shape[2]) if mode == "johnson" else g


def torch_objective(net, x, x_content, x_styles, blend, cfg):
    """Total loss and its gradient with respect to x, all in PyTorch (float64 autograd)."""
    mode, norm = cfg["mode"], cfg["normalize"]
    with torch.no_grad():
        fc = torch_features(net, torch.tensor(x_content))
        targets = {}
        for xs, b in zip(x_styles, blend):
            fs = torch_features(net, torch.tensor(xs))
            for layer in cfg["style_layers"]:
                A = torch_gram(fs[layer], mode)
                if mode == "gatys":   # a style image of another size: Gram rescaled to M
                    A = A * (fc[layer].shape[2] * fc[layer].shape[3]) / (fs[layer].shape[2] * fs[layer].shape[3])
                targets[layer] = targets.get(layer, 0) + b * A
    t = torch.tensor(x, requires_grad=True)
    feats = torch_features(net, t)
    total = torch.zeros((), dtype=torch.float64)
    for layer in cfg["content_layers"]:
        w = cfg["content_weight"]
        f = NormGrad.apply(feats[layer], w) if norm else feats[layer]
        d = f - fc[layer]
        total = total + w * (0.5 * (d * d).sum() if mode == "gatys" else (d * d).mean())
    for layer in cfg["style_layers"]:
        w = cfg["style_weight"] * cfg["layer_weights"][layer]
        f = NormGrad.apply(feats[layer], w) if norm else feats[layer]
        c, m = f.shape[1], f.shape[2] * f.shape[3]
        e = ((torch_gram(f, mode) - targets[layer]) ** 2).sum()
        total = total + w * (e / (4.0 * c * c * m * m) if mode == "gatys" else e / (c * c))
    if cfg["tv_weight"]:
        core = t[:, :, :-1, :-1]
        tv = 0.5 * (((core - t[:, :, :-1, 1:]) ** 2).sum() + ((core - t[:, :, 1:, :-1]) ** 2).sum())
        total = total + cfg["tv_weight"] / cfg["grey"] ** 2 * tv
    value = float(total.detach())
    total.backward()
    return value, t.grad.numpy()


def compare(model="vgg19", size=(32, 40), style_sizes=((36, 28),), blend=(1.0,), mode="gatys",
            normalize=False, content_weight=5.0, style_weight=100.0, tv_weight=1e-3,
            content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1", "relu3_1"),
            pooling="max", prep=RANDOM, seed=0):
    rng = np.random.default_rng(seed)
    last = max(list(content_layers) + list(style_layers), key=VGGFeatures(model, "relu5_1").names.index)
    net = VGGFeatures(model, last, pooling, rng=np.random.default_rng(1)).astype(np.float64)
    content = smooth_image(rng, *size)
    styles = [smooth_image(rng, *s) for s in style_sizes]
    lw = {layer: 1.0 / len(style_layers) for layer in style_layers}
    obj = make_objective(net, prep, content, styles, blend, content_layers=list(content_layers),
                         style_layers=list(style_layers), layer_weights=lw,
                         content_weight=content_weight, style_weight=style_weight,
                         tv_weight=tv_weight, mode=mode, normalize_gradients=normalize,
                         dtype=np.float64)
    x = prep.to_net(smooth_image(rng, *size), np.float64)
    total, dx, parts = obj(x.copy())
    cfg = dict(mode=mode, normalize=normalize, content_weight=content_weight,
               style_weight=style_weight, layer_weights=lw, tv_weight=tv_weight,
               content_layers=content_layers, style_layers=style_layers, grey=prep.grey_level())
    t_total, t_dx = torch_objective(net, x, prep.to_net(content, np.float64),
                                    [prep.to_net(s, np.float64) for s in styles], blend, cfg)
    assert dx.shape == x.shape and dx.dtype == np.float64
    assert abs(total - t_total) <= RTOL * abs(t_total), (total, t_total)
    assert rel(dx, t_dx) <= RTOL, rel(dx, t_dx)
    return parts


@pytest.mark.parametrize("term", ["content", "style", "tv"])
def test_each_loss_term_matches_pytorch(term):
    parts = compare(content_weight=5.0 if term == "content" else 0.0,
                    style_weight=100.0 if term == "style" else 0.0,
                    tv_weight=1e-3 if term == "tv" else 0.0)
    assert parts[term] > 0


def test_all_terms_and_multi_style_blending_match_pytorch():
    compare(size=(30, 42), style_sizes=((36, 28), (25, 48), (32, 40)), blend=(0.2, 0.5, 0.3),
            content_layers=("relu2_2", "relu3_1"))


def test_johnson_normalization_with_normalized_gradients_matches_pytorch():
    compare(mode="johnson", normalize=True, style_sizes=((36, 28), (40, 32)), blend=(0.7, 0.3))
    compare(mode="johnson", prep=TORCHVISION)


def test_full_depth_vgg16_avg_pool_caffe_preprocessing_matches_pytorch():
    compare(model="vgg16", size=(32, 30), style_sizes=((30, 34),), pooling="avg", prep=CAFFE,
            content_layers=("relu4_2",), style_layers=("relu1_1", "relu3_1", "relu5_1"))


def test_no_weight_gradients_and_only_masks_kept():
    net = VGGFeatures("vgg19", "relu3_1", rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    feats = net.forward(x, keep=["relu2_1"])
    def arrays(item):
        if isinstance(item, np.ndarray):
            yield item
        elif isinstance(item, tuple):
            for part in item:
                yield from arrays(part)
    kept = [a for entry in net._tape for a in arrays(entry)]
    assert kept and all(a.dtype in (np.bool_, np.uint8) for a in kept)   # no activations
    dx = net.backward({"relu2_1": lambda: np.ones_like(feats["relu2_1"])})
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert all(p.frozen and p.grad is None for p in net.parameters())


def _objective_gradient(net, x):
    feats = net.forward(x, keep=["relu2_1", "relu3_1"])
    dx = net.backward({name: (lambda f=f: np.sign(f) * f) for name, f in feats.items()})
    return [feats["relu2_1"], feats["relu3_1"], dx]


@pytest.mark.parametrize("algo", ["winograd4", "winograd2"])
def test_transformed_weights_are_kept_across_evaluations_with_identical_results(algo, monkeypatch):
    """The frozen VGG keeps each conv's U (one per layer, for the forward and the image
    gradient): later evaluations transform no weight and give what an uncached net gives."""
    x = np.random.default_rng(1).standard_normal((1, 3, 20, 18)).astype(np.float32)
    nets = [VGGFeatures("vgg19", "relu3_1", rng=np.random.default_rng(0)) for _ in range(2)]
    for _, m in nets[1].convs():
        m.cache_weights = False
    with conv.default_algo(algo):
        first = _objective_gradient(nets[0], x)
        reference = _objective_gradient(nets[1], x)
        assert all(np.array_equal(a, b) for a, b in zip(first, reference))
        for (_, m), (_, r) in zip(nets[0].convs(), nets[1].convs()):
            assert len(m.weight_cache) == 1 and len(r.weight_cache) == 0
        monkeypatch.setattr(conv.ALGORITHMS[algo], "prepare", lambda *a: pytest.fail("prepared again"))
        again = _objective_gradient(nets[0], x)
    assert all(np.array_equal(a, b) for a, b in zip(again, reference))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_results_do_not_depend_on_the_thread_count(pooling, monkeypatch):
    """The style pass splits its element-wise layers (bias, ReLU, 2x2 pools, their backward
    passes) by channels and the style backward products by columns over the worker pool:
    the same numbers as on one thread (element-wise: bit for bit)."""
    monkeypatch.setattr(conv.threads, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(L, "PARALLEL_MIN_MACS", 1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 23, 17)).astype(np.float32)        # odd sizes, a batch
    net = VGGFeatures("vgg19", "relu3_1", pooling, rng=np.random.default_rng(0))
    f = rng.standard_normal((2, 8, 7, 9))
    target = L.style_target(rng.standard_normal((1, 8, 7, 9)))
    old = conv.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            conv.set_num_threads(n)
            with conv.default_algo("im2col"):
                feats = net.forward(x, keep=["relu1_2", "relu2_1", "relu3_1"])
                dx = net.backward({k: (lambda v=v: np.sign(v) * v) for k, v in feats.items()})
            _, cache = L.style_loss_forward(f, target, 3.0)
            results.append([*feats.values(), dx, L.style_loss_backward(1.0, cache)])
    finally:
        conv.set_num_threads(old)
    for more in results[1:]:
        for a, b in zip(results[0][:3], more[:3]):
            assert np.array_equal(a, b)
        for a, b in zip(results[0][3:], more[3:]):
            assert np.allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max())


def test_recalibrating_after_an_evaluation_uses_the_new_weights():
    """randomize/calibration rescale the weights into new arrays (never in place), so a net
    that already holds transformed weights runs on the new ones."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    calib = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    net = VGGFeatures("vgg19", "relu3_1", rng=np.random.default_rng(0))
    plain = VGGFeatures("vgg19", "relu3_1", rng=np.random.default_rng(0))
    for _, m in plain.convs():
        m.cache_weights = False
    with conv.default_algo("winograd4"):
        _objective_gradient(net, x)
        net.randomize(None, calib, rms=3.0)
        plain.randomize(None, calib, rms=3.0)
        got, want = _objective_gradient(net, x), _objective_gradient(plain, x)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


def test_truncation_and_unknown_layers():
    net = VGGFeatures("vgg16", "relu4_2", rng=np.random.default_rng(0))
    assert net.names[-1] == "relu4_2" and len(net.features) == len(net.names)
    assert list(net.state_dict())[-1] == "features.19.bias"   # conv4_2
    with pytest.raises(CnnlabError, match="relu3_4"):
        VGGFeatures("vgg16", "relu3_4")


# ----------------------------------------------------------------------------- L-BFGS
def test_lbfgs_decreases_the_style_loss_monotonically():
    rng = np.random.default_rng(0)
    net, prep, _ = build_network("vgg19", "random", "max", "relu3_1", seed=0, quiet=True)
    layers = ["relu1_1", "relu2_1", "relu3_1"]
    obj = make_objective(net, prep, smooth_image(rng, 32, 32), [smooth_image(rng, 32, 32)], [1.0],
                         content_layers=["relu2_2"], style_layers=layers,
                         layer_weights={layer: 1 / 3 for layer in layers}, content_weight=5,
                         style_weight=100, tv_weight=1e-3, mode="gatys", normalize_gradients=False)
    x0 = (rng.standard_normal((1, 3, 32, 32)) * 0.001).astype(np.float32)
    values = [obj(x0)[0]]

    def fun(x):
        total, dx, _ = obj(x.reshape(x0.shape))
        return total, dx.reshape(-1)

    opt = LBFGS(fun, x0.size, history=100)
    opt.run(x0.reshape(-1), 20, callback=lambda it, x, f: values.append(f) and False)
    assert len(values) == 21
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert values[-1] < values[0]


def test_lbfgs_compact_form_equals_two_loop_recursion():
    rng = np.random.default_rng(5)
    n = 50
    opt = LBFGS(lambda x: (0.0, x), n, history=4, dtype=np.float64)
    pairs = []
    for _ in range(7):
        s = rng.standard_normal(n)
        y = s * rng.uniform(0.5, 2.0, n)            # positive curvature
        g = rng.standard_normal(n)
        d = opt.update(s, y, g)
        pairs = (pairs + [(s, y)])[-4:]
        q, alphas = g.copy(), []
        for s_, y_ in reversed(pairs):
            a = s_ @ q / (y_ @ s_)
            alphas.append(a)
            q -= a * y_
        r = q * (pairs[-1][0] @ pairs[-1][1]) / (pairs[-1][1] @ pairs[-1][1])
        for (s_, y_), a in zip(pairs, reversed(alphas)):
            r += (a - y_ @ r / (y_ @ s_)) * s_
        np.testing.assert_allclose(d, -r, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- colours, API, CLI
def test_original_colors_keeps_the_content_chroma():
    rng = np.random.default_rng(2)
    content, generated = smooth_image(rng, 20, 24), smooth_image(rng, 20, 24)
    out = original_colors(content, generated)
    np.testing.assert_allclose(rgb_to_yuv(out)[..., 1:], rgb_to_yuv(content)[..., 1:], atol=1e-12)
    np.testing.assert_allclose(rgb_to_yuv(out)[..., 0], rgb_to_yuv(generated)[..., 0], atol=1e-12)


def test_stylize_original_colors_end_to_end(tmp_path):
    rng = np.random.default_rng(3)
    content = (smooth_image(rng, 32, 32) * 0.5 + 0.25)          # mid-range: little clipping
    result = stylize(content, [smooth_image(rng, 32, 32)], tmp_path / "o.png", image_size=32,
                     num_iterations=4, print_every=0, save_every=2, weights="random",
                     original_colors=True, style_layers="relu1_1,relu2_1", content_layers="relu2_2",
                     progress=False)
    inside = np.all((result.image > 0.01) & (result.image < 0.99), axis=-1)
    assert inside.mean() > 0.5
    chroma = rgb_to_yuv(result.image)[..., 1:] - rgb_to_yuv(content)[..., 1:]
    assert np.abs(chroma[inside]).max() < 1e-9
    for key in ("output", "sheet", "plot", "iteration 2"):
        assert result.paths[key].is_file()


def test_stylize_multiscale_and_adam(tmp_path):
    rng = np.random.default_rng(4)
    result = stylize(smooth_image(rng, 48, 32), [smooth_image(rng, 40, 40), smooth_image(rng, 30, 50)],
                     None, multiscale="16,32", num_iterations=3, optimizer="adam",
                     style_blend_weights="1,3", style_scale=0.5, weights="random",
                     style_layers="relu1_1,relu2_1", content_layers="relu2_1", progress=False,
                     print_every=0, save_every=0)
    assert result.image.shape == (32, 21, 3)
    assert [n for n, _ in result.history["total"]] == list(range(1, 7))
    assert result.scales == [(16, 1), (32, 4)]      # the summary line compares within a scale


def test_option_errors():
    with pytest.raises(CnnlabError, match="blend"):
        stylize(None, None, None, style_blend_weights="1,2", weights="random", num_iterations=1,
                progress=False)
    with pytest.raises(CnnlabError, match="relu9_1"):
        stylize(None, None, None, style_layers="relu9_1", weights="random", progress=False)
    with pytest.raises(CnnlabError, match="optimizer"):
        stylize(None, None, None, optimizer="sgd", weights="random", progress=False)
    for kw, words in ((dict(style_layers="relu1_1,relu1_1"), "given more than once"),
                      (dict(learning_rate=0.0), "learning_rate must be a positive"),
                      (dict(learning_rate=-1.0), "learning_rate must be a positive"),
                      (dict(style_weight=-1.0), "style_weight must be a finite number, 0"),
                      (dict(tv_weight=float("nan")), "tv_weight"),
                      (dict(save_every=-1), "save_every must be at least 0"),
                      (dict(print_every=-1), "print_every must be at least 0"),
                      (dict(multiscale="abc"), "image sizes in pixels"),
                      (dict(image_size=12), "needs at least 16 pixels per side"),
                      (dict(image_size=64, style_scale=0.2), "--style-scale")):
        with pytest.raises(CnnlabError, match=words):
            stylize(None, None, None, weights="random", progress=False, num_iterations=1, **kw)


def test_cli_style_demo(tmp_path, capsys):
    from cnnlab.style.commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "demo.png"
    args = parser.parse_args(["style", "-o", str(out), "--image-size", "24", "--num-iterations", "2",
                              "--weights", "random", "--quiet", "--style-layers", "relu1_1,relu2_1",
                              "--content-layers", "relu2_1", "--save-every", "1"])
    assert args.func(args) == 0
    assert out.is_file() and (tmp_path / "demo_sheet.png").is_file()
    assert (tmp_path / "demo_losses.png").is_file() and (tmp_path / "demo_1.png").is_file()
    assert "style loss" in capsys.readouterr().out


def test_ctrl_c_saves_the_image_so_far(tmp_path, capsys, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) during the optimisation: the image after the last finished
    iteration is written to OUT, and the command says so and exits 130."""
    import sys

    from cnnlab.style.commands import register
    S = sys.modules["cnnlab.style.stylize"]     # (cnnlab.style.stylize is also the function)

    real = S.make_objective

    def interrupted_objective(*a, **kw):
        objective, calls = real(*a, **kw), []

        def call(x):
            calls.append(1)
            if len(calls) == 4:
                raise KeyboardInterrupt
            return objective(x)
        return call

    monkeypatch.setattr(S, "make_objective", interrupted_objective)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "cut.png"
    args = parser.parse_args(["style", "-o", str(out), "--image-size", "24", "--num-iterations",
                              "20", "--weights", "random", "--quiet", "--optimizer", "adam",
                              "--style-layers", "relu1_1", "--content-layers", "relu1_1"])
    assert args.func(args) == 130
    err = capsys.readouterr().err
    bad = parser.parse_args(["style", "--num-iterations", "0", "--weights", "random"])
    with pytest.raises(CnnlabError, match="--num-iterations must be at least 1"):
        bad.func(bad)                           # the flag's name, not the Python parameter
    assert "interrupted; the image after iteration 2" in err and out.is_file()   # 1 + 2 evals


def test_preprocessing_round_trip():
    img = np.random.default_rng(0).random((5, 7, 3))
    for prep in (TORCHVISION, CAFFE, RANDOM):
        x = prep.to_net(img, np.float64)
        assert x.shape == (1, 3, 5, 7)
        np.testing.assert_allclose(prep.from_net(x), img, atol=1e-12)
    assert CAFFE.to_net(np.ones((1, 1, 3)) * np.array([1.0, 0.0, 0.0]), np.float64)[0, 2, 0, 0] == \
        pytest.approx(255 - 123.68)             # red lands in the last (R of BGR) channel


def test_adam_history_describes_the_saved_image():
    """Iteration k's recorded loss is the loss of the image after k steps (it was the loss
    before step k), so the last entry is the returned image's."""
    kw = dict(image_size=32, num_iterations=2, weights="random", progress=False, quiet=True,
              style_layers="relu1_1", content_layers="relu2_1", print_every=0, save_every=0)
    small, big = (stylize(None, None, None, optimizer="adam", learning_rate=lr, **kw)
                  for lr in (1e-6, 1e4))
    assert small.evaluations == 3 and [n for n, _ in small.history["total"]] == [1, 2]
    assert small.history["total"][0][1] != big.history["total"][0][1]
