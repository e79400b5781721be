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

from lib.core.purifiers import Defended, is_differentiable
from lib.core.dry_run import cap_draws
from lib.core.settings import check_count

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
        self.training = purifier.training  # a fresh wrapper must not report training mode (see _wrap)

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
        samples = check_count(samples, "samples", 1, "EOT averages over at least one draw of the defense.")
        samples = cap_draws(samples)  # a dry run (lib.core.dry_run) draws few
        self.model, self.samples, self.chunk = model, samples, check_count(chunk, "chunk", 1)
        self.training = model.training

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
    """The model whose gradients the attacker uses under a threat model.

    eot_samples: an int ≥ 1 (1 turns EOT off even under an '+eot' threat model). The wrappers built here take
    the train/eval mode of the model they wrap (a fresh nn.Module is in training mode, and torchattacks calls
    `.train()` on a model it found in training mode, which would put the classifier inside in training mode).
    """
    base, eot = parse_threat_model(threat_model)
    eot_samples = check_count(eot_samples, "eot_samples", 1, "eot_samples counts draws of the defense per "
                              "gradient: 1 for a deterministic defense, e.g. 10 for a random one.")
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
        model = _wrap(Defended(purifier, classifier), classifier)
    else:  # bpda
        model = _wrap(Defended(BPDA(purifier), classifier), classifier)
    return EOT(model, eot_samples) if eot and eot_samples > 1 else model


def _wrap(wrapper: nn.Module, inner: nn.Module) -> nn.Module:
    """Give a fresh wrapper module its inner model's mode flag (only the flag: no child is touched)."""
    wrapper.training = inner.training
    return wrapper
