"""Whole-model parity: a LeNet-style net's loss and every parameter gradient equal PyTorch's
for the same weights and input (float64, relative error <= 1e-6)."""
import numpy as np
import torch
import torch.nn as tnn

from cnnlab import nn
from harness import rel_error


def lenet_pair(seed=0):
    rng = np.random.default_rng(seed)
    ours = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2, rng=rng), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, bias=False, rng=rng), nn.BatchNorm2d(16), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120, rng=rng), nn.Tanh(), nn.Linear(120, 84, rng=rng),
        nn.LeakyReLU(0.05), nn.Linear(84, 10, rng=rng)).astype(np.float64)
    theirs = tnn.Sequential(
        tnn.Conv2d(1, 6, 5, padding=2), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(6, 16, 5, bias=False), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.AvgPool2d(2),
        tnn.Flatten(), tnn.Linear(400, 120), tnn.Tanh(), tnn.Linear(120, 84),
        tnn.LeakyReLU(0.05), tnn.Linear(84, 10)).double()
    theirs.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()}
                           | {"4.num_batches_tracked": torch.tensor(0)})
    return ours, theirs


def test_lenet_loss_and_every_gradient_match_pytorch():
    ours, theirs = lenet_pair()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 1, 28, 28))
    y = rng.integers(0, 10, 8)

    crit = nn.CrossEntropyLoss()
    loss = crit(ours.forward(x), y)
    ours.zero_grad()
    ours.backward(crit.backward())

    t_loss = tnn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y))
    t_loss.backward()

    assert abs(loss - t_loss.item()) / abs(t_loss.item()) <= 1e-6
    t_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        err = rel_error(p.grad, t_params[name].grad.numpy())
        assert err <= 1e-6, f"{name}: {err:.2e}"
    # running statistics follow the same update rule
    t_state = theirs.state_dict()
    for name in ("4.running_mean", "4.running_var"):
        assert rel_error(ours.state_dict()[name], t_state[name].numpy()) <= 1e-6


def test_eval_mode_outputs_match_pytorch():
    ours, theirs = lenet_pair(3)
    x = np.random.default_rng(2).standard_normal((4, 1, 28, 28))
    ours.eval()
    theirs.eval()
    assert rel_error(ours.forward(x), theirs(torch.tensor(x)).detach().numpy()) <= 1e-9


def test_residual_and_concat_match_pytorch():
    rng = np.random.default_rng(5)
    body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, rng=rng), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, rng=rng))
    block = nn.Sequential(nn.Residual(body), nn.ReLU(),
                          nn.Concat(nn.Conv2d(4, 2, 1, rng=rng), nn.MaxPool2d(3, 1, 1))).astype(np.float64)
    w = {k: torch.tensor(np.asarray(v)) for k, v in block.state_dict().items()}

    def torch_block(x):
        h = torch.conv2d(x, w["0.body.0.weight"], w["0.body.0.bias"], padding=1).relu()
        h = torch.conv2d(h, w["0.body.2.weight"], w["0.body.2.bias"], padding=1)
        h = (h + x).relu()
        return torch.cat([torch.conv2d(h, w["2.0.weight"], w["2.0.bias"]),
                          tnn.functional.max_pool2d(h, 3, 1, 1)], 1)

    x = rng.standard_normal((2, 4, 6, 6))
    dy = rng.standard_normal((2, 6, 6, 6))
    out = block.forward(x)
    dx = block.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    for v in w.values():
        v.requires_grad_(True)
    ot = torch_block(xt)
    ot.backward(torch.tensor(dy))
    assert rel_error(out, ot.detach().numpy()) <= 1e-10
    assert rel_error(dx, xt.grad.numpy()) <= 1e-10
    for name, p in block.named_parameters():
        assert rel_error(p.grad, w[name].grad.numpy()) <= 1e-10, name
