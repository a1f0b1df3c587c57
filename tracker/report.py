"""The HTML report: seed-fixed comparison grids, run details and an efficiency view, as a static folder.

Two steps, as in coverage.py's html.py: first the report is built as plain frozen dataclasses
(``Report`` -> ``Grid`` -> ``Row`` -> ``Cell``, ``RunDetail``, ``EfficiencyRow``, ``VerifyView``) from the run
store,
then Jinja2 renders them with autoescaping on, so no user text (prompts, labels, names, errors) is
ever inserted as HTML. The run details travel to the page as JSON inside
``<script type="application/json">`` and the page's script only ever sets ``textContent``.

Which runs: the experiment file as last run (its source text is in the store) is parsed and
expanded again, so runs that are planned but not generated show as "not run yet" placeholders and
runs left over from an older version of the file are left out (and counted). When the source cannot
be expanded any more, the stored runs are shown as they are.

Images are copied into the report folder under their sha256 and thumbnails are made once per
sha256, so a second build only works on runs whose image changed; files no longer referenced are
removed. The folder opens from disk with no server and no network.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from tracker import gridimage
from tracker.errors import NotFoundError, TrackerError, UsageError
from tracker.workspace import DEFAULT_HOME, Workspace, safe_join

if TYPE_CHECKING:
    from tracker.plan import PlannedRun
    from tracker.spec import Experiment
    from tracker.store import RunRecord

THUMB_SIZE = 256
# The report's grid PNGs are for sharing a whole sweep at a glance; `tracker grid` makes bigger ones.
REPORT_MAX_PIXELS = 16_000_000
PROMPT_AXIS_KINDS = ("prompt", "var", "bundle")
ASSET_DIRS = ("full", "thumbs", "grids")
MANIFEST = "manifest.json"
STATE_NOTES = {"pending": "not run yet", "missing": "not run yet", "running": "running (not finished)",
               "absent": "not in the plan"}


# ---------------------------------------------------------------------------------------------
# what the store holds for one experiment


@dataclass(frozen=True)
class AxisInfo:
    """An axis as the report shows it: its labels in order, and what each label stands for."""

    name: str
    kind: str  # "prompt" | "var" | "bundle" | "setting" | "seed" | "stored" (known only from stored runs)
    labels: tuple[str, ...]
    fulls: tuple[str, ...]  # per label: the template, value or settings it stands for

    def full(self, label: str) -> str:
        return self.fulls[self.labels.index(label)] if label in self.labels else label


@dataclass(frozen=True, eq=False)
class Entry:
    """One run of the report: planned (from the current file), stored, or both."""

    key: str
    labels: tuple[tuple[str, str], ...]
    prompt: str
    prompt_template: str | None
    record: "RunRecord | None"
    planned: "PlannedRun | None"
    variables: tuple[tuple[str, Any], ...] | None = None  # the template's values, when the file is known

    def label(self, axis: str | None) -> str:
        return dict(self.labels).get(axis, "") if axis else ""

    @property
    def state(self) -> str:
        return self.record.status if self.record is not None else "missing"


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    experiment: "Experiment | None"
    axes: tuple[AxisInfo, ...]
    entries: tuple[Entry, ...]
    notes: tuple[str, ...] = ()
    verify: "VerifyView | None" = None  # the latest ``tracker verify`` result stored with a sweep

    def axis(self, name: str) -> AxisInfo:
        return next(a for a in self.axes if a.name == name)

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)


def load(ws: Workspace, experiment: str) -> Source:
    """Read the experiment and its runs from the store. NotFoundError when there is nothing to show."""
    from tracker.store import Store

    _require_store(ws.db_url)
    with Store.open(ws.db_url) as store:
        info = store.experiment(experiment)
        records = store.runs(experiment)
        verified = verify_view(store.sweeps(experiment))
        known = [e["name"] for e in store.experiments()] if info is None else []
    if info is None:
        listing = f"; known experiments: {', '.join(known)}" if known else "; the store holds no experiments yet"
        raise NotFoundError(f"no experiment {experiment!r} in the run store{listing}")
    if not any(r.status in ("done", "failed") for r in records):
        raise NotFoundError(f"experiment {experiment!r} has no finished runs yet; generate them with "
                            f"`tracker run {info.get('source_path') or 'FILE'}` first")
    exp, notes = _parse_source(info)
    plan = _expand(exp, notes)
    entries = _entries(plan, records, notes, exp)
    axes = _axes(exp, entries)
    return Source(experiment, exp.description if exp else "", exp, axes, tuple(entries), tuple(notes), verified)


def _require_store(url: str) -> None:
    """A report only reads: it must not create an empty store where there is none."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise NotFoundError(f"no run store at {url.removeprefix('sqlite:///')}; generate images with "
                            f"`tracker run FILE` first (or point --home/--db at the workspace)")


