"""The report's metric views: a badge per grid cell on a colour scale, and the "effects" section (one
table and one inline SVG forest plot per axis, numbers from ``tracker.metrics.effects``, as ``tracker effects``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from tracker.metrics.effects import Effects

BUCKETS = 10  # colour classes badge-q0 (worst) .. badge-q9 (best)
PLOT_W, LABEL_W, ROW_H, TOP = 360, 140, 22, 26


@dataclass(frozen=True)
class Badge:
    text: str
    bucket: int  # 0 (worst of this experiment) .. BUCKETS - 1 (best)
    title: str


@dataclass(frozen=True)
class ForestRow:
    label: str
    runs: int
    mean: float | None
    diff: float | None
    low: float | None
    high: float | None
    pairs: int
    baseline: bool
    excludes_zero: bool
    y: float  # SVG coordinates
    x_diff: float | None = None
    x_low: float | None = None
    x_high: float | None = None
    note: str | None = None  # why there is no interval (too few pairs) or no value (all runs failed)


@dataclass(frozen=True)
class ForestAxis:
    axis: str
    baseline: str
    rows: tuple[ForestRow, ...]
    x_zero: float
    width: int
    height: int
    ticks: tuple[tuple[float, str], ...]


@dataclass(frozen=True)
class EffectsView:
    metric: str
    higher_is_better: bool
    confidence: float
    resamples: int
    axes: tuple[ForestAxis, ...]
    note: str | None = None  # runs left out (of earlier versions of the file; images missing or modified)


def primary(file_metrics: Sequence[str], stored: Mapping[str, Mapping]) -> str | None:
    """The metric the grids show: the file's first metric that has values, else the first stored one."""
    for name in [*file_metrics, *stored]:
        if name in stored:
            return name
    return None


def badges(values: Mapping[str, Mapping[str, float | None]], metric: str, higher_is_better: bool) -> dict[str, Badge]:
    """Run key -> its badge: the value, coloured by its place between this experiment's lowest and highest."""
    got = {k: v[metric] for k, v in values.items() if v.get(metric) is not None and math.isfinite(v[metric])}
    if not got:
        return {}
    lo, hi = min(got.values()), max(got.values())
    out = {}
    for key, v in got.items():
        frac = (v - lo) / (hi - lo) if hi > lo else 1.0
        frac = frac if higher_is_better else 1.0 - frac
        out[key] = Badge(_fmt(v), min(BUCKETS - 1, int(frac * BUCKETS)),
                         f"{metric} = {v:.4g} ({'higher' if higher_is_better else 'lower'} is better; "
                         f"range here {lo:.4g} .. {hi:.4g})")
    return out


def _fmt(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def effects_view(effects: "Effects") -> EffectsView:
    """Lay out one forest plot per axis: a row per label, the baseline at 0, intervals on a shared axis."""
    return EffectsView(effects.metric, effects.higher_is_better, effects.confidence, effects.resamples,
                       tuple(_forest(ax) for ax in effects.axes),
                       " ".join(filter(None, [effects.other_versions_note, effects.images_gone_note])) or None)


def _forest(ax) -> ForestAxis:
    ends = [v for e in ax.labels for v in (e.low, e.high, e.diff) if v is not None] + [0.0]
    lo, hi = min(ends), max(ends)
    pad = (hi - lo) * 0.08 or 1.0
    lo, hi = lo - pad, hi + pad

    def x(v: float) -> float:
        return round(LABEL_W + (v - lo) / (hi - lo) * PLOT_W, 1)

    rows = []
    for i, e in enumerate(ax.labels):
        y = TOP + i * ROW_H + ROW_H / 2
        base = e.label == ax.baseline
        rows.append(ForestRow(
            e.label, e.runs, e.mean, e.diff, e.low, e.high, e.pairs, base, e.excludes_zero, y,
            x(e.diff) if e.diff is not None else (x(0.0) if base else None),
            x(e.low) if e.low is not None else None, x(e.high) if e.high is not None else None, e.note))
    ticks = tuple((x(t), _tick(t)) for t in _nice_ticks(lo, hi))
    return ForestAxis(ax.axis, ax.baseline, tuple(rows), x(0.0), LABEL_W + PLOT_W + 20,
                      TOP + len(rows) * ROW_H + 24, ticks)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(n + 2) if first + i * step <= hi]


def _tick(v: float) -> str:
    return f"{v:+g}" if v else "0"
