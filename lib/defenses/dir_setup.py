"""DIR's cached denoisers: `get_dir` (Algorithm 1 through the model cache, with the ablations' overrides) and
`get_adversarially_trained` (Fig. 6b: a baseline purifier fine-tuned by Algorithm 1 at α = 0)."""
from __future__ import annotations

import copy
import dataclasses

from torch import nn

from lib.core.cache import ModelCache
from lib.core.data import data_spec, image_shape, load_dataset
from lib.core.fit import trained
from lib.core.settings import Scale, get_scale, resolve_device, seed_everything
from lib.defenses.dir_denoiser import DIR_VERSION, DIRDenoiser, DIRSettings, _check_ratio, build_denoiser, \
    dir_settings, train_dir
from lib.defenses.dir_denoiser import pretrain as _pretrain  # get_dir's `pretrain` flag shadows the name


def _training_fields(s: DIRSettings) -> dict:
    """The settings that determine a trained denoiser (all of them: DIRSettings holds nothing else)."""
    fields = dataclasses.asdict(s)
    fields.pop("name")
    return fields


def get_dir(dataset: str = "shapes10", scale: str | Scale = "quick", seed: int = 0, *, target: nn.Module,
            target_record: dict, mask_ratio: float = 0.5, k: int | None = None, alpha: float = 2.0,
            pretrain: bool = True, depth: int | None = None, decoder_depth: int | None = None, device="auto",
            data_root=None, cache: ModelCache | None = None, progress: bool = True) -> tuple[DIRDenoiser, dict]:
    """A trained DIR denoiser (eval mode, on device) and its record, through the model cache.

    target / target_record: the classifier DIR is trained against (lib.models.zoo.get_classifier); mask_ratio and k:
    the masks (k=None: `covering_k`, 2 at 50%); alpha: the weight of L_rep; pretrain: run Eq. 2 first
    (the no-pre-training ablation sets False); depth / decoder_depth: override the scale's (Table 5). The
    spec holds everything that determines the model, including the target's hash.
    """
    scale = get_scale(scale)
    s = dir_settings(scale)
    device = resolve_device(device)
    _check_ratio(mask_ratio)
    if alpha < 0:
        raise ValueError(f"alpha={alpha} must be non-negative (the paper: 2.0, ablation 0 to 5).")
    channels, image_size = image_shape(dataset)

    def build() -> DIRDenoiser:
        return build_denoiser(s, channels, image_size, mask_ratio=mask_ratio, k=k, depth=depth,
                              decoder_depth=decoder_depth, seed=seed)

    probe = build()  # resolves k and the patch size for the spec
    spec = {
        "kind": "dir_denoiser", "version": DIR_VERSION, **data_spec(dataset, data_root), "scale": scale.name,
        "settings": _training_fields(s), "patch_size": probe.patch_size, "image_size": image_size,
        "depth": len(probe.blocks), "decoder_depth": len(probe.decoder_blocks), "mask_ratio": mask_ratio,
        "k": probe.k, "alpha": alpha, "pretrain": pretrain, "seed": seed, "target": target_record["hash"],
    }
    target = target.to(device).eval()

    def train(model: DIRDenoiser) -> dict:
        data = load_dataset(dataset, "train", data_root).subset(s.n_train, seed)
        seed_everything(seed)
        metrics = _pretrain(model, data, s, target=target, device=device, seed=seed, progress=progress) \
            if pretrain else {}
        metrics.update(train_dir(model, data, s, target=target, alpha=alpha, device=device, seed=seed,
                                 progress=progress))
        return metrics

    model, record = trained(spec, build, train, cache=cache, device=device, seed=seed)
    model.reseed(seed)
    return model, record




def get_adversarially_trained(name: str, purifier: nn.Module, purifier_record: dict, dataset: str = "shapes10",
                              scale: str | Scale = "quick", seed: int = 0, *, target: nn.Module, target_record: dict,
                              device="auto", data_root=None, cache: ModelCache | None = None,
                              progress: bool = True) -> tuple[nn.Module, dict]:
    """Fig. 6b: a trained baseline denoiser, adversarially trained the way DIR is but without masks or L_rep.

    A copy of `purifier` (trained by its own paper's recipe) is fine-tuned with Algorithm 1 at α = 0: the
    target's cross-entropy on the purified white-box PGD examples crafted against purifier + target, with
    the scale's DIR settings (data, epochs, optimiser, attack). The paper does not say whether its
    baselines were fine-tuned or trained adversarially from scratch; fine-tuning keeps what the baseline
    learnt and costs DIR's training budget. Through the cache; the spec holds the baseline's and the
    target's hashes.
    """
    scale = get_scale(scale)
    s = dir_settings(scale)
    device = resolve_device(device)
    spec = {"kind": "adv_trained_purifier", "version": DIR_VERSION, "base": name, "base_hash": purifier_record["hash"],
            **data_spec(dataset, data_root), "scale": scale.name, "settings": _training_fields(s), "seed": seed,
            "target": target_record["hash"]}
    target = target.to(device).eval()

    def build() -> nn.Module:
        return copy.deepcopy(purifier).cpu()

    def train(model: nn.Module) -> dict:
        data = load_dataset(dataset, "train", data_root).subset(s.n_train, seed)
        seed_everything(seed)
        return train_dir(model, data, s, target=target, alpha=0.0, device=device, seed=seed, progress=progress)

    return trained(spec, build, train, cache=cache, device=device)
