"""The one L∞ projected gradient method every attack loop in the repository calls.

    x_adv = pgd_linf(model, x, y, eps=8/255, steps=10, step_size=2/255)

Madry et al. 2018: x′ ← Π_{B∞(x, ε) ∩ [0,1]}(x′ + α·sign ∇_{x′} L(model(x′), y)). What the callers vary is a
parameter here, not a copy of the loop:
- `loss(output, y)`: what ascent maximises (cross-entropy by default; the feature distortion of NRP/RDP,
  the KL of DIR's Eq. 4 and TRADES pass their own; `y` may be anything the loss takes, or None);
- `start`: a starting point, else `random_start` draws x + U(−ε, ε) from `generator` (or torch's global RNG,
  as torchattacks does) and clamps it to [0, 1];
- `keep`: "last" (the final iterate, Madry PGD) or "first_success" (per image, the first iterate the model
  misclassified, judged from the logits each step already computes, so a late step cannot undo a success);
- `targeted`: descend on the loss towards the labels `y` instead of ascending.
Parameter gradients are never accumulated (only the input is differentiated); the model's mode is not
touched (callers that attack a model in training put it in eval mode first, as torchattacks does).
Shapes: x (N, C, H, W) in [0, 1] → (N, C, H, W) in [0, 1], detached.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lib.core.dry_run import cap_steps
from lib.core.estimate import timed

KEEP = ("last", "first_success")


def default_step_size(eps: float, steps: int) -> float:
    """ε/4, or 2.5·ε/steps when that is larger (so few steps still reach the boundary); 2/255 at 8/255, 20 steps."""
    return min(eps, max(eps / 4, 2.5 * eps / max(steps, 1)))


def uniform_start(x: torch.Tensor, eps, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(−ε, ε) clamped to [0, 1]: from `generator` when given, else torch's global RNG (torchattacks' way)."""
    if generator is None:
        return (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + (2 * noise - 1) * eps).clamp(0, 1)


def project_linf(x: torch.Tensor, adv: torch.Tensor, eps) -> torch.Tensor:
    """Π_{B∞(x, ε) ∩ [0,1]}(adv). `eps` may be a float or a tensor broadcast against x (one ε per image)."""
    return (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)


@timed("attack", attack="pgd_linf")  # a cost estimate (lib.core.estimate) times it; otherwise a no-op
def pgd_linf(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y, *, eps, steps: int, step_size,
             loss: Callable = F.cross_entropy, start: torch.Tensor | None = None, random_start: bool = True,
             generator: torch.Generator | None = None, keep: str = "last", targeted: bool = False) -> torch.Tensor:
    """L∞ PGD on `model` (any callable image → output) from x; see the module docstring for each option."""
    if keep not in KEEP:
        raise ValueError(f"keep={keep!r}: use one of {KEEP}.")
    steps = cap_steps(steps)  # a dry run (lib.core.dry_run) runs every path with few steps
    x = x.detach()
    if start is not None:
        adv = start.detach().clone()
    elif random_start:
        adv = uniform_start(x, eps, generator).detach()
    else:
        adv = x.clone()
    first = keep == "first_success"
    if first:
        best = adv.clone()
        done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(steps):
        adv.requires_grad_(True)
        output = model(adv)
        if first:
            with torch.no_grad():  # the logits of the current iterate tell whether it already succeeds
                pred = output.argmax(1)
                success = (pred == y) if targeted else (pred != y)
                newly = success & ~done
                best[newly] = adv.detach()[newly]
                done |= success
        cost = loss(output, y)
        grad, = torch.autograd.grad(-cost if targeted else cost, adv)
        adv = project_linf(x, adv.detach() + step_size * grad.sign(), eps).detach()
    if first:
        best[~done] = adv[~done]  # never-successful images: the final iterate
        return best
    return adv
