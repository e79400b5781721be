"""Grad-CAM class-activation maps (Selvaraju et al., ICCV 2017 / IJCV 2020) and the share of them on the object.

IMPure's Fig. 6 shows Grad-CAM maps of clean, adversarial and purified images and reads by eye that the
clean and purified maps sit on the object while the adversarial ones do not; `object_mass` makes that a
number: the fraction of a map's mass inside the object mask (shapes10 knows its masks:
`ImageData.object_masks`). A uniform map scores the mask's area fraction, `masks.float().mean((1, 2))`.

- `gradcam(model, x, classes)`: for the target layer's activations A^k (a (N, K, h, w) map) and the logit
  y^c of each image's class c, the weights α_k^c = mean_{i,j} ∂y^c/∂A^k_ij (Eq. 1) and the map
  L^c = ReLU(Σ_k α_k^c A^k) (Eq. 2), upsampled bilinearly to the image size and scaled to [0, 1].
- `target_layer(model)`: the last convolutional stage, where Grad-CAM is usually taken.
- `object_mass(maps, masks)`: Σ maps·masks / Σ maps per image.

Own implementation, not the `grad-cam` package (pytorch-grad-cam 1.5.7). That package would bring
opencv-python-headless (about 170 MB), ttach and tqdm for what is here some 30 lines, and its calls have
side effects our analyses must not have: it switches the model to eval for good, backpropagates into the
parameters' `.grad` (after zeroing them) and works on NumPy copies on the CPU. Its GradCAM is the
reference this module is tested against: with normalize="minmax" the maps agree with it to float precision
(tests/test_gradcam.py, when the package is importable).

Deviation from the package's default scaling: the default normalize="max" divides each map by its maximum
instead of subtracting the minimum first. Both give [0, 1]; subtracting the floor would change the share
of mass on the object by however much floor the map has, so "max" keeps Grad-CAM's own proportions.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from lib.core.settings import check_images
from lib.models.classifiers import CifarVGG, ImageNetClassifier
from lib.models.layers import _first_tensor

NORMALIZE = ("max", "minmax")


def target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage of a classifier, whose output Grad-CAM explains.

    CifarResNet: its last stage (4×4 at 32 px). CifarVGG: the ReLU that ends its last convolution block,
    before the final pooling (2×2 at 32 px; after the pooling it is 1×1 and there is no map left). ImageNet
    models: ResNet's layer4, Inception-v3's Mixed_7c, VGG's relu5_4. Other models: `.layers[-2]`, the stage
    before the linear head.
    """
    if isinstance(model, CifarVGG):
        return [m for m in model.body if isinstance(m, nn.ReLU)][-1]
    if isinstance(model, ImageNetClassifier):
        for name in ("layer4", "Mixed_7c"):
            if hasattr(model.net, name):
                return getattr(model.net, name)
    layers = getattr(model, "layers", None)
    if layers is None or len(layers) < 2:
        raise ValueError(f"No default Grad-CAM layer for {type(model).__name__}: pass the convolutional module "
                         "whose (N, K, h, w) output to explain as layer=...")
    return layers[-2]


def _check_classes(classes, n: int, device) -> torch.Tensor:
    classes = torch.as_tensor(classes, device=device)
    if classes.shape != (n,) or classes.is_floating_point() or classes.dtype == torch.bool:
        raise ValueError(f"classes must hold one integer class per image, shape ({n},); got dtype {classes.dtype}, "
                         f"shape {tuple(classes.shape)}. Pass the true labels y (or model(x).argmax(1)).")
    return classes.long()


def _scale(cam: torch.Tensor, normalize: str) -> torch.Tensor:
    """(N, H, W) non-negative maps → [0, 1] per image; an all-zero map stays zero."""
    flat = cam.flatten(1)
    low = flat.amin(1) if normalize == "minmax" else torch.zeros_like(flat[:, 0])
    span = (flat.amax(1) - low).clamp_min(1e-12)
    return ((cam - low.view(-1, 1, 1)) / span.view(-1, 1, 1)).clamp(0, 1)


