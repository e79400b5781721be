"""HGD: the high-level representation guided denoiser (Liao et al., "Defense against Adversarial Attacks
Using High-Level Representation Guided Denoiser", CVPR 2018).

A denoiser D maps an adversarial image x* to x̂ and sits in front of an unchanged target classifier f.
- Architectures (Section 3.1, Figs. 2-3). C = 3×3 conv + batch norm + ReLU; Ck = k consecutive C.
  Feedforward path: C2, C3, C3, C3, C3, the first conv of each C3 with stride 2. Feedback path, top to
  bottom: three C3 and one C2, each fed by the bilinearly upsampled feedback input (to the size of the
  lateral input, so odd sizes such as 299 → 150 → 75 → 38 → 19 work) concatenated with the lateral input
  from the feedforward stage of the same scale; then a 1×1 conv.
  `DUNET`: lateral connections and a residual output, the 1×1 conv predicts −dx̂ and x̂ = x* − dx̂ (Eq. 4).
  `DAE`: the same network without the lateral connections, reconstructing the whole image.
- Objectives (Sections 3.1-3.2, Fig. 4), `OBJECTIVES`:
  `pixel` (the paper's "PGD", pixel guided denoiser; not the attack): L = ‖x − x̂‖ (Eq. 3);
  `fgd`: L = ‖f_l(x̂) − f_l(x)‖ on the topmost convolutional feature map (l = −2, Eq. 5);
  `lgd`: the same on the logits (l = −1); `cgd`: the target's cross-entropy on x̂ with the true label.
  ‖·‖ is the L1 norm (Section 3.1), taken as a mean over elements as in the public code.
- Training data (Section 4.1, Table 1): each clean training image is attacked by FGSM against the target,
  against each of two other classifiers and against the ensemble of the three, and by I-FGSM with 2, 4 and
  8 steps against the ensemble; each adversarial image gets its own ε, an integer drawn uniformly from
  [1, 16], over 255. Test sets: the "white-box" set (FGSM against the target, I-FGSM4 against the ensemble)
  and the "black-box" set (FGSM and I-FGSM4 against a held-out classifier), each at ε 4/255 and 16/255.
  The paper's footnote 2: its white-box attacks are *oblivious* (they never see the denoiser).
- Training (Section 4.2): Adam, lr 1e-3, then 1e-4; the classifier fixed and in eval mode.

The names of the four classifiers follow the paper's roles: `target` (IncV3), `source_a` (IncResV2),
`source_b` (ResNet), `holdout` (IncV4, black-box only); `adv_trained` is the adversarially trained baseline
(ensV3). At `paper` scale they are the ImageNet models (`PAPER_MODELS`); at `quick`/`smoke` scale the
target is the shared natural `resnet_small` of lib.zoo, the two sources and the hold-out are narrower
`resnet_small`s (width `source_width`, fewer images and epochs, other seeds: three extra classifiers at
~70 s each at full quick size would take most of a notebook's budget, and attack sources only need to be
accurate and different), and the baseline is lib.zoo's PGD-AT classifier.

Deviations, and why:
- Adversarial images are stored as 8-bit images (rounded to the nearest 1/255), as the paper's image files
  were; since x and ε are multiples of 1/255, rounding never leaves the ε-ball.
- Labels for all generated attacks are the attacked model's own predictions on the clean image (Section 2.1
  recommends this against label leaking; the public code does the same); I-FGSM uses step ε/steps and no
  random start (the public code).
- lr: 1e-3, then 1e-4 after `lr_drop_at` of the steps (the paper decays "when the training loss converges";
  the public code decays at 60%). We keep the final model instead of selecting on a validation set
  (ValSet), which saves generating a second adversarial set at small scales. Joint horizontal flips of
  the clean and adversarial image (public code) when `flips` is set.
- The output is clamped to [0, 1] (the purifier contract of lib.purifiers). Training sees the clamped
  values (what is trained is what is evaluated) but passes gradients straight through the clamp, so
  pixels that start out of range still learn; in eval mode (attacks, evaluation) the clamp is exact.
- DUNET's final 1×1 convolution is initialised to zero (an untrained DUNET is the identity): at the small
  scales a denoiser gets a few hundred Adam steps, and a random start spends them undoing its own noise.
- Widths and depths shrink only at `smoke` (and widths at `quick`); see `SETTINGS`.
- Paper scale: ResNet-50 v1 (torchvision) stands in for ResNet-50 v2, and the adversarially trained
  baseline is the ensemble-adversarially-trained IncResV2 (timm), since ens3-adv-IncV3 is not distributed by
  torchvision or timm.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from tqdm.auto import tqdm

from lib.analyses import layer_outputs
from lib.cache import ModelCache, spec_hash
from lib.data import ImageData, dataset_info, load_dataset
from lib.purifiers import Purifier
from lib.results import result_row
from lib.settings import Scale, get_scale, resolve_device, scale_settings, seed_everything
from lib.training import Frozen

HGD_VERSION = 1
OBJECTIVES = ("pixel", "fgd", "lgd", "cgd")
ARCHITECTURES = ("dae", "dunet")
PAPER_IMAGE_SIZE = 299  # Inception-v3


# ----------------------------------------------------------------------------------------------------------
# Settings per scale
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HGDSettings:
    """Everything a scale decides for HGD. Units in the comments."""

    name: str
    widths: tuple[int, ...]  # feedforward stage widths (public code: 64, 128, 256, 256, 256)
    depths: tuple[int, ...]  # C blocks per feedforward stage (Section 3.1.2: C2, C3, C3, C3, C3)
    decoder_widths: tuple[int, ...]  # feedback block widths, full resolution first (code: 64, 128, 256, 256)
    decoder_depths: tuple[int, ...]  # C blocks per feedback block, full resolution first (C2, C3, C3, C3)
    n_train: int  # clean training images (class-balanced); each is attacked 7 ways (Table 1)
    n_test: int  # clean test images (class-balanced); each test set has 2 attacks × n_test images per ε
    epochs: int  # passes over the 7·n_train adversarial training images
    batch_size: int
    lr: float = 1e-3  # Adam (Section 4.2)
    lr_final: float = 1e-4
    lr_drop_at: float = 0.6  # fraction of the steps after which lr = lr_final
    flips: bool = True  # joint horizontal flips of clean and adversarial images
    n_layerwise: int = 30  # images averaged in Fig. 5 (the paper: 30)
    n_adaptive: int = 200  # images attacked by white-box / BPDA PGD and in the sanity checks
    source_width: int = 8  # quick/smoke: base width of the two source classifiers and the hold-out
    source_n_train: int = 5000  # ... their training images
    source_epochs: int = 3  # ... and epochs


SETTINGS: dict[str, HGDSettings] = {
    # every cell runs; numbers mean nothing
    "smoke": HGDSettings("smoke", widths=(4, 8, 8, 8, 8), depths=(1, 1, 1, 1, 1), decoder_widths=(4, 8, 8, 8),
                         decoder_depths=(1, 1, 1, 1), n_train=40, n_test=20, epochs=1, batch_size=35,
                         n_layerwise=8, n_adaptive=16, source_width=4, source_n_train=256, source_epochs=1),
    # the paper's depths, an eighth of its widths; 2100 adversarial training images (300 clean)
    "quick": HGDSettings("quick", widths=(8, 16, 32, 32, 32), depths=(2, 3, 3, 3, 3), decoder_widths=(8, 16, 32, 32),
                         decoder_depths=(2, 3, 3, 3), n_train=300, n_test=100, epochs=2, batch_size=32,
                         n_layerwise=30, n_adaptive=64, source_width=8, source_n_train=10_000, source_epochs=6),
    # Section 4: 30 images per class (30K clean, 210K adversarial), 10 test images per class, 20-30 epochs,
    # batch 60
    "paper": HGDSettings("paper", widths=(64, 128, 256, 256, 256), depths=(2, 3, 3, 3, 3),
                         decoder_widths=(64, 128, 256, 256), decoder_depths=(2, 3, 3, 3), n_train=30_000,
                         n_test=10_000, epochs=25, batch_size=60, n_layerwise=30, n_adaptive=1000),
}


def hgd_settings(scale: str | Scale | HGDSettings) -> HGDSettings:
    """The HGD settings of a scale (by name or lib.settings.Scale)."""
    return scale if isinstance(scale, HGDSettings) else scale_settings(SETTINGS, scale, "HGD")


# ----------------------------------------------------------------------------------------------------------
# Denoisers (Section 3.1.2, Fig. 3)
# ----------------------------------------------------------------------------------------------------------

def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """The paper's C: 3×3 convolution, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def conv_stack(k: int, c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """Ck: k consecutive C, the first one with `stride`."""
    return nn.Sequential(*[conv_block(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1) for i in range(k)])


