"""Metric values in the run store's ``metrics`` table: one row per (run, stored metric name).

A row holds the value (NULL where the metric does not apply), the metric's version (a model-based
metric names its model and revision there) and whether MLflow has it. Scoring a run again replaces
its row and marks it for MLflow again (``tracker sync``). Works on any database the store does.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterable, Sequence

import sqlalchemy as sa

from tracker.metrics import Scores
from tracker.store.db import utcnow
from tracker.store.runstore import Store
from tracker.store.tables import experiments_t, metrics_t, runs_t


def _run_ids(conn, experiment: str, keys: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(keys), 500):
        out.update(conn.execute(
            sa.select(runs_t.c.key, runs_t.c.id).join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id)
            .where(experiments_t.c.name == experiment, runs_t.c.key.in_(list(keys[i:i + 500])))).all())
    return out


def save(store: Store, experiment: str, keys: Sequence[str], scores: Scores) -> int:
    """Store ``scores`` (one value per key, per stored name), replacing earlier values; returns rows written."""
    if not keys:
        return 0
    now = utcnow()
    with store._write() as conn:
        ids = _run_ids(conn, experiment, keys)
        missing = [k for k in keys if k not in ids]
        if missing:
            from tracker.errors import NotFoundError

            raise NotFoundError(f"experiment {experiment!r} has no run {', '.join(missing[:5])}")
        rows = []
        for name, values in scores.values.items():
            for key, value in zip(keys, values, strict=True):
                rows.append({"run_id": ids[key], "name": name, "version": scores.version[:300],
                             "value": None if value is None or math.isnan(value) else float(value),
                             "higher_is_better": scores.higher_is_better, "scored_at": now, "mlflow_synced_at": None})
        run_ids = sorted(set(ids.values()))
        for i in range(0, len(run_ids), 500):
            conn.execute(metrics_t.delete().where(metrics_t.c.run_id.in_(run_ids[i:i + 500]),
                                                  metrics_t.c.name.in_(list(scores.values))))
        conn.execute(metrics_t.insert(), rows)
    return len(rows)


def drop(store: Store, experiment: str, keys: Sequence[str], metric_names: Sequence[str]) -> int:
    """Delete the stored values of ``metric_names`` for the runs ``keys`` (their image is gone or changed);
    returns rows deleted."""
    if not keys or not metric_names:
        return 0
    n = 0
    with store._write() as conn:
        ids = sorted(_run_ids(conn, experiment, list(keys)).values())
        for i in range(0, len(ids), 500):
            n += conn.execute(metrics_t.delete().where(metrics_t.c.run_id.in_(ids[i:i + 500]),
                                                       metrics_t.c.name.in_(list(metric_names)))).rowcount
    return n


def _select(experiment: str | None):
    q = (sa.select(runs_t.c.key, metrics_t.c.name, metrics_t.c.value, metrics_t.c.version,
                   metrics_t.c.higher_is_better, runs_t.c.mlflow_run_id, metrics_t.c.mlflow_synced_at,
                   metrics_t.c.id)
         .join(runs_t, runs_t.c.id == metrics_t.c.run_id)
         .join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id))
    return q if experiment is None else q.where(experiments_t.c.name == experiment)


def values(store: Store, experiment: str | None = None) -> dict[str, dict[str, float | None]]:
    """Run key -> metric name -> value (None where the metric did not apply)."""
    with store._read() as conn:
        rows = conn.execute(_select(experiment).order_by(metrics_t.c.name)).all()
    out: dict[str, dict[str, float | None]] = {}
    for r in rows:
        out.setdefault(r.key, {})[r.name] = r.value
    return out


def names(store: Store, experiment: str | None = None) -> dict[str, dict[str, Any]]:
    """Stored metric name -> {higher_is_better, versions (sorted), runs (rows)}."""
    q = (sa.select(metrics_t.c.name, metrics_t.c.version, metrics_t.c.higher_is_better, sa.func.count())
         .select_from(metrics_t.join(runs_t, runs_t.c.id == metrics_t.c.run_id)
                      .join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id))
         .group_by(metrics_t.c.name, metrics_t.c.version, metrics_t.c.higher_is_better)
         .order_by(metrics_t.c.name))
    if experiment is not None:
        q = q.where(experiments_t.c.name == experiment)
    with store._read() as conn:
        rows = conn.execute(q).all()
    out: dict[str, dict[str, Any]] = {}
    for name, version, hib, n in rows:
        d = out.setdefault(name, {"higher_is_better": bool(hib), "versions": [], "runs": 0})
        d["versions"].append(version)
        d["runs"] += n
    return out


def unsynced(store: Store, experiment: str | None = None) -> dict[str, dict[str, Any]]:
    """Metric rows MLflow has not got, of runs that have an MLflow run: key -> {run_id, metrics, ids}."""
    q = _select(experiment).where(metrics_t.c.mlflow_synced_at.is_(None), runs_t.c.mlflow_run_id.is_not(None))
    with store._read() as conn:
        rows = conn.execute(q).all()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = out.setdefault(r.key, {"mlflow_run_id": r.mlflow_run_id, "metrics": {}, "ids": []})
        if r.value is not None:
            d["metrics"][r.name] = r.value
        d["ids"].append(r.id)
    return out


def mark_synced(store: Store, ids: Iterable[int]) -> None:
    ids = sorted(set(ids))
    now = utcnow()
    with store._write() as conn:
        for i in range(0, len(ids), 500):
            conn.execute(metrics_t.update().where(metrics_t.c.id.in_(ids[i:i + 500])).values(mlflow_synced_at=now))


def effects(store: Store, experiment: str, metric: str, axes: Sequence[str] | None = None,
            baseline: str | None = None, seed: int = 0, all_versions: bool = False, by: str | None = None):
    """``tracker.metrics.effects.analyze`` over the experiment's done runs and their stored ``metric`` values:
    the runs of its current plan (the file as last run, as the report's grids show it) unless ``all_versions``;
    how many runs of earlier versions that leaves out is said (``Effects.other_versions``). With ``by`` (an axis,
    e.g. a prompt set's ``category``) a list ``(group, Effects)`` (``tracker.metrics.suite``)."""
    from tracker.metrics import effects as fx
    from tracker.errors import NotFoundError, UsageError

    if store.experiment(experiment) is None:
        known = [e["name"] for e in store.experiments()]
        raise NotFoundError(f"no experiment {experiment!r} in the run store"
                            + (f"; known: {', '.join(known)}" if known else ""))
    stored = names(store, experiment)
    if metric not in stored:
        have = ", ".join(stored) or "none yet (add metrics: to the file and run it, or tracker score)"
        raise UsageError(f"--metric {metric!r}: experiment {experiment!r} has no values for it; scored: {have}")
    from tracker.images.check import image_state

    vals = values(store, experiment)
    runs = store.runs(experiment, current=not all_versions)
    other_versions = 0 if all_versions else len(store.runs(experiment)) - len(runs)
    scored = [r for r in runs if r.status == "done" and vals.get(r.key, {}).get(metric) is not None]
    # a value whose image is missing or was changed on disk describes a picture nobody can look at: left out, counted
    gone = {r.key for r in scored if r.image and image_state(r) is not None}
    obs = [fx.Observation(r.axes, vals[r.key][metric]) for r in scored if r.key not in gone]
    if by is not None:
        from tracker.metrics import suite

        return suite.by_group(obs, by, metric, higher_is_better=stored[metric]["higher_is_better"], axes=axes,
                              baseline=baseline, axis_labels=store.axes(experiment, current=not all_versions),
                              seed=seed)
    result = fx.analyze(obs, metric, higher_is_better=stored[metric]["higher_is_better"], axes=axes,
                        baseline=baseline, axis_labels=store.axes(experiment, current=not all_versions), seed=seed,
                        unscored=_unscored(runs, {k: v for k, v in vals.items() if k not in gone}, metric))
    return replace(result, images_gone=len(gone), other_versions=other_versions)


def _unscored(runs, vals: dict, metric: str) -> dict[str, dict[str, str]]:
    """Axis -> label -> why none of its runs has a value ("all 2 runs failed", "no scored runs (1 failed, 1
    pending)"), for the labels effects would otherwise leave out without a word."""
    from collections import Counter

    counts: dict[tuple[str, str], Counter] = {}
    for r in runs:
        has = r.status == "done" and vals.get(r.key, {}).get(metric) is not None
        state = "scored" if has else ("done, not scored" if r.status == "done" else r.status)
        for axis, label in r.axes.items():
            counts.setdefault((axis, label), Counter())[state] += 1
    out: dict[str, dict[str, str]] = {}
    for (axis, label), c in counts.items():
        if c["scored"]:
            continue
        n = sum(c.values())
        why = f"all {n} runs failed" if c["failed"] == n else \
            "no scored runs (" + ", ".join(f"{k} {state}" for state, k in sorted(c.items())) + ")"
        out.setdefault(axis, {})[label] = why
    return out


def for_run(store: Store, experiment: str, key: str) -> tuple[dict[str, float], list[int]]:
    """One run's stored values (those that apply) and the ids of all its metric rows (to mark synced)."""
    with store._read() as conn:
        rows = conn.execute(_select(experiment).where(runs_t.c.key == key)).all()
    return {r.name: r.value for r in rows if r.value is not None}, [r.id for r in rows]
