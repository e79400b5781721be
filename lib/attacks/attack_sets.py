"""Stored sets of adversarial examples: HGD's Table 1 TrainSet and its white-box and black-box TestSets.

Each clean image is attacked by FGSM or I-FGSM (torchattacks) against one classifier or an ensemble, with its
own budget ε; the adversarial images are kept as 8-bit images with what made each one (`AdversarialSet`), so
a denoiser trains on and is scored against exactly the same examples every time. The classifiers are named
by their roles in Liao et al. 2018 (Section 4.1): `target`, `source_a`, `source_b` (the training ensemble
with the target) and `holdout` (black-box only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torchattacks
from torch import nn

from lib.core.fit import progress_bar


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


def pair_batches(data: AdversarialSet, batch_size: int, seed: int, device, flips: bool = True):
    """epoch -> (clean, adversarial, label) batches of a stored set: a fresh order each epoch from one seeded
    generator, which also draws the joint horizontal flips of each pair (the public code's augmentation)."""
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = max(len(data) // batch_size, 1)

    def batches(epoch: int):
        order = torch.randperm(len(data), generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x, x_adv, y = data.tensors(idx, device)
            if flips:
                flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device).view(-1, 1, 1, 1)
                x, x_adv = torch.where(flip, x.flip(3), x), torch.where(flip, x_adv.flip(3), x_adv)
            yield x, x_adv, y
    batches.steps_per_epoch = steps_per_epoch
    return batches


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
    bar = progress_bar(total=len(attacks) * m, desc="adversarial set", disable=not progress, leave=False)
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
