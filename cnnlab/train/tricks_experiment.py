"""The training-tricks experiments of docs/tricks.md (``cnnlab experiment augmentation``).

Every run trains LeNet (:func:`cnnlab.models.small.lenet`) with the recipe of ``cnnlab
train`` (Adam, lr 2e-3, cosine schedule, batch 64) on a small fixed training set, for
each seed in ``seeds`` (the seed sets the initial weights, the batch order, the
augmentation draws and dropout; the training images are the same for every seed, so the
seeds' models can be ensembled fairly). Parts:

digits    1,000 digits of mnist-5k (100 per class, drawn once), tested on its 1,000
          held-out digits: no augmentation vs random shifts vs the affine warp of
          ``cnnlab train`` (shifts, rotations, stretches).
fashion   2,000 Fashion-MNIST training images (200 per class), tested on the official
          10,000: no augmentation vs shifts, shifts + horizontal flips, the affine warp.
dropout   the 1,000 digits without augmentation: LeNet without dropout, with dropout
          (p = 0.5 after fc1) and with DropConnect (p = 0.5 on fc2's weights).

For every trained arm the same runs also give: the gain of 10-crop test-time augmentation
(crops of the padded test image: the 4 two-pixel corner shifts, the centre and their
flips; flips only where the arm trains with flips), and the gain of averaging the
seeds' models (an ensemble of ``len(seeds)`` models against the mean single model).
Accuracies are fractions; means and standard deviations are over seeds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import CnnlabError
from .metrics import mean_std, pct_mean_std

PARTS = ("digits", "fashion", "dropout")


@dataclass
class TricksConfig:
    seeds: tuple = (0, 1, 2)
    digits_per_class: int = 100          # 1,000 digits
    fashion_per_class: int = 200         # 2,000 Fashion-MNIST images
    digits_epochs: int = 100         # 1,600 steps: the step budget of `cnnlab train`
    fashion_epochs: int = 150        # augmentation needs the longer schedule here (docs/tricks.md)
    batch_size: int = 64
    lr: float = 2e-3
    data_seed: int = 0                   # which training images
    test_limit: int | None = None        # evaluate on N test images, every class (smoke tests)

    @classmethod
    def quick(cls) -> "TricksConfig":
        """Tiny settings for smoke tests (seconds, meaningless numbers)."""
        return cls(seeds=(0, 1), digits_per_class=5, fashion_per_class=5, digits_epochs=1,
                   fashion_epochs=1, test_limit=100)


#: part -> (data set, per-class size attribute, epochs attribute, [(arm, model, augmentation)])
ARMS = {
    "digits": ("mnist-5k", "digits_per_class", "digits_epochs",
               [("none", "lenet", "none"), ("shift", "lenet", "shift"),
                ("affine", "lenet", "affine")]),
    "fashion": ("fashion-mnist", "fashion_per_class", "fashion_epochs",
                [("none", "lenet", "none"), ("shift", "lenet", "shift"),
                 ("shift+flip", "lenet", "shift+flip"), ("affine", "lenet", "affine")]),
    "dropout": ("mnist-5k", "digits_per_class", "digits_epochs",
                [("no dropout", "lenet_plain", "none"), ("dropout 0.5", "lenet_dropout", "none"),
                 ("DropConnect 0.5", "lenet_dropconnect", "none")]),
}


def _data(part: str, cfg: TricksConfig):
    from ..data import load_dataset
    from ..data.dataset import sample_per_class
    spec, size_attr = ARMS[part][0], ARMS[part][1]
    train = load_dataset(spec, "train")
    test = load_dataset(spec, "test")
    train = train.subset(sample_per_class(train.labels, getattr(cfg, size_attr), cfg.data_seed))
    if cfg.test_limit is not None and cfg.test_limit < len(test):
        # a fixed random subset: the first N of a sorted test split can be a single class
        keep = np.random.default_rng(cfg.data_seed).permutation(len(test))[:cfg.test_limit]
        test = test.subset(np.sort(keep))
    return train, test


def train_one(model_name: str, augment: str, train, epochs: int, seed: int, cfg: TricksConfig):
    """Train one LeNet variant; returns (trainer, seconds)."""
    from ..models import build_model
    from ..optim import make_optimizer, make_schedule
    from .commands import AUGMENTATIONS
    from .trainer import Trainer
    model = build_model(model_name, in_channels=train.channels, num_classes=len(train.classes),
                        input_size=train.images.shape[1], seed=seed)
    optimizer = make_optimizer("adam", model.parameters(), cfg.lr, 0.0)
    steps = epochs * -(-len(train) // cfg.batch_size)
    trainer = Trainer(model, optimizer=optimizer, schedule=make_schedule("cosine", steps, 0),
                      seed=seed, batch_size=cfg.batch_size, epochs=epochs, progress=False,
                      log=None, transform=AUGMENTATIONS[augment][1](*train.images.shape[1:3]))
    t0 = time.perf_counter()
    trainer.fit(train)
    return trainer, time.perf_counter() - t0


def _probabilities(trainer, test, tta: str, flips: bool) -> np.ndarray:
    """Class probabilities of the test images; 10-crop without the mirrored crops when the
    arm does not train with flips (digits are not mirror-symmetric)."""
    from .evaluation import predict_proba
    return predict_proba(trainer.model, test.images, mean=trainer.mean, std=trainer.std,
                         tta=tta, pad=2, flips=flips)


def run_part(part: str, cfg: TricksConfig, log=print) -> dict:
    """Train every arm of ``part`` for every seed; accuracies plain, with TTA, ensembled."""
    from .evaluation import accuracy, ensemble_proba
    if part not in ARMS:
        raise CnnlabError(f"unknown part {part!r}; choose from {', '.join(PARTS)}")
    train, test = _data(part, cfg)
    epochs = getattr(cfg, ARMS[part][2])
    log(f"{part}: {len(train):,} training images of {ARMS[part][0]}, {len(test):,} test images, "
        f"{epochs} epochs, seeds {list(cfg.seeds)}")
    out = {"data": ARMS[part][0], "train_images": len(train), "test_images": len(test),
           "epochs": epochs, "arms": {}}
    for arm, model_name, augment in ARMS[part][3]:
        flips = "flip" in augment
        r = {"model": model_name, "augment": augment, "acc": [], "acc_tta": [], "seconds": []}
        plain, tta = [], []
        for seed in cfg.seeds:
            trainer, seconds = train_one(model_name, augment, train, epochs, seed, cfg)
            p = _probabilities(trainer, test, "none", flips)
            q = _probabilities(trainer, test, "10crop", flips)
            plain.append(p)
            tta.append(q)
            r["acc"].append(accuracy(p, test.labels))
            r["acc_tta"].append(accuracy(q, test.labels))
            r["seconds"].append(round(seconds, 1))
            log(f"  {arm:<16} seed {seed}: {r['acc'][-1]:.2%}, with TTA {r['acc_tta'][-1]:.2%} "
                f"({seconds:.0f} s)")
        if len(cfg.seeds) > 1:
            r["ensemble"] = accuracy(ensemble_proba(plain), test.labels)
            r["ensemble_tta"] = accuracy(ensemble_proba(tta), test.labels)
        out["arms"][arm] = r
    return out


def run_tricks(cfg: TricksConfig, parts=PARTS, log=print) -> dict:
    """Run ``parts``; returns {part: results} and logs each part's table."""
    results = {}
    for part in parts:
        results[part] = run_part(part, cfg, log)
        log(part_table(results[part]))
    return results


def part_table(r: dict) -> str:
    """The Markdown table of one part: accuracy ± std, TTA and ensemble gains."""
    arms = r["arms"]
    baseline = next(iter(arms))
    base = mean_std(arms[baseline]["acc"])[0]
    rows = ["| arm | test accuracy | vs " + baseline + " (points) | with 10-crop TTA | "
            "TTA gain | ensemble of seeds | ensemble gain |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for arm, a in arms.items():
        m = mean_std(a["acc"])[0]
        t = mean_std(a["acc_tta"])[0]
        ens = a.get("ensemble")
        rows.append(f"| {arm} | {pct_mean_std(a['acc'])} | {100 * (m - base):+.1f} | "
                    f"{pct_mean_std(a['acc_tta'])} | {100 * (t - m):+.1f} | "
                    + (f"{100 * ens:.1f} | {100 * (ens - m):+.1f} |" if ens is not None
                       else "n/a | n/a |"))
    return "\n".join(rows)
