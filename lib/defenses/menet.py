"""ME-Net: random pixel masking followed by matrix estimation, and the classifier trained on its output.

Paper: Yang, Zhang, Katabi, Xu, "ME-Net: Towards Effective Adversarial Robustness with Matrix Estimation",
ICML 2019 (public code: YyzHarry/ME-Net). DIR Table 3 evaluates two ME-Net models under BPDA+EOT: one whose
classifier is trained naturally on ME-Net images ("ME-Net") and one adversarially trained through the
ME-Net layer ("ME-Net-A").

The preprocessing (`MENet`, a random purifier): scale the image to [−1, 1]; lay the C channels side by side
as one H × (C·W) matrix (the code's default `--me-channel concat`); keep each entry with probability p
(missing entries are 0); estimate the matrix by universal singular value thresholding (USVT, Chatterjee
2015) the way the authors' code does it: keep the top ⌊svd_fraction·H⌋ singular values of the observed
matrix, divide by the observed fraction, clip to [−1, 1]; map back to [0, 1]. At test time p is drawn
uniformly from [p_low, p_high] per image (the code's test-time behaviour).

The ME-Net classifier (`train_menet_classifier`): cross-entropy on ME-Net images, a fresh mask per image
and epoch (the code precomputes 10 masks per image with p spread over [p_low, p_high]; drawing afresh each
epoch gives the same distribution without storing 10 copies). The adversarial variant crafts PGD examples
(ε 8/255) against classifier ∘ ME-Net with the ME-Net layer replaced by the identity on the backward pass
(BPDA), exactly as the authors' `train_adv.py` does, then trains on the ME-Net images of those examples.

Our choices and deviations, and why:
- The repository's defense is a purifier in front of an unchanged classifier; ME-Net changes the classifier.
  `get_menet(...)` therefore returns the purifier *and* the classifier it trains (lib.defenses.baselines puts it in the
  record as `record["classifier"]`); evaluate ME-Net as classifier ∘ MENet with that classifier.
- Matrix estimation runs in torch (`torch.linalg.svd`, batched), so the purifier is differentiable
  (`differentiable = True`): white-box and white-box+EOT attacks go through the SVD; `bpda_surrogate` is the
  identity, the BPDA of the paper and of DIR Table 3.
- USVT only (the paper also offers nuclear-norm minimisation and Soft-Impute; USVT is the code's default and
  the only one that is cheap and differentiable in torch).
- Observation probability p ∈ [0.6, 0.8] and svd_fraction 0.25 (rank 8 of 32) at every scale. The code's
  defaults (p ∈ [0.8, 1.0], 25 of 32 singular values) barely change the embedded dataset's images, and
  p ∈ [0.4, 0.6] leaves little of their shapes after USVT's zero filling (the channel-concatenated matrix
  masks each colour channel independently); the paper itself spreads its models over p from 0.2 to 1.
- At `smoke` and `quick` scale the classifier starts from the target classifier's weights and is fine-tuned
  (1 epoch) instead of trained from scratch (200 epochs in the paper): the 2-core CPU budget allows no more.
  At `paper` scale it is trained from scratch with the paper's schedule.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.attacks.pgd import pgd_linf
from lib.core.data import ImageData, augment_flip_crop
from lib.core.fit import epoch_batches, fit
from lib.core.purifiers import Purifier
from lib.core.settings import check_eps, check_images


class MENet(Purifier):
    """Random masking + USVT matrix estimation. (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    p: observation probability, a float or a (low, high) range drawn uniformly per image.
    svd_fraction: fraction of the H singular values kept (rank k = max(1, ⌊svd_fraction·H⌋)).
    Random (the masks and p, from `self.generator`); differentiable (torch SVD); identity BPDA surrogate.
    """

    randomized = True
    differentiable = True

    def __init__(self, p: float | tuple[float, float] = (0.6, 0.8), svd_fraction: float = 0.25, seed: int = 0):
        super().__init__(seed)
        low, high = (p, p) if isinstance(p, (int, float)) else tuple(p)
        if not 0 < low <= high <= 1:
            raise ValueError(f"Observation probability p={p!r} must satisfy 0 < low <= high <= 1 "
                             "(the fraction of pixels kept).")
        if not 0 < svd_fraction <= 1:
            raise ValueError(f"svd_fraction={svd_fraction!r} must be in (0, 1]: the fraction of singular values kept.")
        self.p_low, self.p_high, self.svd_fraction = float(low), float(high), float(svd_fraction)

    def extra_repr(self) -> str:
        return f"p=[{self.p_low}, {self.p_high}], svd_fraction={self.svd_fraction}"

    def forward(self, x):
        check_images(x, "x")
        n, c, h, w = x.shape
        gen = self.generator(x.device)
        matrix = (x * 2 - 1).permute(0, 2, 1, 3).reshape(n, h, c * w)  # channels side by side: H × (C·W)
        p = self.p_low + (self.p_high - self.p_low) * torch.rand(n, 1, 1, generator=gen, device=x.device, dtype=x.dtype)
        mask = (torch.rand(matrix.shape, generator=gen, device=x.device, dtype=x.dtype) < p).to(x.dtype)
        observed = mask.mean((1, 2), keepdim=True).clamp_min(1.0 / mask[0].numel())
        u, s, vh = torch.linalg.svd(matrix * mask, full_matrices=False)
        k = max(1, int(self.svd_fraction * min(h, c * w)))
        estimate = (u[:, :, :k] * s[:, None, :k]) @ vh[:, :k, :] / observed
        estimate = estimate.clamp(-1, 1).reshape(n, h, c, w).permute(0, 2, 1, 3)
        return (estimate + 1) / 2


@dataclass(frozen=True)
class MENetSettings:
    """ME-Net preprocessing and classifier training at one scale (units in comments)."""

    p_low: float = 0.6  # observation probability range (fraction of pixels kept)
    p_high: float = 0.8
    svd_fraction: float = 0.25  # fraction of singular values kept by USVT
    from_target: bool = True  # fine-tune the target's weights (True) or train the same architecture from scratch
    n_train: int = 10_000  # training images
    epochs: int = 1
    batch_size: int = 128
    lr: float = 0.02  # SGD (momentum 0.9, Nesterov), one-cycle schedule like lib.models.recipes
    weight_decay: float = 5e-4
    # adversarial variant (ME-Net-A): PGD through the ME-Net layer with BPDA
    eps: float = 8 / 255
    attack_steps: int = 2
    step_size: float = 4 / 255


SETTINGS = {
    "smoke": MENetSettings(n_train=256, epochs=1, batch_size=64, attack_steps=1, step_size=8 / 255),
    "quick": MENetSettings(n_train=6_000, epochs=1, attack_steps=2, step_size=5 / 255),
    # the paper: ResNet-18 from scratch, 200 epochs, SGD lr 0.1, wd 1e-4 (train_pure.py; AT: PGD-7, 2/255)
    "paper": MENetSettings(from_target=False, n_train=50_000, epochs=200, lr=0.1, weight_decay=1e-4,
                           attack_steps=7, step_size=2 / 255),
}


def bpda_pgd(classifier: nn.Module, purifier: MENet, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
             step_size: float, generator: torch.Generator) -> torch.Tensor:
    """PGD with a uniform random start against classifier ∘ ME-Net, the identity on ME-Net's backward pass."""
    def bpda(adv):  # forward ME-Net, backward identity
        return classifier(adv + (purifier(adv.detach()) - adv).detach())
    return pgd_linf(bpda, x, y, eps=eps, steps=steps, step_size=step_size, generator=generator)


class MENetClassifierTrainer:
    """`step(x, y)` (lib.core.fit): flip-and-crop, PGD-BPDA examples when adversarial (ME-Net-A), then one SGD
    step of the classifier on the ME-Net images; `schedule` runs the one-cycle lr."""

    def __init__(self, classifier: nn.Module, purifier: MENet, settings: MENetSettings, *, adversarial: bool,
                 total_steps: int, device, seed: int = 0):
        self.model, self.purifier, self.settings, self.adversarial = classifier, purifier, settings, adversarial
        decay = [p for p in classifier.parameters() if p.ndim > 1]
        no_decay = [p for p in classifier.parameters() if p.ndim <= 1]
        self.opt = torch.optim.SGD([{"params": decay, "weight_decay": settings.weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, momentum=0.9,
                                   nesterov=True)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=settings.lr, total_steps=total_steps,
                                                         pct_start=0.15, anneal_strategy="linear")
        self.generator = torch.Generator().manual_seed(seed)
        self.attack_generator = torch.Generator(device=device).manual_seed(seed + 1)

    def schedule(self, step: int, total: int) -> None:
        if step > 0:
            self.sched.step()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        s = self.settings
        x = augment_flip_crop(x, self.generator)
        if self.adversarial:
            self.model.eval()  # attack with BN in inference mode (like torchattacks)
            x = bpda_pgd(self.model, self.purifier, x, y, s.eps, s.attack_steps, s.step_size, self.attack_generator)
            self.model.train()
        with torch.no_grad():
            x_me = self.purifier(x)
        logits = self.model(x_me)
        loss = F.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}


def train_menet_classifier(classifier: nn.Module, purifier: MENet, train: ImageData, settings: MENetSettings, *,
                           adversarial: bool, device, seed: int = 0, progress: bool = True) -> dict:
    """Train `classifier` in place on ME-Net images (of PGD-BPDA examples when `adversarial`); returns metrics."""
    check_eps(settings.eps)
    classifier.to(device)
    purifier.reseed(seed)
    batches = epoch_batches(train, settings.batch_size, seed, device)
    trainer = MENetClassifierTrainer(classifier, purifier, settings, adversarial=adversarial, device=device, seed=seed,
                                     total_steps=settings.epochs * batches.steps_per_epoch)
    name = "ME-Net-A classifier" if adversarial else "ME-Net classifier"
    log = fit(trainer, batches, epochs=settings.epochs, desc=f"train {name}", progress=progress)
    return {"train_accuracy": log.history["accuracy"][-1], "train_seconds": log.seconds}


def menet_from_settings(settings: MENetSettings, seed: int = 0) -> MENet:
    return MENet((settings.p_low, settings.p_high), settings.svd_fraction, seed=seed)


def initial_classifier(target: nn.Module, settings: MENetSettings, build_fresh) -> nn.Module:
    """The classifier ME-Net trains: a copy of the target (fine-tuning) or a fresh one of the same architecture."""
    return copy.deepcopy(target).cpu() if settings.from_target else build_fresh()
