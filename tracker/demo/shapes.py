"""The procedural "coloured shapes" dataset and an analyzer that reads generated images back.

Pure: Pillow + numpy only (no torch), so tests and reports can use it cheaply.

A sample is "a {colour} {shape} on {background}", drawn with hard edges at ``SIZE`` x ``SIZE`` px,
random position and size. ``analyze`` predicts (colour, shape, background) from any RGB image:
background from the border median, colour from the foreground mean matched to the palette,
shape from the fill ratio of the foreground's bounding box (circle ~0.785, square ~1, triangle ~0.5).
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 170, 40),
    "blue": (35, 60, 230),
    "yellow": (245, 215, 25),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
PROMPT = "a {colour} {shape} on {background}"
# Typical fill ratio of the shape's bounding box; thresholds sit between them.
FILL = {"triangle": 0.5, "circle": 0.785, "square": 1.0}
MIN_SIDE, MAX_SIDE = 12, 22  # bounding-box side in px at SIZE=32
MARGIN = 2


def prompt(colour: str, shape: str, background: str) -> str:
    return PROMPT.format(colour=colour, shape=shape, background=background)


def combos() -> list[tuple[str, str, str]]:
    """All (colour, shape, background) triples: 4 x 3 x 2 = 24."""
    return list(itertools.product(COLOURS, SHAPES, BACKGROUNDS))


def vocabulary() -> list[str]:
    """Every word the prompts use."""
    words = {"a", "on", *COLOURS, *SHAPES, *BACKGROUNDS}
    return sorted(words)


def draw(colour: str, shape: str, background: str, rng: np.random.Generator | int | None = None,
         size: int = SIZE) -> Image.Image:
    """One sample: a shape of a random size at a random position, hard edges, RGB."""
    rng = np.random.default_rng(rng)
    scale = size / SIZE
    lo, hi = round(MIN_SIDE * scale), round(MAX_SIDE * scale)
    margin = max(1, round(MARGIN * scale))
    side = int(rng.integers(lo, hi + 1))
    x0 = int(rng.integers(margin, size - margin - side + 1))
    y0 = int(rng.integers(margin, size - margin - side + 1))
    x1, y1 = x0 + side - 1, y0 + side - 1
    img = Image.new("RGB", (size, size), BACKGROUNDS[background])
    d = ImageDraw.Draw(img)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        d.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def sample(rng: np.random.Generator) -> tuple[Image.Image, tuple[str, str, str]]:
    """A random (image, (colour, shape, background)) pair."""
    c = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    s = SHAPES[int(rng.integers(len(SHAPES)))]
    b = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return draw(c, s, b, rng), (c, s, b)


# ---------------------------------------------------------------- analyzer

@dataclass(frozen=True)
class Analysis:
    colour: str | None
    shape: str | None
    background: str
    fill: float  # foreground area / its bounding-box area (0 when no foreground)
    fg_mean: tuple[float, float, float]  # mean RGB (0..255) of the foreground, or (nan,)*3
    fg_pixels: int

    @property
    def triple(self) -> tuple[str | None, str | None, str]:
        return (self.colour, self.shape, self.background)


def _rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.max() <= 1.0 + 1e-6:
        a = a * 255.0
    return a


def border_colour(image) -> np.ndarray:
    """Median RGB of the 1-px frame of the image."""
    a = _rgb(image)
    frame = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    return np.median(frame, axis=0)


def background_of(image) -> str:
    bg = border_colour(image)
    return min(BACKGROUNDS, key=lambda k: float(np.sum((bg - BACKGROUNDS[k]) ** 2)))


def foreground_mask(image, threshold: float = 80.0) -> np.ndarray:
    """Boolean mask of pixels far (RGB distance > threshold, 0..255 scale) from the border colour,
    reduced to the largest 4-connected component."""
    a = _rgb(image)
    bg = border_colour(a)
    raw = np.sqrt(np.sum((a - bg) ** 2, axis=-1)) > threshold
    return _largest_component(raw)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp = []
        q = deque([(int(y0), int(x0))])
        seen[y0, x0] = True
        while q:
            y, x = q.popleft()
            comp.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    q.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def shape_from_fill(fill: float) -> str:
    if fill >= 0.9:
        return "square"
    if fill >= 0.64:
        return "circle"
    return "triangle"


def colour_from_rgb(rgb) -> str:
    rgb = np.asarray(rgb, dtype=np.float32)
    return min(COLOURS, key=lambda k: float(np.sum((rgb - COLOURS[k]) ** 2)))


def analyze(image, min_pixels: int = 4) -> Analysis:
    """Predict (colour, shape, background) of an image (PIL, HxWx3 array 0..255 or 0..1)."""
    a = _rgb(image)
    background = background_of(a)
    mask = foreground_mask(a)
    n = int(mask.sum())
    if n < min_pixels:
        return Analysis(None, None, background, 0.0, (float("nan"),) * 3, n)
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = n / float(box)
    mean = a[mask].mean(axis=0)
    return Analysis(colour_from_rgb(mean), shape_from_fill(fill), background, fill,
                    tuple(float(v) for v in mean), n)


def score(predictions, truths) -> dict[str, float]:
    """Accuracy per attribute over parallel lists of (colour, shape, background) triples."""
    n = len(truths)
    keys = ("colour", "shape", "background")
    out = {}
    for i, k in enumerate(keys):
        out[k] = sum(p[i] == t[i] for p, t in zip(predictions, truths)) / n if n else 0.0
    return out