class Denoiser(Purifier):
    """The U-shaped network of Fig. 3; `lateral` and `residual` switch between DUNET and DAE.

    forward(x*: (N, C, H, W) in [0, 1]) -> x̂: (N, C, H, W) in [0, 1], any H, W ≥ 1.
    """

    differentiable = True
    randomized = False
    lateral: bool = True
    residual: bool = True

    def __init__(self, channels: int = 3, widths: Sequence[int] = (64, 128, 256, 256, 256),
                 depths: Sequence[int] = (2, 3, 3, 3, 3), decoder_widths: Sequence[int] = (64, 128, 256, 256),
                 decoder_depths: Sequence[int] = (2, 3, 3, 3)):
        super().__init__()
        if len(decoder_widths) != len(widths) - 1 or len(depths) != len(widths) or len(decoder_depths) != len(decoder_widths):
            raise ValueError(f"{type(self).__name__} needs len(depths) == len(widths) and one feedback block per "
                             f"feedforward stage but the last: got widths {widths}, depths {depths}, decoder widths "
                             f"{decoder_widths}, decoder depths {decoder_depths}.")
        self.channels = channels
        self.encoder = nn.ModuleList(
            conv_stack(k, channels if i == 0 else widths[i - 1], w, 1 if i == 0 else 2)
            for i, (w, k) in enumerate(zip(widths, depths)))
        # feedback blocks, stored top (coarsest) first, in the order they run
        blocks, feedback = [], widths[-1]
        for level in reversed(range(len(decoder_widths))):
            lateral = widths[level] if self.lateral else 0
            blocks.append(conv_stack(decoder_depths[level], feedback + lateral, decoder_widths[level]))
            feedback = decoder_widths[level]
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(decoder_widths[0], channels, 1)  # the final 1×1 convolution

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Feedforward then feedback path; returns the 1×1 conv output (−dx̂ for DUNET, x̂ for DAE)."""
        skips = []
        h = x
        for stage in self.encoder:
            h = stage(h)
            skips.append(h)
        for block, skip in zip(self.decoder, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            block_input = torch.cat([h, skip], 1) if self.lateral else h
            h = block(block_input)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        x_hat = x + out if self.residual else out  # Eq. 4: x̂ = x* − dx̂, the head predicts −dx̂
        clamped = x_hat.clamp(0, 1)
        if self.training:  # same values, but gradients pass the clamp (else an out-of-range start never learns)
            return x_hat + (clamped - x_hat).detach()
        return clamped


class DUNET(Denoiser):
    """Denoising U-net: lateral connections, residual output x̂ = x* − dx̂ (Section 3.1.1).

    The 1×1 output convolution starts at zero, so an untrained DUNET is the identity and training starts
    from "no defense" rather than from random noise added to every image.
    """

    lateral = True
    residual = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted adversarial noise dx̂ (before the output is clamped to [0, 1])."""
        return -self.body(x)


