"""Grad-CAM (lib.eval.gradcam) on models whose evidence is known, its object mass, and shapes10's object masks."""
from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from lib.core.data import ImageData, load_dataset
from lib.core.shapes import CLASSES, generate_shapes10, generate_shapes10_masks
from lib.eval.gradcam import gradcam, object_mass, target_layer
from lib.models.classifiers import build_classifier

LUMINANCE = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


class Quadrant(nn.Module):
    """Zero outside the top-right quadrant: what the classifier after it can read."""

    def forward(self, a):
        keep = torch.zeros_like(a[:1, :1])
        keep[..., :a.shape[2] // 2, a.shape[3] // 2:] = 1
        return a * keep


class QuadrantNet(nn.Module):
    """Class logits from the top-right quadrant of a half-resolution feature map only."""

    def __init__(self):
        super().__init__()
        conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():  # positive evidence wherever the quadrant has any signal
            conv.weight.uniform_(0, 0.1)
            conv.bias.zero_()
        # the explained layer: 8×8 for 16×16 images, so the map is upsampled
        self.features = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(2), Quadrant())
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.uniform_(0.5, 1.0)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class ColourNet(nn.Module):
    """Class 0 = how red the image is, class 1 = how green (global average pooling, as in a CNN)."""

    def __init__(self):
        super().__init__()
        self.detect = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.detect.weight.copy_(torch.tensor([[1.0, -1, -1], [-1, 1, -1]]).view(2, 3, 1, 1))
            self.detect.bias.zero_()
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.detect(x)).mean((2, 3))


def _quadrant_mask(n: int, size: int = 16) -> torch.Tensor:
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    mask[:, :size // 2, size // 2:] = True
    return mask


def test_map_peaks_where_the_logit_reads():
    model = QuadrantNet()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    maps = gradcam(model, x, torch.tensor([0, 1, 0]), layer=model.features)
    assert maps.shape == (3, 16, 16)
    quadrant = _quadrant_mask(3)
    peak = maps.flatten(1).argmax(1)
    assert quadrant.flatten(1)[torch.arange(3), peak].all()
    # only bilinear upsampling bleeds past the quadrant's edge (half a feature cell)
    assert (object_mass(maps, quadrant) > 0.9).all()


def test_map_follows_the_class_evidence():
    x = torch.zeros(2, 3, 16, 16)
    x[:, 0, 2:6, 2:6] = 1  # a red square top left
    x[:, 1, 10:14, 9:15] = 1  # a green bar bottom right
    model = ColourNet()
    maps = gradcam(model, x, torch.tensor([0, 1]), layer=model.act)
    red, green = torch.zeros(16, 16, dtype=torch.bool), torch.zeros(16, 16, dtype=torch.bool)
    red[2:6, 2:6], green[10:14, 9:15] = True, True
    assert object_mass(maps, torch.stack([red, green])).tolist() == pytest.approx([1.0, 1.0])
    assert maps[0, 3, 3] == 1 and maps[1, 12, 12] == 1


@pytest.mark.parametrize("arch", ["resnet_small", "vgg_small"])
def test_maps_on_lib_classifiers(arch):
    torch.manual_seed(0)
    model = build_classifier(arch, "shapes10", 4)
    x = torch.rand(4, 3, 32, 32)
    for normalize in ("max", "minmax"):
        maps = gradcam(model, x, torch.tensor([0, 3, 5, 9]), normalize=normalize)
        assert maps.shape == (4, 32, 32) and maps.dtype == torch.float32
        assert maps.min() >= 0 and maps.max() <= 1
        nonzero = maps.flatten(1).amax(1) > 0
        assert torch.allclose(maps.flatten(1).amax(1)[nonzero], torch.ones(int(nonzero.sum())))


def test_default_target_layer_is_the_last_convolutional_map():
    resnet = build_classifier("resnet_small", "shapes10", 4)
    assert target_layer(resnet) is resnet.stages[-1]
    vgg = build_classifier("vgg_small", "shapes10", 4)
    seen = []
    handle = target_layer(vgg).register_forward_hook(lambda m, i, o: seen.append(o.shape))
    vgg.eval()(torch.rand(1, 3, 32, 32))
    handle.remove()
    assert isinstance(target_layer(vgg), nn.ReLU) and seen[0][2:] == (2, 2)  # before the last pooling
    with pytest.raises(ValueError, match="layer="):
        target_layer(ColourNet())


def test_matches_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam")  # the reference, when installed
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    model = build_classifier("resnet_small", "shapes10", 4)
    model(torch.rand(32, 3, 32, 32))  # train mode: non-trivial BatchNorm running statistics
    model.eval()
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([1, 2, 3, 4])
    ours = gradcam(model, x, y, normalize="minmax")
    with pgc.GradCAM(model=model, target_layers=[target_layer(model)]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in y])
    assert torch.allclose(ours, torch.from_numpy(ref), atol=1e-5)


