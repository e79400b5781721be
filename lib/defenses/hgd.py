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

The classifiers in the paper's roles, the Table 1 data and the cached getter `get_hgd` are in
lib.defenses.hgd_setup; the attack sets in lib.attacks.attack_sets; the tables in lib.eval.stored_sets.

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
- The output is clamped to [0, 1] (the purifier contract of lib.core.purifiers). Training sees the clamped
  values (what is trained is what is evaluated) but passes gradients straight through the clamp, so
  pixels that start out of range still learn; in eval mode (attacks, evaluation) the clamp is exact.
- DUNET's final 1×1 convolution is initialised to zero (an untrained DUNET is the identity): at the small
  scales a denoiser gets a few hundred Adam steps, and a random start spends them undoing its own noise.
- Widths and depths shrink only at `smoke` (and widths at `quick`); see `SETTINGS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lib.attacks.attack_sets import AdversarialSet, pair_batches
from lib.core.fit import Frozen, fit
from lib.core.purifiers import Purifier
from lib.core.settings import Scale, resolve_device, scale_settings
from lib.models.layers import layer_outputs

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
    # a dry run's training batch (lib.core.dry_run): at 299 px DAE's forward and backward take about 0.6 GB an
    # image on a CPU, so the capped 32 would need about 20 GB; with 8 the capped paper run peaks near 10 GB
    dry_run_batch: ClassVar[int] = 8


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
    """The HGD settings of a scale (by name or lib.core.settings.Scale)."""
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
# Training (Section 4.2)
# ----------------------------------------------------------------------------------------------------------

class HGDTrainer:
    """`step(x, x_adv, y)` (lib.core.fit): one Adam step of the denoiser on the objective's loss;
    `schedule` drops lr to lr_final after lr_drop_at of the steps."""

    def __init__(self, denoiser: Denoiser, objective: str, settings: HGDSettings, guide: nn.Module | None,
                 feature_layer: nn.Module | None):
        self.model, self.objective, self.settings = denoiser, objective, settings
        self.guide, self.feature_layer = guide, feature_layer
        self.opt = torch.optim.Adam(denoiser.parameters(), lr=settings.lr)

    def schedule(self, step: int, total: int) -> None:
        if step == int(round(self.settings.lr_drop_at * total)):
            for group in self.opt.param_groups:
                group["lr"] = self.settings.lr_final

    def step(self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> dict:
        loss = denoiser_loss(self.objective, self.model(x_adv), x, y, self.guide, self.feature_layer)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item()}


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
    denoiser.to(device)
    guide = classifier.to(device) if classifier is not None and objective != "pixel" else None
    if objective == "fgd" and feature_layer is None:
        feature_layer = top_conv_layer(guide)
    trainer = HGDTrainer(denoiser, objective, s, guide, feature_layer)
    with Frozen(guide):
        log = fit(trainer, pair_batches(data, s.batch_size, seed, device, s.flips), epochs=s.epochs,
                  desc=f"train {type(denoiser).__name__} ({objective})", progress=progress)
    return {"objective": objective, "epoch_losses": log.history["loss"], "train_seconds": log.seconds,
            "train_images_per_second": log.images_per_second, "train_pairs": len(data)}
