"""HGD's experimental setup: the classifiers in the paper's roles, the Table 1 data, the cached denoisers.

- Roles (Section 4.1): `target` (IncV3), `source_a` (IncResV2), `source_b` (ResNet), `holdout` (IncV4,
  black-box only), `adv_trained` (the adversarially trained baseline, ensV3). At `paper` scale they are the
  ImageNet models of `PAPER_MODELS`; at `quick`/`smoke` the target is lib.models.zoo's natural
  `resnet_small`, the two sources and the hold-out are narrower `resnet_small`s (width `source_width`, fewer
  images and epochs, other seeds: attack sources only need to be accurate and different, and three more
  full-size classifiers would take most of a notebook's budget), and the baseline is the zoo's PGD-AT model.
  At `paper` on a dataset other than an ImageNet folder (DIR's Table 1 and the leaderboard on CIFAR-10) the
  roles are filled the same way, with the paper scale's classifier (ResNet-18) and the settings' source fields.
- `training_set` / `test_sets`: the TrainSet and the TestSets of Table 1 (lib.attacks.attack_sets) on
  class-balanced images; `get_hgd(objective, ...)` trains a denoiser through the model cache.
- Paper scale: ResNet-50 v1 (torchvision) stands in for ResNet-50 v2, and the adversarially trained baseline
  is the ensemble-adversarially-trained IncResV2 (timm), since ens3-adv-IncV3 is not distributed by
  torchvision or timm.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from lib.attacks.attack_sets import ENSEMBLE, TRAIN_ATTACKS, TRAIN_EPS_RANGE, AdversarialSet, make_adversarial_set, \
    make_test_sets
from lib.core.cache import ModelCache, spec_hash
from lib.core.fit import trained
from lib.core.data import data_spec, image_shape, is_folder, load_dataset
from lib.core.settings import Scale, get_scale, resolve_device, seed_everything
from lib.defenses.hgd import ARCHITECTURES, HGD_VERSION, OBJECTIVES, PAPER_IMAGE_SIZE, Denoiser, build_denoiser, \
    HGDSettings, hgd_settings, train_denoiser


PAPER_MODELS = {
    "target": ("torchvision", "inception_v3"),  # IncV3
    "source_a": ("timm", "inception_resnet_v2.tf_in1k"),  # IncResV2
    "source_b": ("torchvision", "resnet50"),  # ResNet-50 (v1 here; the paper's is v2)
    "holdout": ("timm", "inception_v4.tf_in1k"),  # IncV4, black-box only
    "adv_trained": ("timm", "inception_resnet_v2.tf_ens_adv_in1k"),  # ensemble adversarial training (ensV3's method)
}


ROLES = ("target", "source_a", "source_b", "holdout", "adv_trained")


def _torchvision_weights(name: str):
    import torchvision.models as tvm

    return {"inception_v3": tvm.Inception_V3_Weights.IMAGENET1K_V1, "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1}[name]


def missing_paper_requirements(data_root: str | Path | None, dataset: str = "imagefolder") -> list[str]:
    """What the paper-scale run needs and does not find: data folders and pretrained weights, with where."""
    import torch.hub

    missing = []
    if dataset != "imagefolder":
        missing.append(f"dataset: the paper's setting is ImageNet; pass dataset='imagefolder' (got {dataset!r})")
    root = Path(data_root).expanduser() if data_root is not None else None
    for split, what in (("train", "ImageNet training images (30 per class are used)"),
                        ("test", "ImageNet validation images sorted into class folders (10 per class are used)")):
        folder = root / split if root is not None else None
        if folder is None or not folder.is_dir():
            missing.append(f"data: {what} at {folder if folder else '<data_root>/' + split}/<class>/<image>.JPEG "
                           "(pass data_root=... to the notebook)")
    for role, (library, name) in PAPER_MODELS.items():
        if library == "torchvision":
            file = Path(torch.hub.get_dir()) / "checkpoints" / _torchvision_weights(name).url.rsplit("/", 1)[-1]
            if not file.is_file():
                missing.append(f"weights: {role} = torchvision {name}: put {file.name} in {file.parent} "
                               f"(from {_torchvision_weights(name).url})")
        else:
            import timm
            from huggingface_hub import try_to_load_from_cache

            repo = timm.models.get_pretrained_cfg(name).hf_hub_id
            found = any(isinstance(try_to_load_from_cache(repo, f), str)
                        for f in ("model.safetensors", "pytorch_model.bin"))
            if not found:
                missing.append(f"weights: {role} = timm {name}: the Hugging Face repository {repo} is not in the "
                               f"hub cache (run `timm.create_model('{name}', pretrained=True)` on a machine with "
                               "internet access and copy ~/.cache/huggingface/hub)")
    return missing


def check_paper_requirements(data_root: str | Path | None, dataset: str = "imagefolder") -> None:
    """Fail early, listing everything the paper-scale run lacks and where to put it."""
    missing = missing_paper_requirements(data_root, dataset)
    if missing:
        raise FileNotFoundError("The paper-scale HGD run needs ImageNet data and pretrained weights that are not "
                                "here:\n  - " + "\n  - ".join(missing))


def pretrained_classifier(role: str, device="cpu") -> tuple[nn.Module, dict]:
    """A paper-scale ImageNet classifier by role, normalisation inside, and a record with a stable hash."""
    from lib.models.classifiers import ImageNetClassifier, imagenet_classifier

    library, name = PAPER_MODELS[role]
    if library == "torchvision":
        model = imagenet_classifier(name)
    else:
        import timm

        net = timm.create_model(name, pretrained=True)
        cfg = net.pretrained_cfg
        model = ImageNetClassifier(net, mean=cfg["mean"], std=cfg["std"])
    spec = {"kind": "pretrained", "library": library, "name": name}
    return model.to(device).eval(), {"cached": True, "metrics": {}, "hash": spec_hash(spec), "spec": spec}


def source_scale(scale: Scale, settings: HGDSettings) -> Scale:
    """The lib.core.settings.Scale of the cheaper extra classifiers at small scales (see the module docstring)."""
    return dataclasses.replace(scale, width=settings.source_width, n_train=settings.source_n_train,
                               epochs=settings.source_epochs)


def hgd_classifiers(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *, device="auto",
                    data_root=None, progress: bool = True, roles: Sequence[str] = ROLES,
                    cache: ModelCache | None = None) -> dict[str, tuple]:
    """role -> (classifier in eval mode, record) for the roles of the paper (see the module docstring)."""
    from lib.models.zoo import get_classifier

    scale = get_scale(scale)
    device = resolve_device(device)
    if scale.name == "paper" and is_folder(dataset):  # ImageNet: the paper's own pretrained models
        check_paper_requirements(data_root, dataset)
        return {role: pretrained_classifier(role, device) for role in roles}
    # other data (CIFAR-10 for DIR's Table 1 and the leaderboard at paper scale): classifiers trained on it
    settings = hgd_settings(scale)
    small = source_scale(scale, settings)
    out = {}
    for role in roles:
        if role == "target":
            out[role] = get_classifier(dataset, "natural", scale, seed, device=device, data_root=data_root,
                                       progress=progress, cache=cache)
        elif role == "adv_trained":
            out[role] = get_classifier(dataset, "pgd_at", scale, seed, device=device, data_root=data_root,
                                       progress=progress, cache=cache)
        else:  # other seeds (hence other initialisations and training subsets) for different models
            offset = {"source_a": 1, "source_b": 2, "holdout": 3}[role]
            out[role] = get_classifier(dataset, "natural", small, seed + offset, device=device, data_root=data_root,
                                       progress=progress, cache=cache)
    return out


def balanced_images(dataset: str, split: str, n: int, seed: int = 0, *, classes: Sequence[int] | None = None,
                    data_root=None, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (uint8) and labels from a split, the same number from each class (of `classes` if given); with
    fewer images than classes, one image from each of n classes drawn at random (never more than n images).

    image_size: an image folder's resolution (None: the data options'; `_image_size` gives the paper's 299).
    """
    data = load_dataset(dataset, split, data_root, image_size=image_size)
    labels = data.labels
    classes = sorted(set(labels.tolist())) if classes is None else list(classes)
    gen = torch.Generator().manual_seed(seed)
    if n < len(classes):  # e.g. a dry run's 16 test images of ImageNet's 1000 classes, not 1000 images
        classes = [classes[i] for i in torch.randperm(len(classes), generator=gen)[:n].sort().values.tolist()]
    per_class = n // len(classes)
    idx = []
    for c in classes:
        members = (labels == c).nonzero(as_tuple=True)[0]
        idx.append(members[torch.randperm(len(members), generator=gen)[:per_class]])
    idx = torch.cat(idx)
    idx = idx[torch.randperm(len(idx), generator=gen)]
    chosen = data.take(idx)  # an image folder decodes only these
    return chosen.images, chosen.labels


