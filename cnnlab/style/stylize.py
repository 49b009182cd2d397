"""Neural style transfer (Gatys, Ecker & Bethge 2016): optimise an image so that its VGG
features match a content image's at the content layers and its Gram matrices match the
style images' at the style layers.

    x* = argmin_x  content_weight * sum_{l in content} L_content(F_l(x), F_l(content))
                 + style_weight * sum_{l in style} w_l E_l(F_l(x), A_l)
                 + tv_weight * TV(x)

with A_l = sum_i b_i Gram(F_l(style_i)) (blend weights b normalised to sum to 1), the losses
of :mod:`cnnlab.style.losses` ("gatys" or "johnson" normalisation) and x the image in the
network's input space (see :mod:`cnnlab.style.weights`). TV is measured in 0-255 grey
levels of that space, so --tv-weight means the same for every weights file.

:func:`stylize` is the Python API; ``cnnlab style`` (commands.py) takes the same options.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..checks import at_least, non_negative_number, positive_number
from ..conv.threads import parallel_map
from ..errors import CnnlabError
from . import losses as L
from .colors import original_colors as _original_colors
from .images import contact_sheet, fit_size, load_image, plot_losses, resize, save_image
from .lbfgs import LBFGS
from .vgg_features import VGGFeatures, check_layers
from .weights import NAMES, RANDOM, find_weights, load_vgg_weights

DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_CONTENT_LAYERS = ("relu4_2",)
#: Untrained weights: every ReLU output has this root-mean-square on the calibration photo
#: (see VGGFeatures.randomize and docs/style.md).
RANDOM_RMS = 300.0
#: Longest side of the calibration photo (the shipped content image).
CALIBRATION_SIZE = 128
#: --init random: Gaussian white noise with this standard deviation, in grey levels.
INIT_NOISE = 16.0
FILES = Path(__file__).parent / "files"
DEMO_CONTENT = FILES / "content.jpg"
DEMO_STYLE = FILES / "style.jpg"


def _names(value, what):
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    value = list(value or ())
    if not value and what != "content":
        raise CnnlabError(f"no {what} layers given")
    twice = sorted({v for v in value if value.count(v) > 1})
    if twice:
        raise CnnlabError(f"{what} layer(s) {', '.join(twice)} given more than once; give each "
                          f"once (with --style-layer-weights to weigh one more)")
    return value


class StyleInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run that writes its output: the image as of the last finished
    iteration was saved to ``path`` first."""

    def __init__(self, path, iteration: int):
        super().__init__(f"interrupted; the image after iteration {iteration} is in {path}")
        self.path, self.iteration = path, iteration


def _check_sizes(sizes, style_scale, content, styles, names, last) -> None:
    """Every image the run feeds the network must survive the poolings up to ``last`` (the
    deepest layer used): at least 2^pools pixels on its short side."""
    pools = sum(1 for n in names[:names.index(last) + 1] if n.startswith("pool"))
    need = 2 ** pools
    for size in sizes:
        style_size = max(8, math.ceil(style_scale * size))
        for what, img, side in [("content", content, size)] + \
                [("style", s, style_size) for s in styles]:
            h, w = fit_size(*img.shape[:2], side)
            if min(h, w) < need:
                raise CnnlabError(
                    f"at {size} px the {what} image would be {w}x{h} pixels; {last} comes "
                    f"after {pools} poolings and needs at least {need} pixels per side: use a "
                    f"larger --image-size" + (" or --style-scale" if what == "style" else ""))


def _numbers(value, what, count):
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise CnnlabError(f"{what} must be comma-separated numbers, got {value!r}") from None
    value = [float(v) for v in value]
    if len(value) != count:
        raise CnnlabError(f"{what} has {len(value)} values for {count} "
                          f"{'style images' if 'blend' in what else 'layers'}")
    if any(v < 0 for v in value) or not any(v > 0 for v in value):
        raise CnnlabError(f"{what} must be non-negative and not all zero, got {value}")
    return value


