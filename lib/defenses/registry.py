"""One registry of every defense: `DEFENSES`, name -> `DefenseEntry`, and `get_defense` to build any of them.

An entry says what a defense is and how the harness must attack it:
- `display_name`, `citation` (authors, title, venue, year) and `kind`: a fixed `transform`
  (lib.defenses.transforms), a learned `baseline` (lib.defenses.baselines), an `hgd` denoiser, `dir`, `idfr`,
  `impure`, or `superres` and `rdp` (learned on clean images, for any classifier);
- the purifier contract of lib.core.purifiers: `differentiable` (white-box gradients go through it, else
  the `bpda` threat model), `randomized` (the `eot` threat model; repeatable after `reseed`),
  `bpda_surrogate` (it has a BPDA surrogate other than the identity);
- `needs_target` (learned for one classifier, so `get_defense` needs it) and `grayscale` (it takes
  1-channel images: transforms any (N, 1, H, W), learned ones when trained on a 1-channel dataset).
The contract flags are read from the purifier classes that `get_defense` builds, never typed twice, and
tests/test_registry.py checks every entry against the object built at `smoke` scale (shapes, range,
gradients or surrogate, randomness), so a defense added here without honest flags fails the suite.

    purifier, classifier, record = get_defense("lgd", "shapes10", "quick", 0, target=target, target_record=rec)
    model = Defended(purifier, classifier)                      # classifier ∘ purifier

`get_defense` returns a `ReadyDefense` (purifier in eval mode, the classifier to put after it, the record)
for every name. Transforms are built with `defense_settings` (the papers' defaults; pixel deflection scaled
to the image size) updated by keyword options of their constructor (`get_defense("jpeg", quality=25)`).
Learned defenses go through their cached getters (`get_baseline`, `get_hgd`, `get_dir`: trained the first
time, loaded afterwards) and take those getters' extra options (HGD: `classes`, `sources`; DIR: the
ablations' `mask_ratio`, `alpha`, ...). The classifier is `target`, except for ME-Net, which trains its
own classifier on ME-Net images, SOAP, whose classifier is trained with its auxiliary loss, and IDFR, whose feature restorer sits inside the target (head ∘ FR ∘
encoder; `record["classifier"]`). Paper notebooks call `get_defense` where they
called the separate getters; the leaderboard walks `DEFENSES` (`table()` shows it), builds each defense for
each target and picks the threat models from the flags (white-box or BPDA, plus EOT when randomized).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import pandas as pd
from torch import nn

from lib.core.cache import spec_hash
from lib.core.data import image_shape
from lib.core.purifiers import Purifier
from lib.core.settings import Scale, get_scale, resolve_device
from lib.defenses.adp import ADP
from lib.defenses.ape_gan import APEGAN
from lib.defenses.baselines import baseline_settings, get_baseline
from lib.defenses.comdefend import ComDefend
from lib.defenses.dir_denoiser import DIRDenoiser, dir_settings
from lib.defenses.dir_setup import get_dir
from lib.defenses.hgd import DAE, DUNET, hgd_settings
from lib.defenses.hgd_setup import get_hgd
from lib.defenses.idfr import InputDenoiser
from lib.defenses.idfr_setup import get_idfr, idfr_settings
from lib.defenses.impure import RIAE
from lib.defenses.impure_setup import get_impure, impure_settings
from lib.defenses.jatp import JATP
from lib.defenses.menet import MENet
from lib.defenses.nrp import NRP
from lib.defenses.rdp import RDPPurifier, rdp_settings
from lib.defenses.rdp_setup import get_rdp
from lib.defenses.soap import SOAP
from lib.defenses.superres import SuperResolutionDefense
from lib.defenses.superres_setup import get_superres, superres_settings
from lib.defenses.transforms import TRANSFORMS, build_transform

__all__ = ["DefenseEntry", "ReadyDefense", "DEFENSES", "get_defense", "defense_settings", "table"]

KINDS = ("transform", "baseline", "hgd", "dir", "idfr", "impure", "superres", "rdp")
# get_defense's own arguments, passed to every learned getter; the rest of a getter's keywords are options
STANDARD = ("target", "target_record", "device", "data_root", "cache", "progress")


@dataclass(frozen=True)
class DefenseEntry:
    """One registered defense (see the module docstring for the fields' meaning)."""

    name: str
    display_name: str
    citation: str
    kind: str
    differentiable: bool
    randomized: bool
    bpda_surrogate: bool  # a BPDA surrogate other than the identity
    needs_target: bool
    grayscale: bool  # supports 1-channel input
    getter: Callable[..., tuple[nn.Module, dict]]  # (name, dataset, scale, seed, **standard, **options)
    settings: Callable[[Scale, str], Any]  # (scale, dataset) -> keyword arguments or the settings dataclass
    options: tuple[str, ...] = ()  # keyword options get_defense accepts for this defense


class ReadyDefense(NamedTuple):
    """What get_defense returns: evaluate `classifier ∘ purifier`."""

    purifier: nn.Module  # eval mode, on the device
    classifier: nn.Module | None  # target, or ME-Net's own classifier; None for a transform without target
    record: dict  # spec, hash, metrics (the model cache's record for learned defenses)


# ----------------------------------------------------------------------------------------------------------
# getters: one per kind, each returning (purifier, record)


def _transform_kwargs(name: str, scale: Scale, dataset: str) -> dict:
    """The constructor's defaults (the papers' own), pixel deflection scaled to the image size as its class
    docstring asks (200 deflections in a window of 10 on 224×224: 4 in a window of 1 on 32×32)."""
    params = inspect.signature(TRANSFORMS[name]).parameters
    kwargs = {k: p.default for k, p in params.items() if k != "seed" and p.default is not inspect.Parameter.empty}
    if name == "pixel_deflection":
        side = image_shape(dataset)[1]
        kwargs.update(deflections=max(1, round(200 * side ** 2 / 224 ** 2)), window=max(1, round(10 * side / 224)))
    return kwargs


def _get_transform(name, dataset, scale, seed, *, device, **options):
    kwargs = {**_transform_kwargs(name, scale, dataset), **options}
    spec = {"kind": "transform", "name": name, "kwargs": kwargs, "seed": seed}
    purifier = build_transform(name, seed=seed, **kwargs).to(resolve_device(device))
    return purifier, {"spec": spec, "hash": spec_hash(spec), "metrics": {}, "cached": True}  # nothing to train


def _get_baseline(name, dataset, scale, seed, **kwargs):
    return get_baseline(name, dataset, scale, seed, **kwargs)


def _baseline_settings(name):
    return lambda scale, dataset: baseline_settings(name, scale)


def _get_hgd(objective: str, arch: str):
    def get(name, dataset, scale, seed, **kwargs):
        return get_hgd(objective, dataset, scale, seed, arch=arch, **kwargs)
    return get


def _get_dir(name, dataset, scale, seed, **kwargs):
    return get_dir(dataset, scale, seed, **kwargs)


def _get_idfr(name, dataset, scale, seed, **kwargs):
    return get_idfr(dataset, scale, seed, **kwargs)


def _get_impure(name, dataset, scale, seed, **kwargs):
    return get_impure(dataset, scale, seed, **kwargs)


def _get_superres(name, dataset, scale, seed, **kwargs):
    return get_superres(dataset, scale, seed, **kwargs)


def _get_rdp(name, dataset, scale, seed, **kwargs):
    return get_rdp(dataset, scale, seed, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# the registry


def _flags(cls: type[Purifier], **overrides) -> dict:
    """The contract flags of a purifier class: its own attributes, and whether it overrides bpda_surrogate."""
    flags = {"differentiable": bool(cls.differentiable), "randomized": bool(cls.randomized),
             "bpda_surrogate": cls.bpda_surrogate is not Purifier.bpda_surrogate}
    return {**flags, **overrides}


GUO = 'Guo, Rana, Cissé, van der Maaten, "Countering Adversarial Images using Input Transformations", ICLR 2018'
XU = 'Xu, Evans, Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018'
PRAKASH = 'Prakash, Moran, Garber, DiLillo, Storer, "Deflecting Adversarial Attacks with Pixel Deflection", CVPR 2018'
HGD = ('Liao, Liang, Dong, Pang, Hu, Zhu, "Defense against Adversarial Attacks Using High-Level Representation '
       'Guided Denoiser", CVPR 2018')
MENET = 'Yang, Zhang, Katabi, Xu, "ME-Net: Towards Effective Adversarial Robustness with Matrix Estimation", ICML 2019'

_TRANSFORMS = {  # name -> (display name, citation, flag overrides)
    "none": ("None", "no defense", {}),
    "jpeg": ("JPEG", f"{GUO} (JPEG: Dziugaite et al. 2016, Das et al. 2017)", {}),
    "feature_distillation": ("Feature distillation", 'Liu, Liu, Liu, Xu, Lin, Wang, Wen, "Feature Distillation: '
                             'DNN-Oriented JPEG Compression Against Adversarial Examples", CVPR 2019', {}),
    "bit_depth": ("Bit-depth reduction", XU, {}),
    "median": ("Median smoothing", XU, {}),
    "tvm": ("TVM", GUO, {}),
    # overrides bpda_surrogate, but it is the identity with resize_back=True (the default: same size out)
    "random_resize_pad": ("Random resize-pad", 'Xie, Wang, Zhang, Ren, Yuille, "Mitigating Adversarial Effects '
                          'Through Randomization", ICLR 2018', {"bpda_surrogate": False}),
    "gaussian_noise": ("Gaussian noise", "RDP's noise layer (Table 4, σ 0.05); NRP's dynamic mode (Naseer et al., "
                       "CVPR 2020)", {}),
    "wavelet": ("Wavelet denoising", f"BayesShrink (Chang, Yu, Vetterli, IEEE TIP 2000) as in {PRAKASH}", {}),
    "pixel_deflection": ("Pixel deflection", PRAKASH, {}),
}

_BASELINES = {  # name -> (display name, citation, purifier class)
    "ape_gan": ("APE-GAN", 'Jin, Shen, Zhang, Wang, Dai, "APE-GAN: Adversarial Perturbation Elimination with GAN", '
                "ICASSP 2019", APEGAN),
    "nrp": ("NRP", 'Naseer, Khan, Hayat, Khan, Porikli, "A Self-supervised Approach for Adversarial Robustness", '
            "CVPR 2020", NRP),
    "jatp": ("JATP", 'Zhou, Wang, Gao, Han, Yu, Wang, Liu, "Improving White-box Robustness of Pre-processing '
             'Defenses via Joint Adversarial Training", arXiv 2106.05453, 2021', JATP),
    "comdefend": ("ComDefend", 'Jia, Wei, Cao, Foroosh, "ComDefend: An Efficient Image Compression Model to Defend '
                  'Adversarial Examples", CVPR 2019', ComDefend),
    "menet": ("ME-Net", MENET, MENet),
    "menet_adv": ("ME-Net-A", f"{MENET}; adversarially trained classifier as in DIR's Table 3", MENet),
    "adp": ("ADP", 'Yoon, Hwang, Lee, "Adversarial Purification with Score-based Generative Models", ICML 2021', ADP),
    "soap": ("SOAP", 'Shi, Holtz, Mishne, "Online Adversarial Purification based on Self-Supervised Learning", '
             "ICLR 2021; the label-consistency variant", SOAP),
}

_HGD = {  # name -> (display name, objective, architecture)
    "hgd_pixel_dae": ("HGD DAE (pixel)", "pixel", "dae"),
    "hgd_pixel_dunet": ("HGD DUNET (pixel)", "pixel", "dunet"),
    "hgd_fgd": ("HGD FGD", "fgd", "dunet"),
    "hgd_lgd": ("HGD LGD", "lgd", "dunet"),
    "hgd_cgd": ("HGD CGD", "cgd", "dunet"),
}


def _registry() -> dict[str, DefenseEntry]:
    out = {}
    for name, (display, citation, overrides) in _TRANSFORMS.items():
        options = tuple(k for k in inspect.signature(TRANSFORMS[name]).parameters if k != "seed")
        out[name] = DefenseEntry(
            name, display, citation, "transform", **_flags(TRANSFORMS[name], **overrides), needs_target=False,
            grayscale=True, getter=_get_transform, options=options,
            settings=lambda scale, dataset, name=name: _transform_kwargs(name, scale, dataset))
    for name, (display, citation, cls) in _BASELINES.items():
        out[name] = DefenseEntry(name, display, citation, "baseline", **_flags(cls), needs_target=True,
                                 grayscale=True, getter=_get_baseline, settings=_baseline_settings(name))
    for name, (display, objective, arch) in _HGD.items():
        out[name] = DefenseEntry(name, display, HGD, "hgd", **_flags(DAE if arch == "dae" else DUNET),
                                 needs_target=True, grayscale=True, getter=_get_hgd(objective, arch),
                                 settings=lambda scale, dataset: hgd_settings(scale), options=("classes", "sources"))
    out["dir"] = DefenseEntry(
        "dir", "DIR", '"Eliminating Adversarial Noise via Information Discard and Robust Representation '
        'Restoration" (authors and venue are not in the repository\'s copy of the text)', "dir",
        **_flags(DIRDenoiser), needs_target=True, grayscale=True, getter=_get_dir, settings=lambda scale, dataset: dir_settings(scale),
        options=("mask_ratio", "k", "alpha", "pretrain", "depth", "decoder_depth"))
    # the classifier returned is head ∘ FR ∘ encoder of the target (record["classifier"]), the ID the purifier
    out["idfr"] = DefenseEntry(
        "idfr", "IDFR", '"Enhanced Countering Adversarial Attacks via Input Denoising and Feature Restoring" '
        "(authors and venue are not in the repository's copy of the text)", "idfr", **_flags(InputDenoiser),
        needs_target=True, grayscale=True, getter=_get_idfr, settings=lambda scale, dataset: idfr_settings(scale),
        options=("restore",))
    # RIAE's `randomized` is per instance (a random division or a noise masking makes it random); the
    # registered default, image + feature noise (the paper's choice), is random
    out["impure"] = DefenseEntry(
        "impure", "IMPure", 'Liu, Lian, Zhang, Xiao, "Adversarial Purification of Information Masking" (venue '
        "not in the repository's copy of the text)", "impure", **_flags(RIAE, randomized=True), needs_target=True,
        grayscale=True, getter=_get_impure, settings=lambda scale, dataset: impure_settings(scale),
        options=("masking", "weights", "train_attacks", "periodic"))
    # learned on clean images only: one SR network per dataset defends any classifier
    out["superres"] = DefenseEntry(
        "superres", "WD+SR", 'Mustafa, Khan, Hayat, Shen, Shao, "Image Super-Resolution as a Defense Against '
        'Adversarial Attacks", IEEE TIP 2019 (wavelet denoising, then an EDSR-style ×2 network)', "superres",
        **_flags(SuperResolutionDefense), needs_target=False, grayscale=True, getter=_get_superres,
        settings=lambda scale, dataset: superres_settings(scale), options=("sigma",))
    # learned on clean images only (label-free examples against a fixed F): one P per dataset defends any
    # classifier; P is deterministic, the `noise_sigma` option (Table 4's dynamic mode) makes it random
    out["rdp"] = DefenseEntry(
        "rdp", "RDP", 'Bai, Zhao, Guo, Wen, "Adversarial Purification through Representation Disentanglement", '
        'arXiv 2110.07801, 2021 (the repository\'s copy is titled "Representation Disentangled Purification"; '
        "venue not in it)", "rdp", **_flags(RDPPurifier), needs_target=False, grayscale=True, getter=_get_rdp,
        settings=lambda scale, dataset: rdp_settings(scale), options=("drop", "noise_sigma"))
    return out


DEFENSES: dict[str, DefenseEntry] = _registry()


def _entry(name: str) -> DefenseEntry:
    if name not in DEFENSES:
        raise ValueError(f"Unknown defense {name!r}: the registry has {sorted(DEFENSES)} (list them with "
                         "sorted(lib.defenses.registry.DEFENSES), or lib.defenses.registry.table()).")
    return DEFENSES[name]


def defense_settings(name: str, scale: str | Scale = "quick", dataset: str = "shapes10"):
    """What a scale decides for a defense: a transform's keyword arguments (the same at every scale), or a learned
    defense's settings dataclass (baselines.baseline_settings, hgd.hgd_settings, dir_denoiser.dir_settings)."""
    return _entry(name).settings(get_scale(scale), dataset)


def get_defense(name: str, dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *,
                target: nn.Module | None = None, target_record: dict | None = None, device="auto", data_root=None,
                cache=None, progress: bool = True, **options) -> ReadyDefense:
    """Any registered defense, ready to evaluate: (purifier in eval mode, classifier to put after it, record).

    target / target_record: the classifier the defense protects (lib.models.zoo.get_classifier); required by
    learned defenses, which are trained for it (through `cache`, default $PURIFY_CACHE), optional for
    transforms (then returned as the classifier). options: a transform's constructor arguments, or the
    learned getter's extra ones (`DEFENSES[name].options`).
    """
    entry = _entry(name)
    scale = get_scale(scale)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise TypeError(f"Defense {name!r} does not take option(s) {unknown}: it accepts "
                        f"{list(entry.options) or 'none'} (besides dataset, scale, seed and {', '.join(STANDARD)}).")
    if entry.needs_target and (target is None or target_record is None):
        raise ValueError(f"{entry.display_name} ({name!r}) is learned for one classifier: pass target= and "
                         f"target_record=, the classifier and record from lib.models.zoo.get_classifier, e.g. "
                         f"`target, target_record = get_classifier({dataset!r}, 'natural', {scale.name!r}, {seed})`.")
    if not entry.grayscale and image_shape(dataset)[0] == 1:
        raise ValueError(f"{entry.display_name} ({name!r}) does not take 1-channel images; {dataset!r} has them.")
    if entry.kind == "transform":
        purifier, record = entry.getter(name, dataset, scale, seed, device=device, **options)
    else:
        purifier, record = entry.getter(name, dataset, scale, seed, target=target, target_record=target_record,
                                        device=device, data_root=data_root, cache=cache, progress=progress, **options)
    return ReadyDefense(purifier.eval(), record.get("classifier", target), record)


def table() -> pd.DataFrame:
    """The registry as a table (one row per defense; the getters and settings left out)."""
    keep = ("display_name", "kind", "differentiable", "randomized", "bpda_surrogate", "needs_target", "grayscale",
            "options", "citation")
    return pd.DataFrame([{"name": e.name, **{k: getattr(e, k) for k in keep}} for e in DEFENSES.values()]
                        ).set_index("name")
