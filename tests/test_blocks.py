"""Whole blocks through the shared harness: ResNet basic/bottleneck blocks, Inception with
factorized convolutions, NiN mlpconv, VGG-BN features, small ResNets; in train mode (batch
statistics) and eval mode (running statistics), float64.

Each block becomes one OpCase whose inputs are x and every parameter, so check_gradients
compares the block's backward with numerical derivatives and check_against_torch compares
output and all gradients with the same block rebuilt in PyTorch (tests/torch_models.py).
"""
import numpy as np
import pytest
import torch
from torch.func import functional_call

from cnnlab import nn
from cnnlab.models.inception import InceptionBlock, factorized_conv, inception_net
from cnnlab.models.nin import mlpconv, nin
from cnnlab.models.registry import small_filters_net
from cnnlab.models.resnet import BasicBlock, Bottleneck, ResNet
from cnnlab.models.vgg import AdaptiveAvgPool2d, make_features
from harness import OpCase, check_against_torch, check_gradients
from torch_models import to_torch


def _randomize(module, rng):
    """Non-zero biases (a zero bias puts ReLU inputs exactly on the kink wherever a 1x1 conv
    sees all-zero inputs) and non-trivial batch-norm parameters and running statistics."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data = rng.normal(0, 0.2, m.bias.data.shape)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.weight.data = rng.uniform(0.5, 1.5, n)
            m.bias.data = rng.normal(0, 0.2, n)
            m.register_buffer("running_mean", rng.normal(0, 0.2, n))
            m.register_buffer("running_var", rng.uniform(0.5, 1.5, n))
    return module


def _cancelled_biases(module):
    """Biases of convs directly followed by a batch norm: in train mode BN subtracts the batch
    mean, so their gradient is exactly zero and a relative check of it is meaningless."""
    out = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Sequential):
            kids = list(m.named_children())
            for (a, ma), (_, mb) in zip(kids, kids[1:]):
                if isinstance(ma, nn.Conv2d) and ma.bias is not None and isinstance(mb, nn.BatchNorm2d):
                    out.append(f"{name}.{a}.bias" if name else f"{a}.bias")
    return out


def block_case(name, build, x_shape, training, wrt=None, seed=0):
    """An OpCase for a whole module: inputs x and every parameter (float64)."""
    rng = np.random.default_rng(seed)
    module = _randomize(build(rng).astype(np.float64), rng)
    module.train(training)
    if wrt is None and training and _cancelled_biases(module):
        skip = set(_cancelled_biases(module))
        wrt = ["x"] + [n for n, _ in module.named_parameters() if n not in skip]
    names = [n for n, _ in module.named_parameters()]
    params = dict(module.named_parameters())
    buffers = {k: np.array(v, copy=True) for k, v in module.state_dict().items() if k not in params}

    def inputs(rng):
        d = {"x": rng.standard_normal(x_shape)}
        d.update({n: params[n].data.copy() for n in names})
        return d

    def forward(d):
        for n in names:
            params[n].data = d[n]
        module.load_state_dict({**{n: d[n] for n in names}, **buffers})   # fresh running stats
        for n in names:
            params[n].data = d[n]                     # the very arrays the checker perturbs
        module.zero_grad()
        return module.forward(d["x"]), None

    def backward(dout, cache):
        module.zero_grad()
        dx = module.backward(dout)
        grads = {"x": dx}
        grads.update({n: params[n].grad for n in names})
        return grads

    twin = to_torch(module, torch.float64)

    def torch_forward(t):
        state = {n: t[n] for n in names}
        state.update({k: torch.tensor(v) for k, v in buffers.items()})
        return functional_call(twin, state, (t["x"],))

    mode = "train" if training else "eval"
    return OpCase(f"{name} [{mode}]", inputs, forward, backward, torch_forward, seed=seed,
                  wrt=tuple(wrt) if wrt else ())


def _tiny_resnet(kind):
    def build(rng):
        return ResNet(kind, num_classes=3, in_channels=2, widths=(4, 4, 8, 8), stem="small", rng=rng)
    return build


BLOCKS = [
    ("basic block identity", lambda rng: BasicBlock(4, 4, rng=rng), (2, 4, 5, 5)),
    ("basic block stride 2 + downsample", lambda rng: BasicBlock(3, 6, stride=2, rng=rng), (2, 3, 7, 6)),
    ("bottleneck + downsample", lambda rng: Bottleneck(6, 2, rng=rng), (2, 6, 5, 4)),
    ("bottleneck stride 2", lambda rng: Bottleneck(8, 2, stride=2, rng=rng), (2, 8, 6, 6)),
    ("inception n=3", lambda rng: InceptionBlock(4, 3, n=3, out_1x1=2, out_nxn=3, out_dbl=2,
                                                 out_pool=2, rng=rng), (2, 4, 5, 5)),
    ("inception n=5", lambda rng: InceptionBlock(3, 2, n=5, out_1x1=2, out_nxn=2, out_dbl=3,
                                                 out_pool=1, rng=rng), (2, 3, 6, 7)),
    ("factorized 1x5 + 5x1", lambda rng: factorized_conv(3, 4, 5, rng=rng), (2, 3, 6, 6)),
    ("nin mlpconv", lambda rng: mlpconv(3, 4, 3, padding=1, rng=rng), (2, 3, 5, 5)),
    ("vgg-bn features", lambda rng: make_features([4, "M", 6, 6, "M"], batch_norm=True,
                                                  in_channels=3, rng=rng), (2, 3, 8, 8)),
    ("adaptive avg pool 5x7 -> 3x3", lambda rng: AdaptiveAvgPool2d(3), (2, 3, 5, 7)),
    ("small filters 3x3 stack", lambda rng: small_filters_net(1, 3, 8, rng, "3x3", width=3),
     (2, 1, 8, 8)),
    ("residual(concat) containers", lambda rng: nn.Residual(nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, rng=rng), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Concat(nn.Conv2d(4, 2, 1, rng=rng), nn.Conv2d(4, 2, (1, 3), padding=(0, 1), rng=rng)))),
     (2, 4, 4, 5)),
]

CASES = [block_case(n, b, s, t) for n, b, s in BLOCKS for t in (True, False)]
# whole small networks: every input gradient and a sample of parameters (the checker samples
# 24 coordinates of each input it checks)
CASES += [
    block_case("resnet18 tiny", _tiny_resnet("resnet18"), (3, 2, 16, 16), True,
               wrt=["x", "conv1.weight", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                    "layer4.1.bn2.weight", "fc.weight", "fc.bias"]),
    block_case("resnet50 tiny", _tiny_resnet("resnet50"), (2, 2, 8, 8), False,
               wrt=["x", "layer1.0.conv3.weight", "layer3.0.downsample.1.bias", "fc.weight"]),
    block_case("inception net", lambda rng: inception_net(1, 3, 8, rng, width=4), (2, 1, 8, 8), True,
               wrt=["x", "stem.conv.weight", "mixed.branch3x3dbl_4.conv.weight",
                    "mixed.branch_pool.bn.bias", "fc.weight"]),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_block_gradients_match_numerical(case):
    check_gradients(case)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_block_matches_pytorch(case):
    check_against_torch(case)


def test_nin_network_runs_end_to_end():
    m = nin(1, 5, 12, np.random.default_rng(0)).eval()
    x = np.random.default_rng(1).standard_normal((2, 1, 12, 12)).astype(np.float32)
    t = to_torch(m, torch.float32)
    ref = t(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(m.forward(x), ref, rtol=1e-5, atol=1e-5)