# ------------------------------------------------------------------------------ network
def build_network(model=None, weights=None, pooling=None, last="relu5_1", seed=0, quiet=False):
    """(VGGFeatures, Preprocessing, description). ``weights``: a file, "random", or None
    (a file fetched by `cnnlab weights fetch`, else random weights with a notice).
    ``pooling`` None: "max" for trained weights (jcjohnson's default), "avg" for
    random ones (an untrained net with max pooling does not reconstruct a photo from
    relu4_2; with average pooling it does: see docs/style.md)."""
    path = weights
    if weights is None:
        path = find_weights(model or "vgg19")
        if path is None:
            name = model or "vgg19"
            if not quiet:
                print(f"cnnlab style: no pretrained {NAMES[name]} weights found, using random weights; "
                      f"`cnnlab weights fetch {name}` downloads them", file=sys.stderr)
            path = "random"
    if str(path) == "random":
        model = model or "vgg19"
        pooling = pooling or "avg"
        net = VGGFeatures(model, last, pooling, rng=np.random.default_rng(seed))   # He-normal
        photo = load_image(DEMO_CONTENT)
        photo = resize(photo, *fit_size(*photo.shape[:2], CALIBRATION_SIZE))
        net.randomize(None, RANDOM.to_net(photo), RANDOM_RMS)
        return net, RANDOM, f"random {NAMES[model]} (seed {seed}, {pooling} pooling)"
    state, file_model, prep = load_vgg_weights(path, model)
    pooling = pooling or "max"
    net = VGGFeatures(file_model, last, pooling, rng=np.random.default_rng(0))
    wanted = {k: v for k, v in state.items() if int(k.split(".")[1]) < len(net.names)}
    net.load_state_dict(wanted)
    return net, prep, (f"{NAMES[file_model]} from {Path(path).name} ({prep.name} preprocessing, "
                       f"{pooling} pooling)")


# ------------------------------------------------------------------------------ objective
class StyleObjective:
    """Total loss and its gradient with respect to the network input x (1, 3, H, W).

    ``content_targets``: {layer: P}; ``style_targets``: {layer: A}; ``layer_weights``:
    {layer: w_l}. Calling it returns (total, dx, parts) with parts = {"content", "style",
    "tv", "total"} as floats.
    """

    def __init__(self, net, content_targets, style_targets, content_weight, style_weight,
                 layer_weights, tv_weight, mode="gatys", normalize_gradients=False, grey_level=1.0):
        self.net, self.mode, self.normalize = net, mode, bool(normalize_gradients)
        self.content, self.style = content_targets, style_targets
        self.content_weight, self.style_weight = float(content_weight), float(style_weight)
        self.layer_weights = layer_weights
        # TV on x / grey_level (0-255 grey levels) = TV(x) / grey_level^2
        self.tv_weight = float(tv_weight) / grey_level ** 2
        self.layers = sorted(set(content_targets) | set(style_targets), key=net.names.index)

    def __call__(self, x):
        feats = self.net.forward(x, keep=self.layers)
        items = [(layer, feats.pop(layer)) for layer in self.layers]
        del feats
        # the layers' losses are independent: compute them on the worker pool
        results = parallel_map(self._layer_losses, items)
        del items
        parts = {"content": sum(r[0] for r in results), "style": sum(r[1] for r in results), "tv": 0.0}
        inject = {layer: _gradient(caches) for layer, (_, _, caches) in zip(self.layers, results)}
        del results
        dx = self.net.backward(inject)
        if self.tv_weight > 0:
            loss, c = L.tv_loss_forward(x, self.tv_weight)
            parts["tv"] = loss
            dx += L.tv_loss_backward(1.0, c)
        parts["total"] = parts["content"] + parts["style"] + parts["tv"]
        return parts["total"], dx, parts

    def _layer_losses(self, item):
        """(content loss, style loss, [(backward, cache), ...]) of one layer's activation f."""
        layer, f = item
        content = style = 0.0
        caches = []
        if layer in self.content:
            content, c = L.content_loss_forward(f, self.content[layer], self.content_weight, self.mode,
                                                self.normalize)
            caches.append((L.content_loss_backward, c))
        if layer in self.style:
            w = self.style_weight * self.layer_weights[layer]
            style, c = L.style_loss_forward(f, self.style[layer], w, self.mode, self.normalize)
            caches.append((L.style_loss_backward, c))
        return content, style, caches


