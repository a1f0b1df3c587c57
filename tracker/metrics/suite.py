"""Prompt-suite results: axis effects per group of prompts (``tracker effects --by category``) and the report's
one-screen "suite result": per category, each variant's mean with its interval, and the prompts where the
variants differ most. Pure: numpy and ``tracker.metrics.effects``.

Within a group, runs are paired over prompts and seeds: a comparison of two labels of an axis uses the runs that
share the prompt, the seed and every other axis value. Axes nested in the grouping axis (every label of them in one
group only: the prompts of a category) pair runs; they are never an effect of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from tracker.errors import UsageError
from tracker.metrics import effects as fx

TOP_PROMPTS = 5  # prompts listed where the variants differ most


def nested(observations: Sequence[fx.Observation], by: str) -> set[str]:
    """Axes whose every label occurs in one group of ``by`` only (the prompt axis within its categories)."""
    group_of: dict[str, dict[str, set[str]]] = {}
    for o in observations:
        for name, label in o.axes.items():
            if name != by and by in o.axes:
                group_of.setdefault(name, {}).setdefault(label, set()).add(o.axes[by])
    return {name for name, labels in group_of.items() if all(len(g) == 1 for g in labels.values())}


def treatment_axes(observations: Sequence[fx.Observation], by: str) -> list[str]:
    """The axes compared within each group: not the seed, the grouping axis or an axis nested in it."""
    skip = nested(observations, by) | {by, fx.PAIRING_AXIS}
    seen: dict[str, set[str]] = {}
    for o in observations:
        for name, label in o.axes.items():
            seen.setdefault(name, set()).add(label)
    return [a for a in seen if a not in skip and len(seen[a]) > 1]


def by_group(observations: Sequence[fx.Observation], by: str, metric: str, *, higher_is_better: bool = True,
             axes: Sequence[str] | None = None, baseline: str | None = None,
             axis_labels: Mapping[str, Sequence[str]] | None = None, seed: int = 0) -> list[tuple[str, fx.Effects]]:
    """``(group label, Effects)`` for "all" (every run) and then each label of ``by``, in plan order."""
    obs = [o for o in observations if o.value is not None and math.isfinite(o.value)]
    groups = _order([o.axes[by] for o in obs if by in o.axes], (axis_labels or {}).get(by))
    if not groups:
        known = sorted({a for o in obs for a in o.axes if a != fx.PAIRING_AXIS})
        raise UsageError(f"--by {by!r}: no such axis with scored runs; known: {', '.join(known) or 'none'}")
    compared = list(axes) if axes else treatment_axes(obs, by)
    if not compared:
        raise UsageError(f"--by {by!r}: no axis with two labels to compare within each {by}")
    out = [("all", fx.analyze(obs, metric, higher_is_better=higher_is_better, axes=compared, baseline=baseline,
                              axis_labels=axis_labels, seed=seed))]
    for g in groups:
        part = [o for o in obs if o.axes.get(by) == g]
        present = [a for a in compared if any(a in o.axes for o in part)]
        out.append((g, fx.analyze(part, metric, higher_is_better=higher_is_better, axes=present,
                                  baseline=baseline if any(o.axes.get(a) == baseline for a in present for o in part)
                                  else None, axis_labels=axis_labels, seed=seed)))
    return out


def _order(labels: Sequence[str], given: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(labels))
    return [g for g in (given or []) if g in present] + [g for g in present if g not in (given or [])]


def render(groups: list[tuple[str, fx.Effects]], by: str, digits: int = 3) -> str:
    return "\n\n".join(f"== {by} = {g} ==\n{fx.render(e, digits)}" for g, e in groups)


@dataclass(frozen=True)
class PromptSpread:
    prompt: str  # the prompt axis label
    text: str  # the prompt as generated
    group: str
    spread: float  # best variant mean minus worst, over seeds
    means: tuple[tuple[str, float], ...]  # variant label -> mean over seeds


@dataclass(frozen=True)
class SuiteResult:
    metric: str
    by: str
    axis: str
    groups: tuple[tuple[str, fx.AxisEffects], ...]  # "all" first, then each category
    prompts: tuple[PromptSpread, ...]  # where the variants differ most, largest spread first
    higher_is_better: bool


def suite_result(observations: Sequence[fx.Observation], texts: Mapping[str, str], metric: str, *,
                 higher_is_better: bool = True, by: str = "category", prompt_axis: str = "prompt",
                 axis_labels: Mapping[str, Sequence[str]] | None = None, seed: int = 0,
                 top: int = TOP_PROMPTS) -> SuiteResult | None:
    """The suite result of the first compared axis, or None when the runs have no ``by`` axis or nothing to compare.
    ``texts``: prompt label -> its prompt text."""
    obs = [o for o in observations if o.value is not None and math.isfinite(o.value)]
    if not any(by in o.axes for o in obs):
        return None
    compared = treatment_axes(obs, by)
    if not compared:
        return None
    axis = compared[0]
    groups = by_group(obs, by, metric, higher_is_better=higher_is_better, axes=[axis], axis_labels=axis_labels,
                      seed=seed)
    cells: dict[str, dict[str, list[float]]] = {}
    group_of: dict[str, str] = {}
    for o in obs:
        if prompt_axis in o.axes and axis in o.axes:
            cells.setdefault(o.axes[prompt_axis], {}).setdefault(o.axes[axis], []).append(o.value)
            group_of[o.axes[prompt_axis]] = o.axes.get(by, "")
    spreads = []
    for p, by_label in cells.items():
        means = [(lab, float(np.mean(v))) for lab, v in by_label.items()]
        if len(means) > 1:
            vals = [m for _, m in means]
            spreads.append(PromptSpread(p, texts.get(p, p), group_of[p], max(vals) - min(vals), tuple(means)))
    spreads.sort(key=lambda s: (-s.spread, s.prompt))
    return SuiteResult(metric, by, axis, tuple((g, e.axes[0]) for g, e in groups if e.axes), tuple(spreads[:top]),
                       higher_is_better)
