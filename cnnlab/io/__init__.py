"""File formats for weights and checkpoints: files are data, not code; writes are atomic.

- ``atomic_write``: the write-temp, fsync, rename context manager everything uses.
- ``save_arrays`` / ``load_arrays``: named arrays + str metadata as .npz or .safetensors.
- ``save_safetensors`` / ``load_safetensors``: the safetensors format, by hand.
- ``load_torch_state_dict``: PyTorch .pth state dicts (zip and legacy) without torch.
- ``restricted_load`` / ``NUMPY_GLOBALS``: the allow-list unpickler behind the above.
- ``load_matconvnet_vgg``: MatConvNet's imagenet-vgg-verydeep-16/19.mat.
"""
from cnnlab.io.arrays import load_arrays, save_arrays
from cnnlab.io.atomic import atomic_write
from cnnlab.io.matconvnet import load_matconvnet_vgg
from cnnlab.io.safe_pickle import NUMPY_GLOBALS, restricted_load
from cnnlab.io.safetensors import load_safetensors, save_safetensors
from cnnlab.io.torch_pth import load_torch_state_dict

__all__ = [
    "atomic_write",
    "save_arrays", "load_arrays",
    "save_safetensors", "load_safetensors",
    "load_torch_state_dict",
    "restricted_load", "NUMPY_GLOBALS",
    "load_matconvnet_vgg",
]
