"""`shapes10`: the embedded procedural dataset (no download, generated from a seed in seconds).

Ten shape classes drawn with random colour, size, rotation and position on textured, cluttered
backgrounds (a colour gradient, low-frequency colour noise, distractor strokes and pixel noise).
Colours are drawn independently of the class, so colour alone does not tell the class; the classes are
chosen to stay distinct under rotation (no square/diamond pair). Shapes cover roughly a quarter to a half
of the image, so half of the pixels masked still leaves the outline for a reconstruction network.

Everything is vectorised over the batch: each shape is a signed distance function evaluated on all pixels
at once, turned into an anti-aliased coverage with a one-pixel soft edge.
"""
from __future__ import annotations

import math

import torch

CLASSES = ("disc", "ring", "square", "frame", "triangle", "plus", "star", "crescent", "ell", "bar")
IMAGE_SIZE = 32
_CHUNK = 2048  # images rendered at once (keeps temporaries around 100 MB)


def _box(u, v, half_w, half_h):
    """Signed distance (approximate outside corners) to an axis-aligned box centred at 0."""
    return torch.maximum(u.abs() - half_w, v.abs() - half_h)


def _shape_sdf(k: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance of class k in shape-local units (the shape spans about [-1, 1])."""
    r = torch.sqrt(u * u + v * v)
    if k == 0:  # disc
        return r - 0.9
    if k == 1:  # ring
        return (r - 0.7).abs() - 0.22
    if k == 2:  # square
        return _box(u, v, 0.75, 0.75)
    if k == 3:  # frame: hollow square
        return _box(u, v, 0.8, 0.8).abs() - 0.17
    if k == 4:  # triangle: intersection of three half-planes
        d = v - 0.5
        for angle in (2 * math.pi / 3, 4 * math.pi / 3):
            d = torch.maximum(d, u * math.sin(angle) + v * math.cos(angle) - 0.5)
        return d
    if k == 5:  # plus
        return torch.minimum(_box(u, v, 0.9, 0.25), _box(u, v, 0.25, 0.9))
    if k == 6:  # five-pointed star in polar form
        theta = torch.atan2(v, u)
        radius = 0.55 + 0.4 * torch.cos(5 * theta).clamp(min=0) ** 2
        return (r - radius) * 0.7
    if k == 7:  # crescent: a disc minus a shifted disc
        return torch.maximum(r - 0.9, 0.75 - torch.sqrt((u - 0.45) ** 2 + v * v))
    if k == 8:  # ell
        return torch.minimum(_box(u + 0.5, v, 0.25, 0.85), _box(u, v - 0.6, 0.75, 0.25))
    if k == 9:  # bar: long thin rectangle
        return _box(u, v, 0.95, 0.28)
    raise ValueError(f"no shape {k}")


def _smooth_noise(gen: torch.Generator, n: int, channels: int, grid: int, size: int) -> torch.Tensor:
    """Low-frequency noise: a random coarse grid upsampled bilinearly. Shape (n, channels, size, size)."""
    coarse = torch.rand(n, channels, grid, grid, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _render(gen: torch.Generator, labels: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one chunk of images for the given labels.

    Returns (images float (n, 3, size, size) in [0, 1], coverage float (n, 1, size, size) in [0, 1]: the
    share of each pixel the shape covers, before colour and noise are applied).
    """
    n = labels.numel()
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    px, py = px.expand(n, size, size), py.expand(n, size, size)

    # background: gradient between two colours along a random direction, plus coarse colour noise
    c0, c1 = torch.rand(n, 3, 1, 1, generator=gen), torch.rand(n, 3, 1, 1, generator=gen)
    direction = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
    t = ((px * torch.cos(direction) + py * torch.sin(direction)) * 0.5 + 0.5).unsqueeze(1)
    background = c0 + (c1 - c0) * t + 0.35 * (_smooth_noise(gen, n, 3, 4, size) - 0.5)

    # clutter: two thin random strokes per image, in random colours (never one of the classes' outlines)
    for _ in range(2):
        angle = torch.rand(n, 1, 1, generator=gen) * math.pi
        offset = torch.rand(n, 1, 1, generator=gen) * 1.6 - 0.8
        dist = (px * torch.sin(angle) - py * torch.cos(angle) - offset).abs()
        alpha = (1 - dist * size / 2 / 0.8).clamp(0, 1).unsqueeze(1) * 0.8
        stroke = torch.rand(n, 3, 1, 1, generator=gen)
        background = background * (1 - alpha) + stroke * alpha

    # shape pose: scale (half-size in image units), rotation and a centre that keeps it mostly inside
    scale = torch.rand(n, 1, 1, generator=gen) * 0.3 + 0.4
    rotation = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
    centre = (torch.rand(n, 2, 1, 1, generator=gen) * 2 - 1) * (0.95 - scale.unsqueeze(1))
    dx, dy = px - centre[:, 0], py - centre[:, 1]
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    u, v = (cos * dx + sin * dy) / scale, (-sin * dx + cos * dy) / scale

    sdf = torch.empty(n, size, size)
    for k in range(len(CLASSES)):
        idx = (labels == k).nonzero(as_tuple=True)[0]
        if idx.numel():
            sdf[idx] = _shape_sdf(k, u[idx], v[idx])
    pixel = 2.0 / size  # one pixel in [-1, 1] units
    coverage = (0.5 - sdf * scale / pixel).clamp(0, 1).unsqueeze(1)

    # shape colour: random, but far enough in luminance from the local background to be visible
    colour = torch.rand(n, 3, 1, 1, generator=gen)
    luminance = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    bg_lum = ((background * coverage).sum((2, 3), keepdim=True) / coverage.sum((2, 3), keepdim=True).clamp(min=1))
    gap = ((colour - bg_lum) * luminance).sum(1, keepdim=True)
    too_close = gap.abs() < 0.2
    push = torch.where(gap >= 0, 0.35, -0.35)
    colour = torch.where(too_close, (colour + push).clamp(0, 1), colour)
    # shading across the shape so it is textured rather than flat
    shade = 1 + 0.25 * (_smooth_noise(gen, n, 1, 3, size) - 0.5)
    foreground = colour * shade

    image = background * (1 - coverage) + foreground * coverage
    image = image + 0.03 * torch.randn(n, 3, size, size, generator=gen)
    return image.clamp(0, 1), coverage


def _generate(n: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images uint8 (n, 3, size, size), labels int64 (n,), masks bool (n, size, size)) from one generator."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(n) % len(CLASSES)
    labels = labels[torch.randperm(n, generator=gen)]
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    masks = torch.empty(n, size, size, dtype=torch.bool)
    for start in range(0, n, _CHUNK):
        chunk, coverage = _render(gen, labels[start:start + _CHUNK], size)
        images[start:start + _CHUNK] = (chunk * 255).round().to(torch.uint8)
        # coverage >= 1/2 <=> the pixel centre lies inside the shape (signed distance <= 0)
        masks[start:start + _CHUNK] = coverage[:, 0] >= 0.5
    return images, labels, masks


def generate_shapes10(n: int, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n balanced, shuffled images deterministically from a seed.

    Returns (images uint8 (n, 3, size, size), labels int64 (n,)). Same (n, seed, size) → same bytes.
    """
    images, labels, _ = _generate(n, seed, size)
    return images, labels


def generate_shapes10_masks(n: int, seed: int = 0, size: int = IMAGE_SIZE
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`generate_shapes10` with each image's object mask (the same images and labels, byte for byte).

    Returns (images uint8 (n, 3, size, size), labels int64 (n,), masks bool (n, size, size)); a mask is True
    where the pixel centre lies inside the shape (the shape's anti-aliased coverage is at least 1/2), so it
    is where the class evidence is (Grad-CAM's object mass, lib.eval.gradcam). Distractor strokes are
    background.
    """
    return _generate(n, seed, size)
