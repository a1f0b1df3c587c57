"""Axis effects: did a label beat its baseline, measured on the same seeds?

Every run of a sweep shares its seed (and every other axis value) with one run of each other label
of an axis, so comparisons are paired: for an axis, each label's difference to the baseline label is
taken over the pairs of runs that differ only in that axis. Reported per label: the mean of the
metric over its runs, the mean paired difference to the baseline, a percentile bootstrap interval
of that mean (resampling pairs; seeded, so the same store gives the same interval) and the number of
pairs. An interval needs ``MIN_PAIRS`` pairs: with fewer (one seed, one pair) the difference is shown with
"too few pairs" and never marked as excluding 0. A label of the plan with no values (its runs all failed, or
are not run or scored yet) is listed with a note saying so, instead of vanishing. Pure: numpy only; the store
and the CLI feed it (``tracker effects``).
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
MIN_PAIRS = 3  # fewer pairs give no interval: a bootstrap over 1-2 differences only repeats them


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
    note: str | None = None  # why there is no interval, or no value at all

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
    images_gone: int = 0  # values left out: their images are missing or modified since scored (tracker check)
    other_versions: int = 0  # runs of earlier versions of the experiment file, left out (--all-versions)

    @property
    def other_versions_note(self) -> str | None:
        return (f"{self.other_versions} run(s) of earlier versions of the experiment file left out "
                f"(not in its current plan; --all-versions pools them)") if self.other_versions else None

    @property
    def images_gone_note(self) -> str | None:
        return (f"{self.images_gone} value(s) left out: their images are missing or modified since they were "
                f"generated (tracker check)") if self.images_gone else None

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
            resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0,
            unscored: Mapping[str, Mapping[str, str]] | None = None) -> Effects:
    """Effects of each axis (or of ``axes``) on the metric.

    ``axis_labels``: each axis's labels in plan order (the first with values is the default baseline; default:
    order of first appearance); a label given there without values is listed with a note, ``unscored``'s
    (axis -> label -> why, e.g. "all 2 runs failed") or "no scored runs". ``baseline``: the label to compare
    against on every analysed axis that has it.
    """
    obs = [o for o in observations if o.value is not None and math.isfinite(o.value)]
    seen = _labels(obs, None)
    order = _labels(obs, axis_labels, keep_unseen=True)
    names = list(axes) if axes else [a for a in order if a != PAIRING_AXIS and a in seen and len(order[a]) > 1]
    for name in names:
        if name == PAIRING_AXIS:
            raise UsageError(f"--axis {PAIRING_AXIS}: runs are paired by seed; pick another axis "
                             f"(known: {', '.join(a for a in order if a != PAIRING_AXIS) or 'none'})")
        if name not in seen:
            raise UsageError(f"--axis {name!r}: no such axis with scored runs; known: "
                             f"{', '.join(a for a in order if a != PAIRING_AXIS) or 'none'}")
    if baseline is not None and not any(baseline in seen[n] for n in names):
        raise UsageError(f"--baseline {baseline!r}: no analysed axis has that label with values; labels: "
                         + "; ".join(f"{n}: {', '.join(seen[n])}" for n in names))
    results = []
    for name in names:
        base = baseline if baseline in seen[name] else next(lab for lab in order[name] if lab in seen[name])
        notes = (unscored or {}).get(name, {})
        results.append(_axis(obs, name, order[name], base, resamples, confidence, seed, notes))
    return Effects(metric, higher_is_better, confidence, resamples, seed, tuple(results))


def _labels(obs: list[Observation], given: Mapping[str, Sequence[str]] | None,
            keep_unseen: bool = False) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for o in obs:
        for name, label in o.axes.items():
            have = out.setdefault(name, [])
            if label not in have:
                have.append(label)
    for name, labels in (given or {}).items():
        if name in out:
            seen = set(out[name])
            out[name] = [lab for lab in labels if keep_unseen or lab in seen] + \
                [lab for lab in out[name] if lab not in labels]
    return out


def _axis(obs: list[Observation], axis: str, labels: list[str], base: str, resamples: int, confidence: float,
          seed: int, notes: Mapping[str, str]) -> AxisEffects:
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
        if not values:
            out.append(LabelEffect(label, 0, None, None, None, None, 0, notes.get(label) or "no scored runs"))
            continue
        if label == base:
            out.append(LabelEffect(label, len(values), mean, None, None, None, 0))
            continue
        diffs = [float(np.mean(cell[label]) - np.mean(cell[base]))
                 for cell in by_rest.values() if label in cell and base in cell]
        if len(diffs) < MIN_PAIRS:
            note = f"too few pairs (n={len(diffs)}) for an interval" if diffs else f"no pairs with {base}"
            out.append(LabelEffect(label, len(values), mean, float(np.mean(diffs)) if diffs else None, None, None,
                                   len(diffs), note))
            continue
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
    """A text table per axis: label, runs, mean, difference to the baseline, interval (or why there is none),
    pairs."""
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
            interval = (e.note or "-") if e.low is None else \
                f"[{num(e.low)}, {num(e.high)}]" + (" *" if e.excludes_zero else "")
            rows.append([e.label, str(e.runs), num(e.mean), ("+" if (e.diff or 0) > 0 else "") + num(e.diff),
                         interval, str(e.pairs)])
        blocks.append(f"{ax.axis} (baseline {ax.baseline}; {effects.metric}, {better})\n"
                      + table(["label", "runs", "mean", "diff", f"{pct} interval", "pairs"], rows))
    gone = f"\n{effects.images_gone_note}" if effects.images_gone else ""
    if effects.other_versions:
        gone += f"\n{effects.other_versions_note}"
    if not blocks:
        return f"no axis with two labels and scored runs for {effects.metric}" + gone
    return "\n\n".join(blocks) + f"\n\n* the {pct} interval excludes 0 (paired by seed and every other axis; " \
                                 f"bootstrap, {effects.resamples} resamples)" + gone
