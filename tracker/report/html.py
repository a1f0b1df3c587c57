"""Building and writing the report folder: the data from the store, laid out, rendered by Jinja2."""

from __future__ import annotations

import base64
import hashlib
import shlex
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from tracker.images.grid import REPORT_MAX_PIXELS
from tracker.experiment.inputs import unused
from tracker.experiment.settings import SETTING_NAMES, setting_label
from tracker.mlflow.fetch import Images
from tracker.report.assets import MODIFIED_NOTE, Asset, Assets, claim, workers, write_marker, write_text
from tracker.report.attach import mlflow_url
from tracker.report.data import Cell, Grid, Header, InputView, Report, Row, RunDetail, VerifyView
from tracker.report.efficiency import efficiency
from tracker.report.grids import draw, grid_images
from tracker.report.highlight import highlight
from tracker.report.layout import Layout, Section, choose_layout, sections
from tracker.report.metrics_view import Badge, badges, effects_view, primary
from tracker.report.source import STATE_NOTES, AxisInfo, Entry, Source, load
from tracker.workspace import DEFAULT_HOME, WorkspaceConfig, safe_join

if TYPE_CHECKING:
    from tracker.store.records import RunRecord


# ---------------------------------------------------------------------------------------------
# building the report


def build(ws: WorkspaceConfig, experiment: str, rows: str | None = None, cols: str | None = None,
          out: Path | None = None, max_pixels: int = REPORT_MAX_PIXELS) -> tuple[Path, Report]:
    """Build and write the report folder; returns the path of index.html and the report data."""
    source = load(ws, experiment)
    layout = choose_layout(source, rows, cols)
    default = safe_join(ws.reports_dir, experiment)
    out = Path(out) if out is not None else default
    owned = claim(out, source.name, trusted=out.resolve() == default)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, source.name, owned)  # claimed before anything else is written
    assets = Assets(out, ws.thumbs_dir, owned)
    found = Images(ws)  # the workspace's files, else MLflow's copies (checked against the store's sha256)
    images = assets.prepare((e.record for e in source.entries if e.record is not None and e.state == "done"), found)
    inputs = _inputs(ws, source, assets)
    secs = sections(source, layout, source.entries)
    metric = primary(source.experiment.metrics if source.experiment else (), source.metric_names)
    better = bool(source.metric_names[metric]["higher_is_better"]) if metric else True
    marks = badges(source.metric_values, metric, better) if metric else {}
    grids = tuple(_grid(source, layout, s, i, images, marks) for i, s in enumerate(secs, 1))
    grids, jobs = grid_images(grids, secs, layout, images, out, max_pixels)
    for g in grids:
        assets.add_used(g.png)
    with ThreadPoolExecutor(workers()) as pool:
        drawing = draw(pool, jobs, max_pixels)  # the grid images, in threads while the page is made here
        report = _report(ws, source, layout, grids, images, assets.problems, found, metric, better, inputs)
        page = render(report)
        for f in drawing:
            f.result()
    index = out / "index.html"
    write_text(index, page)
    write_marker(out, source.name, owned | assets.files() | {"index.html"})
    assets.prune()
    write_marker(out, source.name, assets.files() | {"index.html"})
    return index, report


def _report(ws: WorkspaceConfig, source: Source, layout: Layout, grids: tuple[Grid, ...], images: Mapping[str, Asset | str],
            problems: Mapping[str, str], found: Images, metric: str | None, better: bool,
            inputs: Mapping[str, InputView] | None = None) -> Report:
    """The page's data: the grids, every run's details, the efficiency and metric views."""
    home = _home_option(ws)
    inputs = inputs or {}
    return replace(Report(
        experiment=source.name, description=source.description,
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        counts=tuple(Counter(e.state for e in source.entries).most_common()),
        rows_axis=layout.rows or "", cols_axis=layout.cols or "",
        constants=tuple((a.name, a.labels[0]) for a in source.axes if len(a.labels) == 1),
        grids=grids, details=tuple(_detail(ws, e, images, home, source.metric_values.get(e.key, {}), inputs)
                                   for e in source.entries),
        efficiency=efficiency([e.record for e in source.entries if e.record is not None],
                              {k: v.get(metric) for k, v in source.metric_values.items()} if metric else None),
        notes=source.notes + ((found.note(),) if found.note() else ()), images_note=found.note(), verify=_mark_shown(source.verify, {e.key for e in source.entries}),
        verify_command=f"tracker {home}verify {shlex.quote(source.name)}", sweeps=source.sweeps,
        metric=metric, metric_higher_is_better=better,
        effects=tuple(effects_view(fx) for fx in _ordered(source.effects, metric) if fx.axes),
        suite=_suite(source, metric, better),
        image_problems=tuple(sorted(Counter(problems.values()).items())),
        check_command=f"tracker {home}check {shlex.quote(source.name)}",
    ), inputs=tuple(inputs.values()))


