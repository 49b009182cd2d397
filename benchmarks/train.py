"""small_vgg on Fashion-MNIST: cnnlab's test accuracy, and training images/second against
the same network in PyTorch, measured in the same run.

    python benchmarks/train.py [--epochs 12] [--batch-size 128] [--optimizer adam] [--lr 0.001]
                               [--augment shift+flip] [--threads 2] [--torch-epochs 1]
    python benchmarks/train.py --epochs 1 --limit 5000     (throughput only: a few minutes)

Both sides train the same architecture from the same initial weights (cnnlab's, copied
into the PyTorch twin), with the same optimizer and learning-rate schedule (cosine over
all steps of the cnnlab run), on the same mini-batches: the same shuffled order and
augmentation, made by one ``cnnlab.data.DataLoader`` recipe, whose batch preparation is
timed on both sides. BLAS, cnnlab's convolution threads and ``torch.set_num_threads`` all
get ``--threads``. Throughput is training images per second over the training steps
(evaluation excluded), after one untimed warm-up step on a throwaway copy of each model
(so cnnlab's convolution auto-tuning is not timed). PyTorch trains ``--torch-epochs``
epochs (default 1: throughput only; give the same as --epochs to compare accuracy).

The bar is >= 91% test accuracy for cnnlab after --epochs on the full data set.
Data: ``load_dataset("fashion-mnist", split)``, i.e. the cache of ``cnnlab data fetch
fashion-mnist`` or Debian's /usr/share/datasets/fashion-mnist.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")   # as the cnnlab command sets (cnnlab/cli.py)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_line, settle, steady_malloc, versions_line  # noqa: E402

from cnnlab import nn  # noqa: E402
from cnnlab.data import load_dataset  # noqa: E402
from cnnlab.data.loader import DataLoader  # noqa: E402
from cnnlab.models import build_model  # noqa: E402
from cnnlab.optim import make_optimizer, make_schedule  # noqa: E402
from cnnlab.train import Trainer  # noqa: E402
from cnnlab.train.commands import AUGMENTATIONS, limit_dataset  # noqa: E402


def torch_small_vgg(torch, in_channels=1, num_classes=10, input_size=28, widths=(32, 64)):
    """cnnlab.models.small_vgg written in PyTorch, layer for layer (same state_dict keys)."""
    tnn = torch.nn
    layers, c = [], in_channels
    for w in widths:
        for _ in range(2):
            layers += [tnn.Conv2d(c, w, 3, padding=1, bias=False), tnn.BatchNorm2d(w), tnn.ReLU()]
            c = w
        layers += [tnn.MaxPool2d(2), tnn.Dropout(0.25)]
    side = input_size // (2 ** len(widths))
    layers += [tnn.Flatten(), tnn.Linear(c * side * side, 256, bias=False), tnn.BatchNorm1d(256),
               tnn.ReLU(), tnn.Dropout(0.5), tnn.Linear(256, num_classes)]
    return tnn.Sequential(*layers)


def copy_weights(torch, model, twin) -> None:
    """Load cnnlab ``model``'s parameters and buffers into the torch ``twin``."""
    ours = model.state_dict()
    theirs = {k: v for k, v in twin.state_dict().items() if not k.endswith("num_batches_tracked")}
    if set(ours) != set(theirs):
        raise SystemExit(f"state_dict keys differ: {sorted(set(ours) ^ set(theirs))}")
    for k, v in ours.items():
        if tuple(v.shape) != tuple(theirs[k].shape):
            raise SystemExit(f"{k}: cnnlab {v.shape}, torch {tuple(theirs[k].shape)}")
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.items()}, strict=False)


def torch_optimizer(torch, name, params, lr, wd):
    o = torch.optim
    if name == "adam":
        return o.Adam(params, lr=lr, eps=1e-8, weight_decay=wd)
    if name == "rmsprop":
        return o.RMSprop(params, lr=lr, alpha=0.99, eps=1e-8, weight_decay=wd)
    momentum = 0.0 if name == "sgd" else 0.9
    return o.SGD(params, lr=lr, momentum=momentum, nesterov=name == "nesterov", weight_decay=wd)


def set_threads(n: int):
    """BLAS, cnnlab's convolution pool and torch all use ``n`` threads; returns torch."""
    from cnnlab.conv import set_num_threads
    set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n, user_api="blas")
    except ImportError:
        print("threadpoolctl missing: BLAS keeps its default thread count", file=sys.stderr)
    import torch
    torch.set_num_threads(n)
    return torch


def train_torch(torch, model, args, train_ds, test_ds, mean, std, transform, schedule):
    """Train the twin ``args.torch_epochs`` epochs; -> (train seconds, images, test acc)."""
    opt = torch_optimizer(torch, args.optimizer, model.parameters(), args.lr, args.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = DataLoader(train_ds, args.batch_size, shuffle=True, transform=transform,
                        seed=args.seed, mean=mean, std=std)
    seconds, images, step = 0.0, 0, 0
    for epoch in range(args.torch_epochs):
        model.train()
        loader.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, y in loader:
            for group in opt.param_groups:
                group["lr"] = args.lr * schedule(step)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y))
            loss.backward()
            opt.step()
            step += 1
            images += len(y)
        seconds += time.perf_counter() - t0
        acc = torch_accuracy(torch, model, test_ds, mean, std)
        print(f"torch  epoch {epoch + 1}/{args.torch_epochs}: train {images / seconds:,.0f} img/s, "
              f"test acc {acc:.2%}", flush=True)
    return seconds, images, acc