class DAE(Denoiser):
    """Convolutional denoising autoencoder: DUNET without lateral connections, reconstructing x̂ itself."""

    lateral = False
    residual = False


def build_denoiser(arch: str, channels: int = 3, settings: HGDSettings | str = "paper") -> Denoiser:
    """A freshly initialised DAE or DUNET with the widths and depths of a scale."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown denoiser {arch!r}: choose one of {ARCHITECTURES}.")
    s = hgd_settings(settings)
    cls = DUNET if arch == "dunet" else DAE
    return cls(channels, s.widths, s.depths, s.decoder_widths, s.decoder_depths)


# ----------------------------------------------------------------------------------------------------------
# Objectives (Eqs. 3 and 5, Fig. 4)
# ----------------------------------------------------------------------------------------------------------

def top_conv_layer(classifier: nn.Module) -> nn.Module:
    """The module whose output is the topmost convolutional feature map (FGD's l = −2)."""
    layers = getattr(classifier, "layers", None)
    if layers is not None and len(layers) >= 2:
        return layers[-2]  # our CIFAR classifiers: [..., last conv stage (or pool), linear]
    net = getattr(classifier, "net", classifier)
    for name in ("Mixed_7c", "layer4", "features", "conv_head", "conv2d_7b"):  # Inception-v3, ResNet, VGG, timm
        if hasattr(net, name):
            return getattr(net, name)
    raise ValueError(f"Cannot tell which layer of {type(classifier).__name__} is the topmost convolutional one; "
                     "pass feature_layer=<module> explicitly.")


def pixel_guided_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ‖x − x̂‖₁ (mean over elements)."""
    return (x_hat - x).abs().mean()


def feature_guided_loss(classifier: nn.Module, x_hat: torch.Tensor, x: torch.Tensor,
                        layer: nn.Module | None = None) -> torch.Tensor:
    """Eq. 5 with l = −2 (FGD): ‖f_l(x̂) − f_l(x)‖₁ on the topmost convolutional feature map."""
    layer = top_conv_layer(classifier) if layer is None else layer
    with torch.no_grad():
        reference, = layer_outputs(classifier, [layer], x)
    features, = layer_outputs(classifier, [layer], x_hat)
    return (features - reference).abs().mean()


def logits_guided_loss(classifier: nn.Module, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Eq. 5 with l = −1 (LGD): ‖f(x̂) − f(x)‖₁ on the logits."""
    with torch.no_grad():
        reference = classifier(x)
    return (classifier(x_hat) - reference).abs().mean()


def class_guided_loss(classifier: nn.Module, x_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CGD: the target's cross-entropy on the denoised image with the true label."""
    return F.cross_entropy(classifier(x_hat), y)


def denoiser_loss(objective: str, x_hat: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  classifier: nn.Module | None = None, feature_layer: nn.Module | None = None) -> torch.Tensor:
    """The training loss of an objective in OBJECTIVES."""
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown HGD objective {objective!r}: choose one of {OBJECTIVES}.")
    if objective == "pixel":
        return pixel_guided_loss(x_hat, x)
    if classifier is None:
        raise ValueError(f"The {objective!r} objective is guided by a classifier: pass classifier=<the target>.")
    if objective == "fgd":
        return feature_guided_loss(classifier, x_hat, x, feature_layer)
    if objective == "lgd":
        return logits_guided_loss(classifier, x_hat, x)
    return class_guided_loss(classifier, x_hat, y)


# ----------------------------------------------------------------------------------------------------------
# Adversarial training and test sets (Section 4.1, Table 1)
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttackSetting:
    """One row of Table 1: FGSM or I-FGSM with `steps` steps against one model or an ensemble."""

    method: str  # "fgsm" | "ifgsm"
    steps: int
    models: tuple[str, ...]  # roles of the attacked models; several means their ensemble

    @property
    def name(self) -> str:
        return f"{'fgsm' if self.method == 'fgsm' else f'ifgsm{self.steps}'}:{'+'.join(self.models)}"


ENSEMBLE = ("target", "source_a", "source_b")
TRAIN_ATTACKS = (
    AttackSetting("fgsm", 1, ("target",)), AttackSetting("fgsm", 1, ("source_a",)),
    AttackSetting("fgsm", 1, ("source_b",)), AttackSetting("fgsm", 1, ENSEMBLE),
    AttackSetting("ifgsm", 2, ENSEMBLE), AttackSetting("ifgsm", 4, ENSEMBLE), AttackSetting("ifgsm", 8, ENSEMBLE),
)
TEST_ATTACKS = {
    "white": (AttackSetting("fgsm", 1, ("target",)), AttackSetting("ifgsm", 4, ENSEMBLE)),
    "black": (AttackSetting("fgsm", 1, ("holdout",)), AttackSetting("ifgsm", 4, ("holdout",))),
}
TEST_EPS = (4 / 255, 16 / 255)
TRAIN_EPS_RANGE = (1, 16)  # integers, inclusive, over 255


class Ensemble(nn.Module):
    """The mean of several classifiers' logits: the attacked model of an ensemble attack."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)


def sample_eps(n: int, generator: torch.Generator, low: int = TRAIN_EPS_RANGE[0], high: int = TRAIN_EPS_RANGE[1]
               ) -> torch.Tensor:
    """n budgets, each an integer drawn uniformly from [low, high] (inclusive), over 255."""
    return torch.randint(low, high + 1, (n,), generator=generator).float() / 255


def fgsm_attack(model: nn.Module, x: torch.Tensor, eps: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """FGSM (steps = 1) or I-FGSM with step ε/steps, with a separate ε per image, untargeted.

    eps: shape (N,) in pixel units. The label is the model's own prediction on x (Section 2.1).
    torchattacks' FGSM and BIM broadcast `eps` and `alpha` against the images, so an (N, 1, 1, 1) tensor
    gives each image its own budget; tests/test_hgd.py checks every image stays inside its own ball.
    """
    eps = eps.to(x.device, x.dtype).view(-1, 1, 1, 1)
    with torch.no_grad():
        labels = model(x).argmax(1)
    if steps == 1:
        attack = torchattacks.FGSM(model, eps=eps)
    else:
        attack = torchattacks.BIM(model, eps=eps, alpha=eps / steps, steps=steps)
    return attack(x, labels).detach()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as 8-bit images (the nearest multiple of 1/255)."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class AdversarialSet:
    """Clean images and adversarial versions of them, all 8-bit, with what made each one.

    clean: (M, C, H, W) uint8; clean_labels: (M,). adversarial: (N, C, H, W) uint8; source: (N,) index of its
    clean image; eps: (N,) budget in pixel units; attack: (N,) index into attack_names.
    """

    clean: torch.Tensor
    clean_labels: torch.Tensor
    adversarial: torch.Tensor
    source: torch.Tensor
    eps: torch.Tensor
    attack: torch.Tensor
    attack_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> torch.Tensor:
        return self.clean_labels[self.source]

    def select(self, mask: torch.Tensor) -> "AdversarialSet":
        """The adversarial images where mask is True, with only the clean images they come from."""
        idx = mask.nonzero(as_tuple=True)[0]
        keep = torch.unique(self.source[idx])
        remap = torch.full((len(self.clean),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        return AdversarialSet(self.clean[keep], self.clean_labels[keep], self.adversarial[idx],
                              remap[self.source[idx]], self.eps[idx], self.attack[idx], self.attack_names)

    def of_classes(self, classes: Sequence[int]) -> "AdversarialSet":
        return self.select(torch.isin(self.labels, torch.as_tensor(list(classes))))

    def at_eps(self, eps: float) -> "AdversarialSet":
        return self.select((self.eps - eps).abs() < 1e-6)

    def tensors(self, idx: torch.Tensor | None = None, device="cpu"):
        """(clean x, adversarial x*, labels) as floats in [0, 1] on a device, for rows idx (all by default)."""
        idx = torch.arange(len(self)) if idx is None else idx
        clean = self.clean[self.source[idx]].to(device).float().div_(255)
        adversarial = self.adversarial[idx].to(device).float().div_(255)
        return clean, adversarial, self.labels[idx].to(device)


def make_adversarial_set(models: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor,
                         attacks: Sequence[AttackSetting], eps: float | None = None, *, seed: int = 0,
                         device="cpu", batch_size: int = 250, progress: bool = False) -> AdversarialSet:
    """Attack every clean image with every attack setting.

    images: uint8 (M, C, H, W); labels: (M,) true labels (kept, not used by the attacks). eps: one budget
    for all (test sets), or None for the training recipe (a fresh integer ε in [1, 16]/255 per image).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (8-bit images); got {images.dtype}. Use to_uint8(x).")
    missing = sorted({m for a in attacks for m in a.models} - set(models))
    if missing:
        raise ValueError(f"The attacks need the classifiers {missing}; got {sorted(models)}.")
    gen = torch.Generator().manual_seed(seed)
    m = len(images)
    parts, sources, budgets, kinds = [], [], [], []
    bar = tqdm(total=len(attacks) * m, desc="adversarial set", disable=not progress, leave=False)
    for k, setting in enumerate(attacks):
        members = [models[name].eval() for name in setting.models]
        model = members[0] if len(members) == 1 else Ensemble(members).eval()
        budget = sample_eps(m, gen) if eps is None else torch.full((m,), float(eps))
        for start in range(0, m, batch_size):
            x = images[start:start + batch_size].to(device).float().div_(255)
            x_adv = fgsm_attack(model, x, budget[start:start + batch_size], setting.steps)
            parts.append(to_uint8(x_adv).cpu())
            bar.update(len(x))
        sources.append(torch.arange(m))
        budgets.append(budget)
        kinds.append(torch.full((m,), k, dtype=torch.long))
    bar.close()
    return AdversarialSet(images, labels.clone(), torch.cat(parts), torch.cat(sources), torch.cat(budgets),
                          torch.cat(kinds), tuple(a.name for a in attacks))


def make_test_sets(models: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
                   device="cpu", progress: bool = False) -> dict[str, AdversarialSet]:
    """The white-box (oblivious) and black-box test sets, each at ε ∈ TEST_EPS (Table 1)."""
    sets = {}
    for name, attacks in TEST_ATTACKS.items():
        per_eps = [make_adversarial_set(models, images, labels, attacks, eps, seed=seed, device=device,
                                        progress=progress) for eps in TEST_EPS]
        n_attacks = len(attacks)
        sets[name] = AdversarialSet(
            images, labels.clone(), torch.cat([s.adversarial for s in per_eps]), torch.cat([s.source for s in per_eps]),
            torch.cat([s.eps for s in per_eps]), torch.cat([s.attack for s in per_eps]), per_eps[0].attack_names)
        assert len(sets[name]) == len(TEST_EPS) * n_attacks * len(images)
    return sets


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


def train_denoiser(denoiser: Denoiser, objective: str, data: AdversarialSet, settings: HGDSettings | str, *,
                   classifier: nn.Module | None = None, feature_layer: nn.Module | None = None, device="cpu",
                   seed: int = 0, progress: bool = True) -> dict:
    """Train a denoiser in place on (clean, adversarial) pairs with one of the four objectives.

    objective: 'pixel' (Eq. 3), 'fgd', 'lgd' (Eq. 5, l = −2 / −1) or 'cgd'; the guided ones need the
    target `classifier` (held fixed, in eval mode). Adam with lr → lr_final after lr_drop_at of the steps.
    Returns metrics: the loss of each epoch, seconds, images per second.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown HGD objective {objective!r}: choose one of {OBJECTIVES}.")
    if objective != "pixel" and classifier is None:
        raise ValueError(f"The {objective!r} objective is guided by a classifier: pass classifier=<the target>.")
    s = hgd_settings(settings)
    device = resolve_device(device)
    denoiser.to(device).train()
    guide = classifier.to(device) if classifier is not None and objective != "pixel" else None
    if objective == "fgd" and feature_layer is None:
        feature_layer = top_conv_layer(guide)
    opt = torch.optim.Adam(denoiser.parameters(), lr=s.lr)
    n = len(data)
    steps_per_epoch = max(n // s.batch_size, 1)
    total = s.epochs * steps_per_epoch
    drop = int(round(s.lr_drop_at * total))
    gen = torch.Generator().manual_seed(seed)
    losses, step, seen = [], 0, 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"train {type(denoiser).__name__} ({objective})", disable=not progress, leave=False)
    with Frozen(guide):
        for epoch in range(s.epochs):
            order = torch.randperm(n, generator=gen)
            running = 0.0
            for b in range(steps_per_epoch):
                idx = order[b * s.batch_size:(b + 1) * s.batch_size]
                x, x_adv, y = data.tensors(idx, device)
                if s.flips:
                    flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device).view(-1, 1, 1, 1)
                    x, x_adv = torch.where(flip, x.flip(3), x), torch.where(flip, x_adv.flip(3), x_adv)
                if step == drop:
                    for group in opt.param_groups:
                        group["lr"] = s.lr_final
                loss = denoiser_loss(objective, denoiser(x_adv), x, y, guide, feature_layer)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.item()
                step += 1
                seen += len(idx)
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
            losses.append(running / steps_per_epoch)
    bar.close()
    seconds = time.perf_counter() - start
    denoiser.eval()
    return {"objective": objective, "epoch_losses": losses, "train_seconds": seconds,
            "train_images_per_second": seen / max(seconds, 1e-9), "train_pairs": n}


# ----------------------------------------------------------------------------------------------------------
# The classifiers, the data and the cached denoisers
# ----------------------------------------------------------------------------------------------------------

# role -> (library, model name) at paper scale (Section 4.1)
PAPER_MODELS = {
    "target": ("torchvision", "inception_v3"),  # IncV3
    "source_a": ("timm", "inception_resnet_v2.tf_in1k"),  # IncResV2
    "source_b": ("torchvision", "resnet50"),  # ResNet-50 (v1 here; the paper's is v2)
    "holdout": ("timm", "inception_v4.tf_in1k"),  # IncV4, black-box only
    "adv_trained": ("timm", "inception_resnet_v2.tf_ens_adv_in1k"),  # ensemble adversarial training (ensV3's method)
}
ROLES = ("target", "source_a", "source_b", "holdout", "adv_trained")


def _torchvision_weights(name: str):
    import torchvision.models as tvm

    return {"inception_v3": tvm.Inception_V3_Weights.IMAGENET1K_V1, "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1}[name]


def missing_paper_requirements(data_root: str | Path | None, dataset: str = "imagefolder") -> list[str]:
    """What the paper-scale run needs and does not find: data folders and pretrained weights, with where."""
    import torch.hub

    missing = []
    if dataset != "imagefolder":
        missing.append(f"dataset: the paper's setting is ImageNet; pass dataset='imagefolder' (got {dataset!r})")
    root = Path(data_root).expanduser() if data_root is not None else None
    for split, what in (("train", "ImageNet training images (30 per class are used)"),
                        ("test", "ImageNet validation images sorted into class folders (10 per class are used)")):
        folder = root / split if root is not None else None
        if folder is None or not folder.is_dir():
            missing.append(f"data: {what} at {folder if folder else '<data_root>/' + split}/<class>/<image>.JPEG "
                           "(pass data_root=... to the notebook)")
    for role, (library, name) in PAPER_MODELS.items():
        if library == "torchvision":
            file = Path(torch.hub.get_dir()) / "checkpoints" / _torchvision_weights(name).url.rsplit("/", 1)[-1]
            if not file.is_file():
                missing.append(f"weights: {role} = torchvision {name}: put {file.name} in {file.parent} "
                               f"(from {_torchvision_weights(name).url})")
        else:
            import timm
            from huggingface_hub import try_to_load_from_cache

            repo = timm.models.get_pretrained_cfg(name).hf_hub_id
            found = any(isinstance(try_to_load_from_cache(repo, f), str)
                        for f in ("model.safetensors", "pytorch_model.bin"))
            if not found:
                missing.append(f"weights: {role} = timm {name}: the Hugging Face repository {repo} is not in the "
                               f"hub cache (run `timm.create_model('{name}', pretrained=True)` on a machine with "
                               "internet access and copy ~/.cache/huggingface/hub)")
    return missing


def check_paper_requirements(data_root: str | Path | None, dataset: str = "imagefolder") -> None:
    """Fail early, listing everything the paper-scale run lacks and where to put it."""
    missing = missing_paper_requirements(data_root, dataset)
    if missing:
        raise FileNotFoundError("The paper-scale HGD run needs ImageNet data and pretrained weights that are not "
                                "here:\n  - " + "\n  - ".join(missing))


def pretrained_classifier(role: str, device="cpu") -> tuple[nn.Module, dict]:
    """A paper-scale ImageNet classifier by role, normalisation inside, and a record with a stable hash."""
    from lib.classifiers import ImageNetClassifier, imagenet_classifier

    library, name = PAPER_MODELS[role]
    if library == "torchvision":
        model = imagenet_classifier(name)
    else:
        import timm

        net = timm.create_model(name, pretrained=True)
        cfg = net.pretrained_cfg
        model = ImageNetClassifier(net, mean=cfg["mean"], std=cfg["std"])
    spec = {"kind": "pretrained", "library": library, "name": name}
    return model.to(device).eval(), {"cached": True, "metrics": {}, "hash": spec_hash(spec), "spec": spec}


def source_scale(scale: Scale, settings: HGDSettings) -> Scale:
    """The lib.settings.Scale of the cheaper extra classifiers at small scales (see the module docstring)."""
    return dataclasses.replace(scale, width=settings.source_width, n_train=settings.source_n_train,
                               epochs=settings.source_epochs)


def hgd_classifiers(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *, device="auto",
                    data_root=None, progress: bool = True, roles: Sequence[str] = ROLES) -> dict[str, tuple]:
    """role -> (classifier in eval mode, record) for the roles of the paper (see the module docstring)."""
    from lib.zoo import get_classifier

    scale = get_scale(scale)
    device = resolve_device(device)
    if scale.name == "paper":
        check_paper_requirements(data_root, dataset)
        return {role: pretrained_classifier(role, device) for role in roles}
    settings = hgd_settings(scale)
    small = source_scale(scale, settings)
    out = {}
    for role in roles:
        if role == "target":
            out[role] = get_classifier(dataset, "natural", scale, seed, device=device, data_root=data_root,
                                       progress=progress)
        elif role == "adv_trained":
            out[role] = get_classifier(dataset, "pgd_at", scale, seed, device=device, data_root=data_root,
                                       progress=progress)
        else:  # other seeds (hence other initialisations and training subsets) for different models
            offset = {"source_a": 1, "source_b": 2, "holdout": 3}[role]
            out[role] = get_classifier(dataset, "natural", small, seed + offset, device=device, data_root=data_root,
                                       progress=progress)
    return out


def balanced_images(dataset: str, split: str, n: int, seed: int = 0, *, classes: Sequence[int] | None = None,
                    data_root=None, image_size: int = PAPER_IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (uint8) and labels from a split, the same number from each class (of `classes` if given)."""
    data = load_dataset(dataset, split, data_root, image_size=image_size) if dataset == "imagefolder" \
        else load_dataset(dataset, split, data_root)
    labels = data.labels if isinstance(data, ImageData) else torch.tensor(data.dataset.targets)
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    per_class = max(n // len(classes), 1)
    gen = torch.Generator().manual_seed(seed)
    idx = []
    for c in classes:
        members = (labels == c).nonzero(as_tuple=True)[0]
        idx.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    idx = torch.cat(idx)
    idx = idx[torch.randperm(len(idx), generator=gen)]
    if isinstance(data, ImageData):
        return data.images[idx], labels[idx]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data.dataset, idx.tolist()), batch_size=64,
                                         num_workers=4)
    images = torch.cat([to_uint8(x) for x, _ in loader])
    return images, labels[idx]


_TRAINING_SETS: dict[str, AdversarialSet] = {}  # generated once per process, only when a denoiser must train


def training_set(dataset: str, scale: str | Scale, seed: int, sources: dict[str, tuple], *,
                 classes: Sequence[int] | None = None, device="cpu", data_root=None,
                 progress: bool = True) -> AdversarialSet:
    """The TrainSet of Table 1 for a scale (memoised in this process)."""
    s = hgd_settings(get_scale(scale))
    key = spec_hash({"dataset": dataset, "n": s.n_train, "seed": seed, "classes": classes,
                     "sources": {r: sources[r][1]["hash"] for r in ENSEMBLE}})
    if key not in _TRAINING_SETS:
        images, labels = balanced_images(dataset, "train", s.n_train, seed, classes=classes, data_root=data_root)
        models = {r: sources[r][0] for r in ENSEMBLE}
        _TRAINING_SETS[key] = make_adversarial_set(models, images, labels, TRAIN_ATTACKS, None, seed=seed,
                                                   device=device, progress=progress)
    return _TRAINING_SETS[key]


def test_sets(dataset: str, scale: str | Scale, seed: int, classifiers: dict[str, tuple], *, device="cpu",
              data_root=None, progress: bool = True) -> dict[str, AdversarialSet]:
    """WhiteTestSet and BlackTestSet (Table 1) on class-balanced test images."""
    s = hgd_settings(get_scale(scale))
    images, labels = balanced_images(dataset, "test", s.n_test, seed, data_root=data_root)
    models = {r: classifiers[r][0] for r in ("target", "source_a", "source_b", "holdout")}
    return make_test_sets(models, images, labels, seed=seed + 1, device=device, progress=progress)


def _training_fields(s: HGDSettings) -> dict:
    """The settings that determine a trained denoiser (the rest only change evaluation)."""
    keys = ("widths", "depths", "decoder_widths", "decoder_depths", "n_train", "epochs", "batch_size", "lr",
            "lr_final", "lr_drop_at", "flips")
    return {k: getattr(s, k) for k in keys}


def get_hgd(objective: str, dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *,
            target: nn.Module, target_record: dict, arch: str = "dunet", classes: Sequence[int] | None = None,
            sources: dict[str, tuple] | None = None, device="auto", data_root=None, cache: ModelCache | None = None,
            progress: bool = True) -> tuple[Denoiser, dict]:
    """A trained denoiser (eval mode, on device) and its record, through the model cache.

    objective: one of OBJECTIVES; target/target_record: the guiding classifier (ignored by 'pixel' training
    but part of the spec, so every denoiser names the target it was built for); arch: 'dunet' or 'dae';
    classes: train on these classes only (Table 5); sources: the Table 1 attack sources (`hgd_classifiers`,
    loaded when None). The spec holds the guide's and the sources' hashes and the objective.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown HGD objective {objective!r}: choose one of {OBJECTIVES}.")
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown denoiser {arch!r}: choose one of {ARCHITECTURES}.")
    scale = get_scale(scale)
    s = hgd_settings(scale)
    device = resolve_device(device)
    cache = cache or ModelCache()
    if sources is None:
        sources = hgd_classifiers(dataset, scale, seed, device=device, data_root=data_root, progress=progress,
                                  roles=ENSEMBLE)
    channels = dataset_info(dataset).channels
    spec = {
        "kind": "hgd_denoiser", "version": HGD_VERSION, "arch": arch, "objective": objective, "dataset": dataset,
        "scale": scale.name, "settings": _training_fields(s), "seed": seed, "guide": target_record["hash"],
        "sources": {r: sources[r][1]["hash"] for r in ENSEMBLE}, "train_attacks": [a.name for a in TRAIN_ATTACKS],
        "train_eps": list(TRAIN_EPS_RANGE), "classes": None if classes is None else list(classes),
    }

    def build() -> Denoiser:
        seed_everything(seed)
        return build_denoiser(arch, channels, s)

    def train(model: Denoiser) -> dict:
        data = training_set(dataset, scale, seed, sources, classes=classes, device=device, data_root=data_root,
                            progress=progress)
        seed_everything(seed)
        return train_denoiser(model, objective, data, s, classifier=target, device=device, seed=seed,
                              progress=progress)

    model, record = cache.load_or_train(spec, build, train, device)
    record["spec"] = spec
    return model, record


# ----------------------------------------------------------------------------------------------------------
# Evaluation on the test sets (Tables 2-5)
# ----------------------------------------------------------------------------------------------------------

@torch.no_grad()
def _purify(purifier: nn.Module | None, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    if purifier is None:
        return x
    return torch.cat([purifier(part) for part in x.split(batch_size)])


@torch.no_grad()
def evaluate_test_sets(purifier: nn.Module | None, classifier: nn.Module, sets: dict[str, AdversarialSet], *,
                       defense: str, classifier_name: str, dataset: str, seed: int = 0, device="cpu",
                       batch_size: int = 250) -> list[dict]:
    """Accuracy and denoising loss (mean |x̂ − x|) of classifier ∘ purifier: clean, then each set and ε.

    A set's accuracy at an ε pools its attacks (as the paper's tables do). Rows are lib.results rows with
    the extra columns test_set and denoising_loss; threat_model is 'oblivious' for the white-box set (the
    paper's footnote 2) and 'transfer' for the black-box set.
    """
    if purifier is not None:
        purifier.eval()
    classifier.eval()
    rows = []
    first = next(iter(sets.values()))
    start = time.perf_counter()
    x = first.clean.to(device).float().div_(255)
    y = first.clean_labels.to(device)
    x_hat = _purify(purifier, x, batch_size)
    correct = sum(int((classifier(a).argmax(1) == b).sum()) for a, b in zip(x_hat.split(batch_size), y.split(batch_size)))
    rows.append(result_row(defense=defense, classifier=classifier_name, dataset=dataset, threat_model="none",
                           attack="none", eps=0.0, steps=0, step_size=0.0, correct=correct, n=len(y), seed=seed,
                           seconds=time.perf_counter() - start, test_set="clean",
                           denoising_loss=float((x_hat - x).abs().mean())))
    for name, data in sets.items():
        for eps in sorted(set(round(float(e), 8) for e in data.eps)):
            start = time.perf_counter()
            part = data.at_eps(eps)
            correct, loss_sum, count = 0, 0.0, 0
            for idx in torch.arange(len(part)).split(batch_size):
                x, x_adv, y = part.tensors(idx, device)
                x_hat = _purify(purifier, x_adv, batch_size)
                correct += int((classifier(x_hat).argmax(1) == y).sum())
                loss_sum += float((x_hat - x).abs().sum())
                count += x.numel()
            steps = max(a.steps for a in TEST_ATTACKS.get(name, ())) if name in TEST_ATTACKS else 0
            rows.append(result_row(defense=defense, classifier=classifier_name, dataset=dataset,
                                   threat_model="oblivious" if name == "white" else "transfer",
                                   attack="+".join(part.attack_names), eps=eps, steps=steps, step_size=float("nan"),
                                   correct=correct, n=len(part), seed=seed, seconds=time.perf_counter() - start,
                                   test_set=name, denoising_loss=loss_sum / count))
    return rows


TABLE_COLUMNS = ("clean", "white ε=4", "white ε=16", "black ε=4", "black ε=16")


def results_table(rows: Sequence[dict], value: str = "accuracy") -> pd.DataFrame:
    """Rows of `evaluate_test_sets` as the paper's tables: one row per defense, columns TABLE_COLUMNS."""
    frame = pd.DataFrame(list(rows))
    frame["column"] = [("clean" if t == "clean" else f"{t} ε={round(e * 255)}") for t, e in
                       zip(frame["test_set"], frame["eps"])]
    order = list(dict.fromkeys(frame["defense"]))
    table = frame.pivot_table(index="defense", columns="column", values=value, aggfunc="first")
    return table.reindex(index=order, columns=[c for c in TABLE_COLUMNS if c in table.columns])


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
