"""The learned baseline purifiers of the comparison tables, by name, trained once through the model cache.

`get_baseline(name, dataset, scale, seed, target=..., target_record=...)` returns (purifier, record) for
    ape_gan    APE-GAN (lib.defenses.ape_gan), trained on FGSM examples against the target
    nrp        NRP (lib.defenses.nrp), trained with the self-supervised feature-distortion attack on the target's
               first stages (the fixed feature network; the paper uses ImageNet VGG16 features)
    jatp       JATP (lib.defenses.jatp), trained on full adversarial examples against purifier + target
    comdefend  ComDefend (lib.defenses.comdefend), trained on clean images only
    menet      ME-Net (lib.defenses.menet) with a classifier trained naturally on ME-Net images
    menet_adv  ME-Net with a classifier adversarially trained through the ME-Net layer (BPDA), DIR's "ME-Net-A"
    adp        ADP (lib.defenses.adp), Yoon et al.'s score-based purification, trained by DSM on clean images
    soap       SOAP-LC (lib.defenses.soap): a classifier of the target's architecture trained jointly with the
               label-consistency loss, purified at test time by minimising that loss (IDFR's baselines)
Each module's docstring cites its paper and lists our deviations. ME-Net and SOAP change the classifier: their
record carries the trained classifier as `record["classifier"]`; evaluate it as record["classifier"] ∘ purifier.
Every spec holds the target's hash, so a baseline is never reused in front of a classifier it was not built for.
"""
from __future__ import annotations

import dataclasses

from torch import nn

from lib.defenses import adp
from lib.defenses import ape_gan
from lib.defenses import comdefend
from lib.defenses import jatp
from lib.defenses import menet
from lib.defenses import nrp
from lib.defenses import soap
from lib.core.cache import ModelCache
from lib.core.fit import trained
from lib.models.classifiers import build_classifier
from lib.models.recipes import Recipe, recipe_for
from lib.core.data import data_spec, image_shape, load_dataset
from lib.core.settings import Scale, get_scale, resolve_device, scale_settings, seed_everything

BASELINES = ("ape_gan", "nrp", "jatp", "comdefend", "menet", "menet_adv", "adp", "soap")
DISPLAY_NAMES = {"ape_gan": "APE-GAN", "nrp": "NRP", "jatp": "JATP", "comdefend": "ComDefend", "menet": "ME-Net",
                 "menet_adv": "ME-Net-A", "adp": "ADP", "soap": "SOAP"}
BASELINE_VERSION = 1
_MODULES = {"ape_gan": ape_gan, "nrp": nrp, "jatp": jatp, "comdefend": comdefend, "menet": menet,
            "menet_adv": menet, "adp": adp, "soap": soap}


def _check_name(name: str) -> str:
    if name not in BASELINES:
        raise ValueError(f"Unknown baseline purifier {name!r}: choose one of {list(BASELINES)}.")
    return name


def baseline_settings(name: str, scale: str | Scale):
    """The settings dataclass of baseline `name` at `scale` (smoke, quick, paper)."""
    return scale_settings(_MODULES[_check_name(name)].SETTINGS, scale, DISPLAY_NAMES[name])


def soap_recipe(scale: Scale, settings) -> Recipe:
    """The natural recipe of the scale (SGD, one-cycle lr) for SOAP's epochs; settings: SOAPSettings or its dict."""
    epochs = settings["epochs"] if isinstance(settings, dict) else settings.epochs
    return recipe_for("natural", scale, epochs=epochs)


def baseline_spec(name: str, dataset: str, scale: Scale, seed: int, target_record: dict, data_root=None) -> dict:
    settings = dataclasses.asdict(baseline_settings(name, scale))
    if name == "soap":  # the cached weights are the classifier's: the purification settings do not train it
        settings = {"aux_weight": settings["aux_weight"], "view_noise": settings["view_noise"],
                    "recipe": dataclasses.asdict(soap_recipe(scale, settings)), "arch": target_record["spec"]["arch"],
                    "width": target_record["spec"]["width"], "n_train": settings["n_train"]}
    return {"kind": f"baseline_{name}", "version": BASELINE_VERSION, **data_spec(dataset, data_root),
            "scale": scale.name, "settings": settings, "seed": seed, "target": target_record["hash"]}


def get_baseline(name: str, dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *,
                 target: nn.Module, target_record: dict, device="auto", data_root=None,
                 cache: ModelCache | None = None, progress: bool = True) -> tuple[nn.Module, dict]:
    """A trained baseline purifier (eval mode, on device) and its record (metrics, cache path, cached or not).

    target / target_record: the classifier the baseline defends (from lib.models.zoo.get_classifier); APE-GAN,
    JATP and ME-Net train against it, NRP takes its first stages as the feature network, ComDefend ignores it
    (but its spec still names it).
    """
    _check_name(name)
    scale = get_scale(scale)
    device = resolve_device(device)
    settings = baseline_settings(name, scale)
    spec = baseline_spec(name, dataset, scale, seed, target_record, data_root)
    channels = image_shape(dataset)[0]
    module = _MODULES[name]
    target = target.to(device).eval()

    def train_data():
        return load_dataset(dataset, "train", data_root).subset(settings.n_train, seed)

    def new_classifier() -> nn.Module:  # the target's architecture, for the defenses that train their own
        return build_classifier(target_record["spec"]["arch"], dataset, target_record["spec"]["width"],
                                data_root=data_root)

    if name == "soap":
        def train_soap(classifier: nn.Module) -> dict:
            test = load_dataset(dataset, "test", data_root).subset(scale.n_test, seed)
            return soap.train_soap_classifier(classifier, train_data(), test, soap_recipe(scale, settings), settings,
                                              device=device, seed=seed, progress=progress)

        classifier, record = trained(spec, new_classifier, train_soap, cache=cache, device=device, seed=seed)
        record["classifier"] = classifier
        return soap.build_purifier(classifier, settings).to(device).eval(), record

    if name in ("menet", "menet_adv"):
        purifier = menet.menet_from_settings(settings, seed).to(device)

        def build() -> nn.Module:  # the cached weights are the ME-Net classifier's
            return menet.initial_classifier(target, settings, new_classifier)

        def train(classifier: nn.Module) -> dict:
            training_purifier = menet.menet_from_settings(settings, seed)  # its own masks, not the evaluated one's
            return menet.train_menet_classifier(classifier, training_purifier.to(device), train_data(), settings,
                                                adversarial=name == "menet_adv", device=device, seed=seed,
                                                progress=progress)

        classifier, record = trained(spec, build, train, cache=cache, device=device, seed=seed)
        record["classifier"] = classifier
        return purifier.eval(), record

    def train(purifier: nn.Module) -> dict:
        seed_everything(seed)
        if name == "ape_gan":
            return ape_gan.train(purifier, train_data(), settings, target=target, device=device, seed=seed,
                                 progress=progress)
        if name == "nrp":
            return nrp.train(purifier, train_data(), settings, target=target, device=device, seed=seed,
                             progress=progress)
        if name == "jatp":
            return jatp.train(purifier, train_data(), settings, target=target, device=device, seed=seed,
                              progress=progress)
        if name == "adp":
            return adp.train(purifier, train_data(), settings, device=device, seed=seed, progress=progress)
        return comdefend.train(purifier, train_data(), settings, device=device, seed=seed, progress=progress)

    return trained(spec, lambda: module.build(settings, channels), train, cache=cache, device=device, seed=seed)
