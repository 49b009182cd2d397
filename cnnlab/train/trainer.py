"""The training loop: shuffled mini-batches, evaluation each epoch, checkpoints, exact resume.

    trainer = Trainer(model, CrossEntropyLoss(), Adam(model.parameters(), 1e-3),
                      schedule=Cosine(total_steps), out_dir="runs/x", seed=0, epochs=10)
    metrics = trainer.fit(train_ds, test_ds)      # -> the dict written to metrics.json
    loss, acc = trainer.evaluate(test_ds)
    logits = trainer.predict(images)

Data sets are objects with ``images`` (uint8 (N, H, W[, C])) and ``labels`` (N,), such as
:class:`cnnlab.data.ArrayDataset`. Images are scaled to [0, 1] and normalised per channel
with the training set's mean and std (stored in every checkpoint, so evaluation uses the
same numbers).

Determinism. Every source of randomness is derived from ``seed``: epoch e's sample order
and augmentation come from :class:`cnnlab.data.loader.DataLoader` (``SeedSequence(seed,
spawn_key=(e, ...))``, independent of what ran before), and dropout draws from the
trainer's own generator, whose state is saved in each checkpoint. With the model
weights, batch-norm statistics, optimizer state and the convolution algorithms "auto"
picked (they round differently) also in the checkpoint, a run stopped after epoch k and
resumed ends with bit-identical weights to an uninterrupted run.

Each step t (counted over the whole run) uses lr = base_lr * schedule(t). A loss that
becomes NaN or infinite stops the run with :class:`TrainingDiverged`; the last checkpoint
(written at the end of an earlier epoch) is left as it was.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import nn
from ..backend import to_numpy
from ..conv import chooser as conv_chooser
from ..data.imageops import to_float_batch
from ..data.loader import DataLoader
from ..errors import CnnlabError
from ..optim import Adam
from .checkpoint import Checkpoint, checkpoint_names, load_checkpoint, save_checkpoint
from .metrics import RunningMean, correct_count, final_metrics, write_metrics

#: spawn key of the dropout generator (the data loader uses keys (epoch, 0) and (epoch, 1, b))
DROPOUT_STREAM = (2,)


class TrainingDiverged(CnnlabError):
    """The loss became NaN or infinite; the message says where and what to try."""


class Trainer:
    """Train ``model`` with ``loss`` and ``optimizer``; see the module docstring.

    model: a :class:`cnnlab.nn.Module` mapping (N, C, H, W) to scores (N, K).
    loss: ``loss(scores, y) -> float`` with ``loss.backward() -> dscores``
        (default :class:`cnnlab.nn.CrossEntropyLoss`).
    optimizer: a :class:`cnnlab.optim.Optimizer` over ``model.parameters()`` (default Adam,
        lr 1e-3); its lr when the trainer is built is the base learning rate.
    schedule: ``schedule(step) -> lr multiplier`` (cnnlab.optim schedules), or None.
    out_dir: run folder for last/best checkpoints, metrics.json and plot.png (None: none).
    seed: non-negative int fixing shuffling, augmentation and dropout.
    transform: ``t(image, rng)`` augmentation applied to each training image (uint8 HWC).
    normalize: scale by the training set's per-channel mean/std (or ``mean``/``std`` given).
    config: JSON-able description of the run stored in checkpoints and metrics.json
        (the CLI records the model name and arguments and the data spec there).
    progress: show a tqdm bar with the running loss and accuracy (on a terminal only).
    checkpoint_every: write last.<fmt> every this many epochs (and after the last one).
    checkpoint_format: ".npz" or ".safetensors".
    callbacks: objects with an optional ``on_epoch_end(trainer, record)`` method.
    log: ``log(line)`` for the per-epoch summary lines (None: silent).
    num_workers, worker_mode: background workers ("thread" or "process") that build and
        augment the training batches while the model computes (0: built inline); see
        :class:`cnnlab.data.DataLoader`.

    Each epoch's record (``history``, metrics.json, the summary line) includes
    ``data_wait_seconds``, the time the training step spent waiting for its batch (with
    no workers: all of the batch building), and ``data_wait_fraction`` = that / the epoch's
    training time. A fraction near 0 means the data pipeline keeps up with the compute.
    """

    def __init__(self, model, loss=None, optimizer=None, schedule=None, *, out_dir=None,
                 seed: int = 0, batch_size: int = 64, epochs: int = 10, progress: bool = True,
                 checkpoint_every: int = 1, transform=None, normalize: bool = True, mean=None,
                 std=None, config: dict | None = None, num_workers: int = 0,
                 eval_batch_size: int = 500, checkpoint_format: str = ".npz", callbacks=(),
                 log=print, worker_mode: str = "thread"):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise CnnlabError(f"seed must be a non-negative integer, got {seed!r}")
        for name, value in (("batch_size", batch_size), ("epochs", epochs),
                            ("checkpoint_every", checkpoint_every),
                            ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise CnnlabError(f"{name} must be a positive integer, got {value!r}")
        self.model = model
        self.loss = loss if loss is not None else nn.CrossEntropyLoss()
        self.optimizer = optimizer if optimizer is not None else Adam(model.parameters(), 1e-3)
        self.base_lr = self.optimizer.lr
        self.schedule = schedule
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.seed, self.batch_size, self.epochs = int(seed), int(batch_size), int(epochs)
        self.progress, self.checkpoint_every = progress, int(checkpoint_every)
        self.transform, self.normalize = transform, normalize
        self.mean = None if mean is None else [float(v) for v in np.ravel(mean)]
        self.std = None if std is None else [float(v) for v in np.ravel(std)]
        self.config = dict(config or {})
        self.num_workers, self.eval_batch_size = int(num_workers), int(eval_batch_size)
        if worker_mode not in ("thread", "process"):
            raise CnnlabError(f"worker_mode must be 'thread' or 'process', got {worker_mode!r}")
        self.worker_mode = worker_mode
        self.last_name, self.best_name = checkpoint_names(checkpoint_format)
        self.callbacks = list(callbacks)
        self.log = log or (lambda line: None)

        self.rng = np.random.default_rng(np.random.SeedSequence(self.seed,
                                                                spawn_key=DROPOUT_STREAM))
        self.model.set_rng(self.rng)
        self.model.need_input_grad = False          # nothing needs the gradient of the images
        self.epoch = 0                              # completed epochs
        self.step = 0                               # optimizer steps taken
        self.history: list[dict] = []
        self.elapsed = 0.0                          # seconds spent in fit, over all sessions
        self.stopped: str | None = None
        self.last_saved_epoch = 0       # the epoch of the last last.* this trainer wrote

    # -- paths ------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path | None:
        return self.out_dir / self.last_name if self.out_dir else None

    @property
    def best_path(self) -> Path | None:
        return self.out_dir / self.best_name if self.out_dir else None

    # -- training ---------------------------------------------------------------------------
    def fit(self, train_ds, test_ds=None) -> dict:
        """Train from epoch ``self.epoch`` (0, or where a restored checkpoint ended) to
        ``self.epochs``; evaluate on ``test_ds`` after each epoch. Returns the metrics dict
        (also written to ``out_dir/metrics.json``, with ``plot.png``)."""
        if len(train_ds.labels) == 0:
            raise CnnlabError("the training set is empty; check --data and --limit")
        if self.normalize and self.mean is None:
            self.mean, self.std = _channel_stats(train_ds)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        loader = DataLoader(train_ds, self.batch_size, shuffle=True, transform=self.transform,
                            seed=self.seed, num_workers=self.num_workers, mean=self.mean,
                            std=self.std, mode=self.worker_mode)
        started = time.perf_counter()
        session_start = self.elapsed
        try:
            for epoch in range(self.epoch, self.epochs):
                t0 = time.perf_counter()
                waited = loader.wait_seconds
                train_loss, train_acc = self._train_epoch(loader, epoch)
                train_seconds = time.perf_counter() - t0
                wait_seconds = loader.wait_seconds - waited
                test_loss, test_acc = (self.evaluate(test_ds) if test_ds is not None
                                       else (float("nan"), float("nan")))
                seconds = time.perf_counter() - t0
                self.elapsed = session_start + time.perf_counter() - started
                record = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                          "test_loss": test_loss, "test_acc": test_acc,
                          "lr": self.optimizer.lr, "train_seconds": round(train_seconds, 3),
                          "seconds": round(seconds, 3),
                          "data_wait_seconds": round(wait_seconds, 3),
                          "data_wait_fraction": round(wait_seconds / max(train_seconds, 1e-9), 4)}
                improved = self._is_best(record)
                self.history.append(record)
                self.epoch = epoch + 1
                self._save_checkpoints(improved, final=self.epoch == self.epochs)
                self._write_metrics(plot=False)
                self.log(_summary(record, self.epochs))
                for cb in self.callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(self, record)
        except KeyboardInterrupt:       # Ctrl-C: the metrics and plot of the epochs done
            saved = self.last_saved_epoch
            self.stopped = (f"interrupted after {self.epoch} finished epoch(s); " +
                            (f"the last checkpoint is from epoch {saved}" if saved
                             else "no last checkpoint was written yet"))
            if self.out_dir is not None:
                self.elapsed = session_start + time.perf_counter() - started
                self._write_metrics(plot=True)
            raise
        finally:
            loader.close()
            self.elapsed = session_start + time.perf_counter() - started
        return self._write_metrics(plot=True)

    def _train_epoch(self, loader, epoch: int) -> tuple[float, float]:
        self.model.train()
        loader.set_epoch(epoch)
        running = RunningMean()
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch",
                   leave=False, disable=None if self.progress else True, file=sys.stderr,
                   mininterval=0.5, dynamic_ncols=True)
        # overflow shows up as a non-finite loss, reported by _diverged with what to do
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), bar:
            xp = self.model.array_module()
            for b, (x, y) in enumerate(loader):
                if self.schedule is not None:
                    self.optimizer.lr = self.base_lr * self.schedule(self.step)
                x, y = xp.asarray(x), xp.asarray(y)     # to the model's device (a no-op on CPU)
                scores = self.model.forward(x)
                loss = self.loss(scores, y)
                if not math.isfinite(loss):
                    self._diverged(loss, epoch, b)
                self.model.zero_grad()
                self.model.backward(self.loss.backward())
                self.optimizer.step()
                self.step += 1
                running.update(loss, correct_count(scores, y), len(y))
                bar.update(1)
                bar.set_postfix(loss=f"{running.loss:.4f}", acc=f"{running.acc:.2%}", refresh=False)
        return running.loss, running.acc

    def _diverged(self, loss: float, epoch: int, batch: int) -> None:
        last = self.last_path
        if last is not None and last.is_file():
            kept = f"Last good checkpoint: {last}"
        else:
            kept = "No checkpoint was written yet"
        self.stopped = (f"loss became {loss} at epoch {epoch + 1} batch {batch + 1}; stopped. "
                        f"{kept}. Try a lower --lr (it was {self.base_lr:g}).")
        if self.out_dir is not None:
            self._write_metrics(plot=True)
        raise TrainingDiverged(self.stopped)

    def _is_best(self, record: dict) -> bool:
        key, sign = (("test_acc", 1) if math.isfinite(record["test_acc"]) else ("train_loss", -1))
        previous = [sign * h[key] for h in self.history if math.isfinite(h[key])]
        return not previous or sign * record[key] > max(previous)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, ds) -> tuple[float, float]:
        """(mean loss, accuracy in [0, 1]) of the model on ``ds``, in eval mode."""
        if len(ds.labels) == 0:
            raise CnnlabError("the evaluation set is empty")
        self.model.eval()
        total = RunningMean()
        loader = DataLoader(ds, self.eval_batch_size, shuffle=False, mean=self.mean, std=self.std)
        xp = self.model.array_module()
        for x, y in loader:
            x, y = xp.asarray(x), xp.asarray(y)
            scores = self.model.forward(x)
            total.update(self.loss(scores, y), correct_count(scores, y), len(y))
        return total.loss, total.acc

    def predict(self, x, batch_size: int | None = None) -> np.ndarray:
        """Scores (N, K) for ``x`` in eval mode, computed in batches.

        x: a data set (``.images``), or uint8 images (N, H, W[, C]) — both scaled and
        normalised like the training data — or float32 (N, C, H, W) used as given.
        """
        images = getattr(x, "images", x)
        bs = batch_size or self.eval_batch_size
        self.model.eval()
        xp = self.model.array_module()
        out = []
        for i in range(0, len(images), bs):
            chunk = to_numpy(images[i:i + bs])
            if chunk.dtype == np.uint8:
                chunk = to_float_batch(chunk, self.mean, self.std)
            out.append(to_numpy(self.model.forward(xp.asarray(chunk))))
        if not out:
            raise CnnlabError("predict got no images")
        return np.concatenate(out)

    # -- checkpoints and files --------------------------------------------------------------
    def state_info(self) -> dict:
        """Everything besides the arrays that resuming needs (stored in checkpoints)."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
                "epochs": self.epochs, "batch_size": self.batch_size, "base_lr": self.base_lr,
                "normalization": {"mean": self.mean, "std": self.std},
                "history": self.history, "elapsed_seconds": self.elapsed,
                "rng_state": _jsonable_state(self.rng.bit_generator.state),
                "conv_algos": _conv_choices(), "config": self.config}

    def save(self, path) -> Path:
        """Write a checkpoint of the current state to ``path`` (.npz or .safetensors)."""
        return save_checkpoint(path, self.model, self.optimizer, self.state_info())

    def restore(self, checkpoint) -> Checkpoint:
        """Load model, optimizer, generator state, history and position from a checkpoint
        (a path, a run folder or a :class:`Checkpoint`); :meth:`fit` then continues it."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        info = ckpt.info
        if "seed" in info and int(info["seed"]) != self.seed:
            raise CnnlabError(f"checkpoint {ckpt.path} was trained with seed {info['seed']}, "
                              f"this trainer has seed {self.seed}; resume with the same seed")
        self.model.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        norm = info.get("normalization") or {}
        self.mean, self.std = norm.get("mean"), norm.get("std")
        self.epoch = int(info.get("epoch", 0))
        self.last_saved_epoch = self.epoch
        self.step = int(info.get("step", 0))
        self.history = list(info.get("history", []))
        self.elapsed = float(info.get("elapsed_seconds", 0.0))
        if info.get("rng_state"):
            self.rng.bit_generator.state = info["rng_state"]
        _restore_conv_choices(info.get("conv_algos") or {})
        return ckpt

    def _save_checkpoints(self, improved: bool, final: bool) -> None:
        if self.out_dir is None:
            return
        if improved:
            self.save(self.best_path)
        if final or self.epoch % self.checkpoint_every == 0:
            self.save(self.last_path)
            self.last_saved_epoch = self.epoch

    def metrics(self) -> dict:
        """The metrics.json content for the run so far."""
        return {"run": self._run_info(), "epochs": self.history,
                "final": final_metrics(self.history, self.elapsed), "stopped": self.stopped}

    def _run_info(self) -> dict:
        return {**self.config, "seed": self.seed, "epochs": self.epochs,
                "batch_size": self.batch_size, "base_lr": self.base_lr,
                "normalization": {"mean": self.mean, "std": self.std}}

    def _write_metrics(self, plot: bool) -> dict:
        if self.out_dir is None:
            return self.metrics()
        data = write_metrics(self.out_dir / "metrics.json", self._run_info(), self.history,
                             self.elapsed, self.stopped)
        if plot and self.history:
            from .plot import plot_history
            plot_history(self.history, self.out_dir / "plot.png",
                         title=str(self.config.get("title", "")))
        return data


def _channel_stats(ds) -> tuple[list[float], list[float]]:
    if hasattr(ds, "channel_stats"):
        mean, std = ds.channel_stats()
    else:
        x = np.asarray(ds.images, dtype=np.float64) / 255
        axes = tuple(range(x.ndim - 1)) if x.ndim == 4 else None
        mean, std = x.mean(axis=axes), x.std(axis=axes)
    std = np.where(np.asarray(std) > 0, std, 1.0)
    return [float(v) for v in np.ravel(mean)], [float(v) for v in np.ravel(std)]


def _conv_choices() -> dict:
    """The convolution algorithms "auto" picked so far, by geometry key."""
    chooser = getattr(conv_chooser, "CHOOSER", None)
    if chooser is None:
        return {}
    return {key: choice.algo for key, choice in chooser.choices.items()}


def _restore_conv_choices(saved: dict) -> None:
    """Make "auto" pick what it picked before the checkpoint: the algorithms round
    differently, and a resumed run must repeat the original's arithmetic exactly."""
    chooser = getattr(conv_chooser, "CHOOSER", None)
    if chooser is None:
        return
    from ..conv import ALGORITHMS
    from ..conv.step import StepPlan
    for key, algo in saved.items():
        known = (StepPlan.from_code(algo) is not None if key.startswith("step|")
                 else algo in ALGORITHMS)
        if known:                   # a training step's plan, or one pass's algorithm
            chooser.choices[key] = conv_chooser.Choice(algo, "checkpoint")


def _jsonable_state(state):
    if isinstance(state, dict):
        return {k: _jsonable_state(v) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        return state.tolist()
    if isinstance(state, np.integer):
        return int(state)
    return state


def _summary(record: dict, epochs: int) -> str:
    line = (f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  "
            f"train loss {record['train_loss']:.4f} acc {record['train_acc']:.2%}")
    if math.isfinite(record["test_acc"]):
        line += f"  test loss {record['test_loss']:.4f} acc {record['test_acc']:.2%}"
    line += f"  lr {record['lr']:.3g}  {record['seconds']:.1f}s"
    if "data_wait_fraction" in record:
        line += f"  data wait {record['data_wait_fraction']:.1%}"
    return line
