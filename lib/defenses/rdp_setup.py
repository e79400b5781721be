"""RDP's cached models: `feature_network` (F of Eq. 1 and Eqs. 2 and 7), `rdp_model` (P and R trained by Algorithm 1)
and `get_rdp` (the purifier used at test time: P, optionally behind Table 4's Gaussian noise layer).

    purifier, record = get_rdp("shapes10", "quick", 0)                     # P, trained the first time, then loaded
    purifier, record = get_rdp(..., noise_sigma=0.05)                      # Table 4's dynamic mode: noise, then P
    purifier, record = get_rdp(..., drop=("reconstruction",))              # a Fig. 8 ablation (another model)
    model, record = rdp_model("shapes10", "quick", 0)                      # P and R (Fig. 7's disentangled outputs)

RDP trains on clean images alone (its training examples are label-free, Eq. 1, against F) and defends any
classifier, so its spec names no target; `target` and `target_record` are accepted (and ignored) so that the
registry can pass its standard arguments, as lib.defenses.superres_setup does. The model's spec holds every
setting and F's hash; `get_rdp`'s record is the defense's (the model's hash and the noise σ, which does not change
the trained weights), with the model's record under `record["model"]` and F's under `record["feature_network"]`.
"""
from __future__ import annotations

import dataclasses

from torch import nn

from lib.core.cache import ModelCache, spec_hash
from lib.core.data import data_spec, image_shape, load_dataset
from lib.core.fit import trained
from lib.core.purifiers import Purifier
from lib.core.settings import Scale, get_scale, resolve_device
from lib.defenses import impure_setup
from lib.defenses.rdp import RDP, RDPPurifier, build, rdp_settings, train
from lib.defenses.transforms import GaussianNoise

RDP_VERSION = 1


def feature_network(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *, device="auto",
                    data_root=None, cache: ModelCache | None = None, progress: bool = True) -> tuple[nn.Module, dict]:
    """F, eval mode, and its record: the same network as IMPure's F (lib.defenses.impure_setup.feature_network),
    since both papers' F is an ImageNet VGG-19. At paper on ImageNet-size images torchvision's VGG-19 (a
    FileNotFoundError that says where to put the weights when they are absent); otherwise a classifier trained on
    the dataset through the cache from seed + 1, so that F is never one of the targets a notebook evaluates:
    `vgg_small` at smoke and quick, `vgg16` at paper on small images, the scale's ResNet below 32 px."""
    scale = get_scale(scale)
    ours, theirs = rdp_settings(scale).feature_arch, impure_setup.impure_settings(scale).feature_arch
    if ours != theirs:  # the shared getter builds IMPure's architecture: it must be RDP's too
        raise RuntimeError(f"RDP's F at {scale.name} is {ours!r} but IMPure's is {theirs!r}: "
                           "impure_setup.feature_network would build the wrong network; give RDP its own getter.")
    return impure_setup.feature_network(dataset, scale, seed, device=device, data_root=data_root, cache=cache,
                                        progress=progress)


def model_spec(dataset: str, scale: str | Scale, seed: int, feature_hash: str, drop=(), data_root=None) -> dict:
    """Everything that determines the trained P and R (no target: RDP trains on clean images alone)."""
    scale = get_scale(scale)
    s = rdp_settings(scale, drop=tuple(drop))
    return {"kind": "rdp", "version": RDP_VERSION, **data_spec(dataset, data_root), "scale": scale.name,
            "settings": dataclasses.asdict(s), "seed": seed, "feature_network": feature_hash}


def rdp_model(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *, drop=(), device="auto",
              data_root=None, cache: ModelCache | None = None, progress: bool = True) -> tuple[RDP, dict]:
    """The trained RDP (P as `.purifier`, R as `.reconstructor`, None when "reconstruction" is dropped), eval mode,
    on device, and its model-cache record (with F's under `record["feature_network"]`)."""
    scale = get_scale(scale)
    drop = tuple(drop)
    s = rdp_settings(scale, drop=drop)  # RDPSettings checks the names in drop
    device = resolve_device(device)
    channels = image_shape(dataset)[0]
    network, network_record = feature_network(dataset, scale, seed, device=device, data_root=data_root, cache=cache,
                                              progress=progress)
    spec = model_spec(dataset, scale, seed, network_record["hash"], drop, data_root)

    def train_rdp(model: RDP) -> dict:
        data = load_dataset(dataset, "train", data_root)  # train() draws the settings' n_train images itself
        return train(model, data, s, target=network, device=device, seed=seed, progress=progress)

    model, record = trained(spec, lambda: build(s, channels), train_rdp, cache=cache, device=device, seed=seed)
    record["feature_network"] = network_record
    return model.eval(), record


class NoisyRDP(Purifier):
    """Table 4's dynamic mode: a Gaussian noise layer (lib.defenses.transforms.GaussianNoise, σ in pixel units, this
    purifier's own generator) in front of P. (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1]. Random (evaluate with
    EOT) and differentiable (the noise is additive, its Jacobian the identity where not clipped)."""

    differentiable = True
    randomized = True

    def __init__(self, purifier: RDPPurifier, sigma: float = 0.05, seed: int = 0):
        super().__init__(seed)
        self.noise = GaussianNoise(sigma, seed=seed)
        self.purifier = purifier

    def extra_repr(self) -> str:
        return f"sigma={self.noise.sigma}"

    def reseed(self, seed: int) -> "NoisyRDP":
        super().reseed(seed)
        self.noise.reseed(seed)  # the draws are the noise layer's
        return self

    def forward(self, x):
        return self.purifier(self.noise(x))


def get_rdp(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *, drop=(),
            noise_sigma: float | None = None, target: nn.Module | None = None, target_record: dict | None = None,
            device="auto", data_root=None, cache: ModelCache | None = None,
            progress: bool = True) -> tuple[nn.Module, dict]:
    """RDP's test-time purifier (eval mode, on device) and its record (see the module docstring).

    drop: Fig. 8's ablations, names from lib.defenses.rdp.DROPPABLE (another trained model); noise_sigma: Table 4's
    dynamic mode, Gaussian noise of this σ (pixel units, the paper's 0.05) before P (`NoisyRDP`, random); None: P
    alone (deterministic). It changes the defense's spec, not the model's. target / target_record: ignored (the
    registry's standard arguments).
    """
    del target, target_record  # RDP defends any classifier: not trained against one
    scale = get_scale(scale)
    model, model_record = rdp_model(dataset, scale, seed, drop=drop, device=device, data_root=data_root, cache=cache,
                                    progress=progress)
    purifier = model.purifier
    if noise_sigma is not None:
        purifier = NoisyRDP(purifier, noise_sigma, seed=seed).to(resolve_device(device))
    defense = {"kind": "rdp_defense", "version": RDP_VERSION, **data_spec(dataset, data_root), "scale": scale.name,
               "seed": seed, "model": model_record["hash"], "noise_sigma": None if noise_sigma is None else float(noise_sigma)}
    record = {**model_record, "spec": defense, "hash": spec_hash(defense), "model": model_record}
    return purifier.eval(), record
