"""Optimizers follow PyTorch's update rules step for step; lr_mult and frozen are honoured."""
import numpy as np
import pytest
import torch

from cnnlab import optim
from cnnlab.errors import CnnlabError
from cnnlab.nn import Parameter

CASES = [
    ("sgd", lambda ps: optim.SGD(ps, lr=0.1), lambda ts: torch.optim.SGD(ts, lr=0.1)),
    ("momentum+wd", lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
     lambda ts: torch.optim.SGD(ts, lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("nesterov", lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
     lambda ts: torch.optim.SGD(ts, lr=0.05, momentum=0.9, nesterov=True)),
    ("rmsprop", lambda ps: optim.RMSprop(ps, lr=0.01), lambda ts: torch.optim.RMSprop(ts, lr=0.01)),
    ("adam+wd", lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1),
     lambda ts: torch.optim.Adam(ts, lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("name,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_updates_match_pytorch(name, ours, theirs):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    ps = [Parameter(a.copy()) for a in init]
    ts = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt, topt = ours(ps), theirs(ts)
    for _ in range(5):
        grads = [rng.standard_normal(a.shape) for a in init]
        for p, t, g in zip(ps, ts, grads):
            p.grad = g.copy()
            t.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, t in zip(ps, ts):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_lr_mult_and_frozen():
    a, b, c = Parameter(np.ones(3)), Parameter(np.ones(3), lr_mult=0.1), Parameter(np.ones(3), frozen=True)
    for p in (a, b, c):
        p.grad = np.ones(3)
    optim.SGD([a, b, c], lr=1.0).step()
    np.testing.assert_allclose(a.data, 0.0)
    np.testing.assert_allclose(b.data, 0.9)
    np.testing.assert_allclose(c.data, 1.0)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    p1, p2 = Parameter(rng.standard_normal(4)), None
    o1 = optim.Adam([p1], lr=0.1)
    for _ in range(3):
        p1.grad = rng.standard_normal(4)
        o1.step()
    p2 = Parameter(p1.data.copy())
    o2 = optim.Adam([p2], lr=0.1)
    o2.load_state_dict(o1.state_dict())
    g = rng.standard_normal(4)
    p1.grad, p2.grad = g, g.copy()
    o1.step()
    o2.step()
    assert np.array_equal(p1.data, p2.data)


def test_bad_arguments_are_clear():
    with pytest.raises(CnnlabError, match="unknown optimizer"):
        optim.make_optimizer("adagrad", [Parameter(np.ones(1))], 0.1)
    with pytest.raises(CnnlabError, match="above 0"):
        optim.SGD([Parameter(np.ones(1))], lr=0)
    p = [Parameter(np.ones(1))]
    for make, words in ((lambda: optim.SGD(p, lr=float("nan")), "learning rate"),
                        (lambda: optim.SGD(p, lr=float("inf")), "learning rate"),
                        (lambda: optim.SGD(p, momentum=-0.5), "momentum"),
                        (lambda: optim.SGD(p, weight_decay=-1), "weight decay"),
                        (lambda: optim.Adam(p, betas=(1.0, 0.999)), "beta1"),
                        (lambda: optim.Adam(p, betas=(0.9, -0.1)), "beta2"),
                        (lambda: optim.Adam(p, eps=-1), "eps"),
                        (lambda: optim.RMSprop(p, alpha=1.5), "alpha")):
        with pytest.raises(CnnlabError, match=words):
            make()


def test_adam_counts_each_parameter_own_steps_like_torch():
    """A parameter frozen (or without a gradient) for the first steps starts its own bias
    correction when it starts training, as torch's per-parameter state step does."""
    import torch
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((6, 2, 3))
    p, q = Parameter(np.ones(3)), Parameter(np.ones(3))
    opt = optim.Adam([p, q], lr=0.1, betas=(0.8, 0.9))
    tp, tq = (torch.ones(3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    topt = torch.optim.Adam([tp, tq], lr=0.1, betas=(0.8, 0.9))
    for t in range(6):
        p.frozen = t < 2
        p.grad, q.grad = grads[t, 0], grads[t, 1]
        opt.step()
        topt.zero_grad()
        tp.grad = None if t < 2 else torch.from_numpy(grads[t, 0].copy())
        tq.grad = torch.from_numpy(grads[t, 1].copy())
        topt.step()
    assert np.allclose(p.data, tp.detach().numpy(), atol=1e-14)
    assert np.allclose(q.data, tq.detach().numpy(), atol=1e-14)
    # the count survives a state round trip; state saved without it gets the global count
    sd = opt.state_dict()
    assert int(sd["state.0.step"]) == 4 and int(sd["state.1.step"]) == 6
    again = optim.Adam([p, q], lr=0.1)
    again.load_state_dict(sd)
    assert again.state[0]["step"] == 4
    old = {k: v for k, v in sd.items() if not k.endswith(".step") and k != "num_params"}
    again.load_state_dict(old)
    assert again.state[0]["step"] == again.state[1]["step"] == 6


def test_optimizer_state_of_another_kind_or_size_is_refused():
    ps = [Parameter(np.ones(2)), Parameter(np.ones(2))]
    adam = optim.Adam(ps)
    for p in ps:
        p.grad = np.ones(2)
    adam.step()
    sgd = optim.SGD(ps, momentum=0.9)
    with pytest.raises(CnnlabError, match="exp_avg.*not SGD's"):
        sgd.load_state_dict(adam.state_dict())
    assert sgd.state == [{}, {}]                  # unchanged
    with pytest.raises(CnnlabError, match="for 2 parameters"):
        optim.Adam(ps[:1]).load_state_dict(adam.state_dict())


def test_schedules():
    assert optim.StepDecay(10, 0.5)(25) == 0.25
    cos = optim.Cosine(100)
    assert cos(0) == 1.0 and abs(cos(50) - 0.5) < 1e-12 and cos(100) == 0.0
    w = optim.make_schedule("cosine", total=110, warmup=10)
    assert w(0) == pytest.approx(0.1) and w(9) == pytest.approx(1.0) and w(10) == pytest.approx(1.0)
    assert w(110) == pytest.approx(0.0)
    # matches torch's StepLR on a toy optimizer
    t = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(t, step_size=3, gamma=0.1)
    ours = optim.StepDecay(3, 0.1)
    for e in range(10):
        assert t.param_groups[0]["lr"] == pytest.approx(ours(e))
        t.step()
        sched.step()


def test_schedules_refuse_nonsense():
    for make, words in ((lambda: optim.StepDecay(10, gamma=-1), "gamma"),
                        (lambda: optim.Cosine(100, min_factor=2), "min_factor"),
                        (lambda: optim.make_schedule("cosine", total=10, warmup=10), "warm-up"),
                        (lambda: optim.make_schedule("cosine", total=10, warmup=-3), "warm-up")):
        with pytest.raises(CnnlabError, match=words):
            make()


def test_a_shared_layer_is_one_set_of_parameters():
    from cnnlab import nn
    lin = nn.Linear(3, 3)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(model.parameters()) == 2 and [n for n, _ in model.named_parameters()] == \
        ["0.weight", "0.bias"]
