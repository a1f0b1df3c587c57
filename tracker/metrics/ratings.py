"""Ratings: a person's judgement of images, stored in the run store's ``ratings`` table (migration 0012).

Three kinds, each one row per judgement (a rater may judge an image again; every judgement is kept):

- ``score``: 1-5 for one run's image;
- ``thumb``: 1 (up) or 0 (down) for one run's image;
- ``pair``: two images of the same seed that differ in exactly one axis, ``value`` 1 when the run's image is
  better, 0 when the other's is, 0.5 for a tie.

Scores and thumbs also become per-run metric values (``rating``: the mean score; ``thumbs``: the share of
thumbs up), written through ``tracker.metrics.storage``, so ``tracker effects --metric rating``, the report's
metric badges and ``tracker sync`` (MLflow) read them as any other metric. Pairwise judgements feed the
Bradley-Terry strengths of ``tracker.metrics.bradley_terry``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import sqlalchemy as sa

from tracker.errors import NotFoundError, UsageError
from tracker.store.db import utcnow
from tracker.store.runstore import Store
from tracker.store.tables import experiments_t, ratings_t, runs_t

KINDS = ("score", "thumb", "pair")
METRIC_VERSION = "ratings-1"
MAX_COMMENT = 2000
MAX_RATER = 100


@dataclass(frozen=True)
class Rating:
    """One judgement, as exported (``tracker ratings``) and shown."""

    id: int
    experiment: str
    key: str
    kind: str
    value: float
    rater: str
    comment: str | None
    created_at: Any
    other_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "experiment": self.experiment, "key": self.key, "kind": self.kind,
                "value": self.value, "other_key": self.other_key, "rater": self.rater, "comment": self.comment,
                "created_at": self.created_at.isoformat() if self.created_at is not None else None}


def check(kind: str, value: Any, rater: Any, comment: Any) -> tuple[float, str, str | None]:
    """The judgement's value, rater and comment, validated; UsageError naming the bad field otherwise."""
    if kind not in KINDS:
        raise UsageError(f"rating kind {kind!r}: use one of {', '.join(KINDS)}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"rating value {value!r}: a number")
    allowed = {"score": (1, 2, 3, 4, 5), "thumb": (0, 1), "pair": (0, 0.5, 1)}[kind]
    if value not in allowed:
        raise UsageError(f"{kind} value {value!r}: one of {', '.join(str(a) for a in allowed)}")
    if not isinstance(rater, str) or not rater.strip() or len(rater) > MAX_RATER:
        raise UsageError(f"rater {str(rater)[:40]!r}: a name of 1-{MAX_RATER} characters")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        raise UsageError(f"comment: text of at most {MAX_COMMENT} characters")
    return float(value), rater.strip(), (comment or None)


def _run(conn, experiment: str, key: str):
    row = conn.execute(
        sa.select(runs_t.c.id, runs_t.c.key, runs_t.c.seed, runs_t.c.axes, runs_t.c.status)
        .join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id)
        .where(experiments_t.c.name == experiment, runs_t.c.key == key)).first()
    if row is None:
        raise NotFoundError(f"experiment {experiment!r} has no run {key!r}")
    if row.status != "done":
        raise UsageError(f"run {key[:12]} of {experiment!r} is {row.status}: only a done run's image can be rated")
    return row


def pair_axis(a_axes: dict, b_axes: dict) -> str | None:
    """The one axis two runs differ in (None when they differ in none or in several)."""
    names = set(a_axes) | set(b_axes)
    diff = [n for n in sorted(names) if a_axes.get(n) != b_axes.get(n)]
    return diff[0] if len(diff) == 1 else None


def add(store: Store, experiment: str, key: str, kind: str, value: Any, rater: Any, comment: Any = None,
        other_key: str | None = None) -> int:
    """Store one judgement (and, for scores and thumbs, the run's ``rating``/``thumbs`` metric); its id."""
    value, rater, comment = check(kind, value, rater, comment)
    with store._write() as conn:
        run = _run(conn, experiment, key)
        other_id = None
        if kind == "pair":
            if not other_key:
                raise UsageError("a pair rating needs the other image's run key")
            other = _run(conn, experiment, other_key)
            if other.seed != run.seed:
                raise UsageError(f"runs {key[:12]} and {other_key[:12]} have different seeds "
                                 f"({run.seed}, {other.seed}): a pair compares one seed")
            if pair_axis(run.axes or {}, other.axes or {}) is None:
                raise UsageError(f"runs {key[:12]} and {other_key[:12]} must differ in exactly one axis")
            other_id = other.id
        elif other_key:
            raise UsageError(f"a {kind} rating is of one image; other_key is for pairs")
        rid = conn.execute(ratings_t.insert().values(run_id=run.id, other_run_id=other_id, kind=kind, value=value,
                                                     rater=rater, comment=comment, created_at=utcnow())
                           ).inserted_primary_key[0]
    if kind != "pair":
        _update_metric(store, experiment, key, kind)
    return int(rid)