def _gradient(caches):
    """A callable summing the backward passes of one layer's losses (run once, then freed)."""
    def grad():
        g = None
        while caches:
            backward, cache = caches.pop(0)
            d = backward(1.0, cache)
            g = d if g is None else g + d
        return g
    return grad


def make_objective(net, prep, content_img, style_imgs, blend, *, content_layers, style_layers,
                   layer_weights, content_weight, style_weight, tv_weight, mode, normalize_gradients,
                   dtype=np.float32):
    """Capture the targets (content features, blended style Grams) and return the objective.

    ``content_img`` and ``style_imgs`` are (H, W, 3) RGB in [0, 1] at their final sizes.
    """
    x_content = prep.to_net(content_img, dtype)
    feats = net.forward(x_content, keep=list(content_layers) + list(style_layers), record=False)
    content_targets = {layer: feats[layer] for layer in content_layers}
    m_positions = {layer: feats[layer].shape[2] * feats[layer].shape[3] for layer in style_layers}
    del feats
    style_targets = {}
    for img, b in zip(style_imgs, blend):
        feats = net.forward(prep.to_net(img, dtype), keep=style_layers, record=False)
        for layer in style_layers:
            A = L.style_target(feats[layer], mode, m_positions[layer]) * dtype(b)
            style_targets[layer] = A if layer not in style_targets else style_targets[layer] + A
        del feats
    return StyleObjective(net, content_targets, style_targets, content_weight, style_weight,
                          layer_weights, tv_weight, mode, normalize_gradients, prep.grey_level())


# ------------------------------------------------------------------------------ results
@dataclass
class StyleResult:
    """What :func:`stylize` produced. ``image``: (H, W, 3) RGB in [0, 1];
    ``history``: {"content"|"style"|"tv"|"total": [(iteration, value), ...]} (every
    iteration, all scales in sequence); ``saved``: [(label, image)] of the saved
    iterations; ``paths``: files written; ``scales``: [(size, first iteration)] of each
    scale run (one entry without multiscale)."""

    image: np.ndarray
    history: dict
    saved: list = field(default_factory=list)
    paths: dict = field(default_factory=dict)
    seconds: float = 0.0
    iterations: int = 0
    evaluations: int = 0
    network: str = ""
    scales: list = field(default_factory=list)


def _output_paths(output):
    out = Path(output)
    return out, out.with_name(f"{out.stem}_sheet.png"), out.with_name(f"{out.stem}_losses.png")


