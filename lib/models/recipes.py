"""Training recipes for target classifiers: natural, PGD-AT, TRADES, MART and fast AT.

`train_classifier` runs a recipe through lib.core.fit (`ClassifierTrainer`); a recipe only changes the loss
of a batch (`_batch_loss`). The inner
maximisation comes from torchattacks (PGD for Madry AT and MART, TPGD for TRADES' KL attack, FFGSM for
fast AT), which switches the model to eval mode while it attacks and back afterwards.

- natural: cross-entropy on clean images.
- pgd_at (Madry et al. 2018): cross-entropy on PGD examples.
- trades (Zhang et al. 2019): CE(f(x), y) + β·KL(f(x) ‖ f(x')), x' maximising that KL; β = 6.
- mart (Wang et al. 2020): BCE(f(x'), y) + β·KL(f(x) ‖ f(x'))·(1 − p_y(x)); β = 6.
- fast_at (Wong et al. 2020): cross-entropy on FGSM examples from a uniform random start, step 1.25ε.

SGD with momentum 0.9, Nesterov, weight decay 5e-4, a one-cycle learning rate (linear warm-up for the
first 15% of steps, then linear decay to 0): it reaches good accuracy in few epochs at `quick` scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.core.data import ImageData, augment_flip_crop, iterate_batches
from lib.core.estimate import note_caps, recording
from lib.core.fit import epoch_batches, fit
from lib.core.settings import SCALES, Scale, check_eps

RECIPES = ("natural", "pgd_at", "trades", "mart", "fast_at")


@dataclass(frozen=True)
class Recipe:
    name: str = "natural"
    epochs: int = 6
    batch_size: int = 128
    lr: float = 0.2  # peak learning rate of the one-cycle schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = True  # random flips and crops
    eps: float = 8 / 255  # robust recipes: training budget (L∞)
    step_size: float = 2 / 255
    steps: int = 5
    beta: float = 6.0  # TRADES / MART trade-off
    eps_warmup: float = 0.0  # fraction of the steps over which ε (and the step size) ramp up linearly from 0

    def __post_init__(self):
        if self.name not in RECIPES:
            raise ValueError(f"Unknown training recipe {self.name!r}: choose one of {RECIPES}.")
        check_eps(self.eps, "eps")
        check_eps(self.step_size, "step_size")
        if not 0 <= self.eps_warmup < 1:
            raise ValueError(f"eps_warmup={self.eps_warmup} must lie in [0, 1): the fraction of training steps "
                             "over which ε ramps up (0 = the full ε from the first step).")


def recipe_for(name: str, scale: Scale, **overrides) -> Recipe:
    """The recipe of a given name at a scale (epochs, steps, batch size and lr come from the scale)."""
    robust = name != "natural"
    base = dict(name=name, epochs=scale.robust_epochs if robust else scale.epochs, batch_size=scale.batch_size,
                lr=scale.lr, steps=scale.robust_steps)
    if robust:
        # fewer steps at small scales: keep ε / step size so that the steps still span the ball
        base["step_size"] = max(2 / 255, 2.5 * (8 / 255) / scale.robust_steps) if scale.robust_steps < 5 else 2 / 255
    if name in ("pgd_at", "mart") and scale.robust_epochs < 20:
        # In a short schedule adversarial training from scratch sits on the uniform-output plateau (CE ≈ log C)
        # and leaves it late or never. MART (the boosted term pulls every wrong class to 1/C): clean 14-22% at
        # quick for any lr and β. PGD-AT: when it leaves depends on rounding, so the result did too (clean
        # 0.91 with 2 torch threads, 0.63 with 1; width 8: 0.44 at lr 0.2, 0.19 at lr 0.1, the loss at
        # log 10 for 3 of 6 epochs). Ramping ε up over the first 30% of the steps (curriculum AT, Cai et al.
        # 2018) leaves it in the first epoch (width 8, lr 0.2: clean 0.98 / PGD-20 0.58 trained with 1 thread,
        # 0.94 / 0.42 with 2: still not bit-stable across thread counts, but no longer a collapse); a deviation
        # from both papers.
        base["eps_warmup"] = 0.3
    base.update(overrides)
    recipe = Recipe(**base)
    if scale.limit and recording():  # a cost estimate (lib.core.estimate): what the dry-run cap cut from the recipe
        note_caps(recipe_for(name, SCALES[scale.name], **overrides), recipe)
    return recipe


def _inner_attack(model: nn.Module, recipe: Recipe):
    import torchattacks

    if recipe.name in ("pgd_at", "mart"):
        return torchattacks.PGD(model, eps=recipe.eps, alpha=recipe.step_size, steps=recipe.steps, random_start=True)
    if recipe.name == "trades":
        return torchattacks.TPGD(model, eps=recipe.eps, alpha=recipe.step_size, steps=recipe.steps)
    if recipe.name == "fast_at":
        return torchattacks.FFGSM(model, eps=recipe.eps, alpha=1.25 * recipe.eps)
    return None


def _ramp_attack(attack, full_budget: tuple[float, float], warmup: float, progress: float) -> None:
    """Set the inner attack's ε and step size to `full_budget` (ε, step) scaled by the warm-up ramp at
    `progress` (fraction of steps done); no-op without an attack or warm-up."""
    if attack is None or warmup == 0:
        return
    factor = min(progress / warmup, 1.0)
    attack.eps, attack.alpha = (value * factor for value in full_budget)


def _batch_loss(model: nn.Module, recipe: Recipe, attack, x: torch.Tensor, y: torch.Tensor):
    """Loss of one batch and the logits it was scored on (for the running training accuracy)."""
    if recipe.name == "natural":
        logits = model(x)
        return F.cross_entropy(logits, y), logits
    x_adv = attack(x, y).detach()
    if recipe.name in ("pgd_at", "fast_at"):
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits
    logits_clean, logits_adv = model(x), model(x_adv)
    if recipe.name == "trades":
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits_clean, 1), reduction="batchmean")
        return F.cross_entropy(logits_clean, y) + recipe.beta * kl, logits_adv
    # MART: boosted CE on the adversarial example + KL weighted by how unsure the clean prediction is
    probs_adv = F.softmax(logits_adv, 1)
    top2 = probs_adv.topk(2, 1).indices
    other = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    bce = F.cross_entropy(logits_adv, y) - torch.log(1.0001 - probs_adv.gather(1, other[:, None]).squeeze(1)).mean()
    probs_clean = F.softmax(logits_clean, 1)
    kl = (F.kl_div(torch.log(probs_adv + 1e-12), probs_clean, reduction="none").sum(1)
          * (1.0000001 - probs_clean.gather(1, y[:, None]).squeeze(1))).mean()
    return bce + recipe.beta * kl, logits_adv


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageData, device, batch_size: int = 512) -> float:
    """Clean top-1 accuracy of a classifier (in eval mode) on an in-memory dataset."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in iterate_batches(data, batch_size, device=device):
        correct += (model(x).argmax(1) == y).sum().item()
    model.train(was_training)
    return correct / max(len(data), 1)