def _update_metric(store: Store, experiment: str, key: str, kind: str) -> None:
    """The run's metric from all its judgements of ``kind``: the mean score, or the share of thumbs up."""
    from tracker.metrics import Scores
    from tracker.metrics import storage

    with store._read() as conn:
        vals = [v for (v,) in conn.execute(
            sa.select(ratings_t.c.value).join(runs_t, runs_t.c.id == ratings_t.c.run_id)
            .join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id)
            .where(experiments_t.c.name == experiment, runs_t.c.key == key, ratings_t.c.kind == kind)).all()]
    name = "rating" if kind == "score" else "thumbs"
    storage.save(store, experiment, [key], Scores(name, METRIC_VERSION, True, {name: [sum(vals) / len(vals)]}))


def list_ratings(store: Store, experiment: str) -> list[Rating]:
    """Every judgement of the experiment's images, oldest first."""
    if store.experiment(experiment) is None:
        raise NotFoundError(f"no experiment {experiment!r} in the run store")
    other = runs_t.alias("other")
    q = (sa.select(ratings_t, runs_t.c.key, other.c.key.label("other_key"))
         .join(runs_t, runs_t.c.id == ratings_t.c.run_id)
         .join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id)
         .outerjoin(other, other.c.id == ratings_t.c.other_run_id)
         .where(experiments_t.c.name == experiment).order_by(ratings_t.c.id))
    with store._read() as conn:
        rows = conn.execute(q).all()
    return [Rating(r.id, experiment, r.key, r.kind, r.value, r.rater, r.comment, r.created_at, r.other_key)
            for r in rows]


def judgements(store: Store, experiment: str, axis: str | None = None) -> list[tuple[str, str, str, float, int]]:
    """Pairwise judgements as (axis, label of the run, label of the other, outcome, seed); only ``axis``'s
    when given. The outcome is 1 when the run's label won."""
    runs = {r.key: r for r in store.runs(experiment)}
    out = []
    for r in list_ratings(store, experiment):
        if r.kind != "pair" or r.key not in runs or r.other_key not in runs:
            continue
        a, b = runs[r.key], runs[r.other_key]
        name = pair_axis(a.axes, b.axes)
        if name is None or (axis is not None and name != axis):
            continue
        out.append((name, a.axes[name], b.axes[name], r.value, a.seed))
    return out


def summary(values: Sequence[float]) -> dict[str, Any]:
    return {"n": len(values), "mean": (sum(values) / len(values)) if values else None}


def sweep_summaries(store: Store, experiment: str) -> dict[str, dict[str, float]]:
    """Per sweep that reached MLflow (its parent run id): the judgements of its runs' images, as metrics for the
    parent run: ``ratings.score_mean``/``ratings.scores`` (1-5 scores), ``ratings.thumbs_up_share``/
    ``ratings.thumbs`` and ``ratings.pairs``. Sweeps whose runs have no judgement are left out."""
    from tracker.store.tables import sweeps_t

    q = (sa.select(sweeps_t.c.mlflow_run_id, ratings_t.c.kind, ratings_t.c.value)
         .select_from(ratings_t.join(runs_t, runs_t.c.id == ratings_t.c.run_id)
                      .join(sweeps_t, sweeps_t.c.id == runs_t.c.sweep_id)
                      .join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id))
         .where(experiments_t.c.name == experiment, sweeps_t.c.mlflow_run_id.is_not(None)))
    with store._read() as conn:
        rows = conn.execute(q).all()
    by: dict[str, dict[str, list[float]]] = {}
    for run_id, kind, value in rows:
        by.setdefault(run_id, {}).setdefault(kind, []).append(value)
    out: dict[str, dict[str, float]] = {}
    for run_id, kinds in by.items():
        m: dict[str, float] = {"ratings.pairs": float(len(kinds.get("pair", [])))}
        if kinds.get("score"):
            m["ratings.scores"] = float(len(kinds["score"]))
            m["ratings.score_mean"] = sum(kinds["score"]) / len(kinds["score"])
        if kinds.get("thumb"):
            m["ratings.thumbs"] = float(len(kinds["thumb"]))
            m["ratings.thumbs_up_share"] = sum(kinds["thumb"]) / len(kinds["thumb"])
        out[run_id] = m
    return out
