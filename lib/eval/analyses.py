"""Analyses of what a defense does inside a classifier and to the pixels.

- The layers are read with lib.models.layers.layer_outputs (forward hooks, so any classifier works).
- `error_amplification(model, x_p, x)`: the layerwise relative perturbation of HGD's Eq. 6
  (Liao et al., CVPR 2018, Section 5.1, Fig. 5),
      E_l(x_p, x) = ‖f_l(x_p) − f_l(x)‖ / ‖f_l(x)‖,
  per image and per layer, with the input itself as layer 0. The paper states that ‖·‖ is the L1 norm
  "in the following equations" (Section 3.1), so p = 1 is the default; p = 2 is available.
- `perturbation_fit(dx_adv, dx_pred)`: HGD's Fig. 7 line dx̂ = k·dx* through the origin, fitted by least
  squares over all pixels (the paper fits "lines dx̂ = k dx*"; a line of that form has no intercept).

- `class_separation(features, labels)`: DIR's Fig. 5, a UMAP embedding (McInnes et al. 2018, umap-learn)
  of a representation with the silhouette of the true classes, so "clearer separation" is a number.
- `discard_noise`, `discard_pixels`: DIR's Fig. 2 / Appendix A, how much of the adversarial noise (or of
  the clean pixels) must be discarded before the classifier is right again.

Keep each analysis a plain function of tensors so that it can be tested on a case whose answer is known.
"""
from __future__ import annotations

import warnings

from typing import Sequence

import numpy as np
import torch
from torch import nn

from lib.core.settings import check_images
from lib.models.layers import default_layers, layer_outputs








