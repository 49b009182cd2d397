"""A layer's cache of prepared weights: transforms of a frozen weight, computed once.

Winograd's forward and data gradient start with U = G w G^T (alpha^2 O C floats), FFT's
with the kernel spectra; for a layer whose weight does not change (frozen: neural style,
fixed feature extractors) they are the same on every call. A :class:`WeightCache` keeps
them, one per (algorithm, ``prepared_key``): for Winograd one U per layer serves the
forward and the data gradient at every image size. ``held(g, pass_)`` names the
algorithms already prepared for a pass, which the chooser prefers when it measured them
nearly as fast as its pick (``chooser.REUSE_SLACK``), so a layer rarely holds two.

Validity, checked on every ``get`` at the cost of an identity test:

* the cache belongs to one array object, the weight it was prepared from. A weight given
  new data (``param.data = ...``, ``load_state_dict``, ``astype``, ``to``) is a different
  object: the cache is dropped and rebuilt from the new one;
* the owner (``nn.Conv2d``) asks only while its weight is frozen and clears the cache as
  soon as it sees it trainable;
* while the cache holds anything, the weight array is made read-only
  (``flags.writeable = False``), so an in-place edit (``w *= 2``, an optimizer step after
  ``unfreeze()`` without a forward pass in between) raises numpy's "read-only" ValueError
  instead of silently running on stale transforms. ``clear()`` gives writeability back
  (it is restored only if it was writeable before). Edit a frozen layer's weight by
  assigning a new array, or call ``clear_weight_cache()`` on the layer first.

A trainable layer's training steps (:mod:`cnnlab.conv.step`) keep their last U in
``step_u``, only so that the next step can write its U into the same memory.

Memory: ``nbytes``; for Winograd F(m x m) (m + 2)^2 / 9 times the weight (4x for F4,
1.8x for F2) for both passes, for FFT 4 S_H (S_W/2 + 1) / (KH KW) times per pass (only
where that fits ``fft.BLOCK_BYTES``). The cache lives on its module: no global state.
Copies of a module (``copy.deepcopy``, pickling) start with an empty cache. Two layers
sharing one weight array each keep their own cache, and the read-only guard lasts only
until the first of them lets go.
"""
from __future__ import annotations

import numpy as np

from .algorithm import ALGORITHMS


class WeightCache:
    """Prepared weights of one weight array: ``get(algorithm, w, g, pass_)``."""

    def __init__(self):
        self._w = None              # the array everything here was prepared from
        self._entries = {}          # (algorithm name, prepared_key) -> prepared object
        self._restore = False       # we made self._w read-only: make it writeable again
        self.step_u = None          # a trainable layer's last training-step U: its memory is
        #                             reused by the next step (cnnlab.conv.step), never read

    def get(self, algorithm, w, g, pass_):
        """``algorithm.prepare(w, g, pass_)``, computed on the first call for its key and
        kept; None where the algorithm prepares nothing (the caller then passes nothing)."""
        key = algorithm.prepared_key(g, pass_)
        if key is None or type(w) is not np.ndarray:
            return None
        if w is not self._w:
            self.clear()
        key = (algorithm.name, key)
        hit = self._entries.get(key)
        if hit is None:
            hit = algorithm.prepare(w, g, pass_)
            if hit is None:
                return None
            if not self._entries:
                self._w, self._restore = w, bool(w.flags.writeable)
                w.flags.writeable = False
            self._entries[key] = hit
        return hit

    def held(self, g, pass_) -> tuple[str, ...]:
        """Names of the algorithms whose prepared weights for (g, pass_) are here already."""
        return tuple(name for name, key in self._entries
                     if ALGORITHMS[name].prepared_key(g, pass_) == key)

    def clear(self) -> None:
        """Drop everything and give the weight its writeability back."""
        if self._w is not None and self._restore:
            try:
                self._w.flags.writeable = True
            except ValueError:      # pragma: no cover - its base was made read-only since
                pass
        self._w, self._entries, self._restore = None, {}, False
        self.step_u = None

    @property
    def array(self):
        """The weight array the entries were prepared from (None when empty)."""
        return self._w

    @property
    def nbytes(self) -> int:
        """Memory held by the prepared weights (and the training-step U buffer)."""
        return sum(a.nbytes for entry in (*self._entries.values(), self.step_u)
                   for a in _arrays(entry))

    def __len__(self) -> int:
        return len(self._entries)

    def __reduce__(self):
        return (WeightCache, ())    # copies and pickles start empty

    def __repr__(self) -> str:
        return f"WeightCache({len(self)} entries, {self.nbytes / 2**20:.1f} MB)"


def _arrays(obj):
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _arrays(item)
