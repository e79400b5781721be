"""IMPure's cached models: `feature_network` (the perceptual loss's F) and `get_impure` (RIAE trained by
Eq. 15 on adversarial examples of one target), each through the model cache.

    riae, record = get_impure("shapes10", "quick", 0, target=target, target_record=target_record)
    riae, record = get_impure(..., masking="occlusion")               # Fig. 7's variants (another model)
    riae, record = get_impure(..., weights=(0.0, 0.0, 0.0))           # Fig. 8: the pixel loss alone
    riae, record = get_impure(..., periodic=False)                    # Fig. 9: the same model, random division

The training examples follow Section 5.4 and the released code: each training image is attacked by one of
FGSM, PGD and MI-FGSM (an equal third each, by a seeded permutation) against the target at ε 16/255 with
step 4/255 and 10 iterations, and only images the target classifies correctly are kept (the paper's
protocol). They are made once per training run and stored as 8-bit images (`AdversarialSet`).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lib.attacks.attack_sets import AdversarialSet, pair_batches, to_uint8
from lib.attacks.registry import ATTACKS, build_attack, run_attack
from lib.core.cache import ModelCache, spec_hash
from lib.core.data import ImageData, data_spec, image_shape, load_dataset
from lib.core.fit import Frozen, fit, progress_bar, trained
from lib.core.settings import Scale, get_scale, resolve_device, scale_settings
from lib.defenses.impure import RIAE, SETTINGS, IMPureSettings, IMPureTrainer, build, feature_layers
from lib.models.classifiers import IMAGENET_ARCHITECTURES, imagenet_classifier
from lib.models.zoo import get_classifier

IMPURE_VERSION = 1
IMAGENET_SIDE = 64  # below this side an ImageNet VGG-19 sees a 2×2 map at block 5: use a VGG trained on the data


def impure_settings(scale: str | Scale) -> IMPureSettings:
    return scale_settings(SETTINGS, scale, "IMPure")


def feature_network(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *, device="auto",
                    data_root=None, cache: ModelCache | None = None, progress: bool = True) -> tuple[nn.Module, dict]:
    """F of Eqs. 12-15, eval mode, and its record. The paper's is ImageNet VGG-19: used for ImageNet-size images
    when its weights are in the torch hub cache (else a FileNotFoundError that says where to put them). Otherwise
    a classifier of the scale's `feature_arch` trained on the dataset through the cache from seed + 1, so that F
    is never one of the targets a notebook evaluates (they use `seed`): `vgg_small` at smoke and quick, `vgg16`
    at paper on small images (the scale's ResNet below 32 px, which five poolings cannot take)."""
    scale = get_scale(scale)
    arch = impure_settings(scale).feature_arch
    device = resolve_device(device)
    if arch in IMAGENET_ARCHITECTURES:
        if image_shape(dataset)[1] >= IMAGENET_SIDE:
            net = imagenet_classifier(arch, pretrained=True).to(device).eval()
            spec = {"kind": "pretrained", "arch": arch, "weights": "IMAGENET1K_V1"}
            return net, {"spec": spec, "hash": spec_hash(spec), "metrics": {}, "cached": True}
        arch = "vgg16"
    if arch.startswith("vgg") and image_shape(dataset)[1] < 32:
        arch = scale.classifier
    return get_classifier(dataset, "natural", scale, seed + 1, arch=arch, device=device, data_root=data_root,
                          cache=cache, progress=progress)


def _predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def training_pairs(target: nn.Module, data: ImageData, s: IMPureSettings, *, device, seed: int = 0,
                   batch_size: int = 250, progress: bool = True) -> AdversarialSet:
    """The correctly classified images of `data`, each attacked by one of `s.train_attacks` against `target`."""
    x, y = data.tensors(device)
    keep = (_predictions(target, x) == y).nonzero(as_tuple=True)[0]
    if not len(keep):
        raise ValueError("The target classifies none of the training images correctly: train it first.")
    x, y = x[keep], y[keep]
    which = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) % len(s.train_attacks)
    adversarial = torch.empty(x.shape, dtype=torch.uint8)
    with torch.no_grad():
        n_classes = target(x[:1]).shape[1]
    bar = progress_bar(total=len(x), desc="IMPure training examples", disable=not progress, leave=False)
    for k, name in enumerate(s.train_attacks):
        idx = (which == k).nonzero(as_tuple=True)[0]
        attack = build_attack(name, target, eps=s.eps, steps=s.attack_steps, step_size=s.attack_step,
                              n_classes=n_classes, seed=seed)
        for b in range(0, len(idx), batch_size):
            rows = idx[b:b + batch_size]
            adversarial[rows] = to_uint8(run_attack(attack, x[rows], y[rows], seed=seed * 1000 + k + b)).cpu()
            bar.update(len(rows))
    bar.close()
    return AdversarialSet(to_uint8(x).cpu(), y.cpu(), adversarial, torch.arange(len(x)), torch.full((len(x),), s.eps),
                          which, tuple(s.train_attacks))