# ------------------------------------------------------------------------------ the API
def stylize(content=None, styles=None, output=None, *, image_size=512, style_blend_weights=None,
            style_scale=1.0, content_weight=5.0, style_weight=100.0, tv_weight=1e-3,
            content_layers=DEFAULT_CONTENT_LAYERS, style_layers=DEFAULT_STYLE_LAYERS,
            style_layer_weights=None, init="random", init_image=None, optimizer="lbfgs",
            learning_rate=None, num_iterations=1000, print_every=50, save_every=100,
            pooling=None, normalize_gradients=False, seed=0, original_colors=False,
            multiscale=None, model=None, weights=None, normalization="gatys",
            lbfgs_history=100, progress=True, quiet=False) -> StyleResult:
    """Render ``content`` in the style of ``styles``; returns a :class:`StyleResult`.

    content: path or (H, W, 3) array (default: the shipped demo photo); styles: a path,
    an array, or a list of them / a comma-separated string of paths (default: the shipped
    painting). ``output``: where to write the PNG (plus ``<stem>_<it>.png`` every
    ``save_every`` iterations, ``<stem>_sheet.png`` and ``<stem>_losses.png``); None writes
    nothing. Options as ``cnnlab style --help`` describes them; ``normalization`` is
    "gatys" or "johnson" (see cnnlab.style.losses), ``weights`` a file, "random" or None.
    ``multiscale`` (e.g. [256, 512]) runs ``num_iterations`` at each size, each started from
    the previous result; it replaces ``image_size``.
    """
    t_start = time.perf_counter()
    L._check_mode(normalization)
    if optimizer not in ("lbfgs", "adam"):
        raise CnnlabError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    if init not in ("random", "image"):
        raise CnnlabError(f"init must be 'random' or 'image', got {init!r}")
    if num_iterations < 1:
        raise CnnlabError(f"num_iterations must be at least 1, got {num_iterations}")
    for what, value in (("content_weight", content_weight), ("style_weight", style_weight),
                        ("tv_weight", tv_weight)):
        non_negative_number(value, what)
    positive_number(learning_rate, "learning_rate")
    positive_number(style_scale, "style_scale")
    at_least(print_every, 0, "print_every")
    at_least(save_every, 0, "save_every")
    content_layers = _names(content_layers, "content")
    style_layers = _names(style_layers, "style")
    check_layers(model or "vgg19", content_layers + style_layers)
    if content is None:
        content = DEMO_CONTENT
    if styles is None:
        styles = [DEMO_STYLE]
    elif isinstance(styles, (str, Path)):
        styles = [s for s in str(styles).split(",") if s] if isinstance(styles, str) else [styles]
    elif isinstance(styles, np.ndarray):
        styles = [styles]
    blend = _numbers(style_blend_weights, "style blend weights", len(styles)) or [1.0] * len(styles)
    blend = [b / sum(blend) for b in blend]
    default_lw = 1.0 / len(style_layers) if normalization == "gatys" else 1.0
    lw = _numbers(style_layer_weights, "style layer weights", len(style_layers)) or \
        [default_lw] * len(style_layers)
    layer_weights = dict(zip(style_layers, lw))
    try:
        sizes = [int(s) for s in (multiscale.split(",") if isinstance(multiscale, str)
                                  else multiscale)] if multiscale else [int(image_size)]
    except (TypeError, ValueError):
        raise CnnlabError(f"multiscale must be image sizes in pixels, e.g. 256,512; got "
                          f"{multiscale!r}") from None

    content_full = load_image(content)
    style_full = [load_image(s) for s in styles]
    init_full = load_image(init_image) if init_image is not None else None
    all_layers = content_layers + style_layers
    names = check_layers(model or "vgg19", all_layers)
    last = max(all_layers, key=names.index)
    _check_sizes(sizes, style_scale, content_full, style_full, names, last)
    net, prep, description = build_network(model, weights, pooling, last, seed, quiet)
    check_layers(net.model, all_layers)

    paths = {}
    out = sheet_path = plot_path = None
    if output is not None:
        out, sheet_path, plot_path = _output_paths(output)
        if not out.parent.is_dir():
            raise CnnlabError(f"cannot write {out}: folder {out.parent} does not exist")
    rng = np.random.default_rng([seed, 3])
    history = {"content": [], "style": [], "tv": [], "total": []}
    saved, saved_paths = [], {}
    result_img = None
    total_iters = total_evals = 0
    scales = []
    try:
        for scale_index, size in enumerate(sizes):
            h, w = fit_size(*content_full.shape[:2], size)
            content_img = resize(content_full, h, w)
            style_size = max(8, math.ceil(style_scale * size))
            style_imgs = [resize(s, *fit_size(*s.shape[:2], style_size)) for s in style_full]
            objective = make_objective(
                net, prep, content_img, style_imgs, blend, content_layers=content_layers,
                style_layers=style_layers, layer_weights=layer_weights, content_weight=content_weight,
                style_weight=style_weight, tv_weight=tv_weight, mode=normalization,
                normalize_gradients=normalize_gradients)
            if result_img is not None:
                x0 = prep.to_net(resize(result_img, h, w))
            elif init_full is not None:
                x0 = prep.to_net(resize(init_full, h, w))
            elif init == "image":
                x0 = prep.to_net(content_img)
            else:
                x0 = (rng.standard_normal((1, 3, h, w)) * (INIT_NOISE * prep.grey_level())).astype(np.float32)

            def show(x_flat):
                img = np.clip(prep.from_net(x_flat.reshape(1, 3, h, w)), 0.0, 1.0)
                return np.clip(_original_colors(content_img, img), 0, 1) if original_colors else img

            label = f"{size}px " if len(sizes) > 1 else ""
            scales.append((size, total_iters + 1))
            x, iters, evals = _optimize(
                objective, x0, num_iterations, optimizer, learning_rate, prep, lbfgs_history,
                history, total_iters, print_every, save_every, show, saved, saved_paths, label, out,
                progress)
            total_iters += iters
            total_evals += evals
            result_img = show(x)
            del objective
    except StyleInterrupted:
        raise
    except KeyboardInterrupt:   # between iterations, or in a later scale's set-up
        if out is None or result_img is None:
            raise
        raise StyleInterrupted(save_image(out, result_img), total_iters) from None
    if out is not None:
        saved.append((f"{total_iters} (final)", result_img))
        paths["output"] = save_image(out, result_img)
        paths["sheet"] = contact_sheet(saved, sheet_path)
        paths["plot"] = plot_losses(history, plot_path,
                                    title=f"{description}, {normalization} losses")
        paths.update({f"iteration {n}": p for n, p in saved_paths.items()})
    return StyleResult(result_img, history, saved, paths, time.perf_counter() - t_start,
                       total_iters, total_evals, description, scales)


