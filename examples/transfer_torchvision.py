"""torchvision weights in and out of cnnlab (no torch needed on the cnnlab side).

    python examples/transfer_torchvision.py                 # a ResNet-18 with random weights
    python examples/transfer_torchvision.py resnet18-f37072fd.pth   # torchvision's file

With a .pth file the architecture is detected from its keys (VGG-11/13/16/19 with or without
batch norm, ResNet-18/34/50). The model is summarised and its weights are written back in
PyTorch naming, ready for ``torch_model.load_state_dict``.
"""
import sys

import numpy as np

from cnnlab.models import get_model, summarize
from cnnlab.zoo import export_state_dict, load_torchvision

if len(sys.argv) > 1:
    model = load_torchvision(sys.argv[1])
else:
    model = get_model("resnet18")
s = summarize(model, (3, 224, 224))
print(f"{model.arch}: {s.total_params:,} parameters, {s.total_macs / 1e9:.2f} G multiply-adds "
      f"at 224x224, receptive field {s.receptive_field[0]} pixels")
sd = export_state_dict(model)
np.savez("exported_state_dict.npz", **sd)
print(f"wrote exported_state_dict.npz ({len(sd)} arrays). In PyTorch:\n"
      "  sd = {k: torch.from_numpy(v) for k, v in np.load('exported_state_dict.npz').items()}\n"
      "  torchvision.models.resnet18().load_state_dict(sd)")
