"""The report's data: plain frozen dataclasses the page is rendered from (``Report`` -> ``Grid`` ->
``Row`` -> ``Cell``, ``RunDetail``, ``EfficiencyRow``, ``VerifyView``). No logic beyond formatting helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Header:
    label: str
    full: str  # what the label stands for; shown on hover (title) and on click


@dataclass(frozen=True)
class Span:
    """A piece of a prompt; ``marked`` when it came from an axis value (``source`` says which)."""

    text: str
    marked: bool = False
    source: str = ""
    axes: tuple[str, ...] = ()  # the template variables the marked text came from


@dataclass(frozen=True)
class Cell:
    key: str | None
    state: str  # "done" | "failed" | "pending" | "running" | "missing" | "absent" | "noimage"
    note: str  # the placeholder's text; "" for an image
    thumb: str | None = None  # paths relative to the report folder
    image: str | None = None
    width: int = 0
    height: int = 0
    prompt: tuple[Span, ...] = ()  # shown under the image when the row's cells differ in prompt
    badge: Any = None  # tracker.report.metrics_view.Badge: the report's metric for this image


@dataclass(frozen=True)
class Row:
    header: Header
    prompt: tuple[Span, ...]  # the row's prompt when all its cells share it
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class Grid:
    id: str
    title: str
    combo: tuple[tuple[str, str], ...]
    rows_axis: str
    cols_axis: str
    columns: tuple[Header, ...]
    rows: tuple[Row, ...]
    png: str | None = None


@dataclass(frozen=True)
class RunDetail:
    key: str
    state: str
    title: str
    prompt: tuple[Span, ...]
    image: str | None
    thumb: str | None  # shown when the full image is not there (the copy attached to MLflow has none)
    recipe: tuple[tuple[str, str], ...]
    timings: tuple[tuple[str, str], ...]
    error: str | None
    mlflow_url: str | None
    reproduce: str
    inputs: tuple["InputView", ...] = ()  # the run's input images (img2img, inpainting, ControlNet, IP-Adapter)


@dataclass(frozen=True)
class InputView:
    """One input image of image-conditioned runs, as the report shows it beside the outputs made from it."""

    field: str  # image, mask_image, control_image, ip_adapter_image
    sha256: str
    thumb: str | None  # None: not in the workspace
    image: str | None
    label: str = ""  # the axis label (the path the experiment file gave), where the image is on an axis


@dataclass(frozen=True)
class EfficiencyRow:
    label: str  # the settings that differ between configurations
    config: tuple[tuple[str, str], ...]
    runs: int
    failed: int
    seconds_per_image: float | None
    images_per_second: float | None
    peak_memory_bytes: int | None
    seconds_frac: float = 0.0  # bar lengths for the chart, 0..1 of the largest value
    memory_frac: float = 0.0
    metric: float | None = None  # mean of the report's metric over the configuration's runs (quality beside speed)


@dataclass(frozen=True)
class SweepFigures:
    """One ``tracker run`` of the experiment: its throughput and how much of it the pipeline was idle."""

    sweep_id: int
    when: str
    done: int
    seconds: float | None
    images_per_second: float | None
    idle_fraction: float | None  # share of the sweep's wall time outside pipeline calls
    warmup_seconds: float | None  # compile warm-up, apart from per-image times


@dataclass(frozen=True)
class VerifiedRun:
    """One run ``tracker verify`` generated again, and how far its pixels moved."""

    key: str
    labels: tuple[tuple[str, str], ...]
    identical: bool
    max_abs: int
    mean_abs: float
    differing: int
    pixels: int
    reason: str | None
    shown: bool = False  # the run is in the report, so its details can open


@dataclass(frozen=True)
class VerifyView:
    """The latest stored ``tracker verify`` result (``verify.Verification.to_json``), as shown."""

    sweep_id: int
    at: str
    device: str
    sample: int
    identical: int
    drifted: int
    done: int
    max_abs: int
    warnings: tuple[str, ...]
    runs: tuple[VerifiedRun, ...]


@dataclass(frozen=True)
class Report:
    experiment: str
    description: str
    generated_at: str
    counts: tuple[tuple[str, int], ...]
    rows_axis: str
    cols_axis: str
    constants: tuple[tuple[str, str], ...]
    grids: tuple[Grid, ...]
    details: tuple[RunDetail, ...]
    efficiency: tuple[EfficiencyRow, ...]
    notes: tuple[str, ...] = ()
    verify: VerifyView | None = None  # None: never verified
    verify_command: str = ""  # the command that verifies this experiment, shown when it never was
    sweeps: tuple[SweepFigures, ...] = ()  # sweeps that generated images, oldest first
    metric: str | None = None  # the metric on the grid badges and in the efficiency view
    metric_higher_is_better: bool = True
    effects: tuple = ()  # tracker.report.metrics_view.EffectsView per metric
    suite: Any = None  # tracker.metrics.suite.SuiteResult: a prompt set's result per category (None: no categories)
    image_problems: tuple[tuple[str, int], ...] = ()  # ("missing" | "modified", count): done runs not shown
    check_command: str = ""  # the command that lists them (tracker check EXPERIMENT)
    images_note: str | None = None  # images read from MLflow's artifact store, or not used (sha256 mismatch)
    inputs: tuple[InputView, ...] = ()  # every input image of the experiment's runs, once each

    def image_problem_line(self) -> str:
        """One line for the page and the terminal; "" when every done run's image is shown."""
        if not self.image_problems:
            return ""
        n = sum(c for _, c in self.image_problems)
        what = ", ".join(f"{c} {kind}" for kind, c in self.image_problems)
        return (f"{n} done run{'s' if n != 1 else ''} not shown (images: {what} since they were made); "
                f"`{self.check_command}` lists them, `--fix` then `tracker run` makes them again")

    def details_json(self) -> dict[str, Any]:
        """key -> the run's details as plain JSON values (the page script reads these)."""
        return {d.key: {**d.__dict__, "prompt": [s.__dict__ for s in d.prompt],
                        "inputs": [i.__dict__ for i in d.inputs]} for d in self.details}
