"""IMPure: a regional-intersection masked autoencoder (RIAE) trained with a random combination module (RCM).

Paper: Liu et al., "Adversarial Purification of Information Masking" (../shared/papers/002_efc2d8bb8197384c.txt).
The image's patches are divided into S disjoint subsets; each subset is encoded alone, and each subset is
reconstructed by the decoder from the *other* subsets' features with mask tokens in its own place, so the
adversarial perturbation of a patch never reaches that patch's reconstruction (Section 3.2.1, Fig. 4).

| paper | here |
|---|---|
| patch / position embedding, ViT blocks, mask token (MAE) | `lib.defenses.mae.MaskedAutoencoder` (shared with DIR) |
| S subsets: random in training, the released code's fixed 2×2-periodic pattern at test | `random_subsets`, `periodic_subsets` |
| RIAE (Fig. 4): encode each subset alone, decode each from the others | `RIAE.encode_subsets`, `RIAE.decoder_passes`, `RIAE.reconstruct_subsets`, `RIAE.purify` |
| information masking (Fig. 5, 7): image occlusion, image noise, feature noise, image + feature noise | `RIAE.masking` |
| RCM, Eq. 10: x′ = x̂ ⊙ u + x_adv ⊙ (1 − u), u patch-aligned | `rcm_mask`, `combine` |
| Eqs. 12-15: L1 pixel + λ-weighted L1 perceptual loss on feature maps and pre-softmax outputs | `impure_loss`, `IMPureTrainer` |

Our choices and deviations, and why:
- Subsets are tokens grouped per image: with S = 4 each subset holds L/4 patches. Training draws a fresh random
  division per image (the paper's "randomly shuffle"); test time uses patch (r, c) → subset 2·(r mod 2) + (c
  mod 2), the released code's fixed pattern, so that the purifier is deterministic (`periodic=False` keeps the
  random division at test time: the Fig. 9 ablation, and then the purifier is random).
- "Image occlusion" is the mask token itself (the masked subset is absent from the decoder's input). "Image
  noise" adds Gaussian noise of random σ ∈ [0, `noise_max`] to the image before encoding, "feature noise" to
  the encoder's features; both are training-time and test-time operations of the purifier (Fig. 5 draws them
  from the purifier's own generator), which makes those variants random. The default is the paper's final
  choice, image + feature noise (Section 5.1), so IMPure as registered is a random purifier (EOT applies).
- RCM's u is binary and patch-aligned (the text: a mask "with the same patch size"); each patch keeps the
  purified pixels with probability drawn per image from U(0, 1) (the released code pastes 2-4 random chunks).
- The feature network F is a classifier with `.layers`: its last two stages' outputs and its logits stand for
  VGG19's block-4 / block-5 ReLU maps and pre-softmax layer, with λ = (30, 10, 5) (Eq. 15). At paper on
  ImageNet-size images it is torchvision's VGG-19 (when its weights are present). Offline there is no ImageNet
  VGG-19, so on the embedded data F is a VGG trained through the cache from another seed than any target:
  `vgg_small` (VGG-16's layout at the quick width) at smoke and quick, VGG-16 at paper on 32×32 data.
- AdamW (0.9, 0.95) with the paper's lr and cosine schedule; epochs and widths per scale (`SETTINGS`).
- At quick (32×32 shapes10, 5 epochs on 2 cores) three deviations, each measured
  (docs/notes/impure_quick_scale.md, `benchmarks/probe_impure_training.py`):
  * 2-pixel patches, not 4: RIAE rebuilds every patch from its neighbours, so it cannot beat a patch-mean
    image, and the quick target reads 4×4 patch-means of clean images at 29% (2×2: 96%).
  * every λ × 1e-3 (`weight_scale`; the ablations' λ stay in the paper's units): with a small F on 32-pixel
    images, Eq. 15's perceptual gradients are ~100× the pixel loss's at initialisation and ~1000× once RIAE
    reconstructs, and with λ × 1 (or × 0.03) RIAE's output stays a texture that moves F's features.
  * σ ≤ 0.1 for the image / feature noise and an lr warm-up (2e-3, 20 steps): σ ≤ 0.5 learned no faster,
    and the larger lr with warm-up reached a lower pixel L1 in the same steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lib.defenses.mae import MaskedAutoencoder
from lib.models.layers import layer_outputs

MASKINGS = ("occlusion", "image_noise", "feature_noise", "image_feature_noise")


@dataclass(frozen=True)
class IMPureSettings:
    """RIAE's size and IMPure's training at one scale (units in comments)."""

    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    subsets: int = 4  # S
    masking: str = "image_feature_noise"  # Section 5.1: "ImgNoise+FeaNoise is thereby employed in our defense method"
    noise_max: float = 0.5  # largest σ of the image / feature noise maskings
    weights: tuple[float, ...] = (30.0, 10.0, 5.0)  # λ4, λ5, λ_pre (Eq. 15), in the paper's units
    weight_scale: float = 1.0  # common factor on every λ (1 at paper; see the module docstring for quick)
    lr: float = 1e-4  # AdamW (0.9, 0.95), cosine
    warmup_steps: int = 0  # linear lr warm-up before the cosine (0 at paper)
    weight_decay: float = 0.05
    epochs: int = 100
    batch_size: int = 64
    n_train: int = 50_000  # clean training images before the correctly-classified filter
    # training examples (Section 5.4; the released code's budget): each image attacked by one of these
    train_attacks: tuple[str, ...] = ("fgsm", "pgd", "mifgsm")
    eps: float = 16 / 255
    attack_step: float = 4 / 255
    attack_steps: int = 10
    # the perceptual loss's network F: torchvision's ImageNet VGG-19 on ImageNet-size images, else this
    # architecture trained on the dataset through the cache (lib.defenses.impure_setup.feature_network)
    feature_arch: str = "vgg19"

    def __post_init__(self):
        if self.masking not in MASKINGS:
            raise ValueError(f"masking={self.masking!r}: choose one of {MASKINGS}.")
        if self.subsets < 2:
            raise ValueError(f"subsets={self.subsets}: RIAE needs at least 2 subsets (each is rebuilt from the others).")
        if not self.weight_scale >= 0:
            raise ValueError(f"weight_scale={self.weight_scale}: a factor on λ must be ≥ 0 (1 keeps Eq. 15's λ).")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps}: give 0 (no warm-up) or a positive step count.")


SETTINGS = {
    "smoke": IMPureSettings(patch_size=4, dim=32, depth=1, heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=2,
                            epochs=1, batch_size=32, n_train=256, lr=1e-3, attack_steps=2,
                            feature_arch="vgg_small"),
    # quick: 2-pixel patches, σ ≤ 0.1, λ × 1e-3 and a warm-up (the module docstring and
    # docs/notes/impure_quick_scale.md give the measurements behind each)
    "quick": IMPureSettings(patch_size=2, dim=64, depth=3, heads=2, decoder_dim=64, decoder_depth=1, decoder_heads=2,
                            epochs=5, batch_size=32, n_train=5_000, lr=2e-3, warmup_steps=20, noise_max=0.1,
                            weight_scale=1e-3, feature_arch="vgg_small"),
    "paper": IMPureSettings(),
}


def periodic_subsets(grid: int, subsets: int = 4) -> torch.Tensor:
    """(L,) subset id of each patch of a grid × grid image: 2·(row mod 2) + (col mod 2) for S = 4 (the released
    code's test-time pattern); for other S, (row·grid + col) mod S."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ids = 2 * (rows % 2) + (cols % 2) if subsets == 4 and grid % 2 == 0 else (rows * grid + cols) % subsets
    return ids.flatten()


def random_subsets(n: int, n_patches: int, subsets: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """(n, L) subset ids: each image's patches shuffled and split into `subsets` groups of equal size."""
    if n_patches % subsets:
        raise ValueError(f"{n_patches} patches do not split into {subsets} equal subsets.")
    order = torch.rand(n, n_patches, generator=generator, device=device).argsort(1)
    ids = torch.empty(n, n_patches, dtype=torch.long, device=device)
    ids.scatter_(1, order, (torch.arange(n_patches, device=device) % subsets).expand(n, -1).contiguous())
    return ids


class RIAE(MaskedAutoencoder):
    """Regional-intersection autoencoder. forward(x: (N, C, H, W) in [0, 1]) -> purified image, same shape.

    Deterministic with `periodic=True` and occlusion masking; random otherwise. Differentiable.
    """

    differentiable = True

    def __init__(self, channels: int = 3, image_size: int = 32, patch_size: int = 4, dim: int = 96, depth: int = 4,
                 heads: int = 3, decoder_dim: int = 64, decoder_depth: int = 2, decoder_heads: int = 2,
                 mlp_ratio: float = 4.0, subsets: int = 4, masking: str = "occlusion", noise_max: float = 0.5,
                 periodic: bool = True, seed: int = 0):
        super().__init__(channels, image_size, patch_size, dim, depth, heads, decoder_dim, decoder_depth,
                         decoder_heads, mlp_ratio, seed)
        if self.n_patches % subsets:
            raise ValueError(f"{self.n_patches} patches do not split into subsets={subsets} equal subsets.")
        if masking not in MASKINGS:
            raise ValueError(f"masking={masking!r}: choose one of {MASKINGS}.")
        self.subsets, self.masking, self.noise_max, self.periodic = subsets, masking, float(noise_max), periodic
        self.build(dim, depth, heads, decoder_dim, decoder_depth, decoder_heads, mlp_ratio)
        self.register_buffer("test_subsets", periodic_subsets(self.grid, subsets), persistent=False)

    @property
    def randomized(self) -> bool:  # an instance property: the flag depends on the configuration
        return not self.periodic or self.masking != "occlusion"

    def division(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L) subset ids: the periodic pattern, or a fresh random division in training / when not periodic."""
        if self.periodic and not self.training:
            return self.test_subsets.expand(len(x), -1)
        return random_subsets(len(x), self.n_patches, self.subsets, self.generator(x.device), x.device)

    def _noise_like(self, t: torch.Tensor) -> torch.Tensor:
        gen = self.generator(t.device)
        sigma = self.noise_max * torch.rand(len(t), *[1] * (t.dim() - 1), generator=gen, device=t.device)
        return sigma * torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype)

    def encode_subsets(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every subset encoded alone, with the masking's noise: features (N, S, L/S, D') and their patch
        positions (N, S, L/S), ascending within a subset. ids: (N, L) subset id of every patch."""
        n, s, length = len(x), self.subsets, self.n_patches
        if self.masking in ("image_noise", "image_feature_noise"):
            x = x + self._noise_like(x)
        # each subset's patch ids in ascending order: (N·S, L/S), subset j of image i at row i·S + j
        index = torch.stack([(ids == j).nonzero()[:, 1].view(n, length // s) for j in range(s)], 1)
        features = self.encode(x, index.reshape(n * s, -1), repeats=s)  # (N·S, L/S, D'), every subset alone
        if self.masking in ("feature_noise", "image_feature_noise"):
            features = features + self._noise_like(features)
        return features.view(n, s, length // s, -1), index.view(n, s, -1)

    def decoder_passes(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The S decoder passes of every image, pass j of image i at row i·S + j: the other subsets' features
        (N·S, (S−1)·L/S, D'), their positions (N·S, (S−1)·L/S), and every subset's positions (N, S, L/S)."""
        features, index = self.encode_subsets(x, ids)
        n, s, v, _ = features.shape
        others = torch.tensor([[k for k in range(s) if k != j] for j in range(s)], device=x.device)  # (S, S−1)
        return features[:, others].reshape(n * s, (s - 1) * v, -1), index[:, others].reshape(n * s, -1), index

    def reconstruct_subsets(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(N, S, L, p²·C) pixel patches: row s is the decoder's output at every position when subset s is
        masked and the others are visible (Fig. 4 in full; `purify` computes only the patches it keeps)."""
        seq, visible, _ = self.decoder_passes(x, ids)
        return self.decode(seq, visible).view(len(x), self.subsets, self.n_patches, -1)

    def purify_full_decoder(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """`purify` the slow way, as Fig. 4 draws it: `reconstruct_subsets`, then each patch from its own
        subset's pass (the reference the tests and benchmarks/bench_riae.py hold `purify` against)."""
        patches = self.reconstruct_subsets(x, ids)  # (N, S, L, P)
        own = patches.gather(1, ids[:, None, :, None].expand(-1, 1, -1, patches.shape[-1])).squeeze(1)
        return self.unpatchify(own)

    def purify(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The purified image, unclamped: each patch from the decoder pass that masked its own subset
        (`purify_full_decoder`'s image, with the decoder's last block computed for those patches alone)."""
        seq, visible, index = self.decoder_passes(x, ids)
        n, s, v = index.shape
        own = self.decode_masked(seq, visible, index.reshape(n * s, v))  # (N·S, L/S, P): subset j's own patches
        # back from subset order to patch order: position index[i, j, t] holds own[i, j, t]
        inverse = index.reshape(n, -1).argsort(1)
        own = own.reshape(n, s * v, -1).gather(1, inverse[..., None].expand(-1, -1, own.shape[-1]))
        return self.unpatchify(own)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x, "RIAE")
        return self.purify(x, self.division(x)).clamp(0, 1)


def build(settings: IMPureSettings, channels: int, image_size: int, **overrides) -> RIAE:
    kwargs = dict(patch_size=settings.patch_size, dim=settings.dim, depth=settings.depth, heads=settings.heads,
                  decoder_dim=settings.decoder_dim, decoder_depth=settings.decoder_depth,
                  decoder_heads=settings.decoder_heads, subsets=settings.subsets, masking=settings.masking,
                  noise_max=settings.noise_max)
    kwargs.update(overrides)
    return RIAE(channels, image_size, **kwargs)


def rcm_mask(n: int, purifier: MaskedAutoencoder, generator: torch.Generator, device=None) -> torch.Tensor:
    """u of Eq. 10: (N, 1, H, W), 1 on the patches that keep the purified pixels; each image's keep-rate ~ U(0, 1)."""
    rate = torch.rand(n, 1, generator=generator, device=device)
    keep = torch.rand(n, purifier.n_patches, generator=generator, device=device) < rate
    return purifier.patch_pixels(keep)


def combine(purified: torch.Tensor, adversarial: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Eq. 10: x′ = x̂ ⊙ u + x_adv ⊙ (1 − u)."""
    return purified * u + adversarial * (1 - u)


def feature_layers(network: nn.Module) -> list[nn.Module]:
    """The layers of the perceptual loss: a `.layers` classifier's 4th and 5th stages and its logits."""
    layers = getattr(network, "layers", None)
    if layers is None or len(layers) < 3:
        raise ValueError(f"{type(network).__name__} needs `.layers` (stages then the classifier) for IMPure's "
                         "perceptual loss; lib's classifiers have it.")
    return [layers[-3], layers[-2], layers[-1]]


def impure_loss(purified: torch.Tensor, combined: torch.Tensor, x: torch.Tensor, network: nn.Module,
                weights=(30.0, 10.0, 5.0)) -> dict:
    """Eq. 15: L1 pixel loss of x̂ plus λ-weighted L1 distances between F_i(x) and F_i(x′) (Eq. 13, mean over
    the map). Returns the terms and their weighted sum `loss`."""
    layers = feature_layers(network)
    if len(weights) != len(layers):
        raise ValueError(f"weights={weights} must give one λ per perceptual layer ({len(layers)}).")
    with torch.no_grad():
        clean = layer_outputs(network, layers, x)
    mixed = layer_outputs(network, layers, combined)
    terms = {"pixel": (purified - x).abs().mean()}
    for i, (a, b) in enumerate(zip(clean, mixed)):
        terms[f"perceptual_{i}"] = (a - b).abs().mean()
    terms["loss"] = terms["pixel"] + sum(w * terms[f"perceptual_{i}"] for i, w in enumerate(weights))
    return terms


class IMPureTrainer:
    """`step(x, x_adv, y)` (the lib.core.fit contract on stored (clean, adversarial, label) pairs, as
    `lib.attacks.attack_sets.pair_batches` yields them): RIAE with a random division, RCM, Eq. 15, one AdamW
    step under a cosine schedule. The feature network stays frozen (eval mode); labels are not used."""

    def __init__(self, purifier: RIAE, network: nn.Module, settings: IMPureSettings, total_steps: int, seed: int = 0):
        self.model, self.network, self.settings, self.seed = purifier, network, settings, seed
        self.opt = torch.optim.AdamW(purifier.parameters(), lr=settings.lr, betas=(0.9, 0.95),
                                     weight_decay=settings.weight_decay)
        self.total_steps = max(total_steps, 1)
        self.rcm_generator: torch.Generator | None = None

    def schedule(self, step: int, total: int) -> None:
        warmup = min(1.0, (step + 1) / self.settings.warmup_steps) if self.settings.warmup_steps else 1.0
        for group in self.opt.param_groups:
            group["lr"] = self.settings.lr * warmup * 0.5 * (1 + math.cos(math.pi * step / self.total_steps))

    def step(self, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        if self.rcm_generator is None:
            self.rcm_generator = torch.Generator(device=x.device).manual_seed(self.seed)
        self.model.train()
        raw = self.model.purify(x_adv, self.model.division(x_adv))
        # [0, 1] values for the feature network, with gradients through the clamp (as lib's HGD denoisers train)
        purified = raw + (raw.clamp(0, 1) - raw).detach()
        u = rcm_mask(len(x), self.model, self.rcm_generator, x.device)
        weights = tuple(self.settings.weight_scale * w for w in self.settings.weights)
        terms = impure_loss(purified, combine(purified, x_adv, u), x, self.network, weights)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        return {k: v.item() for k, v in terms.items()}

