"""The model zoo: model files with metadata, torchvision import/export, shipped entries.

- ``save_model(path, model, info)`` / ``load_model(path) -> (model, info)``: weights plus
  architecture, input size, preprocessing, class names, reproducing command and accuracy.
- ``load(name)`` / ``list_entries()`` / ``resolve(name_or_path)``: the shipped models.
- ``import_state_dict`` / ``export_state_dict`` / ``load_torchvision``: PyTorch state_dicts
  (torchvision VGG and ResNet names) in and out, without torch.
"""
from .checkpoint import FORMAT, ModelInfo, load_model, load_weights, read_info, save_model
from .entries import entry_names, entry_path, list_entries, load, resolve
from .torchvision import (detect_architecture, export_state_dict, from_torchvision,
                          import_state_dict, load_torchvision)

__all__ = ["FORMAT", "ModelInfo", "save_model", "load_model", "load_weights", "read_info",
           "load", "list_entries", "entry_names", "entry_path", "resolve", "import_state_dict",
           "export_state_dict", "from_torchvision", "load_torchvision", "detect_architecture"]