def _image_size(scale: Scale, dataset) -> int | None:
    """The paper scale reads ImageNet folders at Inception-v3's 299; smaller scales use the data options'."""
    return PAPER_IMAGE_SIZE if scale.name == "paper" and is_folder(dataset) else None


_TRAINING_SETS: dict[str, AdversarialSet] = {}  # generated once per process, only when a denoiser must train


def training_set(dataset: str, scale: str | Scale, seed: int, sources: dict[str, tuple], *,
                 classes: Sequence[int] | None = None, device="cpu", data_root=None,
                 progress: bool = True) -> AdversarialSet:
    """The TrainSet of Table 1 for a scale (memoised in this process)."""
    scale = get_scale(scale)
    s = hgd_settings(scale)
    size = _image_size(scale, dataset)
    key = spec_hash({**data_spec(dataset, data_root, image_size=size), "n": s.n_train, "seed": seed, "classes": classes,
                     "sources": {r: sources[r][1]["hash"] for r in ENSEMBLE}})
    if key not in _TRAINING_SETS:
        images, labels = balanced_images(dataset, "train", s.n_train, seed, classes=classes, data_root=data_root,
                                         image_size=size)
        models = {r: sources[r][0] for r in ENSEMBLE}
        _TRAINING_SETS[key] = make_adversarial_set(models, images, labels, TRAIN_ATTACKS, None, seed=seed,
                                                   device=device, progress=progress)
    return _TRAINING_SETS[key]