def _parse_source(info: Mapping[str, Any]) -> tuple["Experiment | None", list[str]]:
    from tracker.spec import parse

    text, path = info.get("source_text"), info.get("source_path")
    if not text:
        return None, ["the experiment file's text is not in the store; the layout follows the stored runs"]
    base = Path(path).resolve().parent if path else None
    try:
        return parse(text, path or info["name"], default_name=info["name"], base_dir=base), []
    except TrackerError as e:
        return None, [f"the stored experiment file no longer parses ({e}); the layout follows the stored runs"]


def _expand(exp: "Experiment | None", notes: list[str]) -> "tuple[PlannedRun, ...] | None":
    from tracker.plan import expand

    if exp is None or exp.seeds_from:
        return None
    try:
        return expand(exp, max_runs=None).runs
    except TrackerError as e:
        notes.append(f"the experiment file cannot be expanded ({e}); the layout follows the stored runs")
        return None


def _entries(plan, records: Sequence["RunRecord"], notes: list[str], exp: "Experiment | None") -> list[Entry]:
    by_key = {r.key: r for r in records}
    if plan is not None and any(p.key in by_key for p in plan):
        stale = len(set(by_key) - {p.key for p in plan})
        if stale:
            notes.append(f"{stale} stored run{'s' if stale != 1 else ''} of an earlier version of the "
                         f"experiment file {'are' if stale != 1 else 'is'} not in the current plan and not shown")
        return [Entry(p.key, p.axes, p.prompt, p.prompt_template, by_key.get(p.key), p, _variables(exp, p.axes))
                for p in plan]
    return [Entry(r.key, labels, r.prompt, r.prompt_template, r, None, _variables(exp, labels))
            for r in records for labels in [_record_labels(r)]]


def _variables(exp: "Experiment | None", labels: tuple[tuple[str, str], ...]) -> tuple[tuple[str, Any], ...] | None:
    """The values the prompt template saw for these labels (as plan.expand passes them), if known."""
    if exp is None:
        return None
    chosen = dict(labels)
    out = []
    for a in exp.axes:
        if a.kind == "prompt":
            continue
        value = next((v for v in a.values if v.label == chosen.get(a.name)), None)
        if value is None:
            return None
        out.append((a.name, value.value))
    return tuple(out)


def _record_labels(r: "RunRecord") -> tuple[tuple[str, str], ...]:
    labels = dict(r.axes)
    labels.setdefault("seed", str(r.seed))
    return tuple(labels.items())


def _axes(exp: "Experiment | None", entries: Sequence[Entry]) -> tuple[AxisInfo, ...]:
    """Axes in the file's order (labels in the file's order), then labels and axes only the stored
    runs know (e.g. the seed a ``seeds: {from: KEY}`` run took), as first seen."""
    seen: dict[str, list[str]] = {}
    for e in entries:
        for name, label in e.labels:
            labels = seen.setdefault(name, [])
            if label not in labels:
                labels.append(label)
    spec_axes = {a.name: a for a in exp.axes} if exp is not None else {}
    out = []
    for name in [*spec_axes, *(n for n in seen if n not in spec_axes)]:
        present = seen.get(name, [])
        axis = spec_axes.get(name)
        values = [v for v in axis.values if v.label in present] if axis else []
        known = {v.label for v in values}
        labels = [v.label for v in values] + [lab for lab in present if lab not in known]
        fulls = [_full(axis.kind, v) for v in values] + [lab for lab in present if lab not in known]
        kind = axis.kind if axis else ("seed" if name == "seed" else "stored")
        if labels:
            out.append(AxisInfo(name, kind, tuple(labels), tuple(fulls)))
    return tuple(out)


def _full(kind: str, value) -> str:
    """What an axis label stands for, in full (shown on hover and click)."""
    if kind == "prompt":
        return value.template or ""
    if kind == "bundle" or (kind == "setting" and value.settings):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.settings)
    return _show(value.value if value.value is not None else value.label)


def _show(v: Any) -> str:
    if isinstance(v, tuple) and all(isinstance(x, tuple) and len(x) == 2 for x in v):
        return ", ".join(f"{k}={x}" for k, x in v) or "(none)"
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return str(v)


# ---------------------------------------------------------------------------------------------
# layout: which axis runs down, which across, which split the grids


@dataclass(frozen=True)
class Layout:
    rows: str | None  # None: a single row
    cols: str | None  # None: a single column
    groups: tuple[str, ...]  # the other axes with more than one label: one grid per combination


def varying(axes: Iterable[AxisInfo]) -> list[AxisInfo]:
    return [a for a in axes if len(a.labels) > 1]


def check_axis(source: Source, name: str | None, option: str) -> str | None:
    if name is not None and name not in source.axis_names:
        raise UsageError(f"unknown axis {name!r} in {option}; known axes: {', '.join(source.axis_names)}")
    return name


