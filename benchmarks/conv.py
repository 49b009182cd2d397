"""VGG-16's 13 convolution layers: cnnlab's algorithms against PyTorch, measured in the same run.

    python benchmarks/conv.py [--settings vgg224,style512,cifar32] [--layers conv3_1,conv4_2]
                              [--algos auto,im2col,winograd2,winograd4,fft] [--repeat 3]
    cnnlab bench conv ...                                   (the same options)

Settings (all 3x3, stride 1, padding 1, float32):
  vgg224    batch 1 @ 224x224, forward + data gradient + weight gradient
  style512  batch 1 @ 512x512, forward + data gradient (neural style: frozen weights)
  cifar32   batch 32 @ 32x32, forward + data gradient + weight gradient (CIFAR training)

For each layer and pass: the algorithm "auto" chose (and how: measured, heuristic, ...),
its time, its effective GFLOP/s (direct-convolution FLOPs / time) and workspace; the
time of every other algorithm asked for ("skip": fft where its flop estimate is at least
0.4x the direct convolution's, see ``cnnlab.conv.chooser.fft_worth_trying``; ``--all`` times it
anyway); PyTorch's time for the same pass
(``F.conv2d``, ``torch.nn.grad.conv2d_input`` / ``conv2d_weight``). Per layer, the
total of auto's passes against ``F.conv2d`` + its autograd backward (the gradients
the setting needs); the last line of a setting is the geometric mean of those
ratios. The numpy sgemm rate is measured in the same run. Times are the best of
``--repeat`` runs after ``--warm`` seconds (default 0.2) of untimed calls, for cnnlab and
torch alike; an algorithm whose warm-up takes over 8x
auto's time is reported from that one run (marked *). ``--cpu-time`` runs
everything (cnnlab, numpy's BLAS, torch) on one thread and times the calling
thread's CPU time: a per-core comparison that other processes' load cannot
inflate, for when the machine is not quiet.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # as the cnnlab command sets (cnnlab/cli.py)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import best_time, geomean, load_line, settle, sgemm_rate, versions_line  # noqa: E402

from cnnlab.conv import (ALGORITHMS, PASSES, ConvGeometry, enable_disk_cache,  # noqa: E402
                         explain, get_num_threads, set_num_threads)
from cnnlab.conv.chooser import fft_worth_trying, select_step  # noqa: E402
from cnnlab import functional as F  # noqa: E402

VGG16 = [  # name, in channels, out channels, spatial divisor
    ("conv1_1", 3, 64, 1), ("conv1_2", 64, 64, 1),
    ("conv2_1", 64, 128, 2), ("conv2_2", 128, 128, 2),
    ("conv3_1", 128, 256, 4), ("conv3_2", 256, 256, 4), ("conv3_3", 256, 256, 4),
    ("conv4_1", 256, 512, 8), ("conv4_2", 512, 512, 8), ("conv4_3", 512, 512, 8),
    ("conv5_1", 512, 512, 16), ("conv5_2", 512, 512, 16), ("conv5_3", 512, 512, 16),
]


@dataclass(frozen=True)
class Setting:
    name: str
    batch: int
    size: int
    passes: tuple
    about: str


SETTINGS = {
    "vgg224": Setting("vgg224", 1, 224, PASSES,
                      "VGG-16 conv layers, batch 1 @ 224x224, forward + data grad + weight grad"),
    "style512": Setting("style512", 1, 512, ("forward", "backward_data"),
                        "VGG-16 conv layers, batch 1 @ 512x512, forward + data grad "
                        "(neural style)"),
    "cifar32": Setting("cifar32", 32, 32, PASSES,
                       "VGG-16 conv layers, batch 32 @ 32x32, forward + data grad + weight grad"),
}
SHORT = {"forward": "fwd", "backward_data": "bwd-data", "backward_weight": "bwd-weight"}
from cnnlab.conv.commands import add_bench_options  # noqa: E402  (the options, --warm's too)
SLOW = 8.0  # an algorithm this many times slower than auto on its warm-up is not repeated


def build_parser(parser=None):
    """This benchmark's options (defined with `cnnlab bench conv`'s, in cnnlab.conv.commands)."""
    parser = parser or argparse.ArgumentParser(description=__doc__.splitlines()[0])
    return add_bench_options(parser)


def _split(text, known, what):
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(known)}")
    return names


def _layers(text):
    names = [n for n, *_ in VGG16]
    chosen = names if text == "all" else _split(text, names, "layer")
    return [entry for entry in VGG16 if entry[0] in chosen]


class _Torch:
    """PyTorch's timings for one layer (same shapes, same data, same thread count)."""

    def __init__(self, torch, x, w, dy):
        self.torch = torch
        self.F = torch.nn.functional
        self.x, self.w, self.dy = (torch.from_numpy(a) for a in (x, w, dy))

    def pass_fn(self, pass_):
        t, F = self.torch, self.F
        x, w, dy = self.x, self.w, self.dy
        if pass_ == "forward":
            def run():
                with t.no_grad():
                    F.conv2d(x, w, padding=1)
        elif pass_ == "backward_data":
            def run():
                t.nn.grad.conv2d_input(x.shape, w, dy, padding=1)
        else:
            def run():
                t.nn.grad.conv2d_weight(x, w.shape, dy, padding=1)
        return run

    def autograd_fn(self, passes):
        t, F = self.torch, self.F
        xg = self.x.clone().requires_grad_("backward_data" in passes)
        wg = self.w.clone().requires_grad_("backward_weight" in passes)
        inputs = [a for a in (xg, wg) if a.requires_grad]

        def run():
            y = F.conv2d(xg, wg, padding=1)
            t.autograd.grad(y, inputs, self.dy)
        return run


