"""Plots shared by the notebooks (matplotlib/seaborn); each returns the figure for `run.save_figure`."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import torch


def image_grid(images: torch.Tensor, nrow: int, titles: list[str] | None = None, row_labels: list[str] | None = None,
               scale: float = 1.2):
    """Show images (N, C, H, W) in [0, 1] as a grid with `nrow` images per row."""
    images = images.detach().cpu().clamp(0, 1)
    n = len(images)
    rows = (n + nrow - 1) // nrow
    fig, axes = plt.subplots(rows, nrow, figsize=(nrow * scale, rows * scale), squeeze=False)
    for i, ax in enumerate(axes.flat):
        _bare(ax)
        if i < n:
            _show(ax, images[i])
            if titles is not None and i < len(titles):
                ax.set_title(titles[i], fontsize=7)
    if row_labels:
        for r, label in enumerate(row_labels):
            axes[r, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    return fig


def class_examples(images: torch.Tensor, labels: torch.Tensor, classes, per_class: int = 8, max_classes: int = 20,
                   scale: float = 1.2):
    """One row per class (the first `max_classes`), its first `per_class` images; blank where a class has fewer."""
    images = images.detach().cpu().clamp(0, 1)
    shown = list(classes)[:max_classes]
    fig, axes = plt.subplots(len(shown), per_class, figsize=(per_class * scale, len(shown) * scale), squeeze=False)
    for k, row in enumerate(axes):
        members = (labels.cpu() == k).nonzero().flatten()[:per_class]
        for j, ax in enumerate(row):
            _bare(ax)
            if j < len(members):
                _show(ax, images[members[j]])
        row[0].set_ylabel(shown[k], fontsize=8)
    if len(shown) < len(classes):
        fig.suptitle(f"the first {len(shown)} of {len(classes)} classes", fontsize=9)
    fig.tight_layout()
    return fig


def _bare(ax) -> None:
    ax.set_xticks([]), ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _show(ax, image: torch.Tensor) -> None:
    """One (C, H, W) image in [0, 1]; grayscale with a grey colour map."""
    img = image.permute(1, 2, 0).numpy()
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              interpolation="nearest")


def perturbation_image(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Map a perturbation in [-eps, eps] to [0, 1] for display (grey is zero)."""
    return (delta / (2 * max(eps, 1e-12)) + 0.5).clamp(0, 1)


def accuracy_vs_eps(frame: pd.DataFrame, hue: str = "attack", title: str = "", ax=None):
    """Accuracy (with its confidence band) against ε·255, one line per value of `hue`."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
    else:
        fig = ax.figure
    for key, group in frame.sort_values("eps").groupby(hue, sort=False):
        eps = group["eps"].to_numpy() * 255
        ax.plot(eps, group["accuracy"], marker="o", label=str(key))
        ax.fill_between(eps, group["ci_low"], group["ci_high"], alpha=0.2)
    ax.set_xlabel("ε (×1/255)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