def choose_layout(source: Source, rows: str | None = None, cols: str | None = None,
                  fixed: Iterable[str] = ()) -> Layout:
    """Rows and columns from the options, else the file's ``grid:``, else the prompt axis with the most
    labels down and the seeds across. ``fixed`` axes (pinned by --where) never split the grids."""
    check_axis(source, rows, "--rows")
    check_axis(source, cols, "--cols")
    explicit_rows = rows is not None
    g_rows, g_cols = source.experiment.grid if source.experiment and source.experiment.grid else (None, None)
    rows = rows or (g_rows if g_rows in source.axis_names else None)
    cols = cols or (g_cols if g_cols in source.axis_names else None)
    free = [a for a in source.axes if a.name not in set(fixed)]
    rows = rows or _default_rows(free, exclude={cols})
    cols = cols or _default_cols(free, exclude={rows})
    if cols is None and rows == "seed" and not explicit_rows:  # only the seeds vary: lay them out across
        rows, cols = None, "seed"
    if rows is not None and rows == cols:
        raise UsageError(f"--rows and --cols are both {rows!r}; choose two different axes "
                         f"(known axes: {', '.join(source.axis_names)})")
    groups = tuple(a.name for a in varying(free) if a.name not in (rows, cols))
    return Layout(rows, cols, groups)


def _most(axes: Iterable[AxisInfo]) -> str | None:
    best = max(axes, key=lambda a: len(a.labels), default=None)
    return best.name if best is not None else None


def _default_rows(axes: Sequence[AxisInfo], exclude: set) -> str | None:
    pool = [a for a in varying(axes) if a.name not in exclude]
    return (_most(a for a in pool if a.kind in PROMPT_AXIS_KINDS)
            or _most(a for a in pool if a.name != "seed")
            or _most(pool))


def _default_cols(axes: Sequence[AxisInfo], exclude: set) -> str | None:
    pool = [a for a in varying(axes) if a.name not in exclude]
    if any(a.name == "seed" for a in pool):
        return "seed"
    return _most(pool)


def parse_where(source: Source, items: Iterable[str]) -> dict[str, str]:
    """``axis=label`` pairs; an unknown axis or label is a UsageError naming the known ones."""
    from tracker.plan import parse_where as parse

    return parse(items, {a.name: a.labels for a in source.axes})


def select(source: Source, where: Mapping[str, str]) -> list[Entry]:
    return [e for e in source.entries if all(e.label(k) == v for k, v in where.items())]


@dataclass(frozen=True, eq=False)
class Section:
    """The runs of one grid: the values of the grouping axes, and the row and column labels present."""

    combo: tuple[tuple[str, str], ...]
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    cells: Mapping[tuple[str, str], Entry]

    @property
    def title(self) -> str:
        return " · ".join(f"{k}: {v}" for k, v in self.combo)


def sections(source: Source, layout: Layout, entries: Sequence[Entry]) -> list[Section]:
    """Split the runs into one section per combination of the grouping axes (in axis-label order)."""
    by_combo: dict[tuple, list[Entry]] = {}
    for e in entries:
        by_combo.setdefault(tuple((g, e.label(g)) for g in layout.groups), []).append(e)
    order = {a.name: a.labels for a in source.axes}
    combos = sorted(by_combo, key=lambda c: tuple(_index(order.get(k, ()), v) for k, v in c))
    return [_section(source, layout, c, by_combo[c]) for c in combos]


def _index(labels: Sequence[str], label: str) -> int:
    return labels.index(label) if label in labels else len(labels)


def _section(source: Source, layout: Layout, combo, entries: Sequence[Entry]) -> Section:
    def ordered(axis: str | None) -> tuple[str, ...]:
        present = {e.label(axis) for e in entries}
        labels = source.axis(axis).labels if axis else ("",)
        return tuple(lab for lab in labels if lab in present)

    cells: dict[tuple[str, str], Entry] = {}
    for e in entries:
        cells.setdefault((e.label(layout.rows), e.label(layout.cols)), e)
    return Section(combo, ordered(layout.rows), ordered(layout.cols), cells)


# ---------------------------------------------------------------------------------------------
# the report's data


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
    """The latest stored ``tracker verify`` result (``reproduce.Verification.to_json``), as shown."""

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


def verify_view(sweeps: Sequence[Mapping[str, Any]]) -> VerifyView | None:
    """The latest sweep's verify result that exists (a later ``tracker run`` starts a new sweep with
    none); None when the experiment was never verified."""
    sweep = next((s for s in reversed(sweeps) if s.get("verify")), None)
    if sweep is None:
        return None
    v = sweep["verify"]
    runs = tuple(VerifiedRun(str(r.get("key", "")), tuple((str(k), str(x)) for k, x in (r.get("labels") or {}).items()),
                             bool(r.get("identical")), int(r.get("max_abs") or 0), float(r.get("mean_abs") or 0.0),
                             int(r.get("differing") or 0), int(r.get("pixels") or 0), r.get("reason"))
                 for r in v.get("runs") or ())
    identical = sum(r.identical for r in runs)
    return VerifyView(sweep["id"], _when(v.get("at")), v.get("device") or "unknown device",
                      int(v.get("sample", len(runs))), int(v.get("identical", identical)),
                      int(v.get("drifted", len(runs) - identical)), int(v.get("done") or 0),
                      int(v.get("max_abs") or 0), tuple(map(str, v.get("warnings") or ())), runs)