class ClassifierTrainer:
    """A recipe as a lib.core.fit trainer: `step(x, y)` flips-and-crops the batch, crafts the recipe's inner
    attack and takes one SGD step on the recipe's loss; `schedule` runs the one-cycle lr and the ε warm-up."""

    def __init__(self, model: nn.Module, recipe: Recipe, total_steps: int, seed: int = 0):
        self.model, self.recipe = model, recipe
        decay = [p for n, p in model.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN and biases: no weight decay
        self.opt = torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}],
                                   lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=recipe.lr, total_steps=total_steps,
                                                         pct_start=0.15, anneal_strategy="linear")
        self.attack = _inner_attack(model, recipe)
        self.full_budget = (self.attack.eps, self.attack.alpha) if self.attack is not None else None
        self.generator = torch.Generator().manual_seed(seed)

    def schedule(self, step: int, total: int) -> None:
        if step > 0:
            self.sched.step()  # after each optimiser step (OneCycleLR's contract)
        _ramp_attack(self.attack, self.full_budget, self.recipe.eps_warmup, step / total)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        if self.recipe.augment:
            x = augment_flip_crop(x, self.generator)
        loss, logits = _batch_loss(self.model, self.recipe, self.attack, x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}


def train_classifier(model: nn.Module, train: ImageData, test: ImageData, recipe: Recipe, *, device,
                     seed: int = 0, progress: bool = True) -> dict:
    """Train in place with a recipe; returns metrics (train/test accuracy, seconds, images per second)."""
    model.to(device)
    batches = epoch_batches(train, recipe.batch_size, seed, device)
    trainer = ClassifierTrainer(model, recipe, recipe.epochs * batches.steps_per_epoch, seed)
    log = fit(trainer, batches, epochs=recipe.epochs, desc=f"train {recipe.name}", progress=progress,
              show=("loss", "accuracy"))
    return {"train_accuracy": log.history["accuracy"][-1], "test_accuracy": accuracy(model, test, device),
            "train_seconds": log.seconds, "train_images_per_second": log.images_per_second}
