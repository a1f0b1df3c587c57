"""What the studio's pages show, read from the run store: plain data for the templates. No web framework here."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from tracker.errors import NotFoundError, UsageError

SEED = "seed"
NONE = ""


@dataclass
class GridCell:
    runs: list[Any]
    more: int = 0


@dataclass
class GridView:
    experiment: str
    axes: dict[str, list[str]]  # axis -> labels (seed included)
    rows: str
    cols: str
    filters: dict[str, str]
    row_labels: list[str]
    col_labels: list[str]
    cells: dict[tuple[str, str], GridCell]
    metric: str | None
    metrics: list[str]
    values: dict[str, dict[str, float | None]]
    counts: dict[str, int]
    pair_axes: list[str] = field(default_factory=list)

    def cell(self, r: str, c: str) -> GridCell:
        return self.cells.get((r, c), GridCell([]))


def experiments(store) -> list[dict[str, Any]]:
    out = []
    for e in store.experiments():
        counts = Counter(r.status for r in store.runs(e["name"]))
        out.append({"name": e["name"], "done": counts.get("done", 0), "runs": sum(counts.values()),
                    "failed": counts.get("failed", 0)})
    return out


def _labels(rec, axis: str) -> str:
    return str(rec.seed) if axis == SEED else str(rec.axes.get(axis, NONE))


def _axes(store, experiment: str, runs) -> dict[str, list[str]]:
    axes = {k: list(v) for k, v in store.axes(experiment).items()}
    axes[SEED] = [str(s) for s in sorted({r.seed for r in runs})]
    return axes


def grid(store, experiment: str, query: Mapping[str, str]) -> GridView:
    """The grid of ``experiment`` with rows, columns, filters and the metric shown chosen by the query."""
    from tracker.metrics import storage

    if store.experiment(experiment) is None:
        raise NotFoundError(f"no experiment {experiment!r}")
    runs = store.runs(experiment)
    axes = _axes(store, experiment, runs)
    names = list(axes)
    varying = [a for a in names if len(axes[a]) > 1] or names
    rows = query.get("rows") if query.get("rows") in axes else varying[0]
    cols = query.get("cols") if query.get("cols") in axes else (SEED if rows != SEED else varying[-1])
    filters = {a: query[f"f.{a}"] for a in names if query.get(f"f.{a}") in axes[a] and a not in (rows, cols)}
    values = storage.values(store, experiment)
    metrics = sorted({m for v in values.values() for m in v})
    metric = query.get("metric") if query.get("metric") in metrics else None
    cells: dict[tuple[str, str], GridCell] = {}
    for rec in runs:
        if any(_labels(rec, a) != v for a, v in filters.items()):
            continue
        cell = cells.setdefault((_labels(rec, rows), _labels(rec, cols)), GridCell([]))
        if len(cell.runs) < 64:
            cell.runs.append(rec)
        else:
            cell.more += 1
    counts = Counter(r.status for r in runs)
    pair_axes = [a for a in names if a != SEED and len(axes[a]) > 1]
    return GridView(experiment, axes, rows, cols, filters, axes[rows], axes[cols], cells, metric, metrics, values,
                    dict(counts), pair_axes)


def _split(ref: str) -> tuple[str, str]:
    exp, _, key = (ref or "").partition("/")
    if not exp or not key:
        raise UsageError(f"{ref!r}: name an image as EXPERIMENT/KEY")
    return exp, key


@dataclass
class CompareView:
    a: Any
    b: Any
    mode: str
    pair_axis: str | None  # set when a and b can be judged as a pair (same experiment and seed, one axis apart)
    diffs: dict[str, tuple[Any, Any]]


MODES = ("side", "slider", "fade", "diff")


def compare(store, a: str, b: str, mode: str) -> CompareView:
    from tracker.metrics.ratings import pair_axis

    if mode not in MODES:
        raise UsageError(f"mode {mode!r}: one of {', '.join(MODES)}")
    ea, ka = _split(a)
    eb, kb = _split(b)
    ra, rb = store.get_run(ka, ea), store.get_run(kb, eb)
    axis = pair_axis(ra.axes, rb.axes) if ea == eb and ra.seed == rb.seed else None
    da, db = ra.run.settings.to_dict(), rb.run.settings.to_dict()
    diffs = {k: (da.get(k), db.get(k)) for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)}
    for k in ("prompt", "negative_prompt", "seed"):
        if getattr(ra, k) != getattr(rb, k):
            diffs[k] = (getattr(ra, k), getattr(rb, k))
    return CompareView(ra, rb, mode, axis, diffs)


@dataclass
class PairView:
    experiment: str
    axis: str | None
    a: Any | None
    b: Any | None
    summary: Any  # tracker.metrics.bradley_terry.Strengths
    axes: list[str]
    judged: int


def next_pair(store, experiment: str, axis: str | None) -> PairView:
    """The next pair to judge on ``axis``: two images of one seed that differ only in that axis, for the
    labels whose order is least certain (Bradley-Terry's ``next_pairs``), the least judged context first."""
    from tracker.metrics import bradley_terry as bt
    from tracker.metrics import ratings

    if store.experiment(experiment) is None:
        raise NotFoundError(f"no experiment {experiment!r}")
    done = store.runs(experiment, status="done")
    axes = {k: v for k, v in store.axes(experiment).items() if len(v) > 1}
    if not axes:
        raise UsageError(f"experiment {experiment!r} has no axis with two labels to compare")
    axis = axis if axis in axes else next(iter(axes))
    js = [bt.Judgement(a, b, o, s) for _, a, b, o, s in ratings.judgements(store, experiment, axis)]
    summary = bt.strengths(js, axes[axis], resamples=200)
    contexts: dict[tuple, dict[str, Any]] = {}
    for r in done:
        ctx = (r.seed, tuple(sorted((k, v) for k, v in r.axes.items() if k != axis)))
        contexts.setdefault(ctx, {})[r.axes.get(axis)] = r
    judged_ctx = Counter()
    keyed = {r.key: r for r in done}
    for rt in ratings.list_ratings(store, experiment):
        if rt.kind == "pair" and rt.key in keyed:
            r = keyed[rt.key]
            judged_ctx[(r.seed, tuple(sorted((k, v) for k, v in r.axes.items() if k != axis)))] += 1
    for la, lb in summary.next_pairs or [(axes[axis][0], axes[axis][1])]:
        options = [(judged_ctx[c], c) for c, labels in contexts.items() if la in labels and lb in labels]
        if options:
            _, ctx = min(options, key=lambda o: (o[0], str(o[1])))
            return PairView(experiment, axis, contexts[ctx][la], contexts[ctx][lb], summary, list(axes), len(js))
    return PairView(experiment, axis, None, None, summary, list(axes), len(js))


@dataclass
class RunPage:
    rec: Any
    recipe: str
    ratings: list[Any]
    metrics: dict[str, Any]


def run_detail(store, ws, experiment: str, key: str) -> RunPage:
    import json

    from tracker.images import pngmeta
    from tracker.metrics import storage
    from tracker.metrics import ratings

    rec = store.get_run(key, experiment)
    path = image_path(store, ws, experiment, rec.key)
    recipe = None
    if path is not None:
        _, recipe = pngmeta.read_png(path)
    text = json.dumps(recipe if recipe is not None else rec.run.settings.to_dict(), indent=2, default=str)
    mine = [r for r in ratings.list_ratings(store, experiment) if rec.key in (r.key, r.other_key)]
    return RunPage(rec, text, mine, storage.values(store, experiment).get(rec.key, {}))


def image_path(store, ws, experiment: str, key: str) -> Path | None:
    """The run's image file, only from inside the workspace and only when the store says it is done."""
    try:
        rec = store.get_run(key, experiment)
    except NotFoundError:
        return None
    if rec.status != "done" or rec.key != key or not rec.image:
        return None
    path = ws.image_file(rec.image)
    if path is None:
        return None
    try:
        real = path.resolve(strict=True)
        real.relative_to(ws.home.resolve())
    except (OSError, ValueError):
        return None
    return real if real.is_file() else None


def difference_png(store, ws, a: str, b: str) -> bytes:
    """|a - b| per channel, scaled x4 so small differences show; a PNG."""
    from PIL import Image, ImageChops

    (ea, ka), (eb, kb) = _split(a), _split(b)
    pa, pb = image_path(store, ws, ea, ka), image_path(store, ws, eb, kb)
    if pa is None or pb is None:
        raise NotFoundError("both images must be done and in this workspace")
    with Image.open(pa) as ia, Image.open(pb) as ib:
        ia, ib = ia.convert("RGB"), ib.convert("RGB")
        if ib.size != ia.size:
            ib = ib.resize(ia.size)
        d = ImageChops.difference(ia, ib).point(lambda v: min(255, v * 4))
    buf = io.BytesIO()
    d.save(buf, format="PNG")
    return buf.getvalue()


def done_runs(store, experiment: str) -> list[tuple[str, dict[str, str]]]:
    """Each done run's key and labels (the seed's included), for the live view."""
    try:
        return [(r.key, {**{k: str(v) for k, v in r.axes.items()}, SEED: str(r.seed)})
                for r in store.runs(experiment, status="done")]
    except NotFoundError:
        return []


@dataclass
class SuiteView:
    experiment: str
    metric: str | None
    metrics: list[str]  # the stored metrics to choose from
    result: Any  # tracker.metrics.suite.SuiteResult, or None with ``note`` saying why
    note: str = ""


def suite(store, experiment: str, metric: str | None) -> SuiteView:
    """The suite result on one screen (as the report's): per category of the prompt set, each variant's mean of
    ``metric`` (default: the first stored one that is not a rating) with its paired interval, and the prompts
    where the variants differ most. Runs of the current plan with a value and their image in place, as
    ``tracker effects --by category`` counts them."""
    from tracker.experiment.promptset import LABEL_AXIS
    from tracker.images.check import image_state
    from tracker.metrics import effects as fx
    from tracker.metrics import storage
    from tracker.metrics import suite as suites

    if store.experiment(experiment) is None:
        raise NotFoundError(f"no experiment {experiment!r}")
    stored = storage.names(store, experiment)
    names = list(stored)
    if metric not in stored:
        metric = next((m for m in names if m not in ("rating", "thumbs")), names[0] if names else None)
    view = SuiteView(experiment, metric, names, None)
    axes = store.axes(experiment, current=True)
    if LABEL_AXIS not in axes:
        view.note = (f"experiment {experiment!r} has no {LABEL_AXIS} axis: a suite result needs a prompt set with "
                     f"categories (prompts: {{file: ..., label: Category}})")
        return view
    if metric is None:
        view.note = f"experiment {experiment!r} has no scored runs yet (metrics: in its file, or tracker score)"
        return view
    vals = storage.values(store, experiment)
    runs = [r for r in store.runs(experiment, status="done", current=True)
            if vals.get(r.key, {}).get(metric) is not None and not (r.image and image_state(r) is not None)]
    obs = [fx.Observation(dict(r.axes), vals[r.key][metric]) for r in runs]
    texts = {dict(r.axes).get("prompt"): r.prompt for r in runs}
    view.result = suites.suite_result(obs, texts, metric, higher_is_better=stored[metric]["higher_is_better"],
                                      by=LABEL_AXIS, axis_labels=axes)
    if view.result is None:
        view.note = f"no axis with two labels to compare within each {LABEL_AXIS} (or no scored runs of {metric})"
    return view
