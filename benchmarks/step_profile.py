"""Where a training step of a model goes, module by module (cnnlab only, no PyTorch).

    python benchmarks/step_profile.py [--model small_vgg] [--batch 128] [--steps 10] [--threads 2]

One forward + backward of ``--batch`` random 1x28x28 images through the model in training
mode (``need_input_grad`` off, as the trainer sets it), after three untimed steps (so
the convolution chooser has picked); prints each module's forward and backward time
(mean over ``--steps`` steps), the totals per module kind and the whole step. Module
timings are wall clock around each module's ``forward`` / ``backward`` call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # as the cnnlab command sets (cnnlab/cli.py)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_line, steady_malloc  # noqa: E402

from cnnlab.conv import set_num_threads  # noqa: E402
from cnnlab.models import build_model  # noqa: E402


def profile(model, x, steps):
    mods = list(model)
    times = defaultdict(float)

    def step():
        h = x
        for i, m in enumerate(mods):
            t = time.perf_counter()
            h = m.forward(h)
            times[i, "forward"] += time.perf_counter() - t
        g = np.ones_like(h) / h.size
        for i in range(len(mods) - 1, -1, -1):
            t = time.perf_counter()
            g = mods[i].backward(g)
            times[i, "backward"] += time.perf_counter() - t

    for _ in range(3):
        step()
    times.clear()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    total = (time.perf_counter() - t0) / steps
    return mods, {k: v / steps for k, v in times.items()}, total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small_vgg")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    set_num_threads(args.threads)
    print(f"{steady_malloc()}; {args.threads} threads; {load_line()}")
    model = build_model(args.model)
    model.train()
    model.need_input_grad = False
    x = np.random.default_rng(0).standard_normal((args.batch, 1, 28, 28)).astype(np.float32)
    mods, times, total = profile(model, x, args.steps)
    kinds = defaultdict(float)
    for i, m in enumerate(mods):
        f, b = times[i, "forward"], times[i, "backward"]
        kinds[type(m).__name__] += f + b
        print(f"{i:3d} {m!r:60.60s} forward {f * 1e3:7.2f} ms  backward {b * 1e3:7.2f} ms")
    print("per kind, forward + backward: " + ", ".join(
        f"{k} {v * 1e3:.1f} ms" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
    print(f"whole step: {total * 1e3:.1f} ms ({args.batch / total:.0f} images/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