def torch_accuracy(torch, model, ds, mean, std) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(ds, 500, mean=mean, std=std):
            correct += int((model(torch.from_numpy(x)).argmax(1).numpy() == y).sum())
    return correct / len(ds)


def warm_up(torch, args, x, y, channels):
    """One untimed forward/backward of each framework on a throwaway model (auto-tuning, caches)."""
    m = build_model("small_vgg", in_channels=channels, seed=args.seed)
    m.need_input_grad = False
    crit = nn.CrossEntropyLoss()
    crit(m.forward(x), y)
    m.backward(crit.backward())
    t = torch_small_vgg(torch, channels)
    torch.nn.CrossEntropyLoss()(t(torch.from_numpy(x)), torch.from_numpy(y)).backward()


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help shows the module docstring as written and each option's default."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=_Help)
    ap.add_argument("--epochs", type=int, default=12, help="cnnlab training epochs")
    ap.add_argument("--torch-epochs", type=int, default=1,
                    help="PyTorch training epochs (0: skip PyTorch)")
    ap.add_argument("--limit", type=int, default=None,
                    help="train on N images (a fixed random subset) instead of all 60,000")
    ap.add_argument("--batch-size", type=int, default=128, help="images per mini-batch")
    ap.add_argument("--optimizer", default="adam", help="sgd, momentum, nesterov, rmsprop, adam")
    ap.add_argument("--lr", type=float, default=0.001, help="base learning rate (cosine schedule)")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="L2 weight decay")
    ap.add_argument("--augment", default="shift+flip", choices=sorted(AUGMENTATIONS),
                    help="training augmentation")
    ap.add_argument("--threads", type=int, default=2, help="threads for BLAS, cnnlab and torch")
    ap.add_argument("--seed", type=int, default=0, help="seed of weights, order, augmentation")
    ap.add_argument("--data", default="fashion-mnist", help="data set spec")
    ap.add_argument("--out", default=None, help="run folder for cnnlab (default: a temporary one)")
    args = ap.parse_args()

    torch = set_threads(args.threads)
    train_ds = limit_dataset(load_dataset(args.data, "train"), args.limit)
    test_ds = load_dataset(args.data, "test")
    mean, std = (list(map(float, v)) for v in train_ds.channel_stats())
    channels, size = train_ds.channels, train_ds.images.shape[1]
    transform = AUGMENTATIONS[args.augment][1](size, size)
    steps = args.epochs * -(-len(train_ds) // args.batch_size)
    schedule = make_schedule("cosine", steps)
    print(f"small_vgg on {args.data}: {len(train_ds):,} train / {len(test_ds):,} test images, "
          f"batch {args.batch_size}, {args.optimizer} lr {args.lr:g} cosine, augment "
          f"{args.augment}, {args.threads} threads", flush=True)
    print(versions_line(torch, args.threads))
    print(f"{steady_malloc()}; {load_line()}", flush=True)   # same allocator state for both

    model = build_model("small_vgg", in_channels=channels, seed=args.seed)
    twin = torch_small_vgg(torch, channels)
    copy_weights(torch, model, twin)
    x, y = next(iter(DataLoader(train_ds, args.batch_size, mean=mean, std=std)))
    model.eval(), twin.eval()
    with torch.no_grad():
        gap = float(np.max(np.abs(model.forward(x) - twin(torch.from_numpy(x)).numpy())))
    print(f"same initial network: max |cnnlab - torch| of the eval-mode scores = {gap:.2e}")
    warm_up(torch, args, x, y, channels)

    rows = []
    if args.torch_epochs > 0:
        settle()
        t_sec, t_img, t_acc = train_torch(torch, twin, args, train_ds, test_ds, mean, std,
                                          transform, schedule)
        rows.append(("torch", args.torch_epochs, t_img / t_sec, t_acc))
        settle()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        opt = make_optimizer(args.optimizer, model.parameters(), args.lr, args.weight_decay)
        trainer = Trainer(model, optimizer=opt, schedule=schedule, out_dir=out, seed=args.seed,
                          batch_size=args.batch_size, epochs=args.epochs, transform=transform,
                          mean=mean, std=std, progress=sys.stderr.isatty(),
                          log=lambda line: print("cnnlab " + line, flush=True),
                          config={"model": {"name": "small_vgg", "in_channels": channels,
                                            "num_classes": len(train_ds.classes),
                                            "input_size": size, "seed": args.seed},
                                  "data": {"spec": args.data, "limit": args.limit},
                                  "title": f"small_vgg on {args.data}"})
        metrics = trainer.fit(train_ds, test_ds)
    hist = metrics["epochs"]
    c_rate = len(train_ds) * len(hist) / sum(h["train_seconds"] for h in hist)
    rows.insert(0, ("cnnlab", args.epochs, c_rate, metrics["final"]["test_acc"]))

    print()
    print(f"{'framework':<10} {'epochs':>6} {'train img/s':>12} {'test acc':>9}")
    for name, epochs, rate, acc in rows:
        print(f"{name:<10} {epochs:>6} {rate:>12,.1f} {acc:>9.2%}")
    if args.torch_epochs > 0:
        print(f"torch/cnnlab training throughput: {rows[1][2] / c_rate:.2f}x  "
              f"(cnnlab {c_rate:,.1f} img/s, torch {rows[1][2]:,.1f} img/s)")
    bar = "meets" if metrics["final"]["test_acc"] >= 0.91 else "is below"
    print(f"cnnlab test accuracy {metrics['final']['test_acc']:.2%} after {args.epochs} epochs "
          f"{bar} the 91% bar ({metrics['final']['seconds']:.0f} s in all)")


if __name__ == "__main__":
    main()