def bench_layer(setting, layer, algos, repeat, torch, force=False, warm=0.0):
    name, c, o, div = layer
    h = setting.size // div
    g = ConvGeometry.of((setting.batch, c, h, h), (o, c, 3, 3), stride=1, padding=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(g.x_shape, dtype=np.float32)
    w = rng.standard_normal(g.w_shape, dtype=np.float32) * np.float32((2.0 / (9 * c)) ** 0.5)
    dy = rng.standard_normal(g.y_shape, dtype=np.float32)
    args = {"forward": (x, w), "backward_data": (dy, w), "backward_weight": (dy, x)}
    rows = []
    for pass_ in setting.passes:
        choice = explain(g, pass_, np.float32)          # auto measures here on first use
        times = {}
        auto_t = best_time(lambda: ALGORITHMS[choice.algo].run(pass_, *args[pass_], g), repeat,
                           warm_seconds=warm)
        times["auto"] = (auto_t, False)
        for algo in algos:
            a = ALGORITHMS[algo]
            if a.supports(g, pass_) is not None:
                continue
            if algo == choice.algo:
                times[algo] = (auto_t, False)
                continue
            if algo == "fft" and not fft_worth_trying(g) and not force:
                times[algo] = ("skip", False)    # seconds and GiBs of kernel spectra: see --all
                continue
            first = best_time(lambda: a.run(pass_, *args[pass_], g), repeat=1, warmup=0)
            if first > SLOW * auto_t:
                times[algo] = (first, True)
            else:
                times[algo] = (min(first, best_time(lambda: a.run(pass_, *args[pass_], g),
                                                    repeat, warmup=0, warm_seconds=warm)),
                                False)
        torch_t = None
        if torch is not None:
            settle()
            torch_t = best_time(_Torch(torch, x, w, dy).pass_fn(pass_), repeat, warm_seconds=warm)
            settle()
        rows.append({"layer": name, "pass": pass_, "g": g, "choice": choice, "times": times,
                     "torch": torch_t,
                     "workspace": {a: ALGORITHMS[a].workspace_bytes(g, pass_, 4)
                                   for a in set(algos) | {choice.algo} if a in ALGORITHMS}})
    total_torch = None
    if torch is not None:
        settle()
        total_torch = best_time(_Torch(torch, x, w, dy).autograd_fn(setting.passes), repeat,
                                 warm_seconds=warm)
        settle()
    total_auto = sum(r["times"]["auto"][0] for r in rows)
    step = _Step(g, x, w, dy, setting.passes)
    step_t = best_time(step, repeat, warm_seconds=warm)
    return rows, {"layer": name, "g": g, "auto": total_auto, "step": step_t,
                  "plan": step.plan(), "torch": total_torch}


class _Step:
    """cnnlab's counterpart of torch's autograd timing: the functional forward of a training
    step (``for_backward=True``: the passes' algorithms chosen together, the forward's U and
    V kept for the gradients where that is faster) and its backward, reusing the previous
    step's U memory as ``nn.Conv2d`` does."""

    def __init__(self, g, x, w, dy, passes):
        self.g, self.x, self.w, self.dy = g, x, w, dy
        self.need_dw = "backward_weight" in passes
        self.reuse = None

    def __call__(self):
        y, cache = F.conv2d_forward(self.x, self.w, None, 1, 1, for_backward=True,
                                    need_dw=self.need_dw, reuse=self.reuse)
        self.reuse = F.shared_prepared(cache)
        F.conv2d_backward(self.dy, cache, need_dx=True, need_dw=self.need_dw)

    def plan(self) -> str:
        return select_step(self.g, "auto", np.float32, need_dw=self.need_dw).describe()


def _fmt_table(header, lines, markdown):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    if markdown:
        out = ["| " + " | ".join(str(h) for h in header) + " |",
               "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(str(v) for v in line) + " |" for line in lines]
        return "\n".join(out)
    fmt = "  ".join(f"{{:>{w}}}" if i > 1 else f"{{:<{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*map(str, line)) for line in [header] + lines)


def report(setting, rows, totals, algos, sgemm, markdown, out=print):
    others = [a for a in algos if a != "auto"]
    header = (["layer", "pass", "auto ->", "how", "ms", "GFLOP/s", "workspace MB"]
              + [f"{a} ms" for a in others] + ["torch ms", "torch/auto"])
    lines = []
    for r in rows:
        t_auto = r["times"]["auto"][0]
        ws = r["workspace"][r["choice"].algo] / 2 ** 20
        line = [r["layer"], SHORT[r["pass"]], r["choice"].algo, r["choice"].how,
                f"{t_auto * 1e3:.2f}", f"{r['g'].flops / t_auto / 1e9:.0f}", f"{ws:.1f}"]
        for a in others:
            t, slow = r["times"].get(a, (None, False))
            if t is None or t == "skip":
                line.append("-" if t is None else "skip")
            else:
                line.append(f"{t * 1e3:.2f}{'*' if slow else ''}")
        if r["torch"] is None:
            line += ["-", "-"]
        else:
            line += [f"{r['torch'] * 1e3:.2f}", f"{r['torch'] / t_auto:.2f}"]
        lines.append(line)
    out(_fmt_table(header, lines, markdown))
    out("")
    passes = "+".join(SHORT[p] for p in setting.passes)
    header = ["layer", f"auto {passes} ms (sum of rows)", "step ms", "step: algorithms",
              "torch autograd ms", "torch/cnnlab (step)"]
    lines = [[t["layer"], f"{t['auto'] * 1e3:.2f}", f"{t['step'] * 1e3:.2f}", t["plan"],
              "-" if t["torch"] is None else f"{t['torch'] * 1e3:.2f}",
              "-" if t["torch"] is None else f"{t['torch'] / t['step']:.2f}"] for t in totals]
    out(_fmt_table(header, lines, markdown))
    out("")
    wide = [r for r in rows if r["g"].c == 512 and r["g"].o == 512]
    if wide:
        rates = {p: [r["g"].flops / r["times"]["auto"][0] / 1e9 for r in wide if r["pass"] == p]
                 for p in setting.passes}
        parts = [f"{SHORT[p]} {min(v):.0f}-{max(v):.0f}" for p, v in rates.items() if v]
        flops = sum(r["g"].flops for r in wide)
        secs = sum(r["times"]["auto"][0] for r in wide)
        out(f"512->512 layers: auto effective GFLOP/s {', '.join(parts)}; all passes together "
            f"{flops / secs / 1e9:.0f} = {flops / secs / 1e9 / sgemm:.2f}x numpy sgemm "
            f"({sgemm:.0f} GFLOP/s)")
        wide_steps = [t for t in totals if t["g"].c == 512 and t["g"].o == 512]
        sflops = sum(t["g"].flops for t in wide_steps) * len(setting.passes)
        ssecs = sum(t["step"] for t in wide_steps)
        out(f"512->512 layers, measured steps: {sflops / ssecs / 1e9:.0f} GFLOP/s = "
            f"{sflops / ssecs / 1e9 / sgemm:.2f}x numpy sgemm")
    if all(t["torch"] is not None for t in totals):
        for p in setting.passes:
            ratios = [r["torch"] / r["times"]["auto"][0] for r in rows if r["pass"] == p]
            out(f"geometric mean torch/cnnlab, {SHORT[p]} only: {geomean(ratios):.2f}")
        out(f"geometric mean torch/cnnlab, passes timed apart and summed: "
            f"{geomean([t['torch'] / t['auto'] for t in totals]):.2f}")
        out(f"geometric mean torch/cnnlab: {geomean([t['torch'] / t['step'] for t in totals]):.2f}"
            f"   ({setting.name}: {passes} as one measured step, {len(totals)} layers)")


def run(args, out=print) -> int:
    settings = [SETTINGS[s] for s in _split(args.settings, list(SETTINGS), "setting")]
    layers = _layers(args.layers)
    algos = ["auto"] + [a for a in _split(args.algos, ["auto", *ALGORITHMS], "algorithm")
                        if a != "auto"]
    if args.cpu_time:
        args.threads = 1
    if args.threads:
        set_num_threads(args.threads)
    threads = get_num_threads()
    malloc = common.steady_malloc()                # same allocator state for both libraries
    blas_limit = None
    if args.threads:                               # numpy's BLAS gets the same count (its own
        from threadpoolctl import threadpool_limits    # GEMMs, the sgemm reference)
        blas_limit = threadpool_limits(args.threads, user_api="blas")
    if args.cpu_time:
        common.use_cpu_clock(True)
    if args.cache:
        enable_disk_cache()
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            raise SystemExit("the torch comparison needs PyTorch: pip install 'cnnlab[bench]' "
                             "(or pass --no-torch)") from None
        torch.set_num_threads(threads)
    sgemm = sgemm_rate()
    out(versions_line(torch, threads))
    clock = "CPU time of the calling thread (--cpu-time)" if args.cpu_time else "wall clock"
    out(f"numpy sgemm 2048^3: {sgemm:.0f} GFLOP/s; timing: {clock}; {malloc}; {load_line()}")
    for setting in settings:
        out("")
        out(f"== {setting.name}: {setting.about}")
        rows, totals = [], []
        for layer in layers:
            r, t = bench_layer(setting, layer, [a for a in algos if a != "auto"], args.repeat,
                               torch, force=args.all, warm=args.warm)
            rows += r
            totals.append(t)
        report(setting, rows, totals, algos, sgemm, args.markdown, out)
        out(f"({load_line()})")
    if blas_limit is not None:
        blas_limit.restore_original_limits()
        common.use_cpu_clock(False)
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
