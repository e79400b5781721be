"""Threat models: which model the attacker differentiates, and which model is then evaluated.

| name        | attacker's gradients come from                                   |
|-------------|------------------------------------------------------------------|
| oblivious   | the classifier alone (the purifier is applied afterwards)        |
| transfer    | a different surrogate classifier (then purified)                 |
| white-box   | classifier ∘ purifier, autograd through both                     |
| bpda        | classifier ∘ purifier, the purifier replaced on the backward pass by its `bpda_surrogate` |
| eot         | the expectation over the purifier's randomness (N draws per forward) |

Combinations join with '+': `bpda+eot`, `white-box+eot`, `transfer` alone. The evaluated model is always
classifier ∘ purifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lib.purifiers import Defended, is_differentiable

BASE_THREAT_MODELS = ("oblivious", "transfer", "white-box", "bpda")
THREAT_MODELS = BASE_THREAT_MODELS + ("eot", "white-box+eot", "bpda+eot")


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018).

    forward(x) = purifier(x) exactly; the gradient is that of purifier.bpda_surrogate(x) (the identity
    unless the purifier provides a differentiable approximation).
    """

    def __init__(self, purifier: nn.Module):
        super().__init__()
        self.purifier = purifier

    def forward(self, x):
        with torch.no_grad():
            purified = self.purifier(x)
        surrogate_fn = getattr(self.purifier, "bpda_surrogate", None)
        surrogate = surrogate_fn(x) if surrogate_fn is not None else x
        return surrogate + (purified - surrogate).detach()


class EOT(nn.Module):
    """Expectation over Transformation (Athalye et al. 2018) for any attack.

    Each forward runs the wrapped model on `samples` independent draws of the defense (the batch is
    repeated, so the draws run in parallel) and returns log E[softmax]: a cross-entropy on these outputs
    is −log E[p_y], whose gradient averages the draws. For a deterministic defense the outputs equal the
    model's log-softmax, which any logit-based loss treats exactly like the logits themselves (the EOT
    attack then equals the plain one).
    """

    def __init__(self, model: nn.Module, samples: int, chunk: int = 4096):
        super().__init__()
        if samples < 1:
            raise ValueError(f"EOT needs at least one sample, got {samples}.")
        self.model, self.samples, self.chunk = model, samples, chunk

    def forward(self, x):
        n = len(x)
        repeated = x.repeat(self.samples, 1, 1, 1)
        logits = torch.cat([self.model(part) for part in repeated.split(self.chunk)])
        log_probs = F.log_softmax(logits.view(self.samples, n, -1), dim=-1)
        return torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(self.samples)))


def parse_threat_model(name: str) -> tuple[str, bool]:
    """'bpda+eot' -> ('bpda', True). Unknown names are an error listing the choices."""
    if name not in THREAT_MODELS:
        raise ValueError(f"Unknown threat model {name!r}: choose one of {list(THREAT_MODELS)}.")
    parts = name.split("+")
    base = "white-box" if parts[0] == "eot" else parts[0]
    return base, name == "eot" or "eot" in parts[1:]


def attacked_model(threat_model: str, purifier: nn.Module, classifier: nn.Module,
                   surrogate: nn.Module | None = None, eot_samples: int = 1) -> nn.Module:
    """The model whose gradients the attacker uses under a threat model."""
    base, eot = parse_threat_model(threat_model)
    if base == "oblivious":
        model = classifier
    elif base == "transfer":
        if surrogate is None:
            raise ValueError("The 'transfer' threat model needs a surrogate classifier (surrogate=...).")
        model = surrogate
    elif base == "white-box":
        if not is_differentiable(purifier):
            raise ValueError(f"{type(purifier).__name__} is not differentiable (differentiable=False): attack it "
                             "with the 'bpda' threat model instead of 'white-box'.")
        model = Defended(purifier, classifier)
    else:  # bpda
        model = Defended(BPDA(purifier), classifier)
    return EOT(model, eot_samples) if eot and eot_samples > 1 else model
