"""Neural style: seconds per L-BFGS iteration and peak memory, cnnlab against PyTorch in one run.

    python benchmarks/style.py [--sizes 256,512] [--iterations 10,5] [--model vgg19] [--repeat 1]

One iteration = forward of VGG-19 up to relu5_1 + the input gradient + the losses (content
relu4_2, style relu1_1..relu5_1, TV; Gatys' definitions) + the L-BFGS update (history 100).
Both sides use the same random VGG weights, the same shipped content and style images
(longest side = the size) and the same targets; PyTorch runs the same losses with autograd
and torch.optim.LBFGS (lr 1, history 100, no early stopping), cnnlab runs
cnnlab.style's objective and L-BFGS. "s/eval" is the timed seconds divided by the function
evaluations made in them (one forward + gradient each, plus the optimiser's step), "s/it"
by the iterations: torch.optim.LBFGS (no line search) makes one evaluation per iteration
and accepts steps that raise the loss; cnnlab's evaluates again when a step does not
decrease the loss (the "evals" column; the loss column shows where each got to). Each (framework, size) runs in its own subprocess so
that its peak resident memory (getrusage ru_maxrss) is its own; the first evaluation
(cnnlab's convolution auto-tuning, PyTorch's warm-up) is not timed. Times: the best of
``--repeat`` subprocess runs. The loss after the timed iterations is printed as a check
that both sides did the same work.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # as the cnnlab command sets (cnnlab/cli.py)
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
CONTENT_LAYERS = ["relu4_2"]
WEIGHTS = dict(content_weight=5.0, style_weight=100.0, tv_weight=1e-3)


def _setup(size, model):
    """Random-weight VGG (as `cnnlab style` builds it), images and weights, shared by both sides."""
    import importlib

    import numpy as np

    S = importlib.import_module("cnnlab.style.stylize")
    from cnnlab.style.images import fit_size, load_image, resize

    net, prep, _ = S.build_network(model, "random", "max", "relu5_1", seed=0, quiet=True)
    content = load_image(S.DEMO_CONTENT)
    style = load_image(S.DEMO_STYLE)
    content = resize(content, *fit_size(*content.shape[:2], size))
    style = resize(style, *fit_size(*style.shape[:2], size))
    noise = S.INIT_NOISE * prep.grey_level()               # --init random, as `cnnlab style`
    x0 = (np.random.default_rng(3).standard_normal((1, 3) + content.shape[:2]) * noise).astype(np.float32)
    return net, prep, content, style, x0


def _peak_mb():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_cnnlab(size, iterations, model):
    import numpy as np

    from cnnlab.style.lbfgs import LBFGS
    from cnnlab.style.stylize import make_objective

    net, prep, content, style, x0 = _setup(size, model)
    lw = {layer: 1.0 / len(STYLE_LAYERS) for layer in STYLE_LAYERS}
    obj = make_objective(net, prep, content, [style], [1.0], content_layers=CONTENT_LAYERS,
                         style_layers=STYLE_LAYERS, layer_weights=lw, mode="gatys",
                         normalize_gradients=False, **WEIGHTS)

    def fun(x):
        total, dx, _ = obj(x.reshape(x0.shape))
        return total, dx.reshape(-1)

    fun(x0.reshape(-1))                                   # warm-up: conv auto-tuning
    opt = LBFGS(fun, x0.size, history=100)
    t0 = time.perf_counter()
    _, f = opt.run(x0.reshape(-1), iterations, max_eval=10 ** 9)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "evals": opt.evals, "loss": f}


def worker_torch(size, iterations, model):
    import numpy as np
    import torch
    import torch.nn.functional as TF

    from cnnlab import nn

    net, prep, content, style, x0 = _setup(size, model)
    layers = []
    for name, m in zip(net.names, net.features):
        if isinstance(m, nn.Conv2d):
            layers.append(("conv", torch.tensor(m.weight.data), torch.tensor(m.bias.data)))
        else:
            layers.append(("relu" if isinstance(m, nn.ReLU) else "pool", None, None))
    names = list(net.names)
    del net

    def features(x):
        out = {}
        for name, (kind, w, b) in zip(names, layers):
            if kind == "conv":
                x = TF.conv2d(x, w, b, padding=1)
            elif kind == "relu":
                x = TF.relu(x)
            else:
                x = TF.max_pool2d(x, 2)
            if name in STYLE_LAYERS or name in CONTENT_LAYERS:
                out[name] = x
        return out

    def gram(f):
        F_ = f.reshape(f.shape[1], -1)
        return F_ @ F_.t()

    with torch.no_grad():
        fc = features(torch.from_numpy(prep.to_net(content)))
        fs = features(torch.from_numpy(prep.to_net(style)))
        P = {layer: fc[layer] for layer in CONTENT_LAYERS}
        A = {layer: gram(fs[layer]) * (fc[layer][0, 0].numel() / fs[layer][0, 0].numel())
             for layer in STYLE_LAYERS}
        del fc, fs
    x = torch.tensor(x0, requires_grad=True)
    tvw = WEIGHTS["tv_weight"] / prep.grey_level() ** 2

    def closure():
        opt.zero_grad()
        f = features(x)
        loss = sum(WEIGHTS["content_weight"] * 0.5 * ((f[layer] - P[layer]) ** 2).sum()
                   for layer in CONTENT_LAYERS)
        for layer in STYLE_LAYERS:
            c, m = f[layer].shape[1], f[layer][0, 0].numel()
            loss = loss + WEIGHTS["style_weight"] / len(STYLE_LAYERS) * \
                ((gram(f[layer]) - A[layer]) ** 2).sum() / (4.0 * c * c * m * m)
        core = x[:, :, :-1, :-1]
        loss = loss + tvw * 0.5 * (((core - x[:, :, :-1, 1:]) ** 2).sum()
                                  + ((core - x[:, :, 1:, :-1]) ** 2).sum())
        loss.backward()
        counter[0] += 1
        return loss

    counter = [0]
    opt = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=100)
    closure()                                             # warm-up
    opt = torch.optim.LBFGS([x], lr=1, max_iter=iterations, max_eval=10 ** 9, history_size=100,
                            tolerance_grad=-1.0, tolerance_change=-1.0)
    counter[0] = 0
    t0 = time.perf_counter()
    opt.step(closure)
    # the loss of the final image, timed like cnnlab's L-BFGS, which evaluates its start
    # point and every accepted point (n + 1 evaluations for n iterations): equal counting
    loss = float(closure().detach())
    seconds = time.perf_counter() - t0
    evals = counter[0]
    return {"seconds": seconds, "evals": evals, "loss": loss, "threads": torch.get_num_threads()}


def worker_optimizer(size, iterations, kind):
    """Seconds per iteration spent in the optimiser itself (a cheap separable quadratic as the
    loss), once the 100-pair history is full, and the peak memory, for n = 3 * size^2."""
    import numpy as np

    n = 3 * size * size
    rng = np.random.default_rng(0)
    d = (10.0 ** rng.uniform(-6, 0, n)).astype(np.float32)    # ill-conditioned: no early convergence
    calls = [0]
    total = iterations + 100 + 1

    def f32(x):
        calls[0] += 1
        return 0.5 * float(np.dot(d * x, x)), d * x

    x0 = rng.standard_normal(n).astype(np.float32)
    marks = {}
    if kind == "cnnlab":
        from cnnlab.style.lbfgs import LBFGS
        opt = LBFGS(f32, n, history=100)

        def cb(it, x, f):
            marks[it] = time.perf_counter()
        opt.run(x0, total, callback=cb, max_eval=10 ** 9)
    elif kind == "scipy":
        from scipy.optimize import minimize

        def f64(x):
            f, g = f32(x.astype(np.float32))
            return f, g.astype(np.float64)
        it = [0]

        def cb(xk):
            it[0] += 1
            marks[it[0]] = time.perf_counter()
        minimize(f64, x0.astype(np.float64), jac=True, method="L-BFGS-B", callback=cb,
                 options={"maxcor": 100, "maxiter": total, "maxfun": 10 ** 9, "ftol": 0, "gtol": 0})
    else:
        import torch
        xt = torch.tensor(x0, requires_grad=True)
        dt = torch.from_numpy(d)
        opt = torch.optim.LBFGS([xt], lr=1, max_iter=1, history_size=100, tolerance_grad=-1.0,
                                tolerance_change=-1.0)

        def closure():
            opt.zero_grad()
            loss = 0.5 * (dt * xt * xt).sum()
            loss.backward()
            calls[0] += 1
            return loss
        for i in range(1, total + 1):
            opt.step(closure)
            marks[i] = time.perf_counter()
    full = [marks[i] for i in sorted(marks) if i > 100]
    per_iter = (full[-1] - full[0]) / max(1, len(full) - 1)
    # subtract the evaluations (timed separately) to leave the optimiser's own work
    x = x0.copy()
    t0 = time.perf_counter()
    for _ in range(5):
        f32(x)
    per_eval = (time.perf_counter() - t0) / 5
    evals_per_iter = calls[0] / max(1, max(marks))
    return {"per_iter": per_iter - per_eval * evals_per_iter, "evals_per_iter": evals_per_iter,
            "iterations": len(full) - 1}


def run_worker(framework, size, iterations, model):
    cmd = [sys.executable, __file__, "--worker", framework, "--size", str(size),
           "--iterations", str(iterations), "--model", model]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{framework} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--iterations", default="10,5", help="timed L-BFGS iterations per size")
    ap.add_argument("--model", default="vgg19", choices=("vgg16", "vgg19"))
    ap.add_argument("--repeat", type=int, default=1, help="subprocess runs per framework and size")
    ap.add_argument("--optimizers", action="store_true",
                    help="instead: the optimisers' own cost per iteration with a full 100-pair "
                         "history (cnnlab L-BFGS, torch.optim.LBFGS, scipy L-BFGS-B float64)")
    ap.add_argument("--worker", choices=("cnnlab", "torch", "opt-cnnlab", "opt-torch", "opt-scipy"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        from common import steady_malloc
        steady_malloc()             # the same allocator state in every worker (common.py)
        if args.worker.startswith("opt-"):
            result = worker_optimizer(args.size, int(args.iterations), args.worker[4:])
        else:
            fn = worker_cnnlab if args.worker == "cnnlab" else worker_torch
            result = fn(args.size, int(args.iterations), args.model)
        result["peak_mb"] = _peak_mb()
        print(json.dumps(result))
        return 0

    import torch
    from common import load_line, versions_line

    from cnnlab.conv import get_num_threads
    sizes = [int(s) for s in args.sizes.split(",")]
    iters = [int(s) for s in args.iterations.split(",")]
    iters = (iters + [iters[-1]] * len(sizes))[:len(sizes)]
    if args.optimizers:
        print("L-BFGS with a full 100-pair history: the optimiser's own seconds per iteration "
              "(function evaluations excluded) and peak memory, n = 3 x size^2")
        print(versions_line(torch, get_num_threads()))
        print(f"start: {load_line()}")
        print(f"{'size':>5} {'optimizer':>26} {'s/it':>8} {'evals/it':>9} {'peak MB':>8}")
        for size in sizes:
            for kind, label in (("cnnlab", "cnnlab (compact, float32)"),
                                ("torch", "torch.optim.LBFGS (float32)"),
                                ("scipy", "scipy L-BFGS-B (float64)")):
                r = run_worker(f"opt-{kind}", size, 10, args.model)
                print(f"{size:>5} {label:>26} {r['per_iter']:>8.3f} {r['evals_per_iter']:>9.2f} "
                      f"{r['peak_mb']:>8.0f}", flush=True)
        print(f"end: {load_line()}")
        return 0
    print(f"neural style, {args.model} to relu5_1, content relu4_2, style relu1_1..relu5_1, TV, "
          f"L-BFGS history 100; random weights")
    print(versions_line(torch, get_num_threads()))
    print(f"start: {load_line()}")
    print(f"{'size':>5} {'iters':>5} {'evals c/t':>9} {'cnnlab s/eval':>13} {'torch s/eval':>12} "
          f"{'ratio':>6} {'cnnlab s/it':>11} {'torch s/it':>10} {'ratio':>6} {'cnnlab MB':>9} "
          f"{'torch MB':>8} {'cnnlab loss':>11} {'torch loss':>10}")
    for size, n in zip(sizes, iters):
        best = {}
        for _ in range(max(1, args.repeat)):
            for fw in ("cnnlab", "torch"):
                r = run_worker(fw, size, n, args.model)
                r["per_iter"] = r["seconds"] / r["evals"]
                if fw not in best or r["seconds"] < best[fw]["seconds"]:
                    peak = min(best[fw]["peak_mb"], r["peak_mb"]) if fw in best else r["peak_mb"]
                    best[fw] = {**r, "peak_mb": peak}
        c, t = best["cnnlab"], best["torch"]
        ci, ti = c["seconds"] / n, t["seconds"] / n
        print(f"{size:>5} {n:>5} {c['evals']:>4}/{t['evals']:<4} {c['per_iter']:>13.3f} {t['per_iter']:>12.3f} "
              f"{t['per_iter'] / c['per_iter']:>6.2f} {ci:>11.3f} {ti:>10.3f} {ti / ci:>6.2f} "
              f"{c['peak_mb']:>9.0f} {t['peak_mb']:>8.0f} {c['loss']:>11.4g} {t['loss']:>10.4g}", flush=True)
    print(f"end: {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
