"""Model builders: the seed network, LeNet, VGG, ResNet, Inception and NiN blocks, and the
architecture summary (shapes, parameters, multiply-adds, receptive fields).

Submodules keep their own names (cnnlab.models.vgg, .resnet, .nin, ...); build any model by
name with ``get_model(name)`` (cnnlab.models.registry)."""
from .graph import Add, Cat, GraphModule, Seq, graph_of
from .inception import InceptionBlock, factorized_conv, inception_net
from .nin import mlpconv
from .registry import default_input, get_model, model_names, register_model
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from .small import MODELS, build_model, lenet, seed_net, small_vgg
from .summary import Summary, format_summary, receptive_field, summarize
from .vgg import VGG

__all__ = ["MODELS", "build_model", "lenet", "seed_net", "small_vgg", "VGG", "ResNet",
           "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
           "InceptionBlock", "factorized_conv", "inception_net", "mlpconv", "get_model",
           "model_names", "default_input", "register_model", "summarize", "format_summary",
           "receptive_field", "Summary", "Seq", "Add", "Cat", "GraphModule", "graph_of"]