def _inputs(ws: WorkspaceConfig, source: Source, assets: Assets) -> dict[str, InputView]:
    """Every input image of the runs (by sha256), copied and thumbnailed into the report like the outputs."""
    from tracker.experiment.inputs import find, hashes_of

    out: dict[str, InputView] = {}
    for e in source.entries:
        run = e.record.run if e.record is not None else e.planned
        for field_name, sha in hashes_of(run.settings) if run is not None else ():
            if sha in out:
                continue
            label = e.label(field_name)
            path = find(ws.inputs_dir, sha)
            asset = assets.input(path, sha) if path is not None else None
            if isinstance(asset, Asset):
                out[sha] = InputView(field_name, sha, asset.thumb, asset.image, label)
            else:
                out[sha] = InputView(field_name, sha, None, None, label)
    return out


def _suite(source: Source, metric: str | None, better: bool):
    """The suite result of the grids' metric when the runs have a prompt set's ``category`` (else None)."""
    from tracker.experiment.promptset import LABEL_AXIS
    from tracker.metrics import suite
    from tracker.metrics.effects import Observation

    if metric is None or LABEL_AXIS not in source.axis_names:
        return None
    obs = [Observation(dict(e.labels), v) for e in source.entries if e.state == "done"
           for v in [source.metric_values.get(e.key, {}).get(metric)] if v is not None]
    texts = {e.label("prompt"): e.prompt for e in source.entries}
    return suite.suite_result(obs, texts, metric, higher_is_better=better, by=LABEL_AXIS,
                              axis_labels={a.name: a.labels for a in source.axes})


def _mark_shown(view: VerifyView | None, keys: set[str]) -> VerifyView | None:
    """Mark the verified runs the report has details for (the others left the plan since)."""
    if view is None:
        return None
    return replace(view, runs=tuple(replace(r, shown=r.key in keys) for r in view.runs))


def _ordered(effects: Sequence, first: str | None) -> list:
    """The grids' metric first, then the others by name."""
    return sorted(effects, key=lambda fx: (fx.metric != first, fx.metric))


def _grid(source: Source, layout: Layout, sec: Section, n: int, images: Mapping[str, Asset | str],
          marks: Mapping[str, Badge]) -> Grid:
    rows_axis = source.axis(layout.rows) if layout.rows else None
    cols_axis = source.axis(layout.cols) if layout.cols else None
    prompts = sorted({e.prompt for e in sec.cells.values()})
    rows = []
    for rl in sec.row_labels:
        cells = [sec.cells.get((rl, cl)) for cl in sec.col_labels]
        row_prompts = {e.prompt for e in cells if e is not None}
        shared = len(row_prompts) == 1
        first = next(e for e in cells if e is not None)
        rows.append(Row(
            _header(rows_axis, rl),
            highlight(first.prompt, first.prompt_template, prompts, first.variables) if shared else (),
            tuple(_cell(e, images, () if shared else prompts, marks) for e in cells)))
    return Grid(f"grid-{n}", sec.title, sec.combo, layout.rows or "", layout.cols or "",
                tuple(_header(cols_axis, cl) for cl in sec.col_labels), tuple(rows))


def _header(axis: AxisInfo | None, label: str) -> Header:
    return Header(label, axis.full(label) if axis else label)


def _cell(e: Entry | None, images: Mapping[str, Asset | str], others: Sequence[str],
          marks: Mapping[str, Badge]) -> Cell:
    if e is None:
        return Cell(None, "absent", STATE_NOTES["absent"])
    prompt = highlight(e.prompt, e.prompt_template, others, e.variables) if others else ()
    if e.state == "failed":
        return Cell(e.key, "failed", f"failed: {e.record.error or 'unknown error'}", prompt=prompt)
    if e.state != "done":
        return Cell(e.key, e.state, STATE_NOTES.get(e.state, e.state), prompt=prompt)
    asset = images.get(e.key)
    if not isinstance(asset, Asset):
        note = asset or "image missing"
        return Cell(e.key, "modified" if note.startswith(MODIFIED_NOTE) else "noimage", note, prompt=prompt)
    return Cell(e.key, "done", "", asset.thumb, asset.image, asset.width, asset.height, prompt, marks.get(e.key))


# ---------------------------------------------------------------------------------------------
# run details


