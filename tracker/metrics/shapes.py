"""``shapes``: does the image show what its prompt asked for? The demo model's analyzer as a metric.

For each image, ``tracker.demo.shapes.analyze`` reads back (colour, shape, background); each one the
prompt names scores 1 when it matches and 0 when not (``nan`` when the prompt names none). The metric
is their mean; the parts are stored too: ``shapes.colour``, ``shapes.shape``, ``shapes.background``.
Only the prompt counts (a negative prompt "red" does not make red a target). Pure: Pillow and numpy.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from tracker.demo import shapes as demo

PARTS = ("colour", "shape", "background")
VERSION = "1"


def targets(prompt: str) -> dict[str, str | None]:
    """The colour, shape and background words a prompt names (the first of each; None when absent)."""
    words = re.findall(r"[a-z]+", prompt.lower())
    vocab = {"colour": demo.COLOURS, "shape": demo.SHAPES, "background": demo.BACKGROUNDS}
    return {part: next((w for w in words if w in vocab[part]), None) for part in PARTS}


def score_one(image: Any, prompt: str) -> dict[str, float]:
    want = targets(prompt)
    got = demo.analyze(image)
    found = {"colour": got.colour, "shape": got.shape, "background": got.background}
    parts = {p: (math.nan if want[p] is None else float(found[p] == want[p])) for p in PARTS}
    named = [v for v in parts.values() if not math.isnan(v)]
    return {"": sum(named) / len(named) if named else math.nan, **parts}


class ShapesScore:
    """The ``shapes`` metric (options: none)."""

    name = "shapes"
    higher_is_better = True
    version = VERSION

    def __init__(self, options: Mapping[str, Any] | None = None, device: str = "cpu"):
        if options:
            from tracker.metrics import MetricError

            raise MetricError(f"metric 'shapes' takes no options but got {sorted(options)}")

    def score(self, images: Sequence[Any], runs: Sequence[Any]) -> dict[str, list[float]]:
        each = [score_one(img, run.prompt) for img, run in zip(images, runs, strict=True)]
        return {part: [e[part] for e in each] for part in ("", *PARTS)}
