"""IDFR's cached models: `get_idfr` trains the ID (Algorithm 1), then the FR on that ID (Algorithm 2), each
through the model cache, and returns the ID as the purifier with head ∘ FR ∘ encoder as its classifier."""
from __future__ import annotations

import dataclasses

from torch import nn

from lib.core.cache import ModelCache
from lib.core.data import data_spec, image_shape, load_dataset
from lib.core.fit import Frozen, epoch_batches, fit, trained
from lib.core.settings import Scale, get_scale, resolve_device, scale_settings
from lib.defenses.idfr import SETTINGS, FeatureRestorer, FRTrainer, IDFRSettings, IDTrainer, InputDenoiser, \
    RestoredClassifier, encoder_head

IDFR_VERSION = 1


def idfr_settings(scale: str | Scale) -> IDFRSettings:
    return scale_settings(SETTINGS, scale, "IDFR")


def _train_id(denoiser, target, data, s: IDFRSettings, device, seed, progress) -> dict:
    trainer = IDTrainer(denoiser, target, s, device, seed)
    with Frozen(target):
        log = fit(trainer, epoch_batches(data, s.batch_size, seed, device), epochs=s.id_epochs, desc="train ID",
                  progress=progress, show=("loss", "adv_accuracy"))
    return {"epoch_losses": log.history["loss"], "epoch_adv_accuracy": log.history["adv_accuracy"],
            "epoch_clean_accuracy": log.history["clean_accuracy"], "train_seconds": log.seconds}


def _train_fr(restorer, denoiser, target, data, s: IDFRSettings, device, seed, progress) -> dict:
    trainer = FRTrainer(restorer, denoiser, target, s, device, seed)
    with Frozen(target), Frozen(denoiser):
        log = fit(trainer, epoch_batches(data, s.batch_size, seed, device), epochs=s.fr_epochs, desc="train FR",
                  progress=progress, show=("loss", "accuracy"))
    return {"epoch_losses": log.history["loss"], "epoch_accuracy": log.history["accuracy"],
            "train_seconds": log.seconds}


def get_idfr(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *, target: nn.Module,
             target_record: dict, restore: bool = True, device="auto", data_root=None,
             cache: ModelCache | None = None, progress: bool = True) -> tuple[InputDenoiser, dict]:
    """The trained ID (eval mode, on device) and a record whose `classifier` is head ∘ FR ∘ encoder of
    `target` (`restore=False`: the target itself, for the ID-only ablation). `record["id"]` and
    `record["fr"]` are the two models' cache records; the FR's spec names the ID's hash."""
    encoder_head(target)
    scale = get_scale(scale)
    s = idfr_settings(scale)
    device = resolve_device(device)
    channels = image_shape(dataset)[0]
    target = target.to(device).eval()
    common = {**data_spec(dataset, data_root), "scale": scale.name, "seed": seed, "target": target_record["hash"],
              "version": IDFR_VERSION}
    data = None

    def train_data():
        nonlocal data
        data = data if data is not None else load_dataset(dataset, "train", data_root).subset(s.n_train, seed)
        return data

    id_spec = {"kind": "idfr_id", **common, "width": s.width,
               "training": {k: v for k, v in dataclasses.asdict(s).items() if k not in ("width", "fr_epochs")}}
    denoiser, id_record = trained(
        id_spec, lambda: InputDenoiser(channels, s.width),
        lambda model: _train_id(model, target, train_data(), s, device, seed, progress),
        cache=cache, device=device, seed=seed)
    n_classes = target.linear.out_features
    fr_spec = {"kind": "idfr_fr", **common, "id": id_record["hash"], "embedding_dim": target.linear.in_features,
               "training": {k: v for k, v in dataclasses.asdict(s).items() if k not in ("width", "id_epochs")}}
    restorer, fr_record = trained(
        fr_spec, lambda: FeatureRestorer(target.linear.in_features, n_classes),
        lambda model: _train_fr(model, denoiser, target, train_data(), s, device, seed, progress),
        cache=cache, device=device, seed=seed)
    classifier = RestoredClassifier(target, restorer, restore=restore).to(device).eval()
    record = {"spec": {"kind": "idfr", **common, "id": id_record["hash"], "fr": fr_record["hash"], "restore": restore},
              "hash": fr_record["hash"] if restore else id_record["hash"], "cached": id_record["cached"] and
              fr_record["cached"], "metrics": {"id": id_record["metrics"], "fr": fr_record["metrics"]},
              "id": id_record, "fr": fr_record, "classifier": classifier}
    return denoiser.eval(), record
