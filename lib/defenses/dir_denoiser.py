"""DIR: a denoiser built on information discard and robust representation restoration.

Paper: "Eliminating Adversarial Noise via Information Discard and Robust Representation Restoration"
(the authors' code, linked from the paper: github.com/chenyyyykun/DIR), Sections 3-4, Algorithm 1, Eqs. 2-9, Appendix A.

What the paper does, and where it lives here:
- Information discard (Section 3.3): K random complementary patch masks at a fixed ratio (K = 2 at 50%,
  Section 4.1) are laid over the input x′; `complementary_masks`, `DIRDenoiser.draw_masks`.
- The denoiser g_ω (Section 4.1, Appendix C): a masked-autoencoder-style ViT (He et al. 2022): patch
  embedding + fixed 2-D sine-cosine position embedding, an encoder of ViT blocks that sees only the visible
  patches of one mask, a light decoder that gets mask tokens in the gaps and predicts every patch's pixels.
  The restored image is the mean of the K reconstructions, x̃ = (1/K) Σ_k g_ω(x′ × m_k) (Eq. 5);
  `DIRDenoiser.reconstruct`, `DIRDenoiser.restore`, `DIRDenoiser.forward` (fresh masks on every call).
- Pre-training (Eq. 2): Σ_k ‖g_ω(x′ × m_k) − x‖², x′ crafted against the target alone; `pretrain_loss`,
  `pretrain`.
- L_adv (Eq. 6): the target's cross-entropy on the restored image of white-box adversarial examples crafted
  by PGD against g_ω + h_θ; `adversarial_loss`. L_rep (Eqs. 4-5): KL between the target's outputs on x̃ and
  on x̃ + δ, δ maximising that KL; `kl_perturbation`, `representation_loss`. L_den = L_adv + α·L_rep (Eq. 7),
  α = 2; `dir_loss`, `train_dir` (Algorithm 1). SGD, momentum 0.9, weight decay 2·10⁻⁴, lr 10⁻² divided by
  10 at epochs 75 and 90 of 90 (so once, for the last 15 epochs); 20 pre-training epochs; training attack PGD
  ε 8/255, 5 steps of 2/255.
- Appendix A / Fig. 2: lib.eval.analyses `discard_noise`, `discard_pixels`. Eq. 8, the mask-aware attack:
  lib.attacks.adaptive `mask_aware_attack`.
- Fig. 6b, baselines adversarially trained like DIR (Algorithm 1 at α = 0, no masks):
  `get_adversarially_trained`.

Our choices where the paper is silent, and deviations (with why):
- Architecture at `paper` scale follows the authors' public code: 2×2 patches on 32×32 images (256 tokens),
  width 192, 3 heads, encoder 8 blocks, decoder 2 (the paper's Table 5 default). The decoder's width is not
  stated anywhere we could read; we use the encoder's (192, 3 heads).
- Masks: ratio r is the fraction of patches *discarded* by each mask; each mask keeps
  n_v = round((1 − r)·L) of the L patches (at least 1, at most L − 1). The K masks are consecutive windows of
  n_v patches along one random cyclic permutation of the patches (a fresh permutation per image), so every
  patch is visible in ⌊K·n_v/L⌋ or ⌈K·n_v/L⌉ masks. At K = 2, r = 50% and even L the masks partition the
  patches (the public code's split into two complementary halves). The paper's 30% / 70% ablation does not
  say how K follows the ratio; we take the smallest K whose masks cover every patch, K = ⌈L / n_v⌉
  (`covering_k`): 2 at 30% and 50%, 4 at 70% (for L = 64 and L = 256). Fewer masks than that would leave
  patches that no reconstruction sees, which is no longer "complementary"; `complementary_masks` refuses it.
- The encoder sees only the visible patches (MAE), which is exactly x′ × m_k with the masked pixels unseen;
  the full decoded image of each mask (visible patches included) enters the mean, as in the public code.
- The output is clamped to [0, 1] (the purifier contract), exactly, in training as in evaluation. (Version 1
  passed gradients straight through the clamp in training, as lib.defenses.hgd does; with L_adv alone that let the
  unclamped output drift out of range with nothing pulling it back, and is not what is attacked.)
- MAE initialisation, except that the pixel head starts at zero (an untrained denoiser outputs gray): at the
  small scales a random head spends its few SGD steps undoing its own noise (initial MSE 1.6 against 0.06).
- Losses are means over pixels and images rather than the paper's sums (a constant rescaling that keeps the
  lr meaningful across image sizes and batch sizes). Eq. 2 is taken literally: the MSE of each mask's
  reconstruction, averaged over the K masks.
- L_rep's δ: the paper gives no budget. We use its training attack's (ε 8/255, 5 steps of 2/255) and the
  TRADES start 0.001·N(0, 1) of the public code; KL(p(x̃) ‖ p(x̃ + δ)) in TRADES's argument order, with
  gradients through both x̃ terms and δ held fixed.
- The training attack is Madry PGD (lib.attacks.pgd: random start, last iterate) with its random start drawn
  from the training generator; the masks it differentiates through are redrawn at every step (the defense
  draws fresh masks on every call, as in the public code). The denoiser is in eval mode while attacked.
- Training images get random flips and crops (lib.core.data.augment_flip_crop), as CIFAR training usually does.
- lr drops are placed at the same fractions of training (75/90 and 90/90 of the steps) at every scale, so
  a short quick-scale run keeps the paper's shape of schedule.
- Sizes shrink at `quick` / `smoke` (see `SETTINGS`); quick also uses 2 training-attack steps of 4/255 (the
  most expensive part of every step), 4 pre-training and 3 training epochs on 3072 images, and AdamW (MAE's
  optimiser) instead of the paper's SGD, with which the quick denoiser collapsed to a near-constant image.
  Quick DIR is still fragile (it collapses against a natural target, and in five of the ten ablation
  variants): docs/notes/dir_quick_scale.md has what was measured and tried. `paper` keeps the paper's SGD.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lib.attacks.pgd import pgd_linf
from lib.core.data import ImageData, augment_flip_crop
from lib.core.fit import Frozen, epoch_batches, fit
from lib.core.purifiers import Defended
from lib.core.settings import Scale, check_eps, resolve_device, scale_settings
from lib.defenses.mae import MaskedAutoencoder

DIR_VERSION = 2  # 2: quick uses AdamW and longer training; exact clamp in training


# ----------------------------------------------------------------------------------------------------------
# Settings per scale
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DIRSettings:
    """Everything a scale decides for DIR. Units in the comments."""

    name: str
    patch_size: int  # pixels per patch side (public code: 2 on 32×32)
    dim: int  # encoder width
    depth: int  # encoder ViT blocks (paper: 8)
    heads: int
    decoder_dim: int
    decoder_depth: int  # decoder ViT blocks (paper: 2)
    decoder_heads: int
    n_train: int  # training images
    pretrain_epochs: int  # Eq. 2 (paper: 20)
    epochs: int  # Algorithm 1 (paper: 90)
    batch_size: int
    mlp_ratio: float = 4.0
    optimizer: str = "sgd"  # "sgd" (Section 4.1) | "adamw" (MAE's, for the short quick schedule)
    lr: float = 1e-2  # SGD (Section 4.1)
    pretrain_lr: float = 1e-2
    momentum: float = 0.9  # SGD
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW (MAE)
    weight_decay: float = 2e-4
    lr_drops: tuple[float, ...] = (75 / 90, 90 / 90)  # fractions of the training steps; lr /10 at each
    eps: float = 8 / 255  # training attacks (pre-training and L_adv)
    attack_steps: int = 5
    step_size: float = 2 / 255
    rep_eps: float = 8 / 255  # δ of Eq. 4 (budget not in the paper; see the module docstring)
    rep_steps: int = 5
    rep_step_size: float = 2 / 255


SETTINGS: dict[str, DIRSettings] = {
    # every cell runs; numbers mean nothing
    "smoke": DIRSettings("smoke", patch_size=8, dim=16, depth=1, heads=2, decoder_dim=16, decoder_depth=1,
                         decoder_heads=2, n_train=64, pretrain_epochs=1, epochs=1, batch_size=32, attack_steps=1,
                         step_size=8 / 255, rep_steps=1, rep_step_size=8 / 255),
    # 4×4 patches (64 tokens), a narrow 4+1-block ViT; AdamW, 4 + 3 epochs of 96 steps, sized for ~3 min of
    # pre-training + training on 2 CPU cores (why AdamW: see the module docstring)
    "quick": DIRSettings("quick", patch_size=4, dim=64, depth=4, heads=4, decoder_dim=64, decoder_depth=1,
                         decoder_heads=4, n_train=3072, pretrain_epochs=4, epochs=3, batch_size=32,
                         optimizer="adamw", lr=3e-4, pretrain_lr=1e-3, weight_decay=0.05, attack_steps=2,
                         step_size=4 / 255, rep_steps=2, rep_step_size=4 / 255),
    # Section 4.1 and the public code
    "paper": DIRSettings("paper", patch_size=2, dim=192, depth=8, heads=3, decoder_dim=192, decoder_depth=2,
                         decoder_heads=3, n_train=50_000, pretrain_epochs=20, epochs=90, batch_size=128),
}


def dir_settings(scale: str | Scale | DIRSettings) -> DIRSettings:
    """The DIR settings of a scale (by name or lib.core.settings.Scale)."""
    return scale if isinstance(scale, DIRSettings) else scale_settings(SETTINGS, scale, "DIR")


# ----------------------------------------------------------------------------------------------------------
# Complementary masks (information discard, Section 3.3)
# ----------------------------------------------------------------------------------------------------------

def _check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio={ratio:g} must lie strictly between 0 and 1: it is the fraction of patches "
                         "each mask discards (the paper: 0.5; ablation 0.3 and 0.7).")
    return ratio


def visible_per_mask(n_patches: int, ratio: float) -> int:
    """n_v = round((1 − ratio)·L), kept in [1, L − 1]: the patches each mask leaves visible."""
    _check_ratio(ratio)
    if n_patches < 2:
        raise ValueError(f"Masking needs at least 2 patches per image; got {n_patches}. Use a smaller patch size.")
    return min(max(round((1 - ratio) * n_patches), 1), n_patches - 1)


def covering_k(n_patches: int, ratio: float) -> int:
    """The smallest K whose masks together see every patch: ⌈L / n_v⌉ (2 at 50%; see the module docstring)."""
    return math.ceil(n_patches / visible_per_mask(n_patches, ratio))


def complementary_masks(batch_size: int, n_patches_h: int, n_patches_w: int, k: int, ratio: float,
                        generator: torch.Generator) -> torch.Tensor:
    """K complementary random masks per image: bool (batch_size, K, L), True = visible, L = n_h·n_w.

    Each mask keeps n_v = `visible_per_mask(L, ratio)` patches: mask j takes positions j·n_v … (j+1)·n_v − 1
    (mod L) of a random permutation of the patches (one per image), so together the masks cover every
    patch, each patch ⌊K·n_v/L⌋ or ⌈K·n_v/L⌉ times; at K = 2, 50% and even L they partition the patches.
    Randomness comes only from `generator` (on the device the masks are made on).
    """
    n_patches = n_patches_h * n_patches_w
    n_visible = visible_per_mask(n_patches, ratio)
    if k < 1:
        raise ValueError(f"k={k}: the number of masks must be at least 1 (the paper: 2).")
    if k * n_visible < n_patches:
        raise ValueError(f"{k} mask(s) keeping {n_visible} of {n_patches} patches each cannot cover every patch; "
                         f"use k >= {covering_k(n_patches, ratio)} at ratio {ratio:g} (covering_k).")
    device = generator.device
    order = torch.rand(batch_size, n_patches, generator=generator, device=device).argsort(1)
    slots = (torch.arange(k, device=device)[:, None] * n_visible
             + torch.arange(n_visible, device=device)[None, :]) % n_patches  # (K, n_v) positions in the order
    chosen = order[:, slots]  # (N, K, n_v) patch indices
    masks = torch.zeros(batch_size, k, n_patches, dtype=torch.bool, device=device)
    masks.scatter_(2, chosen, True)
    return masks


# ----------------------------------------------------------------------------------------------------------
# The denoiser (Section 4.1): an MAE-style ViT
# ----------------------------------------------------------------------------------------------------------

class DIRDenoiser(MaskedAutoencoder):
    """g_ω: K complementary masks, one MAE-style reconstruction per mask, restored image = their mean (Eq. 5).

    forward(x′: (N, C, H, W) in [0, 1]) -> x̃: (N, C, H, W) in [0, 1], H = W = image_size. Fresh masks from
    this purifier's own generator on every call (random, differentiable). reconstruct(x, masks) gives the
    per-mask reconstructions (N, K, C, H, W) for masks (N, K, L) bool, True = visible. The encoder, decoder
    and their embeddings are lib.defenses.mae's, shared with IMPure.
    """

    differentiable = True
    randomized = True

    def __init__(self, channels: int = 3, image_size: int = 32, patch_size: int = 2, dim: int = 192, depth: int = 8,
                 heads: int = 3, decoder_dim: int = 192, decoder_depth: int = 2, decoder_heads: int = 3,
                 mlp_ratio: float = 4.0, mask_ratio: float = 0.5, k: int | None = None, seed: int = 0):
        super().__init__(channels, image_size, patch_size, dim, depth, heads, decoder_dim, decoder_depth,
                         decoder_heads, mlp_ratio, seed)
        self.mask_ratio = _check_ratio(mask_ratio)
        self.k = covering_k(self.n_patches, mask_ratio) if k is None else int(k)
        complementary_masks(1, self.grid, self.grid, self.k, mask_ratio, torch.Generator())  # validates k now
        self.n_visible = visible_per_mask(self.n_patches, mask_ratio)
        self.build(dim, depth, heads, decoder_dim, decoder_depth, decoder_heads, mlp_ratio)

    def draw_masks(self, x: torch.Tensor) -> torch.Tensor:
        """K complementary masks for each image of x, from this purifier's own generator."""
        return complementary_masks(len(x), self.grid, self.grid, self.k, self.mask_ratio, self.generator(x.device))

    def _check_input(self, x: torch.Tensor) -> None:
        self.check_input(x, "DIR denoiser")

    def reconstruct(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """g_ω(x × m_k) for each mask: (N, K, C, H, W), unclamped. masks: (N, K, L) bool, True = visible.

        Every mask must keep the same number of patches (one batch of K·N sequences through the encoder).
        """
        self._check_input(x)
        n, k = masks.shape[:2]
        if masks.dtype != torch.bool or masks.shape != (len(x), k, self.n_patches):
            raise ValueError(f"masks must be bool of shape (N, K, {self.n_patches}) with N = {len(x)}; got "
                             f"{masks.dtype} {tuple(masks.shape)}.")
        counts = masks.sum(2)
        n_visible = int(counts.flatten()[0]) if counts.numel() else 0
        if not (counts == n_visible).all() or n_visible == 0:
            raise ValueError("Every mask must keep the same, non-zero number of patches.")
        index = masks.reshape(n * k, self.n_patches).nonzero()[:, 1].view(n * k, n_visible)  # visible ids, ascending
        seq = self.encode(x, index, repeats=k)  # image i, mask j at row i·K + j
        images = self.unpatchify(self.decode(seq, index))
        return images.view(n, k, *x.shape[1:])

    def mask_pixels(self, masks: torch.Tensor) -> torch.Tensor:
        """Patch masks (N, K, L) bool -> pixel masks (N, K, 1, H, W) float, 1 where visible (x × m_k)."""
        return self.patch_pixels(masks)

    def restore(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """x̃ = mean of the K reconstructions (Eq. 5), clamped to [0, 1]."""
        return self.reconstruct(x, masks).mean(1).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.restore(x, self.draw_masks(x))


def build_denoiser(settings: DIRSettings | str, channels: int = 3, image_size: int = 32, *, mask_ratio: float = 0.5,
                   k: int | None = None, depth: int | None = None, decoder_depth: int | None = None,
                   seed: int = 0) -> DIRDenoiser:
    """A freshly initialised DIR denoiser with a scale's widths (depths overridable for Table 5).

    The patch size is the scale's, or for small images (digits 8×8) the largest smaller one that divides
    the image and leaves at least 2×2 patches to mask.
    """
    s = dir_settings(settings)
    patch = next((p for p in range(min(s.patch_size, image_size // 2), 0, -1) if image_size % p == 0), None)
    if patch is None:
        raise ValueError(f"Images of size {image_size} are too small for patch masking (need at least 2×2 pixels).")
    return DIRDenoiser(channels, image_size, patch, s.dim, s.depth if depth is None else depth, s.heads,
                       s.decoder_dim, s.decoder_depth if decoder_depth is None else decoder_depth, s.decoder_heads,
                       s.mlp_ratio, mask_ratio, k, seed)


# ----------------------------------------------------------------------------------------------------------
# Attacks used in training, and the losses (Eqs. 2, 4-7)
# ----------------------------------------------------------------------------------------------------------


def pretrain_loss(denoiser: DIRDenoiser, x_adv: torch.Tensor, x: torch.Tensor,
                  masks: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: the MSE of each mask's reconstruction g_ω(x′ × m_k) against the clean x, averaged over the K masks."""
    masks = denoiser.draw_masks(x_adv) if masks is None else masks
    recon = denoiser.reconstruct(x_adv, masks)
    return F.mse_loss(recon, x[:, None].expand_as(recon))


def adversarial_loss(target: nn.Module, restored: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Eq. 6: the target's cross-entropy on the restored image x̃ of a white-box adversarial example."""
    return F.cross_entropy(target(restored), y)


def _kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) ‖ softmax(q)), mean over the batch."""
    return F.kl_div(F.log_softmax(logits_q, 1), F.log_softmax(logits_p, 1), reduction="batchmean", log_target=True)


def kl_perturbation(target: nn.Module, restored: torch.Tensor, eps: float = 8 / 255, steps: int = 5,
                    step_size: float = 2 / 255, generator: torch.Generator | None = None) -> torch.Tensor:
    """δ of Eq. 4: ‖δ‖∞ ≤ eps, x̃ + δ in [0, 1], maximising KL(h(x̃) ‖ h(x̃ + δ)) by sign-gradient ascent.

    Starts from 0.001·N(0, 1) (TRADES, the public code), noise from `generator` when given. x̃ is detached
    here; returns δ detached.
    """
    check_eps(eps)
    check_eps(step_size, "step_size")
    base = restored.detach()
    with torch.no_grad():
        clean_logits = target(base)
    noise = torch.randn(base.shape, generator=generator, device=base.device, dtype=base.dtype)
    adv = pgd_linf(target, base, clean_logits, eps=eps, steps=steps, step_size=step_size,
                   start=(base + 0.001 * noise).clamp(0, 1), loss=lambda logits, clean: _kl(clean, logits))
    return adv - base


def representation_loss(target: nn.Module, restored: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Eqs. 4-5: KL(h(x̃) ‖ h(x̃ + δ)) with gradients through both x̃ terms (δ fixed)."""
    return _kl(target(restored), target((restored + delta).clamp(0, 1)))


def dir_loss(denoiser: DIRDenoiser, target: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, *,
             alpha: float = 2.0, rep_eps: float = 8 / 255, rep_steps: int = 5, rep_step_size: float = 2 / 255,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Eq. 7: L_den = L_adv + α·L_rep on white-box adversarial examples x_adv (fresh masks). Returns all terms."""
    restored = denoiser(x_adv)
    l_adv = adversarial_loss(target, restored, y)
    if alpha == 0:  # adversarial training alone (Fig. 6a at α = 0, Fig. 6b): no game to play
        l_rep = torch.zeros((), device=x_adv.device)
    else:
        delta = kl_perturbation(target, restored, rep_eps, rep_steps, rep_step_size, generator)
        l_rep = representation_loss(target, restored, delta)
    return {"loss": l_adv + alpha * l_rep, "adv": l_adv, "rep": l_rep}


# ----------------------------------------------------------------------------------------------------------
# Training (Algorithm 1)
# ----------------------------------------------------------------------------------------------------------

def _optimizer(denoiser: nn.Module, s: DIRSettings, lr: float) -> torch.optim.Optimizer:
    if s.optimizer == "sgd":
        return torch.optim.SGD(denoiser.parameters(), lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(denoiser.parameters(), lr=lr, betas=s.betas, weight_decay=s.weight_decay)
    raise ValueError(f"Unknown optimizer {s.optimizer!r} in the DIR settings: use 'sgd' or 'adamw'.")


class DIRPretrainer:
    """Algorithm 1, line 1 (lib.core.fit contract): `step(x, y)` flips-and-crops, crafts PGD examples against
    the target alone and takes one step on Eq. 2."""

    def __init__(self, denoiser: DIRDenoiser, target: nn.Module, s: DIRSettings, device, seed: int = 0):
        self.model, self.target, self.settings = denoiser, target, s
        self.opt = _optimizer(denoiser, s, s.pretrain_lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.attack_generator = torch.Generator(device=device).manual_seed(seed)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        s = self.settings
        x = augment_flip_crop(x, self.generator)
        x_adv = pgd_linf(self.target, x, y, eps=s.eps, steps=s.attack_steps, step_size=s.step_size,
                         generator=self.attack_generator)
        loss = pretrain_loss(self.model, x_adv, x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"mse": loss.item()}


class DIRTrainer:
    """Algorithm 1, lines 2-12 (lib.core.fit contract): `step(x, y)` flips-and-crops, crafts white-box PGD
    examples against g_ω + h_θ (the denoiser in eval mode while attacked) and takes one step on
    L_adv + α·L_rep; `schedule` divides lr by 10 at each of `settings.lr_drops` (fractions of the steps)."""

    def __init__(self, denoiser: nn.Module, target: nn.Module, s: DIRSettings, alpha: float, device, seed: int = 0):
        self.model, self.target, self.settings, self.alpha = denoiser, target, s, alpha
        self.system = Defended(denoiser, target)
        self.opt = _optimizer(denoiser, s, s.lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.attack_generator = torch.Generator(device=device).manual_seed(seed + 1)

    def schedule(self, step: int, total: int) -> None:
        drops = sorted(int(round(f * total)) for f in self.settings.lr_drops)
        for group in self.opt.param_groups:
            group["lr"] = self.settings.lr * 0.1 ** sum(step >= d for d in drops)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        s = self.settings
        x = augment_flip_crop(x, self.generator)
        self.model.eval()  # attacked as it is evaluated
        x_adv = pgd_linf(self.system, x, y, eps=s.eps, steps=s.attack_steps, step_size=s.step_size,
                         generator=self.attack_generator)
        self.model.train()
        terms = dir_loss(self.model, self.target, x_adv, y, alpha=self.alpha, rep_eps=s.rep_eps,
                         rep_steps=s.rep_steps, rep_step_size=s.rep_step_size, generator=self.attack_generator)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        self.opt.step()
        return terms


def pretrain(denoiser: DIRDenoiser, data: ImageData, settings: DIRSettings | str, *, target: nn.Module,
             device="cpu", seed: int = 0, progress: bool = True) -> dict:
    """Algorithm 1, line 1: Eq. 2 on PGD examples crafted against the target alone (held fixed); returns metrics."""
    s = dir_settings(settings)
    device = resolve_device(device)
    trainer = DIRPretrainer(denoiser.to(device), target.to(device), s, device, seed)
    with Frozen(target):
        log = fit(trainer, epoch_batches(data, s.batch_size, seed, device), epochs=s.pretrain_epochs,
                  desc="pre-train DIR", progress=progress)
    return {"pretrain_epoch_losses": log.history["mse"], "pretrain_seconds": log.seconds}


def train_dir(denoiser: nn.Module, data: ImageData, settings: DIRSettings | str, *, target: nn.Module,
              alpha: float = 2.0, device="cpu", seed: int = 0, progress: bool = True) -> dict:
    """Algorithm 1, lines 2-12: minimise L_adv + α·L_rep on white-box PGD examples against g_ω + h_θ.

    `denoiser` is a DIRDenoiser, or any purifier for the adversarially trained baselines of Fig. 6b. The
    target is held fixed. Returns metrics: per-epoch means of L_den, L_adv, L_rep and seconds.
    """
    s = dir_settings(settings)
    if alpha < 0:
        raise ValueError(f"alpha={alpha} must be non-negative (the paper: 2.0, ablation 0 to 5).")
    device = resolve_device(device)
    trainer = DIRTrainer(denoiser.to(device), target.to(device), s, alpha, device, seed)
    with Frozen(target):
        log = fit(trainer, epoch_batches(data, s.batch_size, seed, device), epochs=s.epochs, desc="train DIR",
                  progress=progress, show=("adv", "rep"))
    return {"epoch_losses": log.history["loss"], "epoch_adv_losses": log.history["adv"],
            "epoch_rep_losses": log.history["rep"], "train_seconds": log.seconds}