def train_impure(riae: RIAE, network: nn.Module, pairs: AdversarialSet, s: IMPureSettings, *, device, seed: int = 0,
                 progress: bool = True) -> dict:
    """Eq. 15 on the stored pairs for `s.epochs` epochs (F frozen); the per-epoch losses and times."""
    feature_layers(network)  # fails early, naming what F lacks
    riae.to(device)
    batches = pair_batches(pairs, s.batch_size, seed, device)
    trainer = IMPureTrainer(riae, network, s, total_steps=s.epochs * batches.steps_per_epoch, seed=seed)
    with Frozen(network):
        log = fit(trainer, batches, epochs=s.epochs, desc="train IMPure", progress=progress, show=("loss", "pixel"))
    return {"epoch_losses": log.history["loss"], "epoch_pixel_l1": log.history["pixel"],
            "train_seconds": log.seconds, "train_images_per_second": log.images_per_second,
            "train_pairs": len(pairs), "pairs_per_attack": torch.bincount(pairs.attack, minlength=len(s.train_attacks)).tolist()}


def get_impure(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *, target: nn.Module,
               target_record: dict, masking: str | None = None, weights=None, train_attacks=None, periodic: bool = True,
               device="auto", data_root=None, cache: ModelCache | None = None, progress: bool = True
               ) -> tuple[RIAE, dict]:
    """A trained RIAE (eval mode, on device) and its record, through the model cache.

    masking: Fig. 7's information masking (default the scale's: image + feature noise, the paper's); weights: (λ4, λ5, λ_pre) of Eq. 15
    (Fig. 8's ablations); train_attacks: the attacks that make the training examples (Table 3 trains on
    FGSM / PGD / MI-FGSM, the default); periodic: the test-time division, the fixed 2×2 pattern (True) or a
    random one per call (False, Fig. 9); it does not change the trained model. The spec holds the target's
    and F's hashes and every setting.
    """
    scale = get_scale(scale)
    overrides = {"masking": masking, "weights": None if weights is None else tuple(float(w) for w in weights),
                 "train_attacks": None if train_attacks is None else tuple(train_attacks)}
    # IMPureSettings checks the masking (and S) itself
    s = dataclasses.replace(impure_settings(scale), **{k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(s.train_attacks) - set(ATTACKS))
    if unknown or not s.train_attacks:
        raise ValueError(f"train_attacks={s.train_attacks!r}: give one or more of lib's attacks {list(ATTACKS)} "
                         f"(unknown: {unknown}).")
    device = resolve_device(device)
    channels, image_size = image_shape(dataset)
    network, network_record = feature_network(dataset, scale, seed, device=device, data_root=data_root, cache=cache,
                                              progress=progress)
    spec = {"kind": "impure_riae", "version": IMPURE_VERSION, **data_spec(dataset, data_root), "scale": scale.name,
            "settings": dataclasses.asdict(s), "image_size": image_size, "seed": seed, "target": target_record["hash"],
            "feature_network": network_record["hash"]}
    target = target.to(device).eval()

    def train(model: RIAE) -> dict:
        data = load_dataset(dataset, "train", data_root).subset(s.n_train, seed)
        pairs = training_pairs(target, data, s, device=device, seed=seed, progress=progress)
        return train_impure(model, network, pairs, s, device=device, seed=seed, progress=progress)

    model, record = trained(spec, lambda: build(s, channels, image_size, seed=seed), train, cache=cache,
                            device=device, seed=seed)
    model.periodic = periodic
    model.reseed(seed)
    record["feature_network"] = network_record
    return model.eval(), record
