"""What the store holds for one experiment: its runs as report ``Entry``s, its axes, its latest verify.

The experiment file as last run (its source text is in the store) is parsed and expanded again, so
planned but not generated runs show as placeholders and runs of an older version of the file are left
out (and counted). When the source cannot be expanded any more, the stored runs are shown as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tracker.errors import NotFoundError, TrackerError
from tracker.report.data import SweepFigures, VerifiedRun, VerifyView
from tracker.workspace import WorkspaceConfig

if TYPE_CHECKING:
    from tracker.experiment.plan import PlannedRun
    from tracker.experiment.model import ExperimentSpec
    from tracker.store.records import RunRecord


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
    experiment: "ExperimentSpec | None"
    axes: tuple[AxisInfo, ...]
    entries: tuple[Entry, ...]
    notes: tuple[str, ...] = ()
    verify: "VerifyView | None" = None  # the latest ``tracker verify`` result stored with a sweep
    sweeps: tuple[SweepFigures, ...] = ()
    metric_values: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)  # key -> metric -> value
    metric_names: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # tracker.metrics.storage.names
    effects: tuple = ()  # tracker.metrics.effects.Effects per stored metric (its parts, e.g. shapes.colour, left out)

    def axis(self, name: str) -> AxisInfo:
        return next(a for a in self.axes if a.name == name)

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)


def load(ws: WorkspaceConfig, experiment: str) -> Source:
    """Read the experiment and its runs from the store. NotFoundError when there is nothing to show."""
    from tracker.store.runstore import Store

    _require_store(ws)
    with Store.open(ws.db_url, create=False, home=ws.home) as store:
        info = store.experiment(experiment)
        records = store.runs(experiment)
        sweeps = store.sweeps(experiment)
        verified = verify_view(sweeps)
        metric_values, metric_names, effects = _metrics(store, experiment) if info is not None else ({}, {}, ())
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
    return Source(experiment, exp.description if exp else "", exp, axes, tuple(entries), tuple(notes), verified,
                  sweep_figures(sweeps), metric_values, metric_names, effects)


def _metrics(store, experiment: str):
    """Stored metric values, names and the paired axis effects of each metric (as ``tracker effects``)."""
    from tracker.metrics import storage

    names = storage.names(store, experiment)
    if not names:
        return {}, {}, ()
    effects = tuple(storage.effects(store, experiment, m) for m in names if "." not in m)
    return storage.values(store, experiment), names, effects


def _require_store(ws: WorkspaceConfig) -> None:
    """A report only reads: it must not create an empty store where there is none."""
    if not ws.has_store():
        url = ws.db_url
        raise NotFoundError(f"no run store at {url.removeprefix('sqlite:///')}; generate images with "
                            f"`tracker run FILE` first (or point --home/--db at the workspace)")


def _parse_source(info: Mapping[str, Any]) -> tuple["ExperimentSpec | None", list[str]]:
    from tracker.experiment.parse import parse

    text, path = info.get("source_text"), info.get("source_path")
    if not text:
        return None, ["the experiment file's text is not in the store; the layout follows the stored runs"]
    base = Path(path).resolve().parent if path else None
    try:
        return parse(text, path or info["name"], default_name=info["name"], base_dir=base), []
    except TrackerError as e:
        return None, [f"the stored experiment file no longer parses ({e}); the layout follows the stored runs"]


def _expand(exp: "ExperimentSpec | None", notes: list[str]) -> "tuple[PlannedRun, ...] | None":
    from tracker.experiment.plan import expand

    if exp is None or exp.seeds_from:
        return None
    try:
        return expand(exp, max_runs=None).runs
    except TrackerError as e:
        notes.append(f"the experiment file cannot be expanded ({e}); the layout follows the stored runs")
        return None


def _entries(plan, records: Sequence["RunRecord"], notes: list[str], exp: "ExperimentSpec | None") -> list[Entry]:
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


def _variables(exp: "ExperimentSpec | None", labels: tuple[tuple[str, str], ...]) -> tuple[tuple[str, Any], ...] | None:
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


def _axes(exp: "ExperimentSpec | None", entries: Sequence[Entry]) -> tuple[AxisInfo, ...]:
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
    if kind == "label":  # a prompt set's category: its value lists the prompts in it
        return value.label
    if kind == "bundle" or (kind == "setting" and value.settings):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.settings)
    return _show(value.value if value.value is not None else value.label)


def _show(v: Any) -> str:
    if isinstance(v, tuple) and all(isinstance(x, tuple) and len(x) == 2 for x in v):
        return ", ".join(f"{k}={x}" for k, x in v) or "(none)"
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return str(v)


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


def sweep_figures(sweeps: Sequence[Mapping[str, Any]]) -> tuple[SweepFigures, ...]:
    """Throughput and idle fraction of each sweep that generated images."""
    return tuple(SweepFigures(s["id"], _when(s["started_at"].isoformat() if s.get("started_at") else None),
                              int(s.get("done") or 0), s.get("seconds"), s.get("images_per_second"),
                              s.get("idle_fraction"), s.get("warmup_seconds"))
                 for s in sweeps if s.get("done"))


def _when(iso: str | None) -> str:
    """An ISO 8601 time as the report writes times (UTC, to the minute); unparsable text as it is."""
    try:
        return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError):
        return str(iso or "unknown time")