def _optimize(objective, x0, num_iterations, optimizer, learning_rate, prep, history_size, history,
              offset, print_every, save_every, show, saved, saved_paths, label, out, progress):
    """Run one scale; returns (x, iterations, evaluations)."""
    from tqdm import tqdm

    shape = x0.shape
    last_parts = {}

    def fun(x_flat):
        total, dx, parts = objective(x_flat.reshape(shape))
        last_parts.clear()
        last_parts.update(parts)
        return total, dx.reshape(-1)

    bar = tqdm(total=num_iterations, desc=f"style {label}".strip(), disable=not progress,
               dynamic_ncols=True, leave=True)
    state = {"it": 0}

    def record(it, x, parts):
        state["it"] = it
        state["x"] = np.array(x, copy=True)     # what Ctrl-C saves (see below)
        n = offset + it
        for k in history:
            history[k].append((n, parts[k]))
        bar.update(1)
        bar.set_postfix(content=f"{parts['content']:.3g}", style=f"{parts['style']:.3g}",
                        tv=f"{parts['tv']:.3g}", refresh=False)
        if print_every and it % print_every == 0:
            msg = (f"iteration {n}: total {parts['total']:.6g}  content {parts['content']:.6g}  "
                   f"style {parts['style']:.6g}  tv {parts['tv']:.6g}")
            (bar.write if progress else print)(msg)
        if save_every and it % save_every == 0 and it < num_iterations:
            img = show(x)
            saved.append((n, img))
            if out is not None:
                saved_paths[n] = save_image(out.with_name(f"{out.stem}_{n}{out.suffix}"), img)

    try:
        if optimizer == "lbfgs":
            opt = LBFGS(fun, x0.size, history=history_size,
                        lr=1.0 if learning_rate is None else learning_rate)

            def callback(it, x, f):
                record(it, x, dict(last_parts))     # the accepted point was evaluated last
                return False

            x, _ = opt.run(x0.reshape(-1), num_iterations, callback)
            evals = opt.evals
        else:
            from ..nn import Parameter
            from ..optim import Adam

            p = Parameter(x0.reshape(-1).copy())
            # the step is in grey levels (0-255 pixel units), whatever the network's scaling
            step = 10.0 if learning_rate is None else learning_rate
            adam = Adam([p], lr=step * prep.grey_level())
            # iteration k is recorded with the loss of the image after k steps: each
            # evaluation gives the loss of the current image and the next step's gradient
            _, p.grad = fun(p.data)
            for it in range(1, num_iterations + 1):
                adam.step()
                _, p.grad = fun(p.data)
                record(it, p.data, dict(last_parts))
            x, evals = p.data, num_iterations + 1
    except KeyboardInterrupt:
        if out is None or "x" not in state:
            raise
        path = save_image(out, show(state["x"]))
        raise StyleInterrupted(path, offset + state["it"]) from None
    finally:
        bar.close()
    return x, state["it"], evals