def _detail(ws: WorkspaceConfig, e: Entry, images: Mapping[str, Asset | str], home: str,
            scores: Mapping[str, float | None], inputs: Mapping[str, InputView]) -> RunDetail:
    from tracker.experiment.inputs import hashes_of

    r = e.record
    run = r.run if r is not None else e.planned
    shown = tuple(replace(inputs[sha], field=f) for f, sha in (hashes_of(run.settings) if run is not None else ())
                  if sha in inputs)
    asset = images.get(e.key)
    title = " · ".join(f"{k}: {v}" for k, v in e.labels)
    error = r.error if r is not None and r.status == "failed" else None
    return RunDetail(
        key=e.key, state=e.state, title=title,
        prompt=highlight(e.prompt, e.prompt_template, (), e.variables),
        image=asset.image if isinstance(asset, Asset) else None,
        thumb=asset.thumb if isinstance(asset, Asset) else None,
        recipe=recipe(r if r is not None else e.planned),
        timings=(timings(r) if r is not None else ()) + tuple(
            (name, "—" if v is None else f"{v:.4g}") for name, v in sorted(scores.items())),
        error=error, mlflow_url=mlflow_url(ws, r), reproduce=f"tracker {home}reproduce {e.key}", inputs=shown,
    )


def recipe(run) -> tuple[tuple[str, str], ...]:
    """The full recipe of a stored (RunRecord) or planned (PlannedRun) run, as label/value pairs."""
    s = run.settings() if callable(getattr(run, "settings", None)) else run.settings
    options = dict(s.scheduler_options)
    memory = [n for n, on in (("attention slicing", s.attention_slicing), ("VAE slicing", s.vae_slicing),
                              ("VAE tiling", s.vae_tiling), ("CPU offload", s.cpu_offload)) if on]
    revision = getattr(run, "model_revision", None)
    rows = [
        ("prompt", run.prompt), ("negative prompt", run.negative_prompt or "(none)"), ("seed", str(run.seed)),
        ("model", s.model + (f" @ {revision}" if revision else "")),
        ("scheduler", s.scheduler_choice.describe()),
        ("scheduler options", ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "(none)"),
        ("steps", str(s.steps)), ("guidance scale", f"{s.guidance_scale:g}"), ("size", f"{s.width}x{s.height}"),
        ("VAE", s.vae), ("dtype", s.dtype), ("device", getattr(run, "device", None) or s.device),
        ("generator device", s.generator_device), ("batch size (setting)", str(s.batch_size)),
        ("memory options", ", ".join(memory) or "(none)"),
        ("deterministic algorithms", "on" if s.deterministic else "off"), ("attention backend", s.attention),
    ]
    # any other setting (compile, prompt syntax, LoRA, one added later) as its axis label reads
    rows += [(name.replace("_", " "), _setting_text(name, getattr(s, name))) for name in SETTING_NAMES
             if name not in _SHOWN and not unused(s, name)]
    return tuple(rows)


# Settings the rows above show (allow_pickle is a safety switch, not part of the recipe).
_SHOWN = {"model", "scheduler", "scheduler_options", "steps", "guidance_scale", "width", "height", "vae", "dtype",
          "device", "generator_device", "batch_size", "attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload",
          "allow_pickle", "deterministic", "attention"}


def _setting_text(name: str, value) -> str:
    if name == "lora":
        return ", ".join(f"{dict(a)['name']}:{dict(a)['scale']:g}" for a in value) or "(none)"
    return setting_label(name, value)


def timings(r: "RunRecord") -> tuple[tuple[str, str], ...]:
    rows = [
        ("seconds", _num(r.seconds, "{:.3f} s")), ("seconds per step", _num(r.seconds_per_step, "{:.4f} s")),
        ("peak memory", _mib(r.peak_memory_bytes)), ("batch size used", _num(r.batch_size_used, "{}")),
        ("started", r.started_at.isoformat(timespec="seconds") if r.started_at else "—"),
        ("finished", r.finished_at.isoformat(timespec="seconds") if r.finished_at else "—"),
    ]
    return tuple(rows)


def _num(v: float | int | None, fmt: str) -> str:
    return fmt.format(v) if v is not None else "—"


def _mib(n: int | None) -> str:
    return f"{n / 2**20:,.1f} MiB" if n else "—"


def _home_option(ws: WorkspaceConfig) -> str:
    """``--home DIR `` for commands shown to the user, unless the workspace is the default one here."""
    return "" if ws.home == Path(DEFAULT_HOME).resolve() else f"--home {shlex.quote(str(ws.home))} "


# ---------------------------------------------------------------------------------------------
# rendering


def templates_dir() -> Path:
    """The Jinja2 templates: ``templates/`` in a checkout, ``tracker/_templates`` in an installed wheel."""
    from tracker.resources import data_dir

    return data_dir("templates", "report.html.j2")


@lru_cache(maxsize=1)
def _env():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(loader=FileSystemLoader(str(templates_dir())), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["mib"] = _mib
    env.filters["num"] = lambda v, fmt="{:.3f}": _num(v, fmt)
    return env


def render(report: Report) -> str:
    """The page. Its one script is static; the Content-Security-Policy allows only that script (by
    hash), so even markup that slipped into the page could not run code or reach the network."""
    from markupsafe import Markup

    script = _env().get_template("_script.js.j2").render()
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return _env().get_template("report.html.j2").render(
        report=report, details=report.details_json(), script=Markup(script), script_hash=f"sha256-{digest}")