def _batch(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Unscaled Grad-CAM maps (N, h, w) of one batch at the layer's resolution."""
    captured = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(_first_tensor(output)))
    try:
        # a fresh leaf that needs grad: the layer's output is in the graph even when the model is frozen
        logits = _first_tensor(model(x.detach().requires_grad_(True)))
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"layer {type(layer).__name__} was not called by {type(model).__name__}.forward; pass a "
                         "module of the model's forward pass as layer=...")
    activations = captured[0]
    if activations.dim() != 4:
        raise ValueError(f"layer {type(layer).__name__} outputs shape {tuple(activations.shape)}; Grad-CAM needs a "
                         "convolutional (N, K, h, w) map: pass a convolutional stage as layer=...")
    if classes.max() >= logits.shape[1] or classes.min() < 0:
        raise ValueError(f"classes must lie in [0, {logits.shape[1]}) (the model's {logits.shape[1]} outputs); "
                         f"got values from {int(classes.min())} to {int(classes.max())}.")
    score = logits.gather(1, classes[:, None]).sum()  # images are independent in eval mode: one backward
    # autograd.grad, not backward(): nothing accumulates in the parameters' .grad
    grads, = torch.autograd.grad(score, activations)
    alpha = grads.mean((2, 3), keepdim=True)  # Eq. 1
    return F.relu((alpha * activations).sum(1)).detach()  # Eq. 2


def gradcam(model: nn.Module, x: torch.Tensor, classes, *, layer: nn.Module | None = None,
            normalize: str = "max", batch_size: int = 256) -> torch.Tensor:
    """Grad-CAM maps of `classes` for images x: float (N, H, W) in [0, 1] on x's device.

    x: (N, C, H, W) in [0, 1]. classes: (N,) integers, the class each map explains (the true labels y; pass
    model(x).argmax(1) for the predicted class, as pytorch-grad-cam's default does). layer: the module to
    explain (default `target_layer(model)`). normalize: "max" (map / its max, keeps mass proportions) or
    "minmax" (the package's (map − min) / (max − min), for pictures). An image whose map is zero everywhere
    (no positive evidence for the class at that layer) gets a zero map.
    The model runs in eval mode and every module's train/eval flag is restored afterwards; no hook, no
    requires_grad flag and no `.grad` is left changed.
    """
    check_images(x, "x")
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize={normalize!r}: choose one of {NORMALIZE}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    classes = _check_classes(classes, len(x), x.device)
    layer = target_layer(model) if layer is None else layer
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # BatchNorm on running statistics: each image's map does not depend on its batch
    try:
        with torch.enable_grad():
            cams = [_batch(model, layer, xb, cb) for xb, cb in zip(x.split(batch_size), classes.split(batch_size))]
    finally:
        for module, training in modes:
            module.training = training
    if not cams:
        return x.new_zeros(0, *x.shape[2:])
    cam = F.interpolate(torch.cat(cams)[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    return _scale(cam, normalize).to(x.dtype)


def object_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The fraction of each map's mass inside its object mask: float (N,) in [0, 1].

    maps: (N, H, W) non-negative (gradcam's), masks: (N, H, W) bool, True on the object (ImageData.object_masks).
    1 = all evidence on the object; a uniform map gives the mask's area fraction. A map that is zero
    everywhere has no mass to place: NaN (average with nanmean and report how many).
    """
    if not torch.is_tensor(maps) or not maps.is_floating_point() or maps.dim() != 3:
        raise ValueError(f"maps must be a float tensor (N, H, W); got {getattr(maps, 'dtype', type(maps))} of shape "
                         f"{tuple(getattr(maps, 'shape', ()))}.")
    if not torch.is_tensor(masks) or masks.dtype != torch.bool:
        raise ValueError(f"masks must be a bool tensor (N, H, W), True on the object; got "
                         f"{getattr(masks, 'dtype', type(masks))}.")
    if masks.shape != maps.shape:
        raise ValueError(f"masks {tuple(masks.shape)} and maps {tuple(maps.shape)} differ in shape: pass one mask "
                         "per map at the map's size (the masks of the same images, in the same order).")
    if not bool(torch.isfinite(maps).all()) or (maps.numel() and maps.min() < 0):
        raise ValueError("maps must be non-negative and finite (Grad-CAM maps are ReLU'd and scaled to [0, 1]).")
    total = maps.flatten(1).sum(1)
    inside = (maps * masks.to(maps.device)).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(maps.dtype).tiny), float("nan"))