def _when(iso: str | None) -> str:
    """An ISO 8601 time as the report writes times (UTC, to the minute); unparsable text as it is."""
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return str(iso or "unknown time")


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

    def details_json(self) -> dict[str, Any]:
        """key -> the run's details as plain JSON values (the page script reads these)."""
        return {d.key: {**d.__dict__, "prompt": [s.__dict__ for s in d.prompt]} for d in self.details}


# ---------------------------------------------------------------------------------------------
# prompts: which part came from an axis value


TEMPLATE_TAG = re.compile(r"({{.*?}}|{%.*?%}|{#.*?#})", re.S)


def highlight(prompt: str, template: str | None, others: Sequence[str] = (),
              variables: Iterable[tuple[str, Any]] | None = None) -> tuple[Span, ...]:
    """Split ``prompt`` into spans, marking what its template's expressions produced: exactly when the
    template's ``variables`` are known, else by lining the template's text up with the prompt; when
    neither works (control blocks), mark what differs from the ``others`` prompts."""
    spans = None
    if template and variables is not None:
        spans = _rendered_spans(prompt, template, dict(variables))
    if template and spans is None:
        spans = _template_spans(prompt, template)
    return spans if spans is not None else _diff_spans(prompt, [o for o in others if o != prompt])


def _template_parts(template: str) -> tuple[list[str], list[str]] | None:
    """The template's literal texts and its ``{{ }}`` expressions, whitespace control applied; None
    for templates with control blocks, whose literals cannot be lined up with the output."""
    parts = TEMPLATE_TAG.split(template)
    if any(p.startswith(("{%", "{#")) for p in parts[1::2]):
        return None
    literals = parts[0::2]
    exprs = parts[1::2]
    for i, ex in enumerate(exprs):  # whitespace control: {{- strips before, -}} strips after
        if ex.startswith("{{-"):
            literals[i] = literals[i].rstrip()
        if ex.endswith("-}}"):
            literals[i + 1] = literals[i + 1].lstrip()
    if literals[-1].endswith("\n"):
        literals[-1] = literals[-1][:-1]
    return literals, exprs


def _rendered_spans(prompt: str, template: str, variables: Mapping[str, Any]) -> tuple[Span, ...] | None:
    from tracker.templating import render

    split = _template_parts(template)
    if split is None:
        return None
    literals, exprs = split
    out: list[Span] = []
    try:
        for i, lit in enumerate(literals):
            if lit:
                out.append(Span(lit))
            if i < len(exprs):
                text = render(exprs[i], variables, None, "prompt", None)
                if text:
                    out.append(Span(text, True, exprs[i], _variables_of(exprs[i])))
    except TrackerError:
        return None
    return tuple(out) if "".join(s.text for s in out) == prompt else None


def _template_spans(prompt: str, template: str) -> tuple[Span, ...] | None:
    split = _template_parts(template)
    if split is None:
        return None
    literals, exprs = split
    pattern = "(.*?)".join(re.escape(lit) for lit in literals)
    m = re.fullmatch(pattern, prompt, re.S)
    if m is None:
        return None
    out: list[Span] = []
    for i, lit in enumerate(literals):
        if lit:
            out.append(Span(lit))
        if i < len(exprs) and m.group(i + 1):
            out.append(Span(m.group(i + 1), True, exprs[i], _variables_of(exprs[i])))
    return tuple(out)


@lru_cache(maxsize=1024)
def _variables_of(expression: str) -> tuple[str, ...]:
    from jinja2 import Environment, TemplateSyntaxError, meta

    try:
        return tuple(sorted(meta.find_undeclared_variables(Environment().parse(expression))))
    except TemplateSyntaxError:
        return ()


def _diff_spans(prompt: str, others: Sequence[str]) -> tuple[Span, ...]:
    tokens = re.findall(r"\S+|\s+", prompt)
    marked = [False] * len(tokens)
    for other in others:
        sm = difflib.SequenceMatcher(None, tokens, re.findall(r"\S+|\s+", other), autojunk=False)
        for tag, i1, i2, _, _ in sm.get_opcodes():
            if tag != "equal":
                for i in range(i1, i2):
                    marked[i] = not tokens[i].isspace() or marked[i]
    out: list[Span] = []
    for tok, m in zip(tokens, marked):
        if out and out[-1].marked == m:
            out[-1] = Span(out[-1].text + tok, m)
        else:
            out.append(Span(tok, m))
    return tuple(out) or (Span(""),)


# ---------------------------------------------------------------------------------------------
# images: copied and thumbnailed once per sha256


@dataclass(frozen=True)
class Asset:
    thumb: str
    image: str
    width: int
    height: int


