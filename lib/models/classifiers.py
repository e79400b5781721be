"""Target classifiers. Every one takes images in [0, 1]: normalisation is its first layer.

CIFAR-style: `resnet18` (the papers' target; He et al. 2016 with a 3×3 stem, as in Madry-style AT code),
`resnet_small` (the same blocks, narrower and shallower, trains in minutes on 2 CPU cores), `resnet18_small`
(ResNet-18's two blocks per stage at resnet_small's width), `vgg16`
(CIFAR variant, batch-norm, one linear layer) and `vgg_small` (its layout at width/32 of its channels: the
quick-scale VGG, e.g. IMPure's feature network). ImageNet: torchvision's ResNet-50, Inception-v3 and
VGG-19 with their pretrained weights when they are in the torch hub cache.
"""
from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn
import torch.nn.functional as F

from lib.core.data import dataset_info
from lib.core.settings import check_classifier_input


class Normalize(nn.Module):
    """(x - mean) / std per channel; the classifier's first layer so attacks work in pixel space.

    It also checks its input (lib.core.settings.check_classifier_input): a float (N, C, H, W) batch with
    `channels` channels (the mean/std's own count when they have more than one; a 1-channel image would
    otherwise be broadcast to 3 silently), no value above 1 and no NaN. One max-reduction per forward.
    """

    def __init__(self, mean, std, channels: int | None = None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        per_channel = max(self.mean.shape[1], self.std.shape[1])
        self.channels = channels if channels is not None else (per_channel if per_channel > 1 else None)

    def forward(self, x):
        check_classifier_input(x, getattr(self, "channels", None))
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images: 3×3 stem, four stages (widths w, 2w, 4w, 8w), global average pooling.

    `features(x)` returns the penultimate embedding (used by IDFR's feature restorer and UMAP plots);
    `layers` lists the modules whose outputs the layerwise analyses hook.
    """

    def __init__(self, blocks=(2, 2, 2, 2), width: int = 64, num_classes: int = 10, in_channels: int = 3,
                 mean=(0.5,), std=(0.25,)):
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for i, n in enumerate(blocks):
            planes = width * 2 ** i
            strides = [1 if i == 0 else 2] + [1] * (n - 1)
            stage = []
            for s in strides:
                stage.append(BasicBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.linear = nn.Linear(in_planes, num_classes)
        self.embedding_dim = in_planes

    @property
    def layers(self) -> list[nn.Module]:
        return [self.bn1, *self.stages, self.linear]

    def features(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.stages(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return self.linear(self.features(x))


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def scaled_vgg(width: int) -> tuple:
    """VGG-16's layout with each convolution's channels scaled by width / 32 (at least 8)."""
    return tuple(v if v == "M" else max(8, v * width // 32) for v in _VGG16)


class CifarVGG(nn.Module):
    """VGG-16 with batch norm for 32×32 inputs (five poolings to 1×1, one linear classifier)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, mean=(0.5,), std=(0.25,), cfg=_VGG16):
        super().__init__()
        self.normalize = Normalize(mean, std, in_channels)
        layers, c = [], in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(c, num_classes)
        self.embedding_dim = c

    @property
    def layers(self) -> list[nn.Module]:
        return [m for m in self.body if isinstance(m, nn.MaxPool2d)] + [self.linear]

    def features(self, x):
        return F.adaptive_avg_pool2d(self.body(self.normalize(x)), 1).flatten(1)

    def forward(self, x):
        return self.linear(self.features(x))


class ImageNetClassifier(nn.Module):
    """A torchvision ImageNet model behind a normalisation layer."""

    def __init__(self, net: nn.Module, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        super().__init__()
        self.normalize = Normalize(mean, std, 3)
        self.net = net

    @property
    def layers(self) -> list[nn.Module]:
        """VGG's five stages (the ReLU that ends each, relu1_2 ... relu5_4, as perceptual losses take them) and
        its last linear layer; other torchvision models have no such list."""
        if not isinstance(self.net, torchvision.models.VGG):
            raise AttributeError(f"{type(self.net).__name__} has no `.layers` (only VGG does)")
        ends = [i - 1 for i, m in enumerate(self.net.features) if isinstance(m, nn.MaxPool2d)]
        return [self.net.features[i] for i in ends] + [self.net.classifier[-1]]

    def forward(self, x):
        return self.net(self.normalize(x))


def _imagenet(arch: str, pretrained: bool) -> nn.Module:
    import torchvision.models as tvm

    builders = {
        "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1),
        "inception_v3": (tvm.inception_v3, tvm.Inception_V3_Weights.IMAGENET1K_V1),
        "vgg19": (tvm.vgg19, tvm.VGG19_Weights.IMAGENET1K_V1),
    }
    build, weights = builders[arch]
    kwargs = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
    if not pretrained:
        return ImageNetClassifier(build(weights=None, **kwargs))
    try:
        net = build(weights=weights, **kwargs)
    except Exception as err:  # no internet and nothing in the hub cache
        import torch.hub

        raise FileNotFoundError(
            f"Pretrained {arch} weights ({weights.url.rsplit('/', 1)[-1]}) are not available: they are not in "
            f"{torch.hub.get_dir()}/checkpoints and could not be downloaded ({type(err).__name__}). Copy the file "
            "there from a machine with internet access, or pass pretrained=False for random weights."
        ) from err
    if arch == "inception_v3":
        net.aux_logits, net.AuxLogits = False, None  # evaluation-only target: one output
    return ImageNetClassifier(net, mean=weights.transforms().mean, std=weights.transforms().std)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": lambda info, width=64: CifarResNet((2, 2, 2, 2), 64, info.num_classes, info.channels,
                                                   info.mean, info.std),
    # quick-scale stand-in: one block per stage, base width from the scale (0.3M parameters at 16)
    "resnet_small": lambda info, width=16: CifarResNet((1, 1, 1, 1), width, info.num_classes, info.channels,
                                                       info.mean, info.std),
    # ResNet-18's layout (two blocks per stage) at the scale's width: a deeper quick-scale architecture
    "resnet18_small": lambda info, width=16: CifarResNet((2, 2, 2, 2), width, info.num_classes, info.channels,
                                                         info.mean, info.std),
    "vgg16": lambda info, width=64: CifarVGG(info.num_classes, info.channels, info.mean, info.std),
    # quick-scale VGG-16 layout (13 convolutions, 5 poolings) at width/32 of its channels: 16 to 128 at width 8
    "vgg_small": lambda info, width=16: CifarVGG(info.num_classes, info.channels, info.mean, info.std,
                                                 cfg=scaled_vgg(width)),
}
IMAGENET_ARCHITECTURES = ("resnet50", "inception_v3", "vgg19")


def build_classifier(arch: str, dataset: str, width: int | None = None, *, data_root=None) -> nn.Module:
    """A freshly initialised CIFAR-style classifier for a dataset (normalisation included).

    data_root: an image folder's location (dataset='imagefolder'), whose class count sets the output size.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}: choose one of {sorted(ARCHITECTURES)} "
                         f"(ImageNet models: {IMAGENET_ARCHITECTURES} through imagenet_classifier).")
    info = dataset_info(dataset, data_root)
    if arch in ("vgg16", "vgg_small") and info.size < 32:
        raise ValueError(f"{arch} needs 32×32 inputs (five 2×2 poolings); {dataset} images are "
                         f"{info.size}×{info.size}: use resnet_small or resnet18.")
    return ARCHITECTURES[arch](info) if width is None else ARCHITECTURES[arch](info, width)


def imagenet_classifier(arch: str, pretrained: bool = True) -> nn.Module:
    """A torchvision ImageNet model with its pretrained weights (clear error when they are absent)."""
    if arch not in IMAGENET_ARCHITECTURES:
        raise ValueError(f"Unknown ImageNet architecture {arch!r}: choose one of {IMAGENET_ARCHITECTURES}.")
    return _imagenet(arch, pretrained).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
