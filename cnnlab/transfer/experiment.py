"""The transfer-learning experiments of docs/transfer.md (``cnnlab experiment transfer``).

1. similar   Very similar data, very little data. Source: LeNet trained on digits 0-4
             (zoo ``lenet-mnist-5k-digits0-4``). Target: digits 5-9 with n = 5, 10, 50, 200
             labelled images per class (drawn per seed from mnist-5k's train split; tested on
             all 500 test images of 5-9). Methods, each with the same step budget:
               scratch          LeNet from random weights, every layer at the base LR (the same
                                step budget; also cnnlab train's 25 epochs, fewer steps)
               linear           multinomial logistic regression (k-fold CV over L2) on the
                                top-layer features (fc2 after ReLU, 84-d); also a linear SVM,
                                and one whose layer (conv2, fc1, fc2) is chosen by the CV
               finetune top     new head (x1), fc1/fc2 at x0.1 of the LR, convs frozen
               finetune all     new head x1, fc1/fc2 x0.1, convs x0.01 (the slides' ratios)
               finetune all, uniform LR   every layer at the base LR (no ratios)
2. different Very different data. Fashion-MNIST LeNet (zoo ``lenet-fashion-mnist``) -> MNIST
             digits (mnist-5k), and the reverse (zoo ``lenet-mnist-5k`` -> Fashion-MNIST, a
             stratified 4,000-image train subset, the full 10,000-image test split). Linear
             classifiers on the raw pixels and on every stage (conv1 = pool1, conv2 = pool2,
             fc1 = relu3, fc2 = relu4) of the pretrained net and of the same net with random
             weights, with 10 labels per class and with all 4,000; plus scratch vs finetuning
             all layers with all the data.
3. filters   One 7x7 conv vs three 3x3 convs, C -> C with the same 7x7 receptive field
             (cnnlab.models.registry.small_filters_net), trained identically on a 10,000-image
             Fashion-MNIST subset: parameters, multiply-adds, test accuracy and time.

Every number comes from cnnlab (training: cnnlab.train.Trainer; linear classifiers:
cnnlab.transfer.linear). Means and standard deviations are over seeds.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..data.dataset import sample_per_class
from ..errors import CnnlabError
from ..train.metrics import pct_mean_std

SIMILAR_SOURCE = "lenet-mnist-5k-digits0-4"
FASHION_SOURCE = "lenet-fashion-mnist"
MNIST_SOURCE = "lenet-mnist-5k"
STAGES = [("conv1", "pool1"), ("conv2", "pool2"), ("fc1", "relu3"), ("fc2", "relu4")]


@dataclass
class ExperimentConfig:
    seeds: tuple = (0, 1, 2)
    per_class: tuple = (5, 10, 50, 200)
    steps: int = 300              # optimizer steps per training run in part 1
    lr: float = 2e-3              # base learning rate (the pretraining LR of `cnnlab train`)
    regs: tuple = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    linear_steps: int = 300
    different_small: int = 10     # labels per class, part 2 "little data"
    different_pool: int = 400     # labels per class, part 2 "lots of data" (4,000 images)
    different_epochs: int = 10
    fashion_test_limit: int | None = None
    filters_train: int = 1000     # images per class, part 3
    filters_epochs: int = 6
    filters_width: int = 16
    smoke: bool = False           # tiny settings (tests)
    sources: dict = field(default_factory=dict)   # name -> (model, info), for tests

    @classmethod
    def quick(cls) -> "ExperimentConfig":
        """Tiny settings for smoke tests (seconds, meaningless numbers)."""
        return cls(seeds=(0,), per_class=(5,), steps=4, regs=(1e-2,), linear_steps=10,
                   different_small=5, different_pool=20, different_epochs=1,
                   fashion_test_limit=200, filters_train=20, filters_epochs=1, filters_width=4,
                   smoke=True)


# -------------------------------------------------------------------------------- helpers

def _load() -> str:
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average n/a"


def _source(name, cfg):
    """(fresh model, info) of a zoo entry (or a test-provided stand-in)."""
    if name in cfg.sources:
        from copy import deepcopy
        model, info = cfg.sources[name]
        return deepcopy(model), info
    from ..zoo import entry_names, load
    if name not in entry_names():
        raise CnnlabError(f"the experiment needs the zoo model {name!r}, which is not installed; "
                          f"make it with the command in docs/transfer.md (cnnlab zoo pack)")
    return load(name)


def _shift(ds):
    from ..data.transforms import RandomCrop
    return RandomCrop(ds.images.shape[1:3], padding=2)


def _budget(n, steps, max_batch=64):
    bs = min(max_batch, n)
    per_epoch = math.ceil(n / bs)
    return bs, max(1, math.ceil(steps / per_epoch))


def _train(model, train, test, info, cfg, seed, *, train_from=None, lr_mult=None, steps=None,
           epochs=None, augment=True):
    from .finetune import finetune

    n = len(train)
    if epochs is None:
        bs, epochs = _budget(n, steps or cfg.steps)
    else:
        bs = min(64, n)
    res = finetune(model, train, test, mean=info.preprocessing.get("mean"),
                   std=info.preprocessing.get("std"), train_from=train_from, lr=cfg.lr,
                   lr_mult=lr_mult, epochs=epochs, batch_size=bs, seed=seed,
                   transform=_shift(train) if augment else None, eval_each_epoch=False)
    return res.test_acc, res.seconds


def _linear(train_f, train_y, test_f, test_y, cfg, seed, loss="softmax"):
    from .linear import fit_cv

    k = 3 if len(train_y) > 1000 else 5
    res = fit_cv(train_f, train_y, cfg.regs, k=k, loss=loss, seed=seed, steps=cfg.linear_steps)
    return res.model.score(test_f, test_y), res.best_reg


# -------------------------------------------------------------- part 1: similar, little data

SIMILAR_METHODS = ["scratch", "scratch, 25 epochs", "linear on fc2 (softmax)",
                   "linear on fc2 (SVM)", "linear, layer chosen by CV", "finetune top",
                   "finetune all (slide LRs)", "finetune all (uniform LR)"]
CV_LAYERS = ["pool2", "relu3", "relu4"]       # conv2, fc1, fc2 outputs


def run_similar(cfg: ExperimentConfig, log=print) -> dict:
    from ..data import load_dataset
    from ..models.registry import get_model
    from .datasets import per_class_sample
    from .features import extract_many
    from .finetune import replace_head
    from .linear import fit_cv_select

    target_train = load_dataset("mnist-5k-digits5-9", "train")
    test = load_dataset("mnist-5k-digits5-9", "test")
    src, info = _source(SIMILAR_SOURCE, cfg)
    f_test = extract_many(src, info.normalize(test.images), CV_LAYERS)
    results = {m: {n: [] for n in cfg.per_class} for m in SIMILAR_METHODS}
    chosen = {n: [] for n in cfg.per_class}
    t_all = time.perf_counter()
    for n in cfg.per_class:
        for seed in cfg.seeds:
            train = per_class_sample(target_train, n, seed=1000 * seed + n)
            k = len(train.classes)
            rng = np.random.default_rng(seed)
            # from scratch: the same step budget as finetuning, and cnnlab train's 25 epochs
            model = get_model("lenet", num_classes=k, seed=seed)
            results["scratch"][n].append(_train(model, train, test, info, cfg, seed)[0])
            model = get_model("lenet", num_classes=k, seed=seed)
            results["scratch, 25 epochs"][n].append(
                _train(model, train, test, info, cfg, seed, epochs=1 if cfg.smoke else 25)[0])
            # linear classifiers on the pretrained features
            src, _ = _source(SIMILAR_SOURCE, cfg)
            f_train = extract_many(src, info.normalize(train.images), CV_LAYERS)
            y, yt = train.labels, test.labels
            results["linear on fc2 (softmax)"][n].append(
                _linear(f_train["relu4"], y, f_test["relu4"], yt, cfg, seed)[0])
            results["linear on fc2 (SVM)"][n].append(
                _linear(f_train["relu4"], y, f_test["relu4"], yt, cfg, seed, loss="svm")[0])
            layer, res = fit_cv_select(f_train, y, cfg.regs, k=5, seed=seed, steps=cfg.linear_steps)
            results["linear, layer chosen by CV"][n].append(res.model.score(f_test[layer], yt))
            chosen[n].append(f"{layer} / L2 {res.best_reg:g}")
            # finetuning
            for method, train_from, mults in [
                    ("finetune top", "fc1", {"fc3": 1.0, "fc1": 0.1, "fc2": 0.1}),
                    ("finetune all (slide LRs)", None,
                     {"fc3": 1.0, "fc1": 0.1, "fc2": 0.1, "conv*": 0.01}),
                    ("finetune all (uniform LR)", None, None)]:
                src, _ = _source(SIMILAR_SOURCE, cfg)
                replace_head(src, k, rng)
                results[method][n].append(
                    _train(src, train, test, info, cfg, seed, train_from=train_from, lr_mult=mults)[0])
            log(f"  similar n={n} seed={seed}: " + ", ".join(
                f"{m} {100 * results[m][n][-1]:.1f}" for m in SIMILAR_METHODS)
                + f"; CV chose {chosen[n][-1]}")
    return {"per_class": list(cfg.per_class), "seeds": list(cfg.seeds), "steps": cfg.steps,
            "lr": cfg.lr, "accuracy": {m: {str(n): v for n, v in r.items()} for m, r in results.items()},
            "cv_choice": {str(n): v for n, v in chosen.items()},
            "source": {"name": SIMILAR_SOURCE, "test_accuracy": info.accuracy.get("test")},
            "seconds": round(time.perf_counter() - t_all, 1), "load": _load()}


def similar_table(r: dict) -> str:
    ns = r["per_class"]
    head = "| method | " + " | ".join(f"{n} / class" for n in ns) + " |"
    rows = [head, "|---|" + "---:|" * len(ns)]
    for m, by_n in r["accuracy"].items():
        rows.append(f"| {m} | " + " | ".join(pct_mean_std(by_n[str(n)]) for n in ns) + " |")
    best_gain = []
    for n in ns:
        scratch = np.mean(r["accuracy"]["scratch"][str(n)])
        best = max(np.mean(v[str(n)]) for m, v in r["accuracy"].items()
                   if not m.startswith("scratch"))
        best_gain.append(f"{100 * (best - scratch):+.1f}")
    rows.append("| best transfer - scratch (points) | " + " | ".join(best_gain) + " |")
    return "\n".join(rows)


# ------------------------------------------------------------- part 2: very different data

def _stage_features(model, x, layers):
    from .features import extract_many
    return extract_many(model, x, layers)


def _different_direction(name, source_name, target, test, cfg, log):
    from ..models.registry import get_model
    from .finetune import replace_head

    src, info = _source(source_name, cfg)
    layers = [l for _, l in STAGES]
    rand = get_model(info.arch, num_classes=info.num_classes, seed=12345)
    x_pool = info.normalize(target.images)
    x_test = info.normalize(test.images)
    t0 = time.perf_counter()
    feats = {"pretrained": (_stage_features(src, x_pool, layers), _stage_features(src, x_test, layers)),
             "random weights": (_stage_features(rand, x_pool, layers),
                                _stage_features(rand, x_test, layers))}
    pixels = (x_pool.reshape(len(x_pool), -1), x_test.reshape(len(x_test), -1))
    log(f"  {name}: features of {len(x_pool)} + {len(x_test)} images in "
        f"{time.perf_counter() - t0:.1f} s")
    out = {"little": {}, "lots": {}, "finetune": {}}
    settings = [("little", cfg.different_small, cfg.seeds), ("lots", None, (0,))]
    for size, n, seeds in settings:
        rows = {}
        for seed in seeds:
            if n is None:
                idx = np.arange(len(target))
            else:
                idx = np.flatnonzero(np.isin(np.arange(len(target)),
                                             _sample_rows(target, n, 1000 * seed + n)))
            y, yt = target.labels[idx], test.labels
            rows.setdefault("pixels", []).append(
                _linear(pixels[0][idx], y, pixels[1], yt, cfg, seed)[0])
            for kind, (ftr, fte) in feats.items():
                for stage, layer in STAGES:
                    acc = _linear(ftr[layer][idx], y, fte[layer], yt, cfg, seed)[0]
                    rows.setdefault(f"{kind}: {stage}", []).append(acc)
        out[size] = rows
        log(f"  {name} {size}: " + ", ".join(f"{k} {pct_mean_std(v)}" for k, v in rows.items()))
    # lots of data: scratch vs finetuning all layers
    k = len(target.classes)
    for seed in cfg.seeds:
        for method in ("scratch", "finetune all (uniform LR)", "finetune all (slide LRs)"):
            if method == "scratch":
                model = get_model(info.arch, num_classes=k, seed=seed)
                mults = None
            else:
                model, _ = _source(source_name, cfg)
                replace_head(model, k, np.random.default_rng(seed))
                mults = None if "uniform" in method else {"fc3": 1.0, "fc1": 0.1, "fc2": 0.1,
                                                          "conv*": 0.01}
            acc, sec = _train(model, target, test, info, cfg, seed, lr_mult=mults,
                              epochs=cfg.different_epochs)
            out["finetune"].setdefault(method, []).append(acc)
    log(f"  {name} finetune (all data): " + ", ".join(f"{k} {pct_mean_std(v)}" for k, v in out["finetune"].items()))
    out["source"] = {"name": source_name, "test_accuracy": info.accuracy.get("test"),
                     "dataset": info.dataset}
    out["sizes"] = {"little": cfg.different_small, "lots": len(target), "test": len(test)}
    return out


def _sample_rows(ds, n, seed):
    return sample_per_class(ds.labels, n, seed)


def run_different(cfg: ExperimentConfig, log=print) -> dict:
    from ..data import load_dataset

    t0 = time.perf_counter()
    mnist_train = load_dataset("mnist-5k", "train")
    mnist_test = load_dataset("mnist-5k", "test")
    fashion_train = load_dataset("fashion-mnist", "train")
    fashion_test = load_dataset("fashion-mnist", "test")
    pool = fashion_train.subset(_sample_rows(fashion_train, cfg.different_pool, 7))
    pool.name = f"fashion-mnist/train[{len(pool)}]"
    if cfg.fashion_test_limit:
        fashion_test = fashion_test.subset(np.arange(cfg.fashion_test_limit))
    if cfg.smoke:
        mnist_train = mnist_train.subset(_sample_rows(mnist_train, cfg.different_pool, 7))
        mnist_test = mnist_test.subset(_sample_rows(mnist_test, 20, 8))   # 20 per class: sorted
    res = {"fashion->mnist": _different_direction("Fashion-MNIST -> MNIST", FASHION_SOURCE,
                                                   mnist_train, mnist_test, cfg, log),
           "mnist->fashion": _different_direction("MNIST -> Fashion-MNIST", MNIST_SOURCE,
                                                   pool, fashion_test, cfg, log)}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["load"] = _load()
    return res


def different_table(r: dict) -> str:
    out = []
    for key in ("fashion->mnist", "mnist->fashion"):
        d = r[key]
        src, sizes = d["source"], d["sizes"]
        out.append(f"**{key}** (source {src['name']}, {100 * (src['test_accuracy'] or 0):.1f}% on "
                   f"its own test set; target test set {sizes['test']:,} images)\n")
        out.append(f"| features | {d['sizes']['little'] if isinstance(sizes['little'], int) else ''}"
                   f" labels / class | all {sizes['lots']:,} labels |")
        out.append("|---|---:|---:|")
        for k in d["little"]:
            out.append(f"| {k} | {pct_mean_std(d['little'][k])} | {pct_mean_std(d['lots'][k])} |")
        out.append("")
        out.append(f"| all {sizes['lots']:,} labels, all layers trained | test accuracy |")
        out.append("|---|---:|")
        for k, v in d["finetune"].items():
            out.append(f"| {k} | {pct_mean_std(v)} |")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------- part 3: small filters

def run_filters(cfg: ExperimentConfig, log=print) -> dict:
    from ..data import load_dataset
    from ..models.registry import small_filters_net
    from ..models.summary import summarize
    from ..train import Trainer
    from ..optim import Adam, make_schedule

    train_all = load_dataset("fashion-mnist", "train")
    train = train_all.subset(_sample_rows(train_all, cfg.filters_train, 11))
    test = load_dataset("fashion-mnist", "test")
    if cfg.fashion_test_limit:
        test = test.subset(np.arange(cfg.fashion_test_limit))
    out = {"train_images": len(train), "test_images": len(test), "epochs": cfg.filters_epochs,
           "width": cfg.filters_width, "models": {}}
    for kind in ("7x7", "3x3"):
        accs, secs = [], []
        for seed in cfg.seeds:
            model = small_filters_net(1, 10, 28, np.random.default_rng(seed), kind, cfg.filters_width)
            bs = 64
            steps = cfg.filters_epochs * math.ceil(len(train) / bs)
            trainer = Trainer(model, optimizer=Adam(model.parameters(), cfg.lr),
                              schedule=make_schedule("cosine", steps), seed=seed, batch_size=bs,
                              epochs=cfg.filters_epochs, progress=False, log=None)
            trainer.fit(train, None)
            accs.append(trainer.evaluate(test)[1])
            secs.append(trainer.elapsed / cfg.filters_epochs)
        s = summarize(model, (1, 28, 28))
        block = [r for r in s.rows if r.name.startswith("conv1")]
        out["models"][kind] = {
            "params": s.total_params, "block_params": sum(r.params for r in block),
            "macs": s.total_macs, "block_macs": sum(r.macs for r in block),
            "block_receptive_field": list(block[-1].receptive_field),
            "accuracy": accs, "seconds_per_epoch": secs}
        log(f"  filters {kind}: acc {pct_mean_std(accs)}, {np.mean(secs):.1f} s/epoch, block params "
            f"{out['models'][kind]['block_params']:,}")
    out["load"] = _load()
    return out


def filters_table(r: dict) -> str:
    c = r["width"]
    rows = ["| block (C = %d) | block weights | block MACs | whole net params | whole net MACs | "
            "field | test accuracy | s / epoch |" % c, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, label in (("7x7", "one 7x7 conv"), ("3x3", "three 3x3 convs")):
        m = r["models"][kind]
        rows.append(f"| {label} | {m['block_params']:,} | {m['block_macs']:,} | {m['params']:,} | "
                    f"{m['macs']:,} | {m['block_receptive_field'][0]}x{m['block_receptive_field'][1]}"
                    f" | {pct_mean_std(m['accuracy'])} | {np.mean(m['seconds_per_epoch']):.1f} |")
    return "\n".join(rows)


# ------------------------------------------------------------------------------- all parts

def run_experiments(cfg: ExperimentConfig, parts=("similar", "different", "filters"), log=print) -> dict:
    results = {"config": {k: v for k, v in cfg.__dict__.items() if k != "sources"}}
    t0 = time.perf_counter()
    log(f"cnnlab experiment transfer ({_load()}, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})")
    if "similar" in parts:
        log("1. very similar data set, very little data: digits 0-4 -> 5-9")
        results["similar"] = run_similar(cfg, log)
        log(similar_table(results["similar"]))
    if "different" in parts:
        log("2. very different data set: Fashion-MNIST <-> MNIST")
        results["different"] = run_different(cfg, log)
        log(different_table(results["different"]))
    if "filters" in parts:
        log("3. small filters: one 7x7 conv vs three 3x3 convs")
        results["filters"] = run_filters(cfg, log)
        log(filters_table(results["filters"]))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"done in {results['seconds']:.0f} s ({_load()})")
    return results
