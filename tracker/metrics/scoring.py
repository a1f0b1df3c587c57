"""Scoring images and storing the values: during a sweep (``Scorer.add`` after each batch is written)
and afterwards over stored runs (``rescore``, ``tracker score``).

A metric that cannot be built (weights not available offline, bad options) is reported once, as one
warning line, and left out; one that raises while scoring is reported and skipped for that batch.
Images and the rest of the sweep never fail because of a metric.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from tracker import metrics
from tracker.metrics import MetricError
from tracker.textfmt import NoBar

log = logging.getLogger("tracker")
BATCH = 32  # images read and scored at once by ``rescore``


@dataclass
class Scorer:
    """Scores runs with ``names`` and stores the values. ``device``: the sweep's device."""

    store: Any
    experiment: str
    names: Sequence[str]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str = "cpu"
    scored: dict[str, int] = field(default_factory=dict)  # metric -> images scored
    errors: dict[str, str] = field(default_factory=dict)  # metric -> why it was left out
    skipped: dict[str, list[str]] = field(default_factory=dict)  # "missing"/"modified" -> run keys not scored
    goes_on: str = "the sweep goes on without it"
    _lock: Any = field(default_factory=threading.Lock, repr=False)  # the writing stage calls add() from threads

    def _metric(self, name: str, device: str):
        with self._lock:
            if name in self.errors:
                return None
            try:
                return metrics.get(name, self.options.get(name), device)
            except MetricError as e:
                self.errors[name] = str(e)
                log.warning("%s; %s", e, self.goes_on)
                return None

    def add(self, runs: Sequence[Any], images: Sequence[Any], device: str | None = None) -> None:
        """Score one batch of written images (``runs[i]`` made ``images[i]``) with every metric and store them."""
        from tracker.metrics import storage

        if not runs:
            return
        keys = [r.key for r in runs]
        for name in self.names:
            metric = self._metric(name, device or self.device)
            if metric is None:
                continue
            try:
                scores = metrics.score(metric, images, runs)
            except Exception as e:  # noqa: BLE001 - a metric's bug must not end the sweep
                log.warning("metric %s failed on %d images: %s: %s", name, len(runs), type(e).__name__, e)
                continue
            storage.save(self.store, self.experiment, keys, scores)
            with self._lock:
                self.scored[name] = self.scored.get(name, 0) + len(runs)


def experiment_metrics(store, experiment: str) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    """The ``metrics`` and ``metric_options`` of the experiment file as last run (from the store)."""
    from tracker.experiment import parse as spec
    from tracker.errors import NotFoundError

    exp = store.experiment(experiment)
    if exp is None:
        names = [e["name"] for e in store.experiments()]
        raise NotFoundError(f"no experiment {experiment!r} in the run store"
                            + (f"; known: {', '.join(names)}" if names else ""))
    if not exp["source_text"]:
        return (), {}
    parsed = spec.parse(exp["source_text"], exp["source_path"] or f"<{experiment}>", default_name=experiment)
    return parsed.metrics, dict(parsed.metric_options)


def rescore(store, experiment: str, names: Sequence[str], options: Mapping[str, Mapping[str, Any]],
            device: str = "auto", progress: bool = True, all_versions: bool = False) -> Scorer:
    """Score every done run of ``experiment``'s current plan (of every version of its file with
    ``all_versions``) from its stored PNG, replacing earlier values.

    An image that is missing, or whose bytes are no longer those its sha256 recorded (``tracker check``'s
    "modified": swapped or edited on disk), is not scored: scoring it would put the other picture's value on
    the run. Its earlier values of these metrics are dropped too (they would feed ``effects`` for an image that
    is gone), and one warning line per kind says how many and what to do (``scorer.skipped``)."""
    from PIL import Image

    from tracker.images.check import image_state
    from tracker.metrics import storage

    scorer = Scorer(store, experiment, list(names), options, device, goes_on="other metrics are still scored")
    runs = []
    for r in store.runs(experiment, status="done", current=not all_versions):
        kind = image_state(r) if r.image else "missing"
        if kind is None:
            runs.append(r)
        else:
            scorer.skipped.setdefault(kind, []).append(r.key)
    for kind, keys in scorer.skipped.items():
        dropped = storage.drop(store, experiment, keys, _stored_names(store, experiment, names))
        log.warning("%d image(s) of %s not scored: %s since they were generated (e.g. run %s)%s; "
                    "`tracker check --fix %s` regenerates them with the next run", len(keys), experiment,
                    "missing" if kind == "missing" else "their bytes differ from the sha256 recorded",
                    keys[0][:12], f"; their {dropped} earlier value(s) dropped" if dropped else "", experiment)
    with _bar(len(runs), f"scoring {experiment}", progress) as bar:
        for i in range(0, len(runs), BATCH):
            batch, images = [], []
            for r in runs[i:i + BATCH]:
                try:
                    with Image.open(r.image) as im:
                        images.append(im.convert("RGB"))
                    batch.append(r)
                except OSError as e:
                    log.warning("run %s: cannot read its image %s: %s", r.key, r.image, e)
            scorer.add(batch, images)
            bar.update(len(runs[i:i + BATCH]))
            if len(scorer.errors) == len(scorer.names):
                break  # nothing left to score with
    return scorer


def _stored_names(store, experiment: str, names: Sequence[str]) -> list[str]:
    """The stored metric names of ``names``: each one and its parts (``shapes`` -> ``shapes.colour`` ...)."""
    from tracker.metrics import storage

    stored = storage.names(store, experiment)
    return [n for n in stored if any(n == m or n.startswith(m + ".") for m in names)]


def _bar(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return NoBar()
    import sys

    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True)
