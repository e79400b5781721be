"""The cached super-resolution defense (lib.defenses.superres): `get_superres` trains the SR network once per
(dataset, scale, seed) through the model cache and wraps it with the wavelet step.

    purifier, record = get_superres("shapes10", "quick", 0)          # trained the first time, loaded afterwards
    model = Defended(purifier, classifier)                            # any classifier of the dataset

The network is trained on clean images only and does not depend on the classifier it defends, so its spec names
no target; `target` and `target_record` are accepted (and ignored) so that the registry can pass its standard
arguments. `record["spec"]` is the defense's spec (the network's hash and the wavelet σ, which does not change
the trained weights), `record["hash"]` its hash, and `record["network"]` the network's model-cache record.
"""
from __future__ import annotations

import dataclasses

from torch import nn

from lib.core.cache import ModelCache, spec_hash
from lib.core.data import data_spec, image_shape, load_dataset
from lib.core.fit import trained
from lib.core.settings import Scale, get_scale, resolve_device, scale_settings
from lib.defenses.superres import SETTINGS, SuperResolutionDefense, SuperResolutionSettings, build, train

SUPERRES_VERSION = 1


def superres_settings(scale: str | Scale) -> SuperResolutionSettings:
    """The SR network's settings at a scale (smoke, quick, paper)."""
    return scale_settings(SETTINGS, scale, "super-resolution")


def network_spec(dataset: str, scale: str | Scale, seed: int, data_root=None) -> dict:
    """Everything that determines the trained SR network (no target: it is trained on clean images alone)."""
    scale = get_scale(scale)
    return {"kind": "superres_edsr", "version": SUPERRES_VERSION, **data_spec(dataset, data_root),
            "scale": scale.name, "settings": dataclasses.asdict(superres_settings(scale)), "seed": seed}


def get_superres(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *,
                 sigma: float | None = 0.04, target: nn.Module | None = None, target_record: dict | None = None,
                 device="auto", data_root=None, cache: ModelCache | None = None,
                 progress: bool = True) -> tuple[SuperResolutionDefense, dict]:
    """The wavelet + SR defense (eval mode, on device) and its record (see the module docstring).

    sigma: the wavelet step's noise σ in pixel units (None: estimated per image); it changes the defense's spec,
    not the network's. target / target_record: ignored (the registry's standard arguments).
    """
    del target, target_record  # the SR network defends any classifier: not trained against one
    scale = get_scale(scale)
    s = superres_settings(scale)
    device = resolve_device(device)
    channels = image_shape(dataset)[0]
    spec = network_spec(dataset, scale, seed, data_root)

    def train_network(network: nn.Module) -> dict:
        data = load_dataset(dataset, "train", data_root).subset(s.n_train, seed)
        return train(network, data, s, device=device, seed=seed, progress=progress)

    network, network_record = trained(spec, lambda: build(s, channels), train_network, cache=cache, device=device,
                                      seed=seed)
    purifier = SuperResolutionDefense(network, sigma=sigma, seed=seed).to(device).eval()
    defense = {"kind": "superres", "version": SUPERRES_VERSION, **data_spec(dataset, data_root), "scale": scale.name,
               "seed": seed, "network": network_record["hash"], "sigma": purifier.wavelet.sigma,
               "convert2ycbcr": purifier.wavelet.convert2ycbcr}
    record = {**network_record, "spec": defense, "hash": spec_hash(defense), "network": network_record}
    return purifier, record