class Assets:
    """Full images and thumbnails under the report folder, named by the image's sha256.

    ``thumbs/manifest.json`` remembers each image's size and thumbnail, so a second build opens no
    image that did not change. Images no larger than a thumbnail serve as their own thumbnail.
    """

    def __init__(self, root: Path):
        self.root = root
        self.used: set[str] = {MANIFEST}
        for d in ASSET_DIRS:
            (root / d).mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, list] = _read_manifest(root / "thumbs" / MANIFEST)

    def prepare(self, records: Iterable["RunRecord"]) -> dict[str, Asset | str]:
        """key -> Asset, or key -> the reason there is no image. Thumbnails are made in threads."""
        todo: dict[str, tuple[Path, str]] = {}
        out: dict[str, Asset | str] = {}
        for r in records:
            src = Path(r.image) if r.image else None
            if src is None or not src.is_file():
                out[r.key] = f"image missing: {src.name if src else 'no file recorded'}"
                continue
            todo[r.key] = (src, r.image_sha256 or _sha256(src))
        with ThreadPoolExecutor(_workers()) as pool:
            for key, result in zip(todo, pool.map(lambda a: self._one(*a), todo.values())):
                out[key] = result
        _write_text(self.root / "thumbs" / MANIFEST, json.dumps(self.manifest, sort_keys=True))
        return out

    def _one(self, src: Path, sha: str) -> Asset | str:
        name = sha[:32]
        full = f"full/{name}{src.suffix.lower() or '.png'}"
        try:
            if not (self.root / full).exists():
                _link_or_copy(src, self.root / full)
            known = self.manifest.get(name)
            if known is None or not (self.root / known[2]).exists():
                known = self.manifest[name] = list(_thumbnail(self.root / full, self.root / "thumbs", name))
        except (OSError, ValueError) as e:
            return f"image unreadable: {e}"
        self.used.update({Path(full).name, Path(known[2]).name})
        return Asset(known[2], full, known[0], known[1])

    def add_used(self, rel: str) -> None:
        self.used.add(Path(rel).name)

    def prune(self) -> int:
        """Remove files of runs no longer shown (their image changed or they left the plan)."""
        n = 0
        for d in ASSET_DIRS:
            for p in (self.root / d).iterdir():
                if p.name not in self.used:
                    p.unlink(missing_ok=True)
                    n += 1
        return n


def _read_manifest(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _thumbnail(src: Path, folder: Path, name: str) -> tuple[int, int, str]:
    """Write ``name``'s thumbnail into ``folder``: a JPEG, or for an image no larger than a thumbnail a
    link to the image itself (so thumbs/ alone can show every grid). Returns (width, height, path)."""
    from PIL import Image

    with Image.open(src) as im:
        size = im.size
        if max(size) <= THUMB_SIZE:
            dst = folder / f"{name}{src.suffix}"
            _link_or_copy(src, dst)
            return (*size, f"{folder.name}/{dst.name}")
        im.draft("RGB", (THUMB_SIZE, THUMB_SIZE))
        small = im.convert("RGB")
    small.thumbnail((THUMB_SIZE, THUMB_SIZE))
    dst = folder / f"{name}.jpg"
    tmp = dst.with_name(f".{dst.name}.tmp")
    small.save(tmp, format="JPEG", quality=88)
    os.replace(tmp, dst)
    return (*size, f"{folder.name}/{dst.name}")


# ---------------------------------------------------------------------------------------------
# building the report


def build(ws: Workspace, experiment: str, rows: str | None = None, cols: str | None = None,
          out: Path | None = None, max_pixels: int = REPORT_MAX_PIXELS) -> tuple[Path, Report]:
    """Build and write the report folder; returns the path of index.html and the report data."""
    source = load(ws, experiment)
    layout = choose_layout(source, rows, cols)
    out = Path(out) if out is not None else safe_join(ws.reports_dir, experiment)
    out.mkdir(parents=True, exist_ok=True)
    assets = Assets(out)
    images = assets.prepare(e.record for e in source.entries if e.record is not None and e.state == "done")
    secs = sections(source, layout, source.entries)
    grids = tuple(_grid(source, layout, s, i, images) for i, s in enumerate(secs, 1))
    grids = _grid_pngs(grids, secs, layout, images, out, max_pixels)
    for g in grids:
        assets.add_used(g.png)
    home = _home_option(ws)
    report = Report(
        experiment=source.name, description=source.description,
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        counts=tuple(Counter(e.state for e in source.entries).most_common()),
        rows_axis=layout.rows or "", cols_axis=layout.cols or "",
        constants=tuple((a.name, a.labels[0]) for a in source.axes if len(a.labels) == 1),
        grids=grids, details=tuple(_detail(ws, e, images, home) for e in source.entries),
        efficiency=efficiency([e.record for e in source.entries if e.record is not None]),
        notes=source.notes, verify=_mark_shown(source.verify, {e.key for e in source.entries}),
        verify_command=f"tracker {home}verify {shlex.quote(source.name)}",
    )
    index = out / "index.html"
    _write_text(index, render(report))
    assets.prune()
    return index, report


def _mark_shown(view: VerifyView | None, keys: set[str]) -> VerifyView | None:
    """Mark the verified runs the report has details for (the others left the plan since)."""
    if view is None:
        return None
    return replace(view, runs=tuple(replace(r, shown=r.key in keys) for r in view.runs))


def _grid(source: Source, layout: Layout, sec: Section, n: int, images: Mapping[str, Asset | str]) -> Grid:
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
            tuple(_cell(e, images, () if shared else prompts) for e in cells)))
    return Grid(f"grid-{n}", sec.title, sec.combo, layout.rows or "", layout.cols or "",
                tuple(_header(cols_axis, cl) for cl in sec.col_labels), tuple(rows))