def test_model_state_is_left_as_found():
    model = build_classifier("resnet_small", "shapes10", 4).train()
    model.stages[0].eval()  # a mixed state must come back as it was, module by module
    model.linear.weight.requires_grad_(False)
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    stats = model.bn1.running_mean.clone()
    with torch.no_grad():  # works inside no_grad too
        gradcam(model, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert torch.equal(model.bn1.running_mean, stats)  # ran in eval mode


def test_gradcam_bad_inputs():
    model = ColourNet()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="classes"):
        gradcam(model, x, torch.tensor([0, 1, 1]), layer=model.act)
    with pytest.raises(ValueError, match="classes"):
        gradcam(model, x, torch.tensor([0.0, 1.0]), layer=model.act)
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 2\)"):
        gradcam(model, x, torch.tensor([0, 2]), layer=model.act)
    with pytest.raises(ValueError, match="outside"):
        gradcam(model, x * 255, torch.tensor([0, 1]), layer=model.act)
    with pytest.raises(ValueError, match="normalize"):
        gradcam(model, x, torch.tensor([0, 1]), layer=model.act, normalize="sum")
    with pytest.raises(ValueError, match="not called"):
        gradcam(model, x, torch.tensor([0, 1]), layer=nn.ReLU())


def test_object_mass():
    masks = _quadrant_mask(2)
    inside = torch.rand(2, 16, 16) * masks
    assert object_mass(inside, masks).tolist() == pytest.approx([1.0, 1.0])
    assert object_mass(torch.ones(2, 16, 16), masks).tolist() == pytest.approx([0.25, 0.25])  # the area fraction
    assert object_mass(torch.zeros(1, 16, 16), masks[:1]).isnan().all()  # no mass to place
    with pytest.raises(ValueError, match="differ in shape"):
        object_mass(torch.ones(2, 16, 16), masks[:1])
    with pytest.raises(ValueError, match="bool"):
        object_mass(torch.ones(2, 16, 16), masks.float())
    with pytest.raises(ValueError, match="non-negative"):
        object_mass(-torch.ones(2, 16, 16), masks)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        object_mass(torch.ones(2, 1, 16, 16), masks)


# shapes10's object masks

# sha256 of generate_shapes10's bytes before the masks were exposed: the model cache and stored sets rely on them
STORED = {(40, 5, 32): ("70341ab912db26d9216b343716bfec819f54a21265b1c6791edcd2bffe18de80",
                        "3138dc2f889a42e6c0277ce14f26c37502ac070bb82d8688e6080fc5062e755d"),
          (20, 1, 16): ("549402b152d1be7465968c60a1d79ebea51e42697e8535664b926186cacc4d92",
                        "47b8d1e3cb3996f4993deb30df88d5826a053017ed8bc4e26a2a29df3df81141")}


@pytest.mark.parametrize("n, seed, size", list(STORED))
def test_shapes10_bytes_are_unchanged(n, seed, size):
    images, labels = generate_shapes10(n, seed, size)
    digest = tuple(hashlib.sha256(t.numpy().tobytes()).hexdigest() for t in (images, labels))
    assert digest == STORED[n, seed, size]
    images_m, labels_m, masks = generate_shapes10_masks(n, seed, size)
    assert torch.equal(images_m, images) and torch.equal(labels_m, labels)
    assert masks.shape == (n, size, size) and masks.dtype == torch.bool


def _contrast(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """|luminance inside the mask − luminance of a 2-pixel ring just outside it| per image."""
    lum = (images.float() / 255 * LUMINANCE).sum(1)
    inside = masks.float()[:, None]
    ring = (F.max_pool2d(inside, 5, 1, 2) - inside)[:, 0]
    mean = lambda w: (lum * w).sum((1, 2)) / w.sum((1, 2)).clamp(min=1)  # noqa: E731
    return (mean(masks.float()) - mean(ring)).abs()


def test_shapes10_masks_cover_the_shapes():
    images, _, masks = generate_shapes10_masks(100, seed=3)
    area = masks.float().mean((1, 2))
    assert (area > 0.03).all() and (area < 0.5).all()
    # the generator keeps every shape at least 0.2 in luminance from the background under it
    assert (_contrast(images, masks) > 0.1).all()
    assert (_contrast(images, masks.roll(11, 2)) > 0.1).float().mean() < 0.2  # a misplaced mask does not


def test_dataset_subsets_keep_masks_aligned():
    test_set = load_dataset("shapes10", "test")
    sub = test_set.subset(30, seed=4).subset(12, seed=5)  # as the notebooks draw their evaluation images
    x, _ = sub.tensors()
    masks = sub.object_masks()
    assert masks.shape == (12, 32, 32) and masks.dtype == torch.bool
    assert (_contrast(sub.images, masks) > 0.1).all()
    first = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(4))[:30]
    idx = first[torch.randperm(30, generator=torch.Generator().manual_seed(5))[:12]]
    assert torch.equal(masks, test_set.masks[idx]) and torch.equal(x, test_set.images[idx].float() / 255)
    no_masks = ImageData("shapes10", "test", sub.images, sub.labels, CLASSES)
    with pytest.raises(ValueError, match="no object masks"):
        no_masks.object_masks()