def relative_distance(a: torch.Tensor, b: torch.Tensor, p: float = 1) -> torch.Tensor:
    """‖a − b‖_p / ‖b‖_p per example (first dimension), as a float tensor of shape (N,)."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    return torch.linalg.vector_norm(a - b, ord=p, dim=1) / torch.linalg.vector_norm(b, ord=p, dim=1).clamp_min(1e-12)


@torch.no_grad()
def error_amplification(model: nn.Module, x_p: torch.Tensor, x: torch.Tensor,
                        layers: Sequence[nn.Module] | None = None, *, p: float = 1, include_input: bool = True,
                        batch_size: int = 256) -> np.ndarray:
    """E_l(x_p, x) of Eq. 6 for every image and layer: an array (N, L), L = len(layers) (+1 for the input).

    x_p: perturbed images (adversarial, noisy or denoised), x: the clean images they come from, both
    (N, C, H, W) in [0, 1]. Column 0 is the input itself (pixel level) when include_input is True.
    """
    if x_p.shape != x.shape:
        raise ValueError(f"x_p and x must have the same shape; got {tuple(x_p.shape)} and {tuple(x.shape)}.")
    layers = default_layers(model) if layers is None else list(layers)
    model = model.eval()
    parts = []
    for xp_b, x_b in zip(x_p.split(batch_size), x.split(batch_size)):
        cols = [relative_distance(xp_b, x_b, p)] if include_input else []
        for f_p, f in zip(layer_outputs(model, layers, xp_b), layer_outputs(model, layers, x_b)):
            cols.append(relative_distance(f_p, f, p))
        parts.append(torch.stack(cols, 1))
    return torch.cat(parts).cpu().numpy()


def perturbation_fit(dx_adv: torch.Tensor | np.ndarray, dx_pred: torch.Tensor | np.ndarray) -> dict:
    """Fit dx̂ = k·dx* through the origin (least squares over every pixel) as in HGD's Fig. 7.

    dx_adv: the adversarial perturbation dx* = x* − x; dx_pred: the predicted one dx̂ = x* − x̂ (any
    matching shapes). Returns the slope k, the correlation r between the two, and the number of values.
    k < 1: the denoiser removes only part of the adversarial noise; k > 1: it removes more than was added.
    """
    a = torch.as_tensor(dx_adv).flatten().double()
    b = torch.as_tensor(dx_pred).flatten().double()
    if a.shape != b.shape:
        raise ValueError(f"dx_adv and dx_pred must have the same number of values; got {a.numel()} and {b.numel()}.")
    denom = float((a * a).sum())
    if denom == 0:
        raise ValueError("dx_adv is zero everywhere: there is no adversarial perturbation to fit against.")
    slope = float((a * b).sum()) / denom
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.numel() > 1 else float("nan")
    return {"slope": slope, "r": r, "n": int(a.numel())}


def class_separation(features: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, *, seed: int = 0,
                     n_neighbors: int = 15) -> dict:
    """How well classes separate in a representation (DIR Fig. 5): a 2-D UMAP embedding and silhouette scores.

    features: (N, D) (e.g. the target's penultimate features of restored images), labels: (N,) true classes.
    Returns {"embedding": (N, 2) UMAP coordinates, "silhouette": the silhouette of the true classes in the
    D-dimensional features (Euclidean), "silhouette_2d": the same on the UMAP embedding}. Silhouette lies in
    [−1, 1]; higher = tighter, better separated classes. UMAP is seeded (and so single-threaded).
    """
    import umap
    from sklearn.metrics import silhouette_score

    feats = torch.as_tensor(features).detach().flatten(1).cpu().double().numpy()
    labs = torch.as_tensor(labels).detach().cpu().numpy()
    if len(feats) != len(labs):
        raise ValueError(f"features and labels differ in length: {len(feats)} vs {len(labs)}.")
    if len(np.unique(labs)) < 2 or len(feats) <= len(np.unique(labs)):
        raise ValueError("class_separation needs at least two classes and more points than classes.")
    neighbors = min(n_neighbors, len(feats) - 1)
    with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": seeding is the point here
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        embedding = umap.UMAP(n_neighbors=neighbors, random_state=seed).fit_transform(feats)
    return {"embedding": embedding, "silhouette": float(silhouette_score(feats, labs)),
            "silhouette_2d": float(silhouette_score(embedding, labs))}


# DIR's Fig. 2 / Appendix A: how much of the adversarial noise must be discarded

def _discard_mask(shape: torch.Size, fraction: float, generator: torch.Generator, device) -> torch.Tensor:
    """(N, 1, H, W) float: 0 at exactly round(fraction·H·W) random pixel positions per image, 1 elsewhere."""
    fraction = float(fraction)
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction={fraction:g} must lie in [0, 1]: the share of pixel positions discarded.")
    n, _, h, w = shape
    n_drop = round(fraction * h * w)
    ranks = torch.rand(n, h * w, generator=generator, device=generator.device).argsort(1).argsort(1)
    return (ranks >= n_drop).float().view(n, 1, h, w).to(device)


def discard_noise(x: torch.Tensor, x_adv: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Appendix A: x + (x_adv − x) with the noise set to zero at a random `fraction` of pixel positions
    (all channels of a position together). Randomness only from `generator`."""
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv differ in shape: {tuple(x.shape)} vs {tuple(x_adv.shape)}.")
    keep = _discard_mask(x.shape, fraction, generator, x.device)
    return (x + (x_adv - x) * keep).clamp(0, 1)


def discard_pixels(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Appendix A: x with a random `fraction` of its pixel positions set to zero."""
    check_images(x, "x")
    return x * _discard_mask(x.shape, fraction, generator, x.device)


def log_magnitude_spectrum(delta: torch.Tensor) -> torch.Tensor:
    """RDP's Fig. 3: the mean log-magnitude 2-D spectrum of perturbations δ (N, C, H, W) -> (H, W).

    log(1 + |FFT₂(δ)|) per image and channel (log1p: finite where a frequency is absent), averaged over both,
    fftshifted so that frequency (0, 0) sits at (H // 2, W // 2) and the frequencies grow outwards.
    """
    if not torch.is_tensor(delta) or delta.dim() != 4:
        raise ValueError(f"delta must be a batch of perturbations (N, C, H, W); got {getattr(delta, 'shape', delta)}.")
    magnitude = torch.fft.fft2(delta.detach().double()).abs()
    return torch.fft.fftshift(torch.log1p(magnitude).mean((0, 1)), dim=(-2, -1)).float()


def radial_profile(spectrum: torch.Tensor) -> torch.Tensor:
    """A centred spectrum (H, W) (as `log_magnitude_spectrum` returns it) -> (R,): its mean over each ring of
    integer radius r = round(distance from (H // 2, W // 2)), r = 0 … R − 1 (low to high frequency)."""
    if spectrum.dim() != 2:
        raise ValueError(f"spectrum must be 2-D (H, W); got shape {tuple(spectrum.shape)}.")
    h, w = spectrum.shape
    rows = torch.arange(h, device=spectrum.device) - h // 2
    cols = torch.arange(w, device=spectrum.device) - w // 2
    radius = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2).round().long().flatten()
    sums = torch.bincount(radius, weights=spectrum.flatten().double())
    return (sums / torch.bincount(radius).clamp(min=1)).to(spectrum.dtype)
