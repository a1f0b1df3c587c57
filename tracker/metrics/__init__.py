"""Per-image metrics: a small protocol, the built-ins and a registry open to other packages.

A metric is an object with

- ``name`` (str), ``higher_is_better`` (bool) and ``version`` (str: changes when its numbers would; a
  model-based metric includes its model and revision, e.g. ``"1+openai/clip-vit-base-patch16@abc123"``);
- ``score(images, runs) -> floats``: one float per image (``nan`` where it does not apply), where
  ``images`` are PIL images and ``runs`` the matching runs (anything with ``.prompt``,
  ``.negative_prompt`` and ``.axes``). It may instead return a mapping ``part -> floats``: the part
  ``""`` is the metric itself, the others are stored as ``name.part`` (``shapes.colour``).

Metrics are built by a factory called as ``factory(options=dict, device=str)`` (a class works):
``options`` is the experiment file's ``metric_options: {name: {...}}`` entry, ``device`` the sweep's
device. Built-ins: ``clip_score``, ``shapes`` and the preference scorers ``pickscore``, ``aesthetic`` and
``hps``. Other packages add theirs through the entry point group ``prompt_tracker.metrics``, e.g. in their
pyproject.toml::

    [project.entry-points."prompt_tracker.metrics"]
    sharpness = "my_package.metrics:Sharpness"

``get(name, options, device)`` builds a metric once per process (models load once) and caches it.
Nothing here imports torch or transformers; the CLIP metric imports them when built.
"""

from __future__ import annotations

import json
import math
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from tracker.errors import TrackerError, UsageError

ENTRY_POINT_GROUP = "prompt_tracker.metrics"
BUILTINS: dict[str, str] = {
    "clip_score": "tracker.metrics.clip:ClipScore",
    "shapes": "tracker.metrics.shapes:ShapesScore",
    "pickscore": "tracker.metrics.pickscore:PickScore",
    "aesthetic": "tracker.metrics.aesthetic:AestheticScore",
    "hps": "tracker.metrics.hps:HpsScore",
}


class MetricError(TrackerError):
    """A metric that cannot be built or loaded (unknown name, weights not available, bad options)."""


@runtime_checkable
class Metric(Protocol):
    name: str
    higher_is_better: bool
    version: str

    def score(self, images: Sequence[Any], runs: Sequence[Any]) -> Sequence[float] | Mapping[str, Sequence[float]]:
        ...


@dataclass(frozen=True)
class Scores:
    """What one metric gave a list of images: stored name -> one value per image."""

    metric: str
    version: str
    higher_is_better: bool
    values: dict[str, list[float]]


_lock = threading.Lock()
_cache: dict[tuple[str, str, str], Metric] = {}


def available() -> dict[str, str]:
    """Metric name -> where it comes from ("module:attr"); entry points may add to or replace built-ins."""
    out = dict(BUILTINS)
    for ep in _entry_points():
        out[ep.name] = ep.value
    return out


def _entry_points():
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def factory(name: str) -> Callable[..., Metric]:
    """The factory registered for ``name``; MetricError naming the known ones otherwise."""
    for ep in _entry_points():
        if ep.name == name:
            try:
                return ep.load()
            except Exception as e:
                raise MetricError(f"metric {name!r}: cannot load its entry point {ep.value!r}: "
                                  f"{type(e).__name__}: {e}") from None
    target = BUILTINS.get(name)
    if target is None:
        raise MetricError(f"unknown metric {name!r}; known: {', '.join(sorted(available()))} "
                          f"(add one through the entry point group {ENTRY_POINT_GROUP!r})")
    import importlib

    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def get(name: str, options: Mapping[str, Any] | None = None, device: str = "cpu") -> Metric:
    """The metric ``name`` built with ``options`` on ``device``: built once per process, then cached."""
    options = dict(options or {})
    cache_key = (name, json.dumps(options, sort_keys=True, default=str), device)
    with _lock:
        metric = _cache.get(cache_key)
        if metric is None:
            make = factory(name)
            try:
                metric = make(options=options, device=device)
            except MetricError:
                raise
            except TypeError as e:
                raise MetricError(f"metric {name!r}: bad options {options!r}: {e}") from None
            except Exception as e:  # noqa: BLE001 -- a custom metric's constructor bug: one line, the sweep goes on
                raise MetricError(f"metric {name!r} could not be built: {type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")) from None
            _check(name, metric)
            _cache[cache_key] = metric
    return metric


def _check(name: str, metric: Any) -> None:
    missing = [a for a in ("name", "higher_is_better", "version", "score") if not hasattr(metric, a)]
    if missing:
        raise MetricError(f"metric {name!r} does not follow the protocol: it lacks {', '.join(missing)}")


def clear_cache() -> None:
    """Forget built metrics (their models are freed with them)."""
    with _lock:
        _cache.clear()


def score(metric: Metric, images: Sequence[Any], runs: Sequence[Any]) -> Scores:
    """Run ``metric`` on the images and check what it gives: one finite-or-nan float per image and part."""
    raw = metric.score(list(images), list(runs))
    parts = raw.items() if isinstance(raw, Mapping) else [("", raw)]
    values: dict[str, list[float]] = {}
    for part, floats in parts:
        floats = [float(v) for v in floats]
        if len(floats) != len(images):
            raise MetricError(f"metric {metric.name!r} gave {len(floats)} values for {len(images)} images")
        values[f"{metric.name}.{part}" if part else metric.name] = [
            v if math.isfinite(v) else math.nan for v in floats]
    return Scores(metric.name, str(metric.version), bool(metric.higher_is_better), values)


_CONDITION = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(<=|>=|!=|==|<|>|=)\s*(\S.*?)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "=": lambda a, b: a == b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


@dataclass(frozen=True)
class Condition:
    """``--where shapes>=0.5``: a stored metric compared with a number (a run without a value never matches)."""

    metric: str
    op: str
    value: float

    def __call__(self, values: Mapping[str, float | None]) -> bool:
        v = values.get(self.metric)
        return v is not None and _OPS[self.op](v, self.value)


def split_where(items: Sequence[str], metric_names: Sequence[str]) -> tuple[list[str], list[Condition]]:
    """``--where`` items -> (axis items ``AXIS=LABEL``, metric conditions ``METRIC OP NUMBER``).

    An item is a metric condition when it names a stored metric, or uses ``<``, ``>`` or ``!=``.
    """
    axis_items, conditions = [], []
    for item in items:
        m = _CONDITION.match(item)
        if m is None or (m.group(1) not in metric_names and m.group(2) in ("=", "==")):
            axis_items.append(item)
            continue
        name, op, text = m.groups()
        if name not in metric_names:
            raise UsageError(f"--where {item!r}: no stored metric {name!r}; stored: {', '.join(metric_names) or 'none'}")
        try:
            conditions.append(Condition(name, op, float(text)))
        except ValueError:
            raise UsageError(f"--where {item!r}: {text!r} is not a number (e.g. {name}>=0.5)") from None
    return axis_items, conditions


__all__ = ["Condition", "split_where", "Metric", "MetricError", "Scores", "available", "factory", "get", "score", "clear_cache",
           "ENTRY_POINT_GROUP"]
