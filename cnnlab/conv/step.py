"""A training step of one convolution: forward, data gradient, weight gradient, same weight.

Run apart, the three passes each derive something the others derive again: Winograd's
forward and data gradient both transform the weight (U = G w G^T), its forward and weight
gradient both transform the input into tiles (V = B^T d B). In a step the forward can keep
them for the backward:

    share_u   the data gradient runs on the forward's U         (saves one weight transform)
    keep_v    the weight gradient runs on the forward's V       (saves one input transform;
              for im2col: on the forward's column matrices, saving their construction)

A :class:`StepPlan` says which algorithm runs each pass and what is kept;
``Chooser.select_step`` picks one by timing whole steps. ``step_forward`` /
``step_backward`` run it (``cnnlab.functional.conv2d_forward(..., for_backward=True)`` and
``conv2d_backward`` are built on them). Memory kept from forward to backward: U is
(alpha^2, O, C/groups), 4x the weight for F(4x4) and 1.8x for F(2x2); V is
(alpha^2, C, tiles), 2.25x the input for F(4x4) and 4x for F(2x2); im2col's columns are
KH*KW times the input (stride 1).
"""
from __future__ import annotations

from dataclasses import dataclass

from .algorithm import ALGORITHMS


@dataclass
class StepPlan:
    """A step's algorithms (a pass not needed is None) and what its forward keeps."""

    forward: object
    backward_data: object = None
    backward_weight: object = None
    share_u: bool = False       # the data gradient runs on the forward's prepared weight
    keep_v: bool = False        # the weight gradient runs on the forward's input transform

    def describe(self) -> str:
        """E.g. "winograd4 + winograd4 (U shared) + im2col"."""
        parts = [self.forward.name]
        if self.backward_data is not None:
            parts.append(self.backward_data.name + (" (U shared)" if self.share_u else ""))
        if self.backward_weight is not None:
            kept = getattr(self.forward, "saved_name", "input")
            parts.append(self.backward_weight.name + (f" ({kept} kept)" if self.keep_v else ""))
        return " + ".join(parts)

    def code(self) -> str:
        """A string that ``from_code`` turns back into this plan (the chooser files it)."""
        return ",".join([self.forward.name,
                         self.backward_data.name if self.backward_data is not None else "-",
                         self.backward_weight.name if self.backward_weight is not None else "-",
                         "U" if self.share_u else "", "V" if self.keep_v else ""])

    @classmethod
    def from_code(cls, code: str):
        """The plan of ``code()``, or None if it is not one (or names an unknown algorithm)."""
        if not isinstance(code, str):
            return None
        try:
            f, b, w, u, v = code.split(",")
            get = (lambda n: None if n == "-" else ALGORITHMS[n])
            return cls(ALGORITHMS[f], get(b), get(w), u == "U", v == "V")
        except (ValueError, KeyError):
            return None

    def supports(self, g) -> bool:
        """Whether every algorithm can run its pass on ``g``."""
        return all(a is None or a.supports(g, p) is None for a, p in
                   ((self.forward, "forward"), (self.backward_data, "backward_data"),
                    (self.backward_weight, "backward_weight")))


@dataclass
class StepState:
    """What ``step_forward`` leaves for ``step_backward``."""

    plan: StepPlan
    u: object = None            # the forward's prepared weight (share_u)
    saved: dict | None = None   # the forward's input transform (keep_v)


def step_forward(plan: StepPlan, x, w, g, reuse=None):
    """y, StepState: the forward of ``plan``; ``reuse``: an earlier step's ``state.u`` whose
    memory this one may overwrite."""
    state = StepState(plan)
    if plan.share_u:
        if getattr(plan.forward, "prepare_reuses", False):
            state.u = plan.forward.prepare(w, g, "forward", reuse=reuse)
        else:                       # an algorithm written to prepare(w, g, pass_)
            state.u = plan.forward.prepare(w, g, "forward")
    if plan.keep_v:
        state.saved = {}
        y = plan.forward.forward(x, w, g, prepared=state.u, save=state.saved)
    else:
        y = plan.forward.run("forward", x, w, g, prepared=state.u)
    return y, state


def step_backward(state: StepState, dy, x, w, g, need_dx=True, need_dw=True):
    """(dx, dw) of ``state``'s plan (None for a gradient not needed or not planned)."""
    plan = state.plan
    dx = dw = None
    if need_dx and plan.backward_data is not None:
        dx = plan.backward_data.run("backward_data", dy, w, g,
                                    prepared=state.u if plan.share_u else None)
    if need_dw and plan.backward_weight is not None:
        if plan.keep_v:
            dw = plan.backward_weight.backward_weight(dy, x, g, saved=state.saved)
        else:
            dw = plan.backward_weight.backward_weight(dy, x, g)
    return dx, dw
