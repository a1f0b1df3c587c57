"""What the Python API hands back: runs, run lists, sweep results and grids, readable in a terminal
(``repr``) and in Jupyter (``_repr_html_``: thumbnails inline as ``data:`` URIs, every label escaped, no
external assets), and as a pandas DataFrame (``to_pandas``; pandas is imported only there).

Pure Python plus Pillow for thumbnails; no torch.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, overload

from tracker.images import pngmeta

if TYPE_CHECKING:
    from tracker.store.records import RunRecord

THUMB_PX = 96  # thumbnails in run lists
GRID_THUMB_PX = 160  # tiles in a grid's HTML
HTML_ROWS = 200  # a run list shows at most this many rows as HTML
ROW_SETTINGS = ("model", "scheduler", "steps", "guidance_scale", "width", "height", "dtype", "vae")  # to_dict's columns


# ---------------------------------------------------------------------------------------------- html helpers


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(path: str | Path | None, size: int) -> str | None:
    """A PNG thumbnail of the image at ``path`` as a ``data:`` URI (None when the file cannot be read)."""
    if not path:
        return None
    try:
        with pngmeta.open_png(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except Exception:  # noqa: BLE001 - a missing or broken image shows as a placeholder, never an error
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img_tag(path: str | Path | None, size: int, alt: str) -> str:
    uri = data_uri(path, size)
    if uri is None:
        return f'<span style="color:#888">{esc(alt or "no image")}</span>'
    return f'<img src="{uri}" alt="{esc(alt)}" title="{esc(alt)}" style="image-rendering:pixelated;max-width:{size}px">'


# ---------------------------------------------------------------------------------------------- one run


def _settings_of(record: "RunRecord") -> dict[str, Any]:
    return record.settings().to_dict()


@dataclass(frozen=True, eq=False)
class Run:
    """One stored run (one image): its labels, prompt, settings, timings, metrics and image."""

    record: "RunRecord" = field(repr=False)
    metrics: dict[str, float] = field(default_factory=dict)  # metric name -> value (when the store has any)

    # -- what the run is
    @property
    def key(self) -> str:
        return self.record.key

    @property
    def experiment(self) -> str:
        return self.record.experiment

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def labels(self) -> dict[str, str]:
        """Axis name -> label (``seed`` included)."""
        out = dict(self.record.axes)
        out.setdefault("seed", str(self.record.seed))
        return out

    @property
    def prompt(self) -> str:
        return self.record.prompt

    @property
    def negative_prompt(self) -> str:
        return self.record.negative_prompt

    @property
    def seed(self) -> int:
        return self.record.seed

    @property
    def settings(self) -> dict[str, Any]:
        return _settings_of(self.record)

    @property
    def error(self) -> str | None:
        return self.record.error

    @property
    def made_with_user_pipeline(self) -> bool:
        from tracker.experiment.model_refs import is_user_pipeline

        return is_user_pipeline(self.record.model)

    @property
    def timings(self) -> dict[str, Any]:
        r = self.record
        return {"seconds": r.seconds, "seconds_per_step": r.seconds_per_step, "peak_memory_bytes": r.peak_memory_bytes,
                "batch_size_used": r.batch_size_used, "started_at": r.started_at, "finished_at": r.finished_at}

    # -- its image and recipe
    @property
    def image_path(self) -> Path | None:
        return Path(self.record.image) if self.record.image else None

    @cached_property
    def image(self):
        """The PNG as a PIL image, opened on first use (None when the run has no image)."""
        if self.image_path is None or not self.image_path.is_file():
            return None
        with pngmeta.open_png(self.image_path) as im:
            im.load()
            return im.copy()

    @cached_property
    def recipe(self) -> dict[str, Any]:
        """The full recipe: the PNG's ``prompt-tracker`` chunk when there is an image, else the stored run's."""
        if self.image_path is not None and self.image_path.is_file():
            _, recipe = pngmeta.read_png(self.image_path)
            if recipe is not None:
                return recipe
        return self.record.to_recipe()

    def to_dict(self) -> dict[str, Any]:
        """One flat row: key, status, one column per axis label, settings (as values: ``steps`` an int even when
        it is an axis; ``scheduler`` what ran, ``describe()``'d), the image's timings, metrics (by their names, as
        ``tracker runs`` and MLflow spell them; ``metric.NAME`` only where an axis has the name), image path."""
        s = self.settings
        row: dict[str, Any] = {"key": self.key, "experiment": self.experiment, "status": self.status}
        row.update(self.labels)
        row.update({"prompt": self.prompt, "negative_prompt": self.negative_prompt, "seed": self.seed})
        for name in ROW_SETTINGS:
            row[name] = s[name]  # the value, not the axis label ("10" for steps 10; "few" for a bundle)
        row["scheduler"] = self.record.scheduler_ran.describe()
        row.update(self.timings)  # per image: seconds, seconds_per_step, peak_memory_bytes (as MLflow names them)
        for name, value in self.metrics.items():
            row[f"metric.{name}" if name in row else name] = value  # an axis of the same name keeps its column
        row["image"] = str(self.image_path) if self.image_path else None
        row["error"] = self.error
        return row

    def __repr__(self) -> str:
        labels = " ".join(f"{k}={v}" for k, v in self.labels.items())
        s = self.record
        took = f", {s.seconds:.2f} s" if s.seconds is not None else ""
        err = f", error: {s.error}" if s.error else ""
        return (f"<Run {self.key} {self.status} [{labels}] {s.scheduler_choice.short} {s.steps} steps, "
                f"{s.width}x{s.height}{took}{err}>")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{esc(k)}</th><td style='text-align:left'>{esc(v)}</td></tr>"
                       for k, v in [("key", self.key), ("status", self.status), *self.labels.items(),
                                    ("prompt", self.prompt), ("negative prompt", self.negative_prompt or "(none)"),
                                    ("seconds", self.record.seconds), *self.metrics.items()])
        return (f"<div style='display:flex;gap:1em;align-items:flex-start'>"
                f"{img_tag(self.image_path, 256, self.key)}<table>{rows}</table></div>")


# ---------------------------------------------------------------------------------------------- run lists


class RunList(Sequence[Run]):
    """Runs in plan order. ``to_pandas()`` gives one row per run; in Jupyter a table with thumbnails."""

    def __init__(self, runs: Sequence[Run]):
        self._runs = list(runs)

    @overload
    def __getitem__(self, i: int) -> Run: ...
    @overload
    def __getitem__(self, i: slice) -> "RunList": ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return RunList(self._runs[i])
        if isinstance(i, str):
            return self.get(i)
        return self._runs[i]

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[Run]:
        return iter(self._runs)

    def get(self, key: str) -> Run:
        """The run whose key is ``key`` or starts with it."""
        found = [r for r in self._runs if r.key.startswith(key)]
        if len(found) != 1:
            raise KeyError(f"{key!r} matches {len(found)} runs of this list")
        return found[0]

    def where(self, **labels: Any) -> "RunList":
        """Runs whose labels match, e.g. ``runs.where(age="young", seed=1)``."""
        return RunList([r for r in self._runs if all(r.labels.get(k) == str(v) for k, v in labels.items())])

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self._runs]

    def images(self) -> list:
        """The PIL images of the runs that have one."""
        return [r.image for r in self._runs if r.image is not None]

    def to_records(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self._runs]

    def to_pandas(self):
        """A pandas DataFrame, one row per run (pandas is needed only here). Numeric settings are numbers; an axis
        whose labels are all numbers ("10", "0.5") is a numeric column, so it sorts 4 < 10."""
        try:
            import pandas as pd
        except ModuleNotFoundError:
            raise ModuleNotFoundError("RunList.to_pandas() needs pandas: pip install pandas") from None
        df = pd.DataFrame.from_records(self.to_records())
        settings = set(ROW_SETTINGS) | {"seed"}
        for axis in self._axes():
            if axis in settings or axis not in df:
                continue
            as_numbers = pd.to_numeric(df[axis], errors="coerce")
            if as_numbers.notna().sum() == df[axis].notna().sum():
                df[axis] = as_numbers
        return df

    def _axes(self) -> list[str]:
        axes: list[str] = []
        for r in self._runs:
            axes.extend(a for a in r.labels if a not in axes)
        return axes

    def __repr__(self) -> str:
        if not self._runs:
            return "<RunList: no runs>"
        from tracker.textfmt import table

        axes = self._axes()
        header = ["key", "status", *axes, "seconds"]
        rows = [[r.key, r.status, *(r.labels.get(a, "-") for a in axes),
                 "-" if r.record.seconds is None else f"{r.record.seconds:.2f}"] for r in self._runs[:50]]
        more = f"\n... and {len(self._runs) - 50} more" if len(self._runs) > 50 else ""
        return f"<RunList: {len(self._runs)} runs>\n" + table(header, rows, max_width=24) + more

    def _repr_html_(self) -> str:
        axes = self._axes()
        head = "".join(f"<th>{esc(h)}</th>" for h in ["image", "key", "status", *axes, "prompt", "seconds"])
        body = []
        for r in self._runs[:HTML_ROWS]:
            cells = [img_tag(r.image_path, THUMB_PX, r.error or r.status), esc(r.key), esc(r.status),
                     *(esc(r.labels.get(a, "-")) for a in axes), esc(r.prompt),
                     "-" if r.record.seconds is None else f"{r.record.seconds:.2f}"]
            body.append("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in cells) + "</tr>")
        more = (f"<p>{len(self._runs) - HTML_ROWS} more runs not shown (use .to_pandas())</p>"
                if len(self._runs) > HTML_ROWS else "")
        return (f"<div><p>{len(self._runs)} runs</p><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{''.join(body)}</tbody></table>{more}</div>")


# ---------------------------------------------------------------------------------------------- sweeps


@dataclass(frozen=True, eq=False)
class SweepResult:
    """What ``tracker.run`` did, and the experiment's runs afterwards."""

    experiment: str
    planned: int
    done: int
    skipped: int
    failed: int
    seconds: float
    failures: tuple[tuple[str, str], ...]
    runs: RunList = field(repr=False)
    workspace: Any = field(repr=False)  # the tracker.api.Workspace it ran in
    mlflow_waiting: int = 0
    sweep_id: int | None = None
    summary: Any = field(repr=False, default=None)  # the runner's SweepSummary (what the CLI prints)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def grid(self, rows: str | None = None, cols: str | None = None, where: Any = None, **kw: Any):
        """The experiment's labelled grid (``Workspace.grid``)."""
        return self.workspace.grid(self.experiment, rows=rows, cols=cols, where=where, **kw)

    def report(self, out: str | Path | None = None, **kw: Any) -> Path:
        return self.workspace.report(self.experiment, out=out, **kw)

    def to_pandas(self):
        return self.runs.to_pandas()

    def __repr__(self) -> str:
        rate = f" ({self.images_per_second:.2f} images/s)" if self.done else ""
        fails = "".join(f"\n  failed {k}: {e}" for k, e in self.failures[:10])
        return (f"<SweepResult {self.experiment}: {self.done} done, {self.skipped} skipped, {self.failed} failed "
                f"of {self.planned} planned in {self.seconds:.1f} s{rate}>{fails}")

    def _repr_html_(self) -> str:
        return f"<p>{esc(repr(self))}</p>" + self.runs._repr_html_()


# ---------------------------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class ExperimentInfo:
    """One experiment in the store: runs per status and its last sweep."""

    name: str
    total: int
    runs: dict[str, int]
    source_path: str | None
    last_sweep: dict | None = field(repr=False, default=None)
    info: dict = field(repr=False, default_factory=dict)  # everything the store says (``tracker experiments --json``)

    @classmethod
    def from_store(cls, info: dict) -> "ExperimentInfo":
        return cls(info["name"], info["total"], dict(info["runs"]), info.get("source_path"), info.get("last_sweep"),
                   info)

    @property
    def last_run_at(self) -> datetime | None:
        return (self.last_sweep or {}).get("started_at")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "total": self.total, **self.runs, "source_path": self.source_path,
                "last_sweep": self.last_run_at}


