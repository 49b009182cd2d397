"""Neural style (Gatys, Ecker & Bethge 2016) on cnnlab: VGG features, Gram-matrix losses as
forward/backward pairs, L-BFGS, and the ``cnnlab style`` / ``cnnlab weights`` commands.

    from cnnlab.style import stylize
    result = stylize("photo.jpg", "painting.jpg", "out.png", image_size=256, num_iterations=300)

See docs/style.md.
"""
from .stylize import StyleObjective, StyleResult, build_network, make_objective, stylize
from .vgg_features import VGGFeatures
from .weights import SOURCES, fetch_weights, load_vgg_weights

__all__ = ["stylize", "StyleResult", "StyleObjective", "make_objective", "build_network",
           "VGGFeatures", "SOURCES", "fetch_weights", "load_vgg_weights"]
