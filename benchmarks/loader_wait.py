"""How long training waits for data: small_vgg on Fashion-MNIST with augmentation, per
compute-thread count and data-worker setting (docs/tricks.md, "Data pipeline").

    python benchmarks/loader_wait.py [N_IMAGES] [AUGMENTATIONS]
    python benchmarks/loader_wait.py 4000 shift+flip,affine

For each augmentation (names of ``cnnlab train --augment``), each number of compute
threads (1, 2: BLAS and cnnlab's convolution pool) and each loader setting (inline, 1 or 2
worker threads, 1 worker process), trains one epoch of small_vgg (batch 64) on the first
N_IMAGES training images and prints one JSON line: the epoch's training seconds, the seconds
the training step waited for its batch (``data_wait_seconds`` of the trainer's record) and
their ratio. An untimed epoch first lets the convolution chooser measure its picks.
"""
import sys, json, time
import numpy as np
from cnnlab.data import load_dataset
from cnnlab.models import build_model
from cnnlab.optim import make_optimizer, make_schedule
from cnnlab.train import Trainer
from cnnlab.train.commands import AUGMENTATIONS, threads, use_conv_cache

n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
augs = sys.argv[2] if len(sys.argv) > 2 else "shift+flip,affine"
use_conv_cache()
train = load_dataset("fashion-mnist", "train")
train = train.subset(np.arange(n))
rows = []
for nthreads in (1, 2):                      # untimed: the conv chooser measures its picks
    with threads(nthreads):
        m = build_model("small_vgg", seed=0)
        Trainer(m, optimizer=make_optimizer("adam", m.parameters(), 1e-3, 0.0), batch_size=64,
                epochs=1, progress=False, log=None).fit(train.subset(np.arange(n % 64 + 640)))
for aug in augs.split(","):
    for nthreads in (1, 2):
        for workers, mode in ((0, "thread"), (1, "thread"), (2, "thread"), (1, "process")):
            with threads(nthreads):
                model = build_model("small_vgg", seed=0)
                opt = make_optimizer("adam", model.parameters(), 1e-3, 0.0)
                tr = Trainer(model, optimizer=opt, schedule=make_schedule("cosine", 100, 0),
                             batch_size=64, epochs=1, progress=False, log=None,
                             transform=AUGMENTATIONS[aug][1](28, 28), num_workers=workers,
                             worker_mode=mode)
                rec = tr.fit(train)["epochs"][0]
            r = dict(aug=aug, threads=nthreads, workers=workers, mode=mode,
                     train_s=rec["train_seconds"], wait_s=rec["data_wait_seconds"],
                     wait=rec["data_wait_fraction"], img_s=round(n / rec["train_seconds"], 1))
            rows.append(r); print(json.dumps(r), flush=True)
