"""The parsed experiment: ``ExperimentSpec``, its ``Axis`` list and their ``AxisValue`` entries. A leaf: frozen
dataclasses with no behaviour beyond reading themselves; ``tracker.experiment.parse`` builds them from a file,
``tracker.experiment.plan`` expands them, ``tracker.prompts.variants`` adds axes of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from tracker.experiment.schedulers import SchedulerChoice
    from tracker.experiment.settings import Settings


@dataclass(frozen=True)
class AxisValue:
    label: str
    value: Any = None  # template variable value (str/number) for "var" axes; the setting value for "setting" axes
    settings: tuple[tuple[str, Any], ...] = ()  # for bundle and setting axes: what this value sets
    template: str | None = None  # for prompt / negative_prompt axes


@dataclass(frozen=True)
class Axis:
    name: str
    kind: str  # "var" | "bundle" | "setting" | "prompt" | "seed"
    values: tuple[AxisValue, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(v.label for v in self.values)


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    path: str | None
    source: str
    prompt: str | None  # the template, when prompt is not an axis
    negative_prompt: str | None
    axes: tuple[Axis, ...]  # product order: the last varies fastest
    zip_groups: tuple[tuple[str, ...], ...]
    exclude: tuple[tuple[tuple[str, Any], ...], ...]
    settings: Settings  # base values; axes override them
    scheduler: SchedulerChoice  # the base scheduler, resolved when parsed: settings.scheduler is its class name and
    #                             settings.scheduler_options the user's own (the plan puts them over its options)
    explicit: frozenset[str]  # settings the file set itself (``seeds: {from: KEY}`` keeps the others)
    grid: tuple[str, str] | None
    seeds_from: str | None
    description: str = ""
    variants: Any = None  # tracker.prompts.variants.VariantOptions, or None: no Dynamic Prompts expansion
    metrics: tuple[str, ...] = ()  # per-image metrics scored after each image is written (tracker.metrics)
    metric_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, hash=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, hash=False)
    base_dir: Path | None = field(default=None, compare=False, hash=False)  # relative model folders resolve here
    # input images the file names, by sha256 (tracker.experiment.inputs.InputImage: size, bytes); a sweep stores them
    inputs: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)
