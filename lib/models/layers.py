"""Reading a classifier's intermediate layers: forward hooks on any list of modules, and the default layers
that the layerwise analyses follow (HGD's Fig. 5, the FGD objective's top convolutional feature map)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _first_tensor(output):
    """A module's output, or its first tensor when it returns a tuple (Inception's auxiliary outputs)."""
    if isinstance(output, (tuple, list)):
        return output[0]
    if hasattr(output, "logits"):  # torchvision's InceptionOutputs
        return output.logits
    return output


def default_layers(model: nn.Module) -> list[nn.Module]:
    """The modules an analysis hooks by default: `model.layers` (our classifiers define it)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no `.layers`; pass the modules to hook as layers=[...] "
                         "(for example model.net.Mixed_5b, ..., model.net.fc for torchvision's Inception-v3).")
    return list(layers)


def layer_outputs(model: nn.Module, layers: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """The output of each module in `layers` when `model(x)` runs (first call of each module).

    Gradients flow through the returned tensors when autograd is enabled, so a loss on them trains whatever
    produced x. Hooks are removed even if the forward pass fails.
    """
    layers = list(layers)
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(layers):
        def hook(module, inputs, output, i=i):
            captured.setdefault(i, _first_tensor(output))
        handles.append(layer.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in range(len(layers)) if i not in captured]
    if missing:
        raise ValueError(f"Layers {missing} were not called by {type(model).__name__}.forward; pass modules "
                         "that are part of the model's forward pass.")
    return [captured[i] for i in range(len(layers))]


def layerwise_modules(classifier: nn.Module) -> tuple[list[str], list[nn.Module]]:
    """Names and modules whose outputs Fig. 5 follows: `.layers` of our classifiers, stages of Inception-v3."""
    layers = getattr(classifier, "layers", None)
    if layers is not None:
        names = ["stem"] + [f"stage {i}" for i in range(1, len(layers) - 1)] + ["logits"]
        return names, list(layers)
    net = getattr(classifier, "net", classifier)
    inception = ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d", "Mixed_6a", "Mixed_6e", "Mixed_7a", "Mixed_7c", "fc")
    if all(hasattr(net, n) for n in inception):
        return list(inception), [getattr(net, n) for n in inception]
    raise ValueError(f"No default layers for {type(classifier).__name__}; pass the modules to follow explicitly.")
