"""Model builders: the seed network, LeNet, VGG-style nets (more blocks are added per issue)."""
from .small import MODELS, build_model, lenet, seed_net, small_vgg

__all__ = ["MODELS", "build_model", "lenet", "seed_net", "small_vgg"]
