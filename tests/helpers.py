"""Small helpers several test files share (importable as ``helpers``: conftest puts tests/ on the path)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image


def runs_by_seed(cli, name: str) -> list[dict]:
    """``tracker runs NAME --json`` through the ``cli`` fixture, in seed order."""
    res = cli("runs", name, "--json")
    assert res.code == 0, res.err
    return sorted(json.loads(res.out), key=lambda r: r["seed"])


def pixels(path) -> np.ndarray:
    """An image file's RGB pixels as ints (differences do not wrap around)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=int)


def missing_weights_error(monkeypatch, tmp_path, metric: str) -> str:
    """The ``MetricError`` message of ``metrics.get(metric)`` offline with an empty Hugging Face cache."""
    import pytest

    from tracker import metrics
    from tracker.metrics import MetricError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MetricError) as err:
        metrics.get(metric)
    return str(err.value)