def _header(axis: AxisInfo | None, label: str) -> Header:
    return Header(label, axis.full(label) if axis else label)


def _cell(e: Entry | None, images: Mapping[str, Asset | str], others: Sequence[str]) -> Cell:
    if e is None:
        return Cell(None, "absent", STATE_NOTES["absent"])
    prompt = highlight(e.prompt, e.prompt_template, others, e.variables) if others else ()
    if e.state == "failed":
        return Cell(e.key, "failed", f"failed: {e.record.error or 'unknown error'}", prompt=prompt)
    if e.state != "done":
        return Cell(e.key, e.state, STATE_NOTES.get(e.state, e.state), prompt=prompt)
    asset = images.get(e.key)
    if not isinstance(asset, Asset):
        return Cell(e.key, "noimage", asset or "image missing", prompt=prompt)
    return Cell(e.key, "done", "", asset.thumb, asset.image, asset.width, asset.height, prompt)


def _grid_pngs(grids: Sequence[Grid], secs: Sequence[Section], layout: Layout, images: Mapping[str, Asset | str],
               out: Path, max_pixels: int) -> tuple[Grid, ...]:
    """Each grid's labelled PNG, named by a hash of its images and labels: drawn only when that changed.
    Drawn in threads (Pillow decodes and compresses without holding the GIL)."""
    jobs, named = [], []
    for grid, sec in zip(grids, secs):
        spec = grid_spec(sec, layout, lambda key: _tile_for(images, out, key), with_title=True,
                         preview_of=lambda key: _preview_for(images, out, key))
        digest = hashlib.sha256(repr((spec, max_pixels)).encode()).hexdigest()[:12]
        rel = f"grids/{grid.id}-{digest}.png"
        named.append(replace(grid, png=rel))
        if not (out / rel).exists():
            jobs.append((spec, out / rel))
    with ThreadPoolExecutor(_workers()) as pool:
        list(pool.map(lambda job: gridimage.write(job[0], job[1], max_pixels), jobs))
    return tuple(named)


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _tile_for(images: Mapping[str, Asset | str], out: Path, key: str) -> Path | None:
    asset = images.get(key)
    return out / asset.image if isinstance(asset, Asset) else None


def _preview_for(images: Mapping[str, Asset | str], out: Path, key: str) -> tuple[Path | None, float]:
    asset = images.get(key)
    if not isinstance(asset, Asset):
        return None, 0.0
    return out / asset.thumb, min(1.0, THUMB_SIZE / max(asset.width, asset.height))


def grid_spec(sec: Section, layout: Layout, image_of: Callable[[str], Path | None], with_title: bool = True,
              preview_of: Callable[[str], tuple[Path | None, float]] | None = None) -> gridimage.GridSpec:
    """A section as a labelled PNG grid: ``image_of(key)`` gives the file of a done run, ``preview_of(key)``
    a smaller copy and its scale (report thumbnails)."""
    tiles = []
    for rl in sec.row_labels:
        row = []
        for cl in sec.col_labels:
            e = sec.cells.get((rl, cl))
            path = image_of(e.key) if e is not None and e.state == "done" else None
            preview = preview_of(e.key) if path is not None and preview_of is not None else (None, 0.0)
            row.append(gridimage.Tile(path, "" if path else _tile_note(e), *preview))
        tiles.append(tuple(row))
    rows = tuple(f"{layout.rows}: {lab}" if layout.rows == "seed" else lab for lab in sec.row_labels)
    cols = tuple(f"{layout.cols}: {lab}" if layout.cols == "seed" else lab for lab in sec.col_labels)
    return gridimage.GridSpec(sec.title if with_title else "", rows, cols, tuple(tiles))


def _tile_note(e: Entry | None) -> str:
    if e is None:
        return STATE_NOTES["absent"]
    if e.state == "failed":
        return f"failed: {e.record.error or 'unknown error'}"
    if e.state == "done":
        return "image missing"
    return STATE_NOTES.get(e.state, e.state)


# ---------------------------------------------------------------------------------------------
# run details


