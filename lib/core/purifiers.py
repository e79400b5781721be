"""The purifier contract: an image-to-image `nn.Module` put in front of an unchanged classifier.

    forward(x: (N, C, H, W) float in [0, 1]) -> (N, C, H, W) float in [0, 1]

Two class attributes tell the harness how to attack a purifier correctly, so threat models need no
special cases:
- `differentiable`: False when autograd through `forward` is meaningless or fails (JPEG, quantisers,
  median filters, matrix estimation). The `bpda` threat model then uses `bpda_surrogate(x)` on the backward
  pass: the identity by default, or a differentiable approximation the purifier provides.
- `randomized`: True when `forward` draws randomness. Such a purifier draws only from its own generator
  (`self.generator(device)`), never from torch's global RNG, so an attack that reseeds the global RNG
  cannot freeze the defense's randomness, and `reseed(seed)` makes a run repeatable. The `eot` threat
  model averages gradients over several calls.

The defended model is `Defended(purifier, classifier)` = classifier ∘ purifier.
"""
from __future__ import annotations

import torch
from torch import nn

from lib.core.estimate import timed


class Purifier(nn.Module):
    """Base class for purifiers. Subclasses implement `forward`; see the module docstring."""

    differentiable: bool = True
    randomized: bool = False

    def __init__(self, seed: int = 0):
        super().__init__()
        self._seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This purifier's own random generator on a device (created from its seed on first use)."""
        device = torch.device(device)
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self._seed)
        return self._generators[key]

    def reseed(self, seed: int) -> "Purifier":
        """Restart this purifier's randomness from a seed (all devices)."""
        self._seed = int(seed)
        self._generators.clear()
        return self

    def bpda_surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """A differentiable approximation of forward(x) for the backward pass of BPDA (default: identity)."""
        return x


class Identity(Purifier):
    """No defense."""

    def forward(self, x):
        return x


class Defended(nn.Module):
    """classifier ∘ purifier: the model an attacker faces in the white-box threat model."""

    def __init__(self, purifier: nn.Module, classifier: nn.Module):
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(self.purifier(x))


def is_randomized(purifier: nn.Module) -> bool:
    return bool(getattr(purifier, "randomized", False))


def is_differentiable(purifier: nn.Module) -> bool:
    return bool(getattr(purifier, "differentiable", True))


def reseed(purifier: nn.Module, seed: int) -> None:
    """Reseed a purifier (and any purifiers nested in it) when it is random."""
    for module in purifier.modules():
        if isinstance(module, Purifier):
            module.reseed(seed)


@torch.no_grad()
def purify_batched(purifier: nn.Module | None, x: torch.Tensor, batch_size: int = 256,
                   seed: int | None = None) -> torch.Tensor:
    """purifier(x) over batches of `batch_size`, in eval mode and without gradients; None is the identity.

    x: (N, C, H, W) in [0, 1] → (N, C', H', W'). seed: reseed a random purifier first (`reseed`), so the same
    call gives the same images; its draws then run on through the batches in order. The purifier's
    train/eval mode is restored afterwards.
    """
    if purifier is None:
        return x
    was_training = purifier.training
    purifier.eval()
    if seed is not None:
        reseed(purifier, seed)
    try:
        with timed("predict", what="purify"):  # a cost estimate (lib.core.estimate) times it; otherwise a no-op
            return torch.cat([purifier(part) for part in x.split(batch_size)])
    finally:
        purifier.train(was_training)
