"""Sample images for the built-in demo, with nothing downloaded.

- content: Grace Hopper's portrait, which matplotlib ships as sample data;
- style: a painting that this module paints itself: swirling brush strokes along a flow field of
  vortices, in a night-sky palette (deterministic for a given seed).
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw, ImageFilter


def sample_content() -> Image.Image:
    """The sample photograph (a portrait, 512×600), from matplotlib's sample data."""
    from matplotlib import cbook  # matplotlib (slow to import) only when the sample is used

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        image = Image.open(f)
        image.load()
    return image.convert("RGB")


# Deep blues, teals and a few warm yellows, as in a starry night sky.
_PALETTE = [(18, 35, 87), (31, 64, 140), (58, 102, 173), (97, 150, 199), (36, 89, 104), (150, 190, 210)]
_WARM = [(240, 205, 80), (250, 230, 140), (215, 160, 45)]


def sample_style(size: int = 512, seed: int = 0) -> Image.Image:
    """A procedurally painted style image of ``size``×``size`` px: swirls of thick strokes."""
    rng = random.Random(seed)
    scale = size / 512
    image = Image.new("RGB", (size, size), _PALETTE[0])
    draw = ImageDraw.Draw(image)
    vortices = [
        (
            rng.uniform(0, size),
            rng.uniform(0, size),
            rng.choice((-1, 1)) * rng.uniform(0.6, 1.0),
            rng.uniform(60, 160) * scale,
        )
        for _ in range(6)
    ]

    def angle(x: float, y: float) -> float:
        # Flow direction: a gentle horizontal drift plus the swirl of every vortex, fading with distance.
        vx, vy = 1.0, 0.3 * math.sin(y / (40 * scale))
        for cx, cy, spin, radius in vortices:
            dx, dy = x - cx, y - cy
            weight = spin * math.exp(-(dx * dx + dy * dy) / (2 * radius * radius)) * 4
            vx, vy = vx - weight * dy / radius, vy + weight * dx / radius
        return math.atan2(vy, vx)

    for n in range(int(2600 * scale * scale) + 200):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        near_star = any((x - cx) ** 2 + (y - cy) ** 2 < (0.35 * r) ** 2 for cx, cy, _, r in vortices)
        base = rng.choice(_WARM) if near_star or rng.random() < 0.06 else rng.choice(_PALETTE)
        color = tuple(max(0, min(255, c + rng.randint(-18, 18))) for c in base)
        width = max(1, round(rng.uniform(3, 7) * scale))
        points = [(x, y)]
        for _ in range(rng.randint(6, 14)):
            a = angle(x, y)
            x, y = x + 5 * scale * math.cos(a), y + 5 * scale * math.sin(a)
            points.append((x, y))
        draw.line(points, fill=color, width=width, joint="curve")
    return image.filter(ImageFilter.SMOOTH)