def _detail(ws: Workspace, e: Entry, images: Mapping[str, Asset | str], home: str) -> RunDetail:
    r = e.record
    asset = images.get(e.key)
    title = " · ".join(f"{k}: {v}" for k, v in e.labels)
    error = r.error if r is not None and r.status == "failed" else None
    return RunDetail(
        key=e.key, state=e.state, title=title,
        prompt=highlight(e.prompt, e.prompt_template, (), e.variables),
        image=asset.image if isinstance(asset, Asset) else None,
        thumb=asset.thumb if isinstance(asset, Asset) else None,
        recipe=recipe(r if r is not None else e.planned),
        timings=timings(r) if r is not None else (),
        error=error, mlflow_url=_mlflow_url(ws, r), reproduce=f"tracker {home}reproduce {e.key}",
    )


def recipe(run) -> tuple[tuple[str, str], ...]:
    """The full recipe of a stored (RunRecord) or planned (PlannedRun) run, as label/value pairs."""
    from tracker.schedulers import sampler_name

    s = run.settings() if callable(getattr(run, "settings", None)) else run.settings
    options = dict(s.scheduler_options)
    sampler, schedule = sampler_name(s.scheduler, options) if s.scheduler != "default" else ("default", None)
    memory = [n for n, on in (("attention slicing", s.attention_slicing), ("VAE slicing", s.vae_slicing),
                              ("VAE tiling", s.vae_tiling), ("CPU offload", s.cpu_offload)) if on]
    revision = getattr(run, "model_revision", None)
    rows = [
        ("prompt", run.prompt), ("negative prompt", run.negative_prompt or "(none)"), ("seed", str(run.seed)),
        ("model", s.model + (f" @ {revision}" if revision else "")),
        ("scheduler", s.scheduler + (f" ({sampler}{' ' + schedule if schedule else ''})" if s.scheduler != "default" else "")),
        ("scheduler options", ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "(none)"),
        ("steps", str(s.steps)), ("guidance scale", f"{s.guidance_scale:g}"), ("size", f"{s.width}x{s.height}"),
        ("VAE", s.vae), ("dtype", s.dtype), ("device", getattr(run, "device", None) or s.device),
        ("generator device", s.generator_device), ("batch size (setting)", str(s.batch_size)),
        ("memory options", ", ".join(memory) or "(none)"),
    ]
    return tuple(rows)


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


def _home_option(ws: Workspace) -> str:
    """``--home DIR `` for commands shown to the user, unless the workspace is the default one here."""
    return "" if ws.home == Path(DEFAULT_HOME).resolve() else f"--home {shlex.quote(str(ws.home))} "


def _optional(module: str, attr: str):
    """A function of an optional part (MLflow logging), or None when that part is not installed."""
    import importlib

    try:
        return getattr(importlib.import_module(module), attr, None)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise


def _mlflow_url(ws: Workspace, r: "RunRecord | None") -> str | None:
    if r is None or not ws.mlflow_enabled or not r.mlflow_run_id:
        return None
    run_url = _optional("tracker.mlflow_log", "run_url")
    if run_url is None:
        return None
    try:
        url = run_url(ws, r)
    except Exception:  # a broken MLflow setup must not cost the report; the link is left out
        return None
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else None


# ---------------------------------------------------------------------------------------------
# efficiency


EFFICIENCY_FIELDS = ("scheduler", "steps", "dtype", "batch", "memory options", "device", "model", "size")


def _config(r: "RunRecord") -> tuple[tuple[str, str | None], ...]:
    """A run's pipeline configuration; None where a failed run never learned it (device, batch used)."""
    memory = [n for n, on in (("attention slicing", r.attention_slicing), ("VAE slicing", r.vae_slicing),
                              ("VAE tiling", r.vae_tiling), ("CPU offload", r.cpu_offload)) if on]
    batch = r.batch_size_used if r.batch_size_used is not None else r.batch_size
    values = (r.scheduler.removesuffix("Scheduler"), str(r.steps), r.dtype,
              str(batch) if isinstance(batch, int) else None, ", ".join(memory) or "none",
              r.device if r.device not in (None, "auto") else None,
              r.model, f"{r.width}x{r.height}")
    return tuple(zip(EFFICIENCY_FIELDS, values))


def _merge_unknown(groups: dict[tuple, list]) -> dict[tuple, list]:
    """Put runs whose configuration has unknowns into the one known configuration they fit, if unique;
    else fill each unknown with the value every known configuration shares (or "?")."""
    known = {c: rs for c, rs in groups.items() if all(v is not None for _, v in c)}
    out = dict(known)
    for c, rs in groups.items():
        if c in known:
            continue
        fits = [k for k in known if all(v is None or v == kv for (_, v), (_, kv) in zip(c, k))]
        target = fits[0] if len(fits) == 1 else tuple(
            (n, v if v is not None else _shared(known, i)) for i, (n, v) in enumerate(c))
        out.setdefault(target, []).extend(rs)
    return out


def _shared(configs: Iterable[tuple], i: int) -> str:
    values = {c[i][1] for c in configs}
    return values.pop() if len(values) == 1 else "?"


