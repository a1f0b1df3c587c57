"""Axis effects: did a label beat its baseline, measured on the same seeds?

Every run of a sweep shares its seed (and every other axis value) with one run of each other label
of an axis, so comparisons are paired: for an axis, each label's difference to the baseline label is
taken over the pairs of runs that differ only in that axis. Reported per label: the mean of the
metric over its runs, the mean paired difference to the baseline, a percentile bootstrap interval
of that mean (resampling pairs; seeded, so the same store gives the same interval) and the number of
pairs. Pure: numpy only; the store and the CLI feed it (``tracker effects``).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from tracker.errors import UsageError

PAIRING_AXIS = "seed"  # what pairs runs; never an effect of its own
RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Observation:
    axes: Mapping[str, str]  # axis name -> label (seed included)
    value: float


@dataclass(frozen=True)
class LabelEffect:
    label: str
    runs: int  # runs with a value
    mean: float | None
    diff: float | None  # mean paired difference to the baseline (None for the baseline itself, or no pairs)
    low: float | None
    high: float | None
    pairs: int

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


@dataclass(frozen=True)
class AxisEffects:
    axis: str
    baseline: str
    labels: tuple[LabelEffect, ...]


@dataclass(frozen=True)
class Effects:
    metric: str
    higher_is_better: bool
    confidence: float
    resamples: int
    seed: int
    axes: tuple[AxisEffects, ...]

    def to_json(self) -> dict:
        return _clean(asdict(self))


def _clean(v):
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def analyze(observations: Iterable[Observation], metric: str, *, higher_is_better: bool = True,
            axes: Sequence[str] | None = None, baseline: str | None = None, axis_labels: Mapping[str, Sequence[str]] | None = None,
            resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0) -> Effects:
    """Effects of each axis (or of ``axes``) on the metric.

    ``axis_labels``: each axis's labels in plan order (the first is the default baseline; default: order
    of first appearance). ``baseline``: the label to compare against on every analysed axis that has it.
    """
    obs = [o for o in observations if o.value is not None and math.isfinite(o.value)]
    order = _labels(obs, axis_labels)
    names = list(axes) if axes else [a for a in order if a != PAIRING_AXIS and len(order[a]) > 1]
    for name in names:
        if name == PAIRING_AXIS:
            raise UsageError(f"--axis {PAIRING_AXIS}: runs are paired by seed; pick another axis "
                             f"(known: {', '.join(a for a in order if a != PAIRING_AXIS) or 'none'})")
        if name not in order:
            raise UsageError(f"--axis {name!r}: no such axis with scored runs; known: "
                             f"{', '.join(a for a in order if a != PAIRING_AXIS) or 'none'}")
    if baseline is not None and not any(baseline in order[n] for n in names):
        raise UsageError(f"--baseline {baseline!r}: no analysed axis has that label; labels: "
                         + "; ".join(f"{n}: {', '.join(order[n])}" for n in names))
    results = []
    for name in names:
        base = baseline if baseline in order[name] else order[name][0]
        results.append(_axis(obs, name, order[name], base, resamples, confidence, seed))
    return Effects(metric, higher_is_better, confidence, resamples, seed, tuple(results))


def _labels(obs: list[Observation], given: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for o in obs:
        for name, label in o.axes.items():
            have = out.setdefault(name, [])
            if label not in have:
                have.append(label)
    for name, labels in (given or {}).items():
        if name in out:
            seen = set(out[name])
            out[name] = [lab for lab in labels if lab in seen] + [lab for lab in out[name] if lab not in labels]
    return out


def _axis(obs: list[Observation], axis: str, labels: list[str], base: str, resamples: int, confidence: float,
          seed: int) -> AxisEffects:
    by_rest: dict[tuple, dict[str, list[float]]] = {}  # every other axis value -> label -> values
    for o in obs:
        if axis not in o.axes:
            continue
        rest = tuple(sorted((k, v) for k, v in o.axes.items() if k != axis))
        by_rest.setdefault(rest, {}).setdefault(o.axes[axis], []).append(o.value)
    out = []
    for label in labels:
        values = [v for cell in by_rest.values() for v in cell.get(label, [])]
        mean = float(np.mean(values)) if values else None
        if label == base:
            out.append(LabelEffect(label, len(values), mean, None, None, None, 0))
            continue
        diffs = [float(np.mean(cell[label]) - np.mean(cell[base]))
                 for cell in by_rest.values() if label in cell and base in cell]
        diff, low, high = _bootstrap(diffs, resamples, confidence, _seed(seed, axis, label))
        out.append(LabelEffect(label, len(values), mean, diff, low, high, len(diffs)))
    return AxisEffects(axis, base, tuple(out))


def _seed(seed: int, axis: str, label: str) -> list[int]:
    """One stream per (axis, label): an interval does not change when other labels come or go."""
    return [seed, zlib.crc32(axis.encode()), zlib.crc32(label.encode())]


def _bootstrap(diffs: list[float], resamples: int, confidence: float, seed: list[int]):
    if not diffs:
        return None, None, None
    d = np.asarray(diffs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(d.mean()), float(low), float(high)


def render(effects: Effects, digits: int = 3) -> str:
    """A text table per axis: label, runs, mean, difference to the baseline, interval, pairs."""
    from tracker.textfmt import table

    def num(v):
        return "-" if v is None else f"{v:.{digits}f}"

    pct = f"{effects.confidence * 100:g}%"
    better = "higher is better" if effects.higher_is_better else "lower is better"
    blocks = []
    for ax in effects.axes:
        rows = []
        for e in ax.labels:
            if e.label == ax.baseline:
                rows.append([e.label, str(e.runs), num(e.mean), "(baseline)", "", ""])
                continue
            interval = "-" if e.low is None else f"[{num(e.low)}, {num(e.high)}]" + (" *" if e.excludes_zero else "")
            rows.append([e.label, str(e.runs), num(e.mean), ("+" if (e.diff or 0) > 0 else "") + num(e.diff),
                         interval, str(e.pairs)])
        blocks.append(f"{ax.axis} (baseline {ax.baseline}; {effects.metric}, {better})\n"
                      + table(["label", "runs", "mean", "diff", f"{pct} interval", "pairs"], rows))
    if not blocks:
        return f"no axis with two labels and scored runs for {effects.metric}"
    return "\n\n".join(blocks) + f"\n\n* the {pct} interval excludes 0 (paired by seed and every other axis; " \
                                 f"bootstrap, {effects.resamples} resamples)"