class ExperimentList(list):
    """``Workspace.experiments()``: a list of ExperimentInfo with ``to_pandas()``."""

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame.from_records([e.to_dict() for e in self])

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in ("name", "runs", "done", "failed", "pending", "file"))
        rows = "".join(f"<tr><td>{esc(e.name)}</td><td>{e.total}</td><td>{e.runs.get('done', 0)}</td>"
                       f"<td>{e.runs.get('failed', 0)}</td><td>{e.runs.get('pending', 0)}</td>"
                       f"<td>{esc(e.source_path or '-')}</td></tr>" for e in self)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# ---------------------------------------------------------------------------------------------- grids


def grid_html(specs: Sequence[Any], size: int = GRID_THUMB_PX) -> str:
    """Grids as HTML tables: the same titles, row and column labels as the PNG grid and the report, each
    image inline (a ``data:`` URI thumbnail) with its labels as ``alt``/``title``; a missing run says why."""
    parts = []
    for spec in specs:
        head = "".join(f"<th style='text-align:center'>{esc(c)}</th>" for c in spec.col_labels)
        body = []
        for label, tiles in zip(spec.row_labels, spec.tiles):
            cells = []
            for col, tile in zip(spec.col_labels, tiles):
                alt = " · ".join(x for x in (label, col) if x)
                inner = img_tag(tile.image, size, alt) if tile.image else \
                    f"<span style='color:#933'>{esc(tile.note)}</span>"
                cells.append(f"<td style='text-align:center'>{inner}</td>")
            body.append(f"<tr><th style='text-align:right'>{esc(label)}</th>{''.join(cells)}</tr>")
        caption = f"<caption style='font-weight:bold'>{esc(spec.title)}</caption>" if spec.title else ""
        parts.append(f"<table class='tracker-grid'>{caption}<thead><tr><th></th>{head}</tr></thead>"
                     f"<tbody>{''.join(body)}</tbody></table>")
    return "<div>" + "".join(parts) + "</div>"


_GRID_CLASS = None


def grid_image(image, specs: Sequence[Any]):
    """``image`` (a PIL image) as a ``GridImage``: still a PIL image, plus ``specs`` and an HTML view for Jupyter."""
    global _GRID_CLASS
    if _GRID_CLASS is None:
        from PIL import Image

        class GridImage(Image.Image):
            """A labelled grid: a PIL image (save, show, resize ...) that Jupyter shows as an HTML table of
            inline thumbnails with the grid's labels. ``specs``: the grids it holds (tracker.images.grid.GridSpec)."""

            specs: tuple = ()

            def _repr_html_(self) -> str:
                return grid_html(self.specs)

            def __repr__(self) -> str:
                titles = "; ".join(s.title for s in self.specs if s.title)
                rows = sum(len(s.row_labels) for s in self.specs)
                return (f"<GridImage {self.width}x{self.height}: {len(self.specs)} grid(s), {rows} rows"
                        + (f" ({titles})" if titles else "") + ">")

        _GRID_CLASS = GridImage
    out = _GRID_CLASS.__new__(_GRID_CLASS)
    out.__dict__.update(image.__dict__)
    out.specs = tuple(specs)
    return out
