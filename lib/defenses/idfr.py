"""IDFR: an input denoiser (ID) in front of the target and a feature restorer (FR) inside it.

Paper: "Enhanced Countering Adversarial Attacks via Input Denoising and Feature Restoring"
(../shared/papers/001_7e4ecf4c826261f3.txt). The defended model is head ∘ FR ∘ encoder ∘ ID (Fig. 1): the
ID cleans the image, the target's encoder embeds it, the FR moves the embedding back into the region the
target's head classifies correctly, and the unchanged head decides.

| paper | here |
|---|---|
| ID, Appendix A.1, Table 6 | `InputDenoiser` |
| Eq. 3, Algorithm 1 (CE of the target on ID outputs of AEs and enhanced clean images) | `IDTrainer` |
| multi-round Gaussian augmentation (Jeong & Shin 2020) of the clean set, x_e | `gaussian_rounds` |
| FR, Table 7 | `FeatureRestorer` (`fr_widths`) |
| Eq. 6, Algorithm 2 (CE of the head on FR of convex combinations α·h_x + (1−α)·h_x̃) | `same_label_partners`, `convex_mix`, `FRTrainer` |
| f_enc, f_cls | `encoder_head(classifier)` |
| head ∘ FR ∘ encoder | `RestoredClassifier`; the harness evaluates `RestoredClassifier ∘ InputDenoiser` |

Deviations and choices (the paper leaves these open, or its released code does something else):
- Table 6 lists nine 3×3 conv+BN+ReLU layers at one resolution (no pooling is listed), with the 3rd and 5th
  outputs concatenated into the 6th (64 + 128 = 192 channels) and the 2nd and 7th into the 8th (32 + 64 = 96);
  the text says "7 layers". We build the nine layers of the table. Its last layer is conv+BN+ReLU with 3
  channels, so outputs are ≥ 0; we clamp them at 1 (the purifier contract is [0, 1]), and start that layer's
  BN at γ = 0.1, β = 0.5 (mid-grey outputs with gradients everywhere; see `InputDenoiser`). `width` scales
  every channel count (1 = the table; quick uses 1/4 on 2 CPU cores). Eq. 3 has no pixel loss: the ID is free
  to output whatever the target classifies correctly, image-like or not.
- The training AEs (Algorithm 1, line 2: x′ ← x + ε from an attack A the paper does not name) are FGSM and
  BIM against the target itself, ε drawn per batch from `train_eps` (the budgets of Tables 1-3). They are
  crafted afresh for every batch against the fixed target (Algorithm 1 crafts them once; same distribution).
- x_e: `rounds` copies of each clean image with N(0, σ²) noise, clamped to [0, 1]; σ is not in the paper.
- The released code trains a different U-Net with an L1 loss on the target's penultimate features
  (../shared/papers/README.md); we follow the paper: cross-entropy of the target (Eq. 3).
- FR (Table 7): 512→256→128→32→128→256→512 with ReLU after every layer, for ResNet18's 512-d embedding.
  For another embedding width d the same shape is scaled: d/2, d/4, max(d/16, classes), d/4, d/2, d.
- Eq. 6's pairs: h_x and h_x̃ are embeddings of ID outputs with the same label (the hull Co(x̂ ∪ x̂′) is of
  one class). `same_label_partners` pairs each embedding of a batch with a random one of the same label from
  that batch (itself when it is the only one), mixed with α ~ U(0, 1) per pair; the released code also mixes
  same-class denoised features.
- Adam at lr 0.01 for both (the paper); epochs and training-set size per scale (`SETTINGS`).
- Deterministic and differentiable: a white-box attacker differentiates through ID, encoder, FR and head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.attacks.pgd import pgd_linf
from lib.core.purifiers import Purifier
from lib.core.settings import check_eps, check_images

# Table 6: output channels of the nine layers (the 6th takes the 3rd ‖ 5th, the 8th the 2nd ‖ 7th)
TABLE6 = (32, 32, 64, 64, 128, 192, 64, 96)


@dataclass(frozen=True)
class IDFRSettings:
    """Sizes and training of IDFR at one scale (units in comments)."""

    width: float = 1.0  # multiplies Table 6's channel counts
    n_train: int = 50_000  # training images
    id_epochs: int = 100  # Algorithm 1 (the paper)
    fr_epochs: int = 80  # Algorithm 2 (the paper)
    batch_size: int = 128
    lr: float = 0.01  # Adam, both models (the paper)
    train_eps: tuple[float, ...] = (4 / 255, 8 / 255, 16 / 255)  # budgets of the training AEs
    bim_steps: int = 10  # steps of the BIM training attack (step 2.5·ε/steps); FGSM is the other half
    rounds: int = 2  # Gaussian copies of each clean image (x_e)
    sigma: float = 0.1  # their noise


SETTINGS = {
    "smoke": IDFRSettings(width=0.125, n_train=128, id_epochs=1, fr_epochs=1, batch_size=32, bim_steps=2, rounds=1),
    "quick": IDFRSettings(width=0.25, n_train=4_000, id_epochs=3, fr_epochs=4, batch_size=64, bim_steps=5),
    "paper": IDFRSettings(),
}


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class InputDenoiser(Purifier):
    """ID of Table 6. (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1]; any H, W (no pooling)."""

    def __init__(self, channels: int = 3, width: float = 1.0):
        super().__init__()
        c = [max(1, round(k * width)) for k in TABLE6]
        self.channels = channels
        self.l1, self.l2 = _conv(channels, c[0]), _conv(c[0], c[1])
        self.l3, self.l4, self.l5 = _conv(c[1], c[2]), _conv(c[2], c[3]), _conv(c[3], c[4])
        self.l6 = _conv(c[2] + c[4], c[5])
        self.l7 = _conv(c[5], c[6])
        self.l8 = _conv(c[1] + c[6], c[7])
        self.l9 = _conv(c[7], channels)
        # the output layer's BN starts at γ = 0.1, β = 0.5: mid-grey outputs with gradients at every pixel (the
        # default γ = 1, β = 0 sends half of them through the ReLU at 0 and others past the clamp at 1)
        nn.init.constant_(self.l9[1].weight, 0.1)
        nn.init.constant_(self.l9[1].bias, 0.5)

    def forward(self, x):
        check_images(x, "x")
        if x.shape[1] != self.channels:
            raise ValueError(f"This ID takes {self.channels}-channel images; got {x.shape[1]} channels.")
        o2 = self.l2(self.l1(x))
        o3 = self.l3(o2)
        o5 = self.l5(self.l4(o3))
        o7 = self.l7(self.l6(torch.cat([o3, o5], 1)))
        return self.l9(self.l8(torch.cat([o2, o7], 1))).clamp(max=1)


def fr_widths(embedding_dim: int, n_classes: int) -> tuple[int, ...]:
    """Table 7's layer widths for an embedding of `embedding_dim` (512 gives the paper's exactly)."""
    d = embedding_dim
    return (d // 2, d // 4, max(d // 16, n_classes), d // 4, d // 2, d)


class FeatureRestorer(nn.Module):
    """FR of Table 7: six fully connected layers with ReLU, (N, d) -> (N, d)."""

    def __init__(self, embedding_dim: int, n_classes: int):
        super().__init__()
        widths = (embedding_dim, *fr_widths(embedding_dim, n_classes))
        self.net = nn.Sequential(*[m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.ReLU())])

    def forward(self, h):
        return self.net(h)


def encoder_head(classifier: nn.Module) -> tuple:
    """(f_enc, f_cls) of a lib classifier: its penultimate embedding `features` and its last linear layer."""
    if not (hasattr(classifier, "features") and isinstance(getattr(classifier, "linear", None), nn.Linear)):
        raise TypeError(f"IDFR's feature restorer needs a classifier with `features(x)` and a `linear` head "
                        f"(lib.models.classifiers' CifarResNet and CifarVGG); got {type(classifier).__name__}.")
    return classifier.features, classifier.linear


class RestoredClassifier(nn.Module):
    """head ∘ FR ∘ encoder: the target with the feature restorer between its encoder and its head.

    The target is shared, not copied, and is not trained here. `restore=False` skips FR (the ID-only
    ablation of Table 5 and the target itself behind ID)."""

    def __init__(self, target: nn.Module, restorer: FeatureRestorer, restore: bool = True):
        super().__init__()
        encoder_head(target)  # checks the split exists
        self.target, self.restorer, self.restore = target, restorer, restore

    def forward(self, x):
        h = self.target.features(x)
        return self.target.linear(self.restorer(h) if self.restore else h)


def gaussian_rounds(x: torch.Tensor, rounds: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """x_e: `rounds` noisy copies of x (N(0, σ²) per pixel, clamped to [0, 1]), stacked: (rounds·N, C, H, W)."""
    noise = torch.randn((rounds, *x.shape), generator=generator, device=x.device, dtype=x.dtype)
    return (x[None] + sigma * noise).clamp(0, 1).flatten(0, 1)


def training_examples(target: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, bim_steps: int,
                      generator: torch.Generator) -> torch.Tensor:
    """Algorithm 1's x′ for one batch: FGSM on the first half, BIM on the second, against the target alone."""
    check_eps(eps)
    half = len(x) // 2
    fgsm = pgd_linf(target, x[:half], y[:half], eps=eps, steps=1, step_size=eps, random_start=False)
    bim = pgd_linf(target, x[half:], y[half:], eps=eps, steps=bim_steps, step_size=2.5 * eps / bim_steps,
                   random_start=False, generator=generator)
    return torch.cat([fgsm, bim])


