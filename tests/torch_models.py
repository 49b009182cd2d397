"""PyTorch twins of cnnlab models, for parity tests (torch is a test-only dependency).

``to_torch(module)`` builds the equivalent torch module from any cnnlab module tree, with the
same weights, buffers, train/eval mode and child names (so both state_dicts use the same keys;
torch adds ``num_batches_tracked`` to batch norms). Containers are rebuilt from the graph that
says how they combine their children (cnnlab.models.graph: Sequential, Residual, Concat,
ResNet and Inception blocks ...), leaves by type.

``TorchVisionVGG`` and ``TorchVisionResNet`` are written independently of cnnlab in the layout
of torchvision's VGG and ResNet classes (same module tree, names and forward), because
torchvision itself cannot be installed beside torch 2.13 here. Weights come from torch's own
initialisation, so importing their state_dicts into cnnlab is a real test of the key mapping.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as tnn

from cnnlab import nn
from cnnlab.models.graph import Add, Cat, Seq, graph_of
from cnnlab.models.vgg import AdaptiveAvgPool2d


class GraphNet(tnn.Module):
    """A torch module whose children have cnnlab's names and whose forward follows a graph."""

    def __init__(self, graph, children):
        super().__init__()
        self._graph = graph
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x):
        return self._run(self._graph, x)

    def _run(self, node, x):
        if node is None:
            return x
        if isinstance(node, str):
            return self._modules[node](x)
        if isinstance(node, Seq):
            for item in node.items:
                x = self._run(item, x)
            return x
        outs = [self._run(item, x) for item in node.items]
        if isinstance(node, Add):
            y = outs[0]
            for o in outs[1:]:
                y = y + o
            return y
        assert isinstance(node, Cat)
        return torch.cat(outs, dim=1)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _param(a, dtype):
    return tnn.Parameter(torch.tensor(np.asarray(a), dtype=dtype))


def _leaf(m, dtype):
    if isinstance(m, nn.Conv2d):
        t = tnn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                       m.dilation, m.groups, bias=m.bias is not None)
        t.weight = _param(m.weight.data, dtype)
        if m.bias is not None:
            t.bias = _param(m.bias.data, dtype)
        return t
    if isinstance(m, nn.Linear):            # DropConnectLinear too (identical in eval mode)
        t = tnn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        t.weight = _param(m.weight.data, dtype)
        if m.bias is not None:
            t.bias = _param(m.bias.data, dtype)
        return t
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        cls = tnn.BatchNorm1d if isinstance(m, nn.BatchNorm1d) else tnn.BatchNorm2d
        t = cls(m.num_features, eps=m.eps, momentum=m.momentum)
        t.weight = _param(m.weight.data, dtype)
        t.bias = _param(m.bias.data, dtype)
        t.running_mean = torch.tensor(np.asarray(m.running_mean), dtype=dtype)
        t.running_var = torch.tensor(np.asarray(m.running_var), dtype=dtype)
        return t
    if isinstance(m, nn.LeakyReLU):
        return tnn.LeakyReLU(m.negative_slope)
    simple = {nn.ReLU: tnn.ReLU, nn.Sigmoid: tnn.Sigmoid, nn.Tanh: tnn.Tanh,
              nn.Identity: tnn.Identity}
    if type(m) in simple:
        return simple[type(m)]()
    if isinstance(m, nn.Flatten):
        return tnn.Flatten()
    if isinstance(m, nn.AvgPool2d):         # before MaxPool2d: AvgPool2d subclasses it
        return tnn.AvgPool2d(m.kernel_size, m.stride, m.padding,
                             count_include_pad=m.count_include_pad)
    if isinstance(m, nn.MaxPool2d):
        return tnn.MaxPool2d(m.kernel_size, m.stride, m.padding)
    if isinstance(m, nn.GlobalAvgPool2d):
        return tnn.AdaptiveAvgPool2d(1)
    if isinstance(m, AdaptiveAvgPool2d):
        return tnn.AdaptiveAvgPool2d(m.output_size)
    if isinstance(m, nn.Dropout):
        return tnn.Dropout(m.p)
    raise TypeError(f"to_torch: no torch equivalent for {type(m).__name__}")


def to_torch(module, dtype=torch.float64) -> tnn.Module:
    """The torch twin of ``module``: same structure, names, weights, buffers and mode."""
    graph = graph_of(module)
    if graph is None:
        t = _leaf(module, dtype)
    else:
        t = GraphNet(graph, {name: to_torch(child, dtype) for name, child in module.named_children()})
    t.train(module.training)
    return t.to(dtype)


def torch_state_to_numpy(t: tnn.Module) -> dict:
    """{name: numpy array} of a torch module's state_dict (num_batches_tracked included)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in t.state_dict().items()}


# ----------------------------------------------------------------------- torchvision layouts

VGG_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class TorchVisionVGG(tnn.Module):
    """torchvision.models.VGG's module tree: features / avgpool / classifier."""

    def __init__(self, name="vgg16", batch_norm=False, num_classes=1000):
        super().__init__()
        layers, c = [], 3
        for v in VGG_CFGS[name]:
            if v == "M":
                layers.append(tnn.MaxPool2d(2, 2))
            else:
                layers.append(tnn.Conv2d(c, v, 3, padding=1))
                if batch_norm:
                    layers.append(tnn.BatchNorm2d(v))
                layers.append(tnn.ReLU(inplace=True))
                c = v
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
        self.classifier = tnn.Sequential(
            tnn.Linear(512 * 7 * 7, 4096), tnn.ReLU(True), tnn.Dropout(),
            tnn.Linear(4096, 4096), tnn.ReLU(True), tnn.Dropout(), tnn.Linear(4096, num_classes))

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class TVBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TVBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_CFGS = {"resnet18": (TVBasicBlock, (2, 2, 2, 2)), "resnet34": (TVBasicBlock, (3, 4, 6, 3)),
               "resnet50": (TVBottleneck, (3, 4, 6, 3))}


class TorchVisionResNet(tnn.Module):
    """torchvision.models.ResNet's module tree (conv1, bn1, relu, maxpool, layer1-4, avgpool, fc)."""

    def __init__(self, name="resnet18", num_classes=1000):
        super().__init__()
        block, counts = RESNET_CFGS[name]
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, counts[0])
        self.layer2 = self._make_layer(block, 128, counts[1], 2)
        self.layer3 = self._make_layer(block, 256, counts[2], 2)
        self.layer4 = self._make_layer(block, 512, counts[3], 2)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(
                tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                tnn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_bn_stats(t: tnn.Module, seed=0) -> tnn.Module:
    """Give every batch norm non-trivial running stats and affine parameters (fresh ones are
    0/1, which would hide a mix-up of mean and var or weight and bias)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, tnn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.num_batches_tracked.fill_(7)
    return t
