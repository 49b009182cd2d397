"""Where the time of a convolution goes: the measurements behind docs/convolution.md's
"Training steps", "Workspace" and "Why the 1.2x-sgemm target is out of reach".

    python benchmarks/conv_anatomy.py [PART ...]      (default: all parts)

Parts (2 threads by default, ``--threads``; times are the best of ``--repeat`` runs after
0.2 s of untimed calls, with glibc's allocator thresholds fixed as in benchmarks/conv.py):

    alloc       filling a fresh 37.7 MB array (Winograd F4's U of a 512x512 layer) against
                a reused one: the page faults glibc's mmap threshold costs
    malloc      PyTorch's conv1_1 (224 px, forward + both gradients) in a fresh process and
                after a 20 MB array was freed (each in its own process, default allocator)
    transforms  the pieces of Winograd and im2col on VGG's deep layers: U, V, the GEMMs,
                dU -> dW (all threads and one), im2col's GEMM cut two ways, its channel
                columns, and one thread's 512x512 sgemm rate against the number of columns
    sequence    each pass timed apart, in a step (forward, data gradient, weight gradient in
                turn) and after touching 64 MB, for Winograd F4 and im2col
    passes      Winograd's three passes on VGG-sized layers (forward and data gradient with
                U prepared, weight gradient on the forward's kept V): the phased schedule's
                deep layers, and the fused schedule's early ones
    plans       whole training steps of several plans (cnnlab.conv.step): each repeated on
                its own, and round-robin as the chooser times them; what a fresh chooser
                picks and how long that takes; and the passes that the sum-of-passes rule
                would have added up
    bound       a lower bound on VGG-16's five 512->512 training steps at 224 px with every
                tile transform and column copy free: per layer the fastest of F(2x2),
                F(4x4) (U, the GEMMs of the three passes, dU -> dW) and im2col (its three
                GEMMs), against the time the 1.2x-sgemm target allows (numpy sgemm
                measured in the same run); each piece timed repeated ("warm": its arrays
                stay in cache), after 256 MB were touched ("cold"), and the pieces run in
                order as one step repeated, as benchmarks/conv.py times a layer's step
                ("in a step": the floor to compare with its figures); the floor takes
                one algorithm for all three passes (a plan mixing algorithms could be lower)
    blocking    one thread, F(4x4) 512->512 at 28x28: the 36 GEMMs with U per block of
                output channels computed just before (so it stays in cache), against U
                streamed whole; and the transposed orientation V^T U^T of one GEMM
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # as the cnnlab command sets (cnnlab/cli.py)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import best_time, load_line  # noqa: E402

from cnnlab.conv import ALGORITHMS, ConvGeometry, set_num_threads  # noqa: E402
from cnnlab.conv import winograd as W  # noqa: E402
from cnnlab.conv.chooser import Chooser  # noqa: E402
from cnnlab.conv.gemm import _channel_columns  # noqa: E402
from cnnlab.conv.im2col import pad_input  # noqa: E402
from cnnlab.conv.step import StepPlan, step_backward, step_forward  # noqa: E402
from cnnlab.conv.threads import (blas_threads, even_blocks, get_num_threads,  # noqa: E402
                                 parallel_map, pool_region)

WARM = 0.2
PARTS = ("alloc", "malloc", "transforms", "passes", "sequence", "plans", "bound", "blocking")


def ms(fn, repeat):
    return best_time(fn, repeat, warm_seconds=WARM) * 1e3


def layer(c, o, h, n=1):
    g = ConvGeometry.of((n, c, h, h), (o, c, 3, 3), 1, 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(g.x_shape, dtype=np.float32)
    w = rng.standard_normal(g.w_shape, dtype=np.float32) * np.float32((2 / (9 * c)) ** 0.5)
    dy = rng.standard_normal(g.y_shape, dtype=np.float32)
    return g, x, w, dy


def part_alloc(repeat):
    n = 36 * 512 * 512
    buf = np.empty(n, np.float32)
    fresh = ms(lambda: np.empty(n, np.float32).fill(1), repeat)
    reused = ms(lambda: buf.fill(1), repeat)
    print(f"fill {n * 4 / 1e6:.1f} MB: fresh array {fresh:.2f} ms, reused array {reused:.2f} ms")


MALLOC_CHILD = """
import sys, time, numpy as np, torch
if sys.argv[1] == "freed":
    a = np.ones(20 << 20, np.uint8); del a