def training_batch(target: nn.Module, x: torch.Tensor, y: torch.Tensor, s: IDFRSettings, generator: torch.Generator,
                   attack_generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x′ ‖ x_e of one batch and their labels: the AEs at an ε drawn from `s.train_eps`, then `s.rounds`
    Gaussian copies of x (Algorithms 1 and 2 both train on this set)."""
    eps = s.train_eps[int(torch.randint(len(s.train_eps), (1,), generator=generator))]
    x_adv = training_examples(target, x, y, eps, s.bim_steps, attack_generator)
    x_e = gaussian_rounds(x, s.rounds, s.sigma, attack_generator)
    return torch.cat([x_adv, x_e]), torch.cat([y, y.repeat(s.rounds)])


def same_label_partners(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each row i a random index j with y[j] == y[i] (a permutation within each label; i itself when its
    label is unique in the batch)."""
    partner = torch.arange(len(y), device=y.device)
    for label in y.unique():
        members = (y == label).nonzero(as_tuple=True)[0]
        order = torch.randperm(len(members), generator=generator).to(y.device)
        partner[members] = members[order]
    return partner


def convex_mix(h: torch.Tensor, partner: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Eq. 6's input α·h_x + (1−α)·h_x̃ per row: h_x = h[i], h_x̃ = h[partner[i]], α of shape (N,) in [0, 1]."""
    if alpha.min() < 0 or alpha.max() > 1:
        raise ValueError("alpha must lie in [0, 1]: Eq. 6 mixes within the convex hull.")
    a = alpha.to(h.dtype)[:, None]
    return a * h + (1 - a) * h[partner]


class IDTrainer:
    """Algorithm 1 (lib.core.fit contract): `step(x, y)` crafts the batch's AEs against the target, draws x_e
    and takes one Adam step on the target's cross-entropy of ID(x′ ‖ x_e) (Eq. 3); the target is fixed."""

    def __init__(self, denoiser: InputDenoiser, target: nn.Module, settings: IDFRSettings, device, seed: int = 0):
        self.model, self.target, self.settings = denoiser, target, settings
        self.opt = torch.optim.Adam(denoiser.parameters(), lr=settings.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.attack_generator = torch.Generator(device=device).manual_seed(seed)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        inputs, labels = training_batch(self.target, x, y, self.settings, self.generator, self.attack_generator)
        self.model.train()
        logits = self.target(self.model(inputs))
        loss = F.cross_entropy(logits, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.model.parameters()))
        self.opt.step()
        n = len(y)
        accuracy = (logits.argmax(1) == labels).float()
        return {"loss": loss.item(), "adv_accuracy": accuracy[:n].mean().item(),
                "clean_accuracy": accuracy[n:].mean().item()}


class FRTrainer:
    """Algorithm 2 (lib.core.fit contract): `step(x, y)` embeds the ID outputs of the batch's AEs and x_e
    (the ID and target fixed), mixes same-label pairs (`convex_mix`) and takes one Adam step on the head's
    cross-entropy of FR(mix) (Eq. 6)."""

    def __init__(self, restorer: FeatureRestorer, denoiser: InputDenoiser, target: nn.Module,
                 settings: IDFRSettings, device, seed: int = 0):
        self.model, self.denoiser, self.target, self.settings = restorer, denoiser, target, settings
        self.encoder, self.head = encoder_head(target)
        self.opt = torch.optim.Adam(restorer.parameters(), lr=settings.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.attack_generator = torch.Generator(device=device).manual_seed(seed + 1)

    def embeddings(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """h of ID(x′) and ID(x_e) for one batch, with their labels (no gradients: both models are fixed)."""
        inputs, labels = training_batch(self.target, x, y, self.settings, self.generator, self.attack_generator)
        with torch.no_grad():
            h = self.encoder(self.denoiser(inputs))
        return h, labels

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        h, labels = self.embeddings(x, y)
        alpha = torch.rand(len(labels), generator=self.generator).to(h.device)  # α ~ U(0, 1) per pair
        mixed = convex_mix(h, same_label_partners(labels, self.generator), alpha)
        self.model.train()
        logits = self.head(self.model(mixed))
        loss = F.cross_entropy(logits, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.model.parameters()))
        self.opt.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(1) == labels).float().mean().item()}