def efficiency(records: Sequence["RunRecord"]) -> tuple[EfficiencyRow, ...]:
    """Seconds per image, images per second and peak memory per pipeline configuration, in plan order."""
    groups: dict[tuple, list] = {}
    for r in records:
        if r.status in ("done", "failed"):
            groups.setdefault(_config(r), []).append(r)
    if not groups:
        return ()
    groups = _merge_unknown(groups)
    order = {id(r): i for i, r in enumerate(records)}
    groups = dict(sorted(groups.items(), key=lambda kv: min(order[id(r)] for r in kv[1])))
    differ = [i for i, f in enumerate(EFFICIENCY_FIELDS) if len({c[i][1] for c in groups}) > 1]
    rows = [_efficiency_row(c, rs, differ) for c, rs in groups.items()]
    top_s = max((r.seconds_per_image or 0 for r in rows), default=0) or 1
    top_m = max((r.peak_memory_bytes or 0 for r in rows), default=0) or 1
    return tuple(replace(r, seconds_frac=(r.seconds_per_image or 0) / top_s,
                         memory_frac=(r.peak_memory_bytes or 0) / top_m) for r in rows)


def _efficiency_row(config: tuple, runs: Sequence["RunRecord"], differ: Sequence[int]) -> EfficiencyRow:
    done = [r for r in runs if r.status == "done" and r.seconds is not None]
    spi = sum(r.seconds for r in done) / len(done) if done else None
    peaks = [r.peak_memory_bytes for r in runs if r.peak_memory_bytes]
    parts = [f"{config[i][0]} {config[i][1]}" if config[i][0] in ("steps", "batch") else config[i][1]
             for i in differ if config[i][1] != "none"]
    label = " · ".join(parts) or "all runs"
    return EfficiencyRow(label, config, len(runs), sum(r.status == "failed" for r in runs), spi,
                         1 / spi if spi else None, max(peaks) if peaks else None)


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


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# labelled PNG grids for ``tracker grid``


def write_grids(ws: Workspace, experiment: str, rows: str | None, cols: str | None, where: Iterable[str],
                out: Path, max_pixels: int = gridimage.DEFAULT_MAX_PIXELS) -> list[gridimage.GridImage]:
    """One PNG at ``out`` for one grid; when other axes still vary, one PNG per combination named
    ``<stem>-<axis=label,...><suffix>`` beside it."""
    source = load(ws, experiment)
    pinned = parse_where(source, where)
    layout = choose_layout(source, rows, cols, fixed=pinned)
    secs = sections(source, layout, select(source, pinned))
    if not secs:
        raise NotFoundError(f"no runs of {experiment!r} match --where {' '.join(where)}")
    pinned_title = " · ".join(f"{k}: {v}" for k, v in pinned.items())
    written = []
    names = _combo_names(out, [s.combo for s in secs])
    files = {e.key: Path(e.record.image) for e in source.entries if e.record is not None and e.record.image}
    for sec, path in zip(secs, names):
        spec = grid_spec(sec, layout, lambda key: files[key] if key in files and files[key].is_file() else None)
        title = " · ".join(t for t in (pinned_title, spec.title) if t)
        written.append(gridimage.write(gridimage.GridSpec(title, spec.row_labels, spec.col_labels, spec.tiles),
                                       path, max_pixels))
    return written


def _combo_names(out: Path, combos: Sequence[tuple]) -> list[Path]:
    if len(combos) == 1:
        return [out]
    names, used = [], set()
    for combo in combos:
        slug = re.sub(r"[^A-Za-z0-9._=,-]+", "_", ",".join(f"{k}={v}" for k, v in combo))[:80].strip("._") or "grid"
        candidate, n = slug, 2
        while candidate in used:
            candidate, n = f"{slug}-{n}", n + 1
        used.add(candidate)
        names.append(out.with_name(f"{out.stem}-{candidate}{out.suffix or '.png'}"))
    return names


def attach_to_mlflow(ws: Workspace, experiment: str, files: Sequence[tuple[Path, str]]) -> str | None:
    """Attach (path, artifact folder) pairs to the sweep's parent MLflow run when MLflow is on and its
    logging part is installed. Returns a warning line when that fails: the report on disk is the
    product, MLflow a copy of it."""
    if not ws.mlflow_enabled:
        return None
    attach = _optional("tracker.mlflow_log", "attach_artifacts")
    if attach is None:
        return None
    try:
        for path, artifact_path in files:
            if Path(path).exists():
                attach(ws, experiment, [Path(path)], artifact_path)
    except Exception as e:  # noqa: BLE001 - any MLflow failure is a warning here
        return f"warning: could not attach the report to MLflow: {type(e).__name__}: {e}"
    return None


def mlflow_files(index: Path) -> list[tuple[Path, str]]:
    """What of a report goes to MLflow: the page, thumbnails and grid PNGs, not the full images
    (each child run holds its own image; the page falls back to the thumbnail)."""
    root = index.parent
    return [(index, "report"), (root / "thumbs", "report/thumbs"), (root / "grids", "report/grids")]