torch.set_num_threads(int(sys.argv[2]))
F = torch.nn.functional
x = torch.randn(1, 3, 224, 224, requires_grad=True)
w = torch.randn(64, 3, 3, 3, requires_grad=True)
dy = torch.randn(1, 64, 224, 224)
best, end = 1e9, time.perf_counter() + 2
while time.perf_counter() < end:
    t = time.perf_counter()
    torch.autograd.grad(F.conv2d(x, w, padding=1), [x, w], dy)
    best = min(best, time.perf_counter() - t)
print(f"{best * 1e3:.2f}")
"""


def part_malloc(threads):
    for state in ("fresh", "freed"):
        out = subprocess.run([sys.executable, "-c", MALLOC_CHILD, state, str(threads)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"PyTorch conv1_1: {out.stderr.strip().splitlines()[-1]}")
            return
        what = "fresh process" if state == "fresh" else "after freeing a 20 MB array"
        print(f"PyTorch conv1_1 at 224 px, forward + both gradients, {what}: "
              f"{out.stdout.strip()} ms (best over 2 s)")


def part_transforms(repeat, threads):
    for c, h, m in ((512, 28, 4), (512, 14, 4), (512, 14, 2), (256, 56, 4)):
        g, x, w, _ = layer(c, c, h)
        plan = W._Plan(m, 1, c, h, h, c, h, h, 1, 1)
        _, _, bt, _ = W.matrices(m, "<f4")
        a2 = (m + 2) ** 2
        u = np.empty((a2, c, c), np.float32)
        with pool_region():
            t_u = ms(lambda: W.transform_weight(w, m, out=u), repeat)
            t_v = ms(lambda: W._phase_input(x, plan, bt), repeat)
            v = W._phase_input(x, plan, bt)
            mm = np.empty((a2, c, plan.total_tiles), np.float32)
            t_g = ms(lambda: parallel_map(
                lambda b: np.matmul(u[b[0]:b[1]], v[b[0]:b[1]], out=mm[b[0]:b[1]]),
                plan.blocks(a2)), repeat)
        flops = 2 * a2 * c * c * plan.total_tiles
        print(f"F({m}x{m}) {c}->{c} at {h}x{h}: U {t_u:.2f} ms, V {t_v:.2f} ms, "
              f"{a2} GEMMs {c}x{c}x{plan.total_tiles} {t_g:.2f} ms "
              f"({flops / t_g / 1e6:.0f} GFLOP/s)")
    g, x, w, _ = layer(512, 512, 14)
    prepared = ALGORITHMS["winograd2"].prepare(w, g, "forward")
    t_w2 = ms(lambda: ALGORITHMS["winograd2"].forward(x, w, g, prepared=prepared), repeat)
    t_im = ms(lambda: ALGORITHMS["im2col"].forward(x, w, g), repeat)
    print(f"512->512 at 14x14 forward: F(2x2) with U prepared {t_w2:.2f} ms, im2col {t_im:.2f} ms")
    du = np.random.default_rng(1).standard_normal((36, 512, 512), dtype=np.float32)
    dw = np.empty((512, 512, 3, 3), np.float32)
    for k in (threads, 1):
        set_num_threads(k)
        with pool_region():
            t = ms(lambda: W.weight_from_transformed(du, 4, 512, 512, out=dw), repeat)
        print(f"F(4x4) 512x512 dU -> dW on {k} thread{'s' if k > 1 else ''}: {t:.2f} ms")
    set_num_threads(threads)
    # im2col at 14x14: its GEMM alone, cut by input channels (as it runs) or by outputs
    wm = w.reshape(512, -1)
    cols = np.random.default_rng(2).standard_normal((512 * 9, 196), dtype=np.float32)
    outs = [np.empty((512, 196), np.float32) for _ in range(threads)]
    y2 = np.empty((512, 196), np.float32)
    kc, oc = even_blocks(512 * 9, threads), even_blocks(512, threads)
    xpad = pad_input(x, g)
    cc = even_blocks(512, threads)
    with pool_region():
        t_k = ms(lambda: parallel_map(lambda i: np.matmul(
            wm[:, kc[i][0]:kc[i][1]], cols[kc[i][0]:kc[i][1]], out=outs[i]), range(threads)), repeat)
        t_o = ms(lambda: parallel_map(lambda i: np.matmul(
            wm[oc[i][0]:oc[i][1]], cols, out=y2[oc[i][0]:oc[i][1]]), range(threads)), repeat)
        t_c = ms(lambda: _channel_columns(x, xpad, g, *cc[0]), repeat)
    flops = 2 * 512 * 512 * 9 * 196
    print(f"im2col 512->512 at 14x14: GEMM cut by input channels {t_k:.2f} ms "
          f"({flops / t_k / 1e6:.0f} GFLOP/s), by outputs {t_o:.2f} ms "
          f"({flops / t_o / 1e6:.0f} GFLOP/s); one thread's channel columns {t_c:.2f} ms")
    # Winograd's GEMMs are 512x512 by N tiles: how the rate of one thread's sgemm depends on N
    u = np.random.default_rng(3).standard_normal((512, 512), dtype=np.float32)
    rates = []
    with blas_threads(1):
        for n in (16, 48, 49, 196):
            v = np.random.default_rng(4).standard_normal((512, n), dtype=np.float32)
            t = ms(lambda: np.matmul(u, v), repeat)
            rates.append(f"N = {n}: {2 * 512 * 512 * n / t / 1e6:.0f}")
    print("one thread's sgemm 512x512 @ 512xN, GFLOP/s: " + ", ".join(rates))


def part_passes(repeat):
    for c, o, h, m in ((512, 512, 28, 4), (256, 512, 28, 4), (512, 512, 14, 2),
                       (512, 512, 64, 4), (512, 512, 128, 4), (64, 64, 224, 4),
                       (128, 128, 112, 4), (256, 256, 56, 4)):
        g, x, w, dy = layer(c, o, h)
        a = ALGORITHMS[f"winograd{m}"]
        u = a.prepare(w, g, "forward")
        saved = {}
        a.forward(x, w, g, prepared=u, save=saved)
        times = (ms(lambda: a.forward(x, w, g, prepared=u), repeat),
                 ms(lambda: a.backward_data(dy, w, g, prepared=u), repeat),
                 ms(lambda: a.backward_weight(dy, x, g, saved=saved), repeat))
        plan = W._Plan(m, 1, c, h, h, o, h, h, 1, 1)
        print(f"F({m}x{m}) {c}->{o} at {h}x{h} ({'fused' if plan.fused else 'phased'}): forward "
              f"{times[0]:.2f} ms, data gradient {times[1]:.2f} ms, weight gradient {times[2]:.2f} ms")


def part_sequence(repeat):
    big = np.ones(16 << 20, np.float32)
    for algo, c, h in (("winograd4", 256, 56), ("im2col", 512, 14)):
        g, x, w, dy = layer(c, c, h)
        a = ALGORITHMS[algo]
        passes = {"fwd": lambda: a.forward(x, w, g), "bwd-data": lambda: a.backward_data(dy, w, g),
                  "bwd-weight": lambda: a.backward_weight(dy, x, g)}
        apart = {k: ms(f, repeat) for k, f in passes.items()}
        step = {k: [] for k in passes}
        for _ in range(5):                          # warm-up rounds, then timed rounds
            for f in passes.values():
                f()
        for _ in range(max(repeat, 10)):
            for k, f in passes.items():
                t = common.CLOCK()
                f()
                step[k].append(common.CLOCK() - t)
        flushed = {}
        for k, f in passes.items():
            ts = []
            for _ in range(max(repeat, 10)):
                big += 1                            # 64 MB touched between two calls
                t = common.CLOCK()
                f()
                ts.append(common.CLOCK() - t)
            flushed[k] = min(ts) * 1e3
        print(f"{algo} {c}->{c} at {h}x{h}, ms  " + "  ".join(
            f"{k}: apart {apart[k]:.2f}, in a step {min(step[k]) * 1e3:.2f}, "
            f"after 64 MB {flushed[k]:.2f}" for k in passes))


def part_plans(repeat):
    A = ALGORITHMS
    w4, im = A["winograd4"], A["im2col"]
    for c, h in ((512, 28), (64, 224)):
        g, x, w, dy = layer(c, c, h)
        plans = [StepPlan(w4, w4, w4, True, True), StepPlan(w4, w4, w4, False, True),
                 StepPlan(w4, w4, w4, True, False), StepPlan(w4, w4, w4, False, False),
                 StepPlan(w4, im, w4, False, True), StepPlan(im, im, im, False, True)]

        def runner(plan):
            reuse = {}

            def run():
                _, s = step_forward(plan, x, w, g, reuse=reuse.get("u"))
                reuse["u"] = s.u
                step_backward(s, dy, x, w, g)
            return run

        runs = [runner(p) for p in plans]
        alone = [ms(r, repeat) for r in runs]
        rr = [[] for _ in plans]
        for _ in range(max(repeat, 8)):
            for i, r in enumerate(runs):
                t = common.CLOCK()
                r()
                rr[i].append(common.CLOCK() - t)
        print(f"{c}->{c} at {h}x{h}, one training step, ms (repeated alone / round-robin):")
        for p, t_alone, ts in zip(plans, alone, rr):
            print(f"    {p.describe():<58} {t_alone:7.2f} / {min(ts) * 1e3:7.2f}")
        saved = {}
        w4.forward(x, w, g, save=saved)
        parts = {"fwd": ms(lambda: w4.forward(x, w, g), repeat),
                 "fwd keeping V": ms(lambda: w4.forward(x, w, g, save={}), repeat),
                 "bwd-weight": ms(lambda: w4.backward_weight(dy, x, g), repeat),
                 "bwd-weight on kept V": ms(lambda: w4.backward_weight(dy, x, g, saved=saved),
                                            repeat)}
        fresh = Chooser()
        t0 = common.CLOCK()
        pick = fresh.select_step(g)
        print(f"    a fresh chooser's first select_step (passes and plans timed): "
              f"{common.CLOCK() - t0:.2f} s, picked {pick.describe()}")
        print("    passes apart (Winograd F4): " +
              ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))


def _warm_cold(fn, repeat, big):
    """(warm, cold) ms of fn: best of ``repeat`` calls in a row, and best of ``repeat`` calls
    each after every page of ``big`` (256 MB) was written."""
    warm = ms(fn, repeat)
    cold = float("inf")
    for _ in range(repeat):
        big += 1
        t = common.CLOCK()
        fn()
        cold = min(cold, common.CLOCK() - t)
    return warm, cold * 1e3


def _in_step(pieces, repeat):
    """Best-of-``repeat`` ms of the pieces run one after another as one step, repeated as
    benchmarks/conv.py repeats a layer's training step (each piece finds what the step's
    other pieces left in cache)."""
    def step():
        for f in pieces:
            f()
    return ms(step, repeat)


def _winograd_floor(c, h, m, repeat, big):
    """[(warm, cold) ms] of F(m x m)'s unavoidable pieces in one training step of a c->c
    layer at h x h: U, forward GEMMs, data-gradient GEMMs, weight-gradient GEMMs, dU -> dW."""
    g, x, w, _ = layer(c, c, h)
    plan = W._Plan(m, 1, c, h, h, c, h, h, 1, 1)
    a2, nt = (m + 2) ** 2, plan.total_tiles
    rng = np.random.default_rng(5)
    u = np.empty((a2, c, c), np.float32)
    v, z = (rng.standard_normal((a2, c, nt), dtype=np.float32) for _ in range(2))
    out, du = np.empty((a2, c, nt), np.float32), np.empty((a2, c, c), np.float32)
    dw = np.empty(g.w_shape, np.float32)
    blocks = plan.blocks(a2)

    def gemms(fn):   # as the phased schedule runs them: xi split across the pool
        return lambda: parallel_map(lambda b: [fn(i) for i in range(*b)], blocks)

    pieces = (lambda: W.transform_weight(w, m, out=u),
              gemms(lambda i: np.matmul(u[i], v[i], out=out[i])),
              gemms(lambda i: np.matmul(u[i].T, z[i], out=out[i])),
              gemms(lambda i: np.matmul(z[i], v[i].T, out=du[i])),
              lambda: W.weight_from_transformed(du, m, c, c, out=dw))
    with pool_region():
        return [_warm_cold(f, repeat, big) for f in pieces], _in_step(pieces, repeat)


def _im2col_floor(c, h, threads, repeat, big):
    """[(warm, cold) ms] of im2col's three GEMMs in one training step of a c->c layer at
    h x h (the columns given), each one BLAS call on ``threads`` threads."""
    p, k = h * h, 9 * c
    rng = np.random.default_rng(6)
    wm, cols = (rng.standard_normal(s, dtype=np.float32) for s in ((c, k), (k, p)))
    dy = rng.standard_normal((c, p), dtype=np.float32)
    y, dcols, dw = (np.empty(s, np.float32) for s in ((c, p), (k, p), (c, k)))
    pieces = (lambda: np.matmul(wm, cols, out=y), lambda: np.matmul(wm.T, dy, out=dcols),
              lambda: np.matmul(dy, cols.T, out=dw))
    with blas_threads(threads):
        return [_warm_cold(f, repeat, big) for f in pieces], _in_step(pieces, repeat)


def part_bound(repeat):
    threads = get_num_threads()
    sgemm = common.sgemm_rate()
    big = np.zeros(64 << 20, np.float32)
    flops = {h: 3 * 2 * 512 * 512 * 9 * h * h for h in (28, 14)}
    layers = {28: 2, 14: 3}                 # conv4_2, conv4_3; conv5_1 .. conv5_3
    total_flops = sum(layers[h] * flops[h] for h in layers)
    floors = {"warm": 0.0, "cold": 0.0, "in a step": 0.0}
    gemms_only = {"warm": 0.0, "cold": 0.0}
    for h in (28, 14):
        measured = {f"F({m}x{m})": _winograd_floor(512, h, m, repeat, big) for m in (4, 2)}
        measured["im2col"] = _im2col_floor(512, h, threads, repeat, big)
        cands = {k: v[0] for k, v in measured.items()}
        steps = {k: v[1] for k, v in measured.items()}
        for name, parts in cands.items():
            labels = (("U", "forward GEMMs", "data-gradient GEMMs", "weight-gradient GEMMs",
                       "dU -> dW") if len(parts) == 5 else
                      ("forward GEMM", "data-gradient GEMM", "weight-gradient GEMM"))
            print(f"512->512 at {h}x{h}, {name}, ms warm / cold: " + ", ".join(
                f"{lab} {wa:.2f} / {co:.2f}" for lab, (wa, co) in zip(labels, parts)))
        for j, state in enumerate(("warm", "cold")):
            sums = {k: sum(p[j] for p in parts) for k, parts in cands.items()}
            gemm = {k: sum(p[j] for p in (parts[1:4] if len(parts) == 5 else parts))
                    for k, parts in cands.items()}
            best = min(sums, key=sums.get)
            floors[state] += layers[h] * sums[best]
            gemms_only[state] += layers[h] * min(gemm.values())
            print(f"    floor per step, {state}: {best} {sums[best]:.2f} ms "
                  f"({flops[h] / sums[best] / 1e6:.0f} GFLOP/s)")
        best = min(steps, key=steps.get)
        floors["in a step"] += layers[h] * steps[best]
        print("    floor per step, the pieces run as one repeated step: " + ", ".join(
            f"{k} {v:.2f}" for k, v in steps.items()) + f" ms (best {best})")
    allowed = total_flops / (1.2 * sgemm * 1e9) * 1e3
    print(f"five 512->512 layers (conv4_2, conv4_3, conv5_x), {total_flops / 1e9:.1f} GFLOP per "
          f"step; 1.2x the sgemm rate measured here ({sgemm:.0f} GFLOP/s) allows {allowed:.1f} ms")
    for state in ("warm", "cold", "in a step"):
        line = (f"    {state}: floor {floors[state]:.1f} ms = "
                f"{total_flops / floors[state] / 1e6 / sgemm:.2f}x sgemm")
        if state in gemms_only:
            line += (f"; GEMMs alone {gemms_only[state]:.1f} ms = "
                     f"{total_flops / gemms_only[state] / 1e6 / sgemm:.2f}x")
        print(line)


def part_blocking(repeat):
    c, a2, nt = 512, 36, 49
    rng = np.random.default_rng(7)
    w9 = rng.standard_normal((c * c, 9), dtype=np.float32)
    kg = W.matrices(4, "<f4")[3]                          # (36, 9): U = kg @ w9^T
    v = rng.standard_normal((a2, c, nt), dtype=np.float32)
    flops = 2 * a2 * c * c * nt
    with blas_threads(1):
        u = np.empty((a2, c * c), np.float32)
        mm = np.empty((a2, c, nt), np.float32)
        t_u = ms(lambda: np.matmul(kg, w9.T, out=u), repeat)
        u3 = u.reshape(a2, c, c)
        t_g = ms(lambda: np.matmul(u3, v, out=mm), repeat)
        print(f"U whole {t_u:.2f} ms, then 36 GEMMs reading it {t_g:.2f} ms "
              f"({flops / t_g / 1e6:.0f} GFLOP/s)")
        for ob in (16, 32, 64, 128):
            ub = np.empty((a2, ob * c), np.float32)
            out = np.empty((a2, ob, nt), np.float32)

            def blocked():
                for o0 in range(0, c, ob):
                    np.matmul(kg, w9[o0 * c:(o0 + ob) * c].T, out=ub)
                    np.matmul(ub.reshape(a2, ob, c), v, out=out)
            t_u = ms(lambda: np.matmul(kg, w9[:ob * c].T, out=ub), repeat) * (c // ob)
            t = ms(blocked, repeat)
            print(f"U per block of {ob} output channels: U {t_u:.2f} ms in all, GEMMs "
                  f"{t - t_u:.2f} ms ({flops / max(t - t_u, 1e-9) / 1e6:.0f} GFLOP/s), "
                  f"together {t:.2f} ms")
        u1, v1 = u3[0].copy(), v[0].copy()
        ut, vt = np.ascontiguousarray(u1.T), np.ascontiguousarray(v1.T)
        o1, o2 = np.empty((c, nt), np.float32), np.empty((nt, c), np.float32)
        t1 = ms(lambda: np.matmul(u1, v1, out=o1), repeat)
        t2 = ms(lambda: np.matmul(vt, ut, out=o2), repeat)
        f1 = 2 * c * c * nt
        print(f"one 512x512x49 GEMM, U in cache: U @ V {f1 / t1 / 1e6:.0f} GFLOP/s, "
              f"V^T @ U^T {f1 / t2 / 1e6:.0f} GFLOP/s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", metavar="PART",
                    help=f"any of {', '.join(PARTS)} (default: all)")
    ap.add_argument("--repeat", type=int, default=10, help="timed runs, best kept (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    args = ap.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    args.parts = args.parts or list(PARTS)
    set_num_threads(args.threads)
    print(f"{common.steady_malloc()}; {args.threads} threads; {load_line()}")
    for part in args.parts:
        print(f"== {part}")
        if part == "alloc":
            part_alloc(args.repeat)
        elif part == "malloc":
            part_malloc(args.threads)
        elif part == "transforms":
            part_transforms(args.repeat, args.threads)
        elif part == "passes":
            part_passes(args.repeat)
        elif part == "sequence":
            part_sequence(args.repeat)
        elif part == "plans":
            part_plans(args.repeat)
        elif part == "bound":
            part_bound(args.repeat)
        else:
            part_blocking(args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
