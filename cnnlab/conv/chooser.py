"""Which algorithm runs a given convolution pass.

``select(g, pass_, algo, dtype)`` returns the algorithm object. In order:

1. ``algo`` names a registered algorithm: forced for this layer (an
   ``UnsupportedConfigError`` naming the algorithms that can, if it cannot
   handle ``g``);
2. otherwise the chooser's default, set globally and explicitly with
   ``set_default_algo("fft")`` or ``with default_algo("fft"): ...`` (initially
   "auto", or the value of the opt-in environment variable CNNLAB_CONV_ALGO);
3. "auto": the first call for a (geometry, dtype, pass) key times the
   eligible algorithms on synthetic data of that shape (one warm-up run each,
   dropping any 3x slower than the best warm-up, then ``repeats`` interleaved
   rounds over the rest, keeping each one's fastest run) and keeps the winner
   in memory. Geometries under TINY_MACS multiply-adds, or with
   measuring switched off, use a heuristic instead. Not candidates: algorithms
   whose ``workspace_bytes`` exceed the workspace limit, ``direct`` (the
   reference), and ``fft`` where its flop count exceeds 0.4x the direct
   convolution's (small kernels, small batches; ``fft_worth_trying``).
   With ``prepared=True`` (a frozen layer that keeps its prepared weights, see
   :mod:`cnnlab.conv.prepared`) the key is a separate one and each candidate is
   timed with its weights prepared beforehand (``ConvAlgorithm.prepare``, not
   timed), since that is what the layer will run on every later call. Such a
   layer names the algorithms whose prepared weights it already holds
   (``held``); auto then keeps one of them if it measured within REUSE_SLACK of
   the fastest, rather than preparing a second transformed copy of the weights
   (up to 4x their size) for a few percent.

Choices can also be kept on disk (``enable_disk_cache()``): a JSON file at
``$CNNLAB_CACHE/conv_algos.json`` (default ``~/.cache/cnnlab/``), written
atomically, whose entries are filed under a fingerprint of the machine, the
library versions, the BLAS and the thread count, so a cache copied from
another machine is ignored rather than trusted.

All of this state lives in one explicit object, ``CHOOSER`` (a :class:`Chooser`);
the module functions are shortcuts to it. Its ``notify`` (None by default) receives one line
per measurement (what was timed, how long it took, what won): ``cnnlab train`` and ``cnnlab
eval`` print them, since the first step of a large network can spend tens of seconds here.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import module_name
from ..errors import UnsupportedConfigError
from ..io.atomic import atomic_write
from .algorithm import ALGORITHMS, PASSES
from .step import StepPlan, step_backward, step_forward
from .threads import get_num_threads

ENV_ALGO = "CNNLAB_CONV_ALGO"
ENV_CACHE = "CNNLAB_CACHE"
TINY_MACS = 1_000_000
DEFAULT_WORKSPACE_LIMIT = 1 << 30
NOT_AUTO = ("direct",)          # correct but never fast: the reference
CACHE_FORMAT = "cnnlab-conv-algos-1"
STEP_EXTRA_REPEATS = 2          # whole steps differ by a few percent: 2 more rounds than passes
STEP_FORWARD_SLACK = 2.0        # select_step times plans whose forward is within 2x of the best
REUSE_SLACK = 1.15              # a held prepared algorithm within 15% of the fastest is kept


@dataclass
class Choice:
    """What auto picked for one key, and how: 'measured', 'heuristic', 'only', 'disk',
    'checkpoint' or 'larger batch' (the pick of the same layer at a larger batch)."""

    algo: str
    how: str
    times_ms: dict = field(default_factory=dict)

    def to_json(self):
        return {"algo": self.algo, "how": self.how, "times_ms": self.times_ms}


def _runner(a, pass_, args, g, prepared=False):
    """A zero-argument call of one measured run (preparation done here, untimed)."""
    prep = a.prepare(args[1], g, pass_) if prepared else None
    return lambda: a.run(pass_, *args, g, prepared=prep)


def eligible(g, pass_: str) -> list[str]:
    """Names of the registered algorithms that can run ``pass_`` on geometry ``g``."""
    return [name for name, a in ALGORITHMS.items() if a.supports(g, pass_) is None]


def _check_pass(pass_):
    if pass_ not in PASSES:
        raise ValueError(f"unknown convolution pass {pass_!r}; use one of {PASSES}")


def check_algo_name(algo, origin: str = "") -> None:
    """Raise UnsupportedConfigError unless ``algo`` is None, "auto" or a registered name."""
    if algo is not None and algo != "auto" and algo not in ALGORITHMS:
        raise UnsupportedConfigError(
            f"unknown convolution algorithm {algo!r}{origin}; "
            f"choose one of {sorted(ALGORITHMS)} or 'auto'"
        )


#: what "auto" runs for arrays of another module than numpy (CuPy): im2col's GEMMs run on
#: cuBLAS, while Winograd and FFT are written for numpy (``ConvAlgorithm.array_modules``);
#: timing is not done there (the chooser's timings are of numpy code on the CPU)
DEVICE_DEFAULT = "im2col"


def _forced(g, pass_, algo, origin="", xp=None):
    check_algo_name(algo, origin)
    a = ALGORITHMS[algo]
    a.require(g, pass_, origin, xp=xp)
    return a


def cache_key(g, pass_: str, dtype, workspace_limit, prepared: bool = False,
              threads: int | None = None) -> str:
    """The string a choice is filed under (memory and disk); "|prepared": timed with
    prepared weights; "|t2": measured with 2 threads (default: the current
    ``get_num_threads()``: the best algorithm depends on how many cores it gets)."""
    threads = get_num_threads() if threads is None else threads
    return (f"{pass_}|{np.dtype(dtype).name}|n{g.n} c{g.c} h{g.h} w{g.w} o{g.o} "
            f"k{g.kh}x{g.kw} s{g.stride[0]}x{g.stride[1]} p{g.padding[0]}x{g.padding[1]} "
            f"d{g.dilation[0]}x{g.dilation[1]} g{g.groups}|ws{workspace_limit}|t{threads}"
            + ("|prepared" if prepared else ""))


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_description(threads: bool = True) -> str:
    """The BLAS numpy uses, as threadpoolctl sees it (or numpy's build info without it);
    ``threads``: with its current thread count."""
    try:
        from threadpoolctl import threadpool_info
        libs = [(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')}"
                 + (f" {i.get('num_threads')} threads" if threads else "")).replace("  ", " ")
                for i in threadpool_info() if i.get("user_api") == "blas"]
        if libs:
            return "; ".join(sorted(set(libs)))
    except Exception:
        pass
    try:
        blas = np.__config__.CONFIG["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "unknown BLAS"


def machine_fingerprint() -> tuple[str, str]:
    """(short hash, description) of what timings depend on: CPU, versions, BLAS. The
    thread count, which can change within a process, is part of each choice's key
    (:func:`cache_key`) instead."""
    import scipy

    from .. import __version__
    desc = (f"{cpu_model()} | {platform.machine()} | {os.cpu_count()} cpus | "
            f"numpy {np.__version__} | "
            f"scipy {scipy.__version__} | cnnlab {__version__} | {blas_description(False)} | "
            f"algos {','.join(sorted(ALGORITHMS))}")
    return hashlib.sha256(desc.encode()).hexdigest()[:16], desc


def default_cache_path() -> Path:
    """$CNNLAB_CACHE/conv_algos.json, or ~/.cache/cnnlab/conv_algos.json
    (:func:`cnnlab.download.cache_dir`)."""
    from ..download import cache_dir
    return cache_dir() / "conv_algos.json"


PASS_INPUTS = {"forward": ("x", "w"), "backward_data": ("dy", "w"),
               "backward_weight": ("dy", "x")}


def _synthetic_inputs(g, names, dtype):
    """Random arrays of ``g``'s shapes for ``names`` (of "x", "w", "dy"), only those."""
    rng = np.random.default_rng(0)
    shapes = {"x": g.x_shape, "w": g.w_shape, "dy": g.y_shape}
    return tuple(rng.standard_normal(shapes[n], dtype=np.float32).astype(dtype, copy=False)
                 for n in names)


FFT_COST_RATIO = 0.4


def fft_worth_trying(g) -> bool:
    """Whether measuring FFT is worth its time: its own flop count (~5 S log2 S per image and
    kernel plane of S pixels, N*C + N*O + O*C/G planes, plus 8 flops per spectral product)
    must be under FFT_COST_RATIO of the direct convolution's. Measured on this machine, FFT
    beat im2col at ratios up to ~0.3 (5x5 and 7x7 kernels, batches of 16-64) and lost from
    ~0.5 on. At batch 1 the O*C kernel planes dominate (every 3x3 kernel is padded to the
    image size), so no VGG layer at batch 1 or in 32x32 CIFAR batches qualifies."""
    from .fft import fft_shape
    sh, sw = fft_shape(g)
    nf = sh * (sw // 2 + 1)
    cg = g.c // g.groups
    planes = g.n * g.c + g.n * g.o + g.o * cg
    cost = 5 * planes * 2 * nf * math.log2(max(2, sh * sw)) + 8 * g.n * g.o * cg * nf
    return cost < FFT_COST_RATIO * g.flops


def _short(g) -> str:
    """A convolution in one line: "x 1x512x28x28, w 512x512x3x3, pad 1" (stride, dilation
    and groups only where not 1)."""
    text = "x " + "x".join(map(str, g.x_shape)) + ", w " + "x".join(map(str, g.w_shape))
    for name, value in (("stride", g.stride), ("pad", g.padding), ("dilation", g.dilation)):
        if name == "pad" or value != (1, 1):
            text += f", {name} " + (str(value[0]) if value[0] == value[1] else
                                    f"{value[0]}x{value[1]}")
    return text + (f", groups {g.groups}" if g.groups != 1 else "")


def heuristic(g, pass_: str, candidates: list[str]) -> str:
    """The unmeasured guess: Winograd F(4x4) for 3x3 layers with enough channels and pixels,
    FFT for big kernels on big images, im2col otherwise."""
    pixels = g.ho * g.wo
    cg, og = g.c // g.groups, g.o // g.groups
    if g.macs >= TINY_MACS:
        if "winograd4" in candidates and min(cg, og) >= 16 and pixels >= 64:
            return "winograd4"
        if "fft" in candidates and g.kh * g.kw >= 49 and pixels >= 256:
            return "fft"
    for name in ("im2col", "winograd4", "winograd2", "fft"):
        if name in candidates:
            return name
    return candidates[0]


class Chooser:
    """The auto-tuner's configuration and memory. ``CHOOSER`` is the one the library uses."""

    def __init__(self, default_algo: str = "auto",
                 workspace_limit: int | None = DEFAULT_WORKSPACE_LIMIT,
                 measure: bool = True, repeats: int = 2):
        self.default_algo = default_algo
        self.workspace_limit = workspace_limit
        self.measure = measure
        self.repeats = repeats
        self.cache_file: Path | None = None   # disk cache off until enable_disk_cache()
        self.choices: dict[str, Choice] = {}
        self._disk: dict[str, dict] | None = None
        self._fingerprint: tuple[str, str] | None = None
        self.notify = None          # callable(str): one line per measurement (module doc)
        self._quiet_depth = 0       # > 0 while a step selection runs (it reports once)
        self._timings = 0           # measurements so far (passes and steps)

    # -- selection ---------------------------------------------------------------------
    def select(self, g, pass_: str, algo: str = "auto", dtype=None, prepared: bool = False,
               held=(), xp=None):
        """The algorithm for ``pass_`` (module doc); ``xp``: the arrays' module (None or
        numpy: the CPU; cupy: forced algorithms must run there, auto is DEVICE_DEFAULT)."""
        _check_pass(pass_)
        if algo is None:
            algo = "auto"
        if algo != "auto":
            return _forced(g, pass_, algo, xp=xp)
        if self.default_algo != "auto":
            origin = (" (the global default; see cnnlab.conv.set_default_algo"
                      f" and ${ENV_ALGO})")
            return _forced(g, pass_, self.default_algo, origin, xp=xp)
        if module_name(xp) != "numpy":
            return _forced(g, pass_, DEVICE_DEFAULT, " (auto's choice off the CPU)", xp=xp)
        choice = self.choose(g, pass_, dtype, prepared)
        if prepared and held and choice.algo not in held:
            best = choice.times_ms.get(choice.algo)
            near = [n for n in held if n in choice.times_ms and best is not None
                    and choice.times_ms[n] <= REUSE_SLACK * best]
            if near:
                return ALGORITHMS[min(near, key=choice.times_ms.get)]
        return ALGORITHMS[choice.algo]

    def select_step(self, g, algo: str = "auto", dtype=None, need_dx: bool = True,
                    need_dw: bool = True, xp=None) -> StepPlan:
        """The plan of a training step (forward, then the data gradient if ``need_dx`` and the
        weight gradient if ``need_dw``, all with the same weight; :mod:`cnnlab.conv.step`):
        which algorithm runs each pass, and whether the forward keeps its transformed weight
        for the data gradient (``share_u``) and its transformed input for the weight
        gradient (``keep_v``).

        Forced algorithms share and keep whenever they can (within the workspace limit).
        Under "auto", the candidate plans are the passes' own picks (sharing only where two
        are the same algorithm) and, for each algorithm F that can share or keep (forward
        within 2x of the best), F's forward with a data gradient by F on the shared U, by F
        on its own or auto's own pick, and a weight gradient by F on the kept input or auto's
        own pick; each is timed as a whole step on synthetic data (one warm-up, then
        ``repeats`` + STEP_EXTRA_REPEATS interleaved rounds; the fastest run counts) and the
        fastest is kept under its own key ("step|dx|dw"; a filed plan, from memory, the disk
        cache or a checkpoint, is used if it is still valid here, ``_plan_ok``). Passes timed apart would mislead
        here: run one after another they find their inputs out of cache, and keeping V costs
        the forward a write and saves the weight gradient a transform, so only the whole
        step says which wins. Without measurements (heuristic choices, too small a layer)
        the passes' own picks are used, sharing U and keeping the input where two passes
        picked the same algorithm that can (this is also what a forced algorithm does)."""
        if module_name(xp) != "numpy":     # off the CPU: as forced, nothing timed
            for pass_ in ("forward", "backward_data", "backward_weight"):
                self.select(g, pass_, algo, dtype, xp=xp)       # raises if it cannot run
            if (algo or "auto") == "auto":
                algo = self.default_algo if self.default_algo != "auto" else DEVICE_DEFAULT
        t0, timings = time.perf_counter(), self._timings
        self._quiet_depth += 1      # the passes' own measurements count into the step's line
        try:
            plan, compared = self._select_step(g, algo, dtype, need_dx, need_dw)
        finally:
            self._quiet_depth -= 1
        if self._timings > timings and not self._quiet_depth:
            how = (f"{compared} plans timed as whole steps" if compared
                   else "passes timed apart")
            self._announce(f"training step of {_short(g)}: {plan.describe()} "
                           f"({how}, {time.perf_counter() - t0:.1f} s)")
        return plan

    def _select_step(self, g, algo, dtype, need_dx, need_dw):
        """select_step's (plan, number of plans it timed as whole steps, 0 if none)."""
        fwd = self.select(g, "forward", algo, dtype)
        bwd = self.select(g, "backward_data", algo, dtype) if need_dx else None
        bww = self.select(g, "backward_weight", algo, dtype) if need_dw else None

        def shares(a, b):
            return need_dx and a is b and self._can_share(a, g, dtype)

        def keeps(a, b):
            return need_dw and a is b and self._can_keep(a, g, dtype)

        plain = StepPlan(fwd, bwd, bww, shares(fwd, bwd), keeps(fwd, bww))
        if (algo or "auto") != "auto" or self.default_algo != "auto":
            return plain, 0
        dtype = np.dtype(dtype or np.float32)
        key = cache_key(g, "step" + ("|dx" if need_dx else "") + ("|dw" if need_dw else ""),
                        dtype, self.workspace_limit)
        hit = self.choices.get(key)
        if hit is None and self.cache_file is not None:
            disk = self._disk_entries().get(key)
            if isinstance(disk, dict):
                hit = Choice(disk.get("algo", ""), "disk", dict(disk.get("times_ms") or {}))
        if hit is None:             # an epoch's last, smaller batch: as the full batches
            hit = self._larger_batch(key, g)
        if hit is not None:         # filed (measured, disk, checkpoint): used if it is valid
            plan = StepPlan.from_code(hit.algo)
            if plan is not None and self._plan_ok(plan, g, dtype, need_dx, need_dw):
                self.choices[key] = hit
                return plan, 0
        cf = self.choose(g, "forward", dtype)
        best_fwd = cf.times_ms.get(cf.algo)
        if best_fwd is None:
            return plain, 0
        plans = {plain.code(): plain}
        for name, t_fwd in cf.times_ms.items():
            if name not in ALGORITHMS or t_fwd > STEP_FORWARD_SLACK * best_fwd:
                continue                    # unknown (a stale entry), or too slow to win
            a = ALGORITHMS[name]
            if not (shares(a, a) or keeps(a, a)):
                continue
            # data gradient: a on the shared U, a on its own, or auto's pick; weight gradient:
            # a on the kept input, or auto's pick (a data gradient that runs a itself needs a
            # to support it: always so here, a ran the forward of the same 3x3 geometry)
            bd_options = [(None, False)] if not need_dx else \
                [(b, b is a and sh) for b, sh in ((a, True), (a, False), (bwd, False))
                 if not sh or shares(a, a)]
            bw_options = [(None, False)] if not need_dw else \
                [(b, k) for b, k in ((a, True), (bww, False)) if not k or keeps(a, a)]
            for bd, share in bd_options:
                for bw, keep in bw_options:
                    if (share or keep) and (bd is None or bd.supports(g, "backward_data") is None) \
                            and (bw is None or bw.supports(g, "backward_weight") is None):
                        p = StepPlan(a, bd, bw, share, keep)
                        plans.setdefault(p.code(), p)
        if len(plans) == 1:
            return plain, 0
        choice = self._measure_steps(g, dtype, plans, need_dx, need_dw)
        self.choices[key] = choice
        if self.cache_file is not None:
            self._save(key, choice)
        return plans[choice.algo], len(plans)

    def _measure_steps(self, g, dtype, plans, need_dx, need_dw) -> Choice:
        """Time whole steps of each plan (as ``_measure`` times passes)."""
        x, w, dy = _synthetic_inputs(g, ("x", "w", "dy"), dtype)

        def runner(plan):
            reuse = {}

            def run():
                _, state = step_forward(plan, x, w, g, reuse=reuse.get("u"))
                reuse["u"] = state.u
                step_backward(state, dy, x, w, g, need_dx, need_dw)
            return run

        self._timings += 1
        return self._time_runs({code: runner(plan) for code, plan in plans.items()},
                               self.repeats + STEP_EXTRA_REPEATS)

    def _time_runs(self, runs: dict, repeats: int | None = None) -> Choice:
        """Time ``runs`` (name -> zero-argument call, in the order to try them): each once as
        a warm-up, dropping any over 3x the best warm-up so far, then ``repeats`` (default
        ``self.repeats``) interleaved rounds of the rest, so a burst of load elsewhere hits
        them all alike; the fastest single run wins."""
        times, alive = {}, []
        best = float("inf")
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            warm = time.perf_counter() - t0
            times[name] = warm
            if warm <= 3 * best:
                alive.append(name)
            best = min(best, warm)
        alive = [n for n in alive if times[n] <= 3 * best]
        for _ in range(self.repeats if repeats is None else repeats):
            for name in alive:
                t0 = time.perf_counter()
                runs[name]()
                times[name] = min(times[name], time.perf_counter() - t0)
        winner = min(alive, key=times.get)
        return Choice(winner, "measured", {n: round(t * 1e3, 3) for n, t in times.items()})

    def _plan_ok(self, p, g, dtype, need_dx, need_dw) -> bool:
        """Whether a filed plan can run here as it says: every algorithm supports its pass,
        no reference algorithm, the passes match ``need_dx``/``need_dw``, and what it shares
        or keeps is shared or kept by the same algorithm that can, within the limit."""
        f = p.forward
        return (p.supports(g) and f.name not in NOT_AUTO
                and (p.backward_data is not None) == bool(need_dx)
                and (p.backward_weight is not None) == bool(need_dw)
                and (not p.share_u or (p.backward_data is f and self._can_share(f, g, dtype)))
                and (not p.keep_v or (p.backward_weight is f and self._can_keep(f, g, dtype))))

    def _can_keep(self, a, g, dtype) -> bool:
        """Whether ``a``'s forward can keep its input transform for the weight gradient, within
        the workspace limit."""
        if not a.saves_input:
            return False
        nbytes = a.saved_bytes(g, np.dtype(dtype or np.float32).itemsize)
        return self.workspace_limit is None or nbytes <= self.workspace_limit

    def _can_share(self, a, g, dtype) -> bool:
        """Whether ``a``'s forward preparation also serves its data gradient, within the
        workspace limit."""
        key = a.prepared_key(g, "forward")
        if key is None or key != a.prepared_key(g, "backward_data"):
            return False
        nbytes = a.prepared_bytes(g, "forward", np.dtype(dtype or np.float32).itemsize)
        return self.workspace_limit is None or nbytes <= self.workspace_limit

    def candidates(self, g, pass_: str, dtype=None) -> list[str]:
        """Eligible algorithms auto may pick: not the reference, within the workspace limit."""
        itemsize = np.dtype(dtype or np.float32).itemsize
        names = [n for n in eligible(g, pass_)
                 if n not in NOT_AUTO and (n != "fft" or fft_worth_trying(g))]
        if self.workspace_limit is not None:
            fits = [n for n in names
                    if ALGORITHMS[n].workspace_bytes(g, pass_, itemsize) <= self.workspace_limit]
            if fits:
                names = fits
            else:  # nothing fits: the smallest workspace rather than nothing at all
                names = [min(names or eligible(g, pass_),
                             key=lambda n: ALGORITHMS[n].workspace_bytes(g, pass_, itemsize))]
        return names or eligible(g, pass_)

    def choose(self, g, pass_: str, dtype=None, prepared: bool = False) -> Choice:
        """Auto's choice for this key: from memory, the disk cache, a measurement or a heuristic.
        ``prepared``: for a layer that runs on prepared weights (no effect on the weight
        gradient, which does not read the weights)."""
        dtype = np.dtype(dtype or np.float32)
        prepared = bool(prepared) and pass_ != "backward_weight"
        key = cache_key(g, pass_, dtype, self.workspace_limit, prepared)
        hit = self.choices.get(key)
        if hit is not None:
            return hit
        names = self.candidates(g, pass_, dtype)
        disk = self._disk_entries().get(key) if self.cache_file is not None else None
        larger = self._larger_batch(key, g)
        if disk is not None and disk.get("algo") in names:
            choice = Choice(disk["algo"], "disk", dict(disk.get("times_ms", {})))
        elif larger is not None and larger.algo in names:
            choice = larger
        elif len(names) == 1:
            choice = Choice(names[0], "only")
        elif not self.measure or g.macs < TINY_MACS:
            choice = Choice(heuristic(g, pass_, names), "heuristic")
        else:
            t0 = time.perf_counter()
            choice = self._measure(g, pass_, dtype, names, prepared)
            self._timings += 1
            if not self._quiet_depth:
                self._announce(f"{pass_.replace('_', ' ')} of {_short(g)}"
                               f"{' (prepared weights)' if prepared else ''}: {choice.algo} "
                               f"({len(choice.times_ms)} algorithms timed, "
                               f"{time.perf_counter() - t0:.1f} s)")
        self.choices[key] = choice
        if choice.how == "measured" and self.cache_file is not None:
            self._save(key, choice)
        return choice

    def _measure(self, g, pass_, dtype, names, prepared=False) -> Choice:
        """Warm each candidate up once (dropping any 3x slower than the best warm-up so far),
        then time the survivors in interleaved rounds, so a burst of load elsewhere on the
        machine hits them all alike; the fastest single run wins. With ``prepared`` each
        candidate's weights are prepared before its first run (untimed)."""
        args = _synthetic_inputs(g, PASS_INPUTS[pass_], dtype)
        first = heuristic(g, pass_, names)
        order = [first] + [n for n in names if n != first]
        return self._time_runs({n: _runner(ALGORITHMS[n], pass_, args, g, prepared)
                                for n in order})

    def _larger_batch(self, key: str, g):
        """The choice made in memory for the same key with the largest batch above ``g.n``
        (how="larger batch"), or None: an epoch's last, smaller batch (or a smaller
        evaluation batch) runs as the full ones did instead of timing everything again."""
        head, sep, tail = key.partition(f"|n{g.n} c")
        if not sep:
            return None
        best, best_n = None, g.n
        for k, choice in self.choices.items():
            if not k.startswith(head + "|n"):
                continue
            n, sep2, rest = k[len(head) + 2:].partition(" c")
            if sep2 and rest == tail and n.isdigit() and int(n) > best_n:
                best, best_n = choice, int(n)
        return None if best is None else Choice(best.algo, "larger batch",
                                                dict(best.times_ms))

    def _announce(self, line: str) -> None:
        if self.notify is not None:
            self.notify("conv chooser: " + line)

    # -- disk cache ----------------------------------------------------------------------
    def fingerprint(self) -> tuple[str, str]:
        if self._fingerprint is None:
            self._fingerprint = machine_fingerprint()
        return self._fingerprint

    def _read_file(self) -> dict:
        """The cache file's content with anything malformed left out (an unreadable file,
        another format, a machine section or entry of the wrong shape): what is left is
        what the next save writes back."""
        machines = {}
        try:
            data = json.loads(self.cache_file.read_text())
            if isinstance(data, dict) and data.get("format") == CACHE_FORMAT \
                    and isinstance(data.get("machines"), dict):
                for fp, section in data["machines"].items():
                    if isinstance(section, dict) and isinstance(section.get("choices"), dict):
                        machines[fp] = {
                            "machine": str(section.get("machine", "")),
                            "choices": {k: e for k, e in section["choices"].items()
                                        if _valid_entry(e)}}
        except (OSError, ValueError):
            pass
        return {"format": CACHE_FORMAT, "machines": machines}

    def _disk_entries(self) -> dict:
        if self._disk is None:
            data = self._read_file()
            section = data["machines"].get(self.fingerprint()[0], {})
            self._disk = dict(section.get("choices", {}))
        return self._disk

    def _save(self, key: str, choice: Choice) -> None:
        """Merge one choice into the file and replace it atomically (never a half-written file)."""
        fp, desc = self.fingerprint()
        path = self.cache_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            data = self._read_file()
            section = data["machines"].setdefault(fp, {"machine": desc, "choices": {}})
            section["machine"] = desc
            section["choices"][key] = choice.to_json()
            with atomic_write(path, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            self._disk_entries()[key] = choice.to_json()
        except OSError:
            pass  # an unwritable cache only costs a re-measurement next time

    def enable_disk_cache(self, path=None) -> Path:
        self.cache_file = Path(path).expanduser() if path is not None else default_cache_path()
        self._disk = None
        return self.cache_file

    def disable_disk_cache(self) -> None:
        self.cache_file = None
        self._disk = None

    def clear(self) -> None:
        """Forget the in-memory choices (the disk cache file is left alone)."""
        self.choices.clear()
        self._disk = None


def _valid_entry(entry) -> bool:
    """A filed choice: {"algo": str, "how": ..., "times_ms": {str: number}} (times optional)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("algo"), str):
        return False
    times = entry.get("times_ms", {})
    return isinstance(times, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in times.values())


def _initial_default() -> str:
    value = os.environ.get(ENV_ALGO, "").strip()
    return value or "auto"


CHOOSER = Chooser(default_algo=_initial_default())


def select(g, pass_: str, algo: str = "auto", dtype=None, prepared: bool = False, held=(),
           xp=None):
    """Return the algorithm that will run ``pass_`` of the convolution ``g`` (see module doc);
    ``prepared``: the caller will pass prepared weights (a frozen layer), so auto times
    the candidates that way; ``held``: names of the algorithms whose prepared weights the
    caller already has for this pass (kept when within REUSE_SLACK of auto's pick); ``xp``:
    the arrays' module (cupy: DEVICE_DEFAULT under auto, forced algorithms checked)."""
    return CHOOSER.select(g, pass_, algo, dtype, prepared, held, xp=xp)


def select_step(g, algo: str = "auto", dtype=None, need_dx: bool = True,
                need_dw: bool = True, xp=None) -> StepPlan:
    """The algorithms of a training step and what its forward keeps: Chooser.select_step."""
    return CHOOSER.select_step(g, algo, dtype, need_dx, need_dw, xp=xp)


def explain(g, pass_: str, dtype=None, prepared: bool = False) -> Choice:
    """What "auto" picks for this key, and how (measuring it now if it has not yet)."""
    return CHOOSER.choose(g, pass_, dtype, prepared)


def set_default_algo(name: str) -> None:
    """Force ``name`` for every convolution whose layer says "auto" ("auto" restores tuning)."""
    if name != "auto" and name not in ALGORITHMS:
        raise UnsupportedConfigError(
            f"unknown convolution algorithm {name!r}; choose one of {sorted(ALGORITHMS)} or 'auto'")
    CHOOSER.default_algo = name


def get_default_algo() -> str:
    return CHOOSER.default_algo


@contextmanager
def default_algo(name: str):
    """``with default_algo("im2col"): ...`` forces an algorithm inside the block only."""
    old = CHOOSER.default_algo
    set_default_algo(name)
    try:
        yield
    finally:
        CHOOSER.default_algo = old


def set_workspace_limit(nbytes: int | None) -> None:
    """Auto skips algorithms needing more than ``nbytes`` of workspace (None: no limit).
    Where none fits, it takes the one needing least (``Choice.how == "only"``), not none."""
    if nbytes is not None and nbytes < 0:
        raise ValueError(f"workspace limit must be >= 0 bytes or None, got {nbytes}")
    CHOOSER.workspace_limit = nbytes


def get_workspace_limit() -> int | None:
    return CHOOSER.workspace_limit


def enable_disk_cache(path=None) -> Path:
    """Keep auto's measured choices in ``path`` (default: see ``default_cache_path``)."""
    return CHOOSER.enable_disk_cache(path)


def disable_disk_cache() -> None:
    CHOOSER.disable_disk_cache()


def clear_choices() -> None:
    """Forget auto's in-memory choices; the next call of each key measures again."""
    CHOOSER.clear()