def test_sets(dataset: str, scale: str | Scale, seed: int, classifiers: dict[str, tuple], *, device="cpu",
              data_root=None, progress: bool = True) -> dict[str, AdversarialSet]:
    """WhiteTestSet and BlackTestSet (Table 1) on class-balanced test images."""
    scale = get_scale(scale)
    s = hgd_settings(scale)
    images, labels = balanced_images(dataset, "test", s.n_test, seed, data_root=data_root,
                                     image_size=_image_size(scale, dataset))
    models = {r: classifiers[r][0] for r in ("target", "source_a", "source_b", "holdout")}
    return make_test_sets(models, images, labels, seed=seed + 1, device=device, progress=progress)


def _training_fields(s: HGDSettings) -> dict:
    """The settings that determine a trained denoiser (the rest only change evaluation)."""
    keys = ("widths", "depths", "decoder_widths", "decoder_depths", "n_train", "epochs", "batch_size", "lr",
            "lr_final", "lr_drop_at", "flips")
    return {k: getattr(s, k) for k in keys}


def get_hgd(objective: str, dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *,
            target: nn.Module, target_record: dict, arch: str = "dunet", classes: Sequence[int] | None = None,
            sources: dict[str, tuple] | None = None, device="auto", data_root=None, cache: ModelCache | None = None,
            progress: bool = True) -> tuple[Denoiser, dict]:
    """A trained denoiser (eval mode, on device) and its record, through the model cache.

    objective: one of OBJECTIVES; target/target_record: the guiding classifier (ignored by 'pixel' training
    but part of the spec, so every denoiser names the target it was built for); arch: 'dunet' or 'dae';
    classes: train on these classes only (Table 5); sources: the Table 1 attack sources (`hgd_classifiers`,
    loaded when None). The spec holds the guide's and the sources' hashes and the objective.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"Unknown HGD objective {objective!r}: choose one of {OBJECTIVES}.")
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown denoiser {arch!r}: choose one of {ARCHITECTURES}.")
    scale = get_scale(scale)
    s = hgd_settings(scale)
    device = resolve_device(device)
    if sources is None:
        sources = hgd_classifiers(dataset, scale, seed, device=device, data_root=data_root, progress=progress,
                                  roles=ENSEMBLE, cache=cache)
    channels = image_shape(dataset)[0]
    spec = {
        "kind": "hgd_denoiser", "version": HGD_VERSION, "arch": arch, "objective": objective,
        **data_spec(dataset, data_root, image_size=_image_size(scale, dataset)),
        "scale": scale.name, "settings": _training_fields(s), "seed": seed, "guide": target_record["hash"],
        "sources": {r: sources[r][1]["hash"] for r in ENSEMBLE}, "train_attacks": [a.name for a in TRAIN_ATTACKS],
        "train_eps": list(TRAIN_EPS_RANGE), "classes": None if classes is None else list(classes),
    }

    def train(model: Denoiser) -> dict:
        data = training_set(dataset, scale, seed, sources, classes=classes, device=device, data_root=data_root,
                            progress=progress)
        seed_everything(seed)
        return train_denoiser(model, objective, data, s, classifier=target, device=device, seed=seed,
                              progress=progress)

    return trained(spec, lambda: build_denoiser(arch, channels, s), train, cache=cache, device=device, seed=seed)
