"""The run store: experiments, sweeps, runs and events in a SQL database (SQLite by default).

One row per run (one image), found by (experiment, key). The schema belongs to the Alembic
migrations in ``migrations/``; ``tracker.store.tables`` mirrors their head (a test compares them) and
``Store.open`` upgrades an older database first. Every write is its own short transaction, so
several processes can fill one database (see ``tracker.store.db`` for the SQLite settings that make
that safe). Times are stored as naive UTC and handed out as aware UTC datetimes.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa

from tracker.store import db
from tracker.store.db import naive as _naive, retry_on_conflict as _retry_on_conflict, utcnow
from tracker.errors import NotFoundError, StoreError
from tracker.experiment.plan import STATUSES, PlannedRun
from tracker.store.records import RunRecord, aware_utc as _aware, stored_values
from tracker.store.tables import (PLAN_COLUMNS, RESULT_COLUMNS, SWEEP_COLUMNS, events_t, experiments_t, metadata,
                                  runs_t, sweeps_t)
from tracker.workspace import image_file, stored_image


def _stamp(t: datetime | None) -> float:
    return _aware(t).timestamp() if t is not None else 0.0


class Store:
    """The run store. Open with ``Store.open(url)``; close when done (or use ``with``)."""

    def __init__(self, engine: sa.Engine, home: Path | None = None):
        self.engine = engine
        self.url = db.display_url(engine)
        sqlite_file = db.sqlite_path(self.engine.url.render_as_string(hide_password=False))
        self._file = db.file_identity(sqlite_file)
        # the workspace folder image paths are recorded relative to (a SQLite store's own folder by default)
        self.home = Path(home).resolve() if home is not None else db.default_home(sqlite_file)

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, busy_timeout: float = db.BUSY_TIMEOUT_MS / 1000, create: bool = True,
             home: "str | Path | None" = None) -> "Store":
        """Open (and create or upgrade to the newest schema) the database at ``url``.

        ``home``: the workspace folder; runs record their image paths relative to it and records hand them
        out resolved against it (``tracker.workspace.image_file``). Default: a SQLite file's folder (the
        workspace layout); other stores without it keep absolute paths.

        ``busy_timeout``: seconds a write waits for another process's write transaction.
        ``create=False`` (read commands): a store that does not exist yet is a StoreError, and nothing is
        created (no folder, no file, no tables), so a mistyped ``--db`` cannot leave an empty store behind.
        """
        if not create:
            path = db.sqlite_path(url) if url.startswith("sqlite") else None
            if path is not None and not path.is_file():
                raise StoreError(f"no run store at {path} (from --db/TRACKER_DB_URL or --home); check the path, "
                                 "or run an experiment first (tracker run FILE)")
        engine = db.make_engine(url, int(busy_timeout * 1000))
        try:
            revision = db.current(engine)
            if revision is None and not create:
                raise StoreError(f"no run store in {db.display_url(engine)}: it holds no prompt-tracker tables; "
                                 "check --db, or run an experiment first (tracker run FILE)")
            store = cls(engine, home)
            if revision != db.newest_revision():
                db.upgrade(engine, home=store.home)
        except BaseException:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def check_file(self) -> None:
        """Refuse to go on when the SQLite file was deleted or replaced under the open connection: every
        write would go to a file nobody can open again (a sweep would end "done" with an empty store)."""
        if self._file is None:
            return
        path, ident = self._file
        now = db.file_identity(path)
        if now is None or now[1] != ident:
            what = "deleted" if now is None else "replaced"
            raise StoreError(f"the run store {path} was {what} while this command ran; what it recorded since is "
                             "lost (images already written stay on disk): run the same command again")

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._errors(), self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._errors(), db.write(self.engine) as conn:
            yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A database that fails under us (locked past the busy timeout, disk full, read-only) is a
        StoreError: one line for the user, not a traceback."""
        try:
            yield
        except sa.exc.OperationalError as e:
            raise StoreError(f"the run store {self.url} failed: {db.reason(e)}") from e

    # -- experiments -------------------------------------------------------------------------

    @_retry_on_conflict
    def save_experiment(self, name: str, source_path: str | None, source_text: str | None,
                        plan_version: str | None = None) -> None:
        """Insert the experiment or update its source (the file as last run) and, when given, its current plan
        version (``Plan.version``; the runs of that version are what views show by default)."""
        now = utcnow()
        values = {"source_path": source_path, "source_text": source_text, "updated_at": now}
        if plan_version is not None:
            values["plan_version"] = plan_version
        with self._write() as conn:
            eid = self._experiment_id(conn, name)
            if eid is None:
                conn.execute(experiments_t.insert().values(name=name, created_at=now, **values))
            else:
                conn.execute(experiments_t.update().where(experiments_t.c.id == eid).values(**values))

    def experiment(self, name: str) -> dict | None:
        with self._read() as conn:
            row = conn.execute(sa.select(experiments_t).where(experiments_t.c.name == name)).mappings().first()
        if row is None:
            return None
        return {"name": row["name"], "source_path": row["source_path"], "source_text": row["source_text"],
                "created_at": _aware(row["created_at"]), "updated_at": _aware(row["updated_at"]),
                "plan_version": row["plan_version"]}

    def experiments(self) -> list[dict]:
        """Every experiment: name, source_path, times, ``runs`` (count by status), ``total``, ``last_sweep``."""
        with self._read() as conn:
            exps = conn.execute(sa.select(experiments_t).order_by(experiments_t.c.name)).mappings().all()
            counts = conn.execute(
                sa.select(runs_t.c.experiment_id, runs_t.c.status, sa.func.count())
                .group_by(runs_t.c.experiment_id, runs_t.c.status)).all()
            last_ids = dict(conn.execute(
                sa.select(sweeps_t.c.experiment_id, sa.func.max(sweeps_t.c.id)).group_by(sweeps_t.c.experiment_id)).all())
            last = {r["id"]: r for r in conn.execute(
                sa.select(sweeps_t).where(sweeps_t.c.id.in_(list(last_ids.values())))).mappings()}
        out = []
        for e in exps:
            by_status = {s: 0 for s in STATUSES}
            for eid, status, n in counts:
                if eid == e["id"]:
                    by_status[status] = by_status.get(status, 0) + n
            sweep = last.get(last_ids.get(e["id"]))
            out.append({
                "name": e["name"], "source_path": e["source_path"],
                "created_at": _aware(e["created_at"]), "updated_at": _aware(e["updated_at"]),
                "runs": by_status, "total": sum(by_status.values()),
                "last_sweep": self._sweep_dict(sweep, e["name"]) if sweep is not None else None,
            })
        return out

    @staticmethod
    def _experiment_id(conn, name: str) -> int | None:
        return conn.execute(sa.select(experiments_t.c.id).where(experiments_t.c.name == name)).scalar()

    def _require_experiment(self, conn, name: str) -> int:
        eid = self._experiment_id(conn, name)
        if eid is None:
            raise NotFoundError(f"no experiment {name!r} in the run store {self.url}{self._known(conn)}")
        return eid

    @staticmethod
    def _known(conn) -> str:
        names = conn.execute(sa.select(experiments_t.c.name).order_by(experiments_t.c.name).limit(20)).scalars().all()
        return f"; known: {', '.join(names)}" if names else "; it holds no experiments yet (tracker run FILE)"

    # -- sweeps and events -------------------------------------------------------------------

    @_retry_on_conflict
    def start_sweep(self, experiment: str, info: Mapping[str, Any]) -> int:
        """Record the start of a ``tracker run``; creates the experiment row when missing.

        ``info`` may hold any sweep column: command, host, versions, device, environment, planned ...
        """
        values = self._sweep_values(info)
        with self._write() as conn:
            eid = self._experiment_id(conn, experiment)
            if eid is None:
                now = utcnow()
                eid = conn.execute(experiments_t.insert().values(
                    name=experiment, created_at=now, updated_at=now)).inserted_primary_key[0]
            values.setdefault("started_at", utcnow())
            values.setdefault("status", "running")
            return conn.execute(sweeps_t.insert().values(experiment_id=eid, **values)).inserted_primary_key[0]

    def finish_sweep(self, sweep_id: int, summary: Mapping[str, Any]) -> None:
        """Record the end of a sweep: done, skipped, failed, seconds, images_per_second, status.

        ``status`` defaults to "done", or "failed" when ``summary["failed"]`` is non-zero.
        """
        values = self._sweep_values(summary)
        values.setdefault("ended_at", utcnow())
        values.setdefault("status", "failed" if values.get("failed") else "done")
        self.update_sweep(sweep_id, **values)

    def update_sweep(self, sweep_id: int, **fields: Any) -> None:
        values = self._sweep_values(fields)
        with self._write() as conn:
            n = conn.execute(sweeps_t.update().where(sweeps_t.c.id == sweep_id).values(**values)).rowcount
        if n != 1:
            raise NotFoundError(f"no sweep {sweep_id} in the run store {self.url}")

    @staticmethod
    def _sweep_values(info: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(info) - set(SWEEP_COLUMNS))
        if unknown:
            raise ValueError(f"unknown sweep fields {unknown}; known: {', '.join(SWEEP_COLUMNS)}")
        return {k: _naive(v) if isinstance(v, datetime) else v for k, v in info.items()}

    def sweep(self, sweep_id: int) -> dict:
        with self._read() as conn:
            row = conn.execute(
                sa.select(sweeps_t, experiments_t.c.name.label("experiment"))
                .join(experiments_t, experiments_t.c.id == sweeps_t.c.experiment_id)
                .where(sweeps_t.c.id == sweep_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"no sweep {sweep_id} in the run store {self.url}")
        return self._sweep_dict(row, row["experiment"])

    def sweeps(self, experiment: str) -> list[dict]:
        """The experiment's sweeps, oldest first ([] for an unknown experiment)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(sweeps_t).join(experiments_t, experiments_t.c.id == sweeps_t.c.experiment_id)
                .where(experiments_t.c.name == experiment).order_by(sweeps_t.c.id)).mappings().all()
        return [self._sweep_dict(r, experiment) for r in rows]

    @staticmethod
    def _sweep_dict(row: Mapping[str, Any], experiment: str) -> dict:
        d = {c: row[c] for c in SWEEP_COLUMNS}
        d.update(id=row["id"], experiment=experiment, started_at=_aware(row["started_at"]),
                 ended_at=_aware(row["ended_at"]))
        return d

    def add_event(self, sweep_id: int | None, kind: str, message: str, data: Any = None) -> None:
        with self._write() as conn:
            conn.execute(events_t.insert().values(sweep_id=sweep_id, at=utcnow(), kind=kind, message=message,
                                                  data=data))

    def events(self, sweep_id: int) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(sa.select(events_t).where(events_t.c.sweep_id == sweep_id)
                                .order_by(events_t.c.id)).mappings().all()
        return [{"id": r["id"], "sweep_id": r["sweep_id"], "at": _aware(r["at"]), "kind": r["kind"],
                 "message": r["message"], "data": r["data"]} for r in rows]

    # -- runs --------------------------------------------------------------------------------

    @_retry_on_conflict
    def plan_runs(self, sweep_id: int, runs: Sequence[PlannedRun], version: str | None = None) -> dict[str, str]:
        """Insert the runs not yet stored as pending; return key -> current status for every run given.

        Runs already stored keep their status and results; their axis labels and plan position follow
        the new plan, and a run not done yet takes the new plan's settings (e.g. another batch size).
        ``version`` (the plan's ``Plan.version``): recorded on every run given, done ones included: they are
        part of that version of the experiment.
        """
        with self._write() as conn:
            eid = conn.execute(sa.select(sweeps_t.c.experiment_id).where(sweeps_t.c.id == sweep_id)).scalar()
            if eid is None:
                raise NotFoundError(f"no sweep {sweep_id} in the run store {self.url}")
            name = conn.execute(sa.select(experiments_t.c.name).where(experiments_t.c.id == eid)).scalar()
            others = {r.experiment for r in runs} - {name}
            if others:
                raise ValueError(f"plan_runs: runs of {sorted(others)} given to a sweep of {name!r}")
            stored = {r["key"]: r for r in conn.execute(
                sa.select(runs_t.c.id, runs_t.c.key, runs_t.c.status, runs_t.c.plan_version,
                          *(runs_t.c[c] for c in PLAN_COLUMNS))
                .where(runs_t.c.experiment_id == eid)).mappings()}
            new: list[dict] = []
            changes: dict[tuple[str, ...], list[dict]] = {}  # changed columns -> rows (one executemany each)
            for run in runs:
                values = {**stored_values(run), "batch_size": str(run.settings.batch_size)}  # a number or "auto"
                row = stored.get(run.key)
                if version is not None:
                    values["plan_version"] = version
                if row is None:
                    new.append({**values, "experiment_id": eid, "key": run.key, "status": "pending"})
                    stored[run.key] = {"status": "pending"}
                    continue
                cols = ("axes", "plan_index") if row["status"] == "done" else PLAN_COLUMNS
                if version is not None:
                    cols = (*cols, "plan_version")
                changed = {c: values[c] for c in cols if row[c] != values[c]}
                if changed:
                    changes.setdefault(tuple(changed), []).append({"_id": row["id"], **changed})
            if new:
                conn.execute(runs_t.insert(), new)
            for cols, rows in changes.items():
                conn.execute(runs_t.update().where(runs_t.c.id == sa.bindparam("_id"))
                             .values({c: sa.bindparam(c) for c in cols}), rows)
        return {r.key: stored[r.key]["status"] for r in runs}

    def reset_stale(self, experiment: str, sweep_id: int | None = None) -> int:
        """Runs left "running" by a killed process (or only by sweep ``sweep_id``) become pending again;
        returns how many."""
        with self._write() as conn:
            eid = self._experiment_id(conn, experiment)
            if eid is None:
                return 0
            where = [runs_t.c.experiment_id == eid, runs_t.c.status == "running"]
            if sweep_id is not None:
                where.append(runs_t.c.sweep_id == sweep_id)
            return conn.execute(runs_t.update().where(*where).values(status="pending", started_at=None)).rowcount

    def mark_running(self, experiment: str, keys: Iterable[str], sweep_id: int | None) -> None:
        self._set(experiment, list(keys), status="running", sweep_id=sweep_id, started_at=utcnow(),
                  finished_at=None, error=None)

    def mark_done(self, experiment: str, key: str, **fields: Any) -> None:
        """The run's image is written. ``fields``: image or image_path (recorded relative to the workspace home
        when under it, else absolute), image_sha256, image_size and image_mtime_ns (the file's ``os.stat`` when
        written: the report hashes only files whose stat changed), seconds, seconds_per_step,
        peak_memory_bytes, batch_size_used, model_revision, scheduler_config, device."""
        self.mark_done_many(experiment, [(key, fields)])

    def mark_done_many(self, experiment: str, results: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        """``mark_done`` of several runs in one transaction (a sweep's batch): ``(key, fields)`` each."""
        if not results:
            return
        now = utcnow()
        values = [(key, self._results(fields)) for key, fields in results]
        with self._write() as conn:
            eid = self._require_experiment(conn, experiment)
            missing = [key for key, v in values if not conn.execute(
                runs_t.update().where(runs_t.c.experiment_id == eid, runs_t.c.key == key)
                .values(status="done", error=None, finished_at=now, **v)).rowcount]
            if missing:
                raise NotFoundError(f"experiment {experiment!r} has no run {', '.join(missing[:5])}")

    def restamp_images(self, stamps: Sequence[tuple[str, str, str, int, int]]) -> None:
        """Record the size and mtime of images verified by their sha256 (``tracker check``): one transaction of
        ``(experiment, key, sha256, size, mtime_ns)``; a run whose image changed meanwhile is left alone."""
        with self._write() as conn:
            for experiment, key, sha, size, mtime_ns in stamps:
                eid = self._experiment_id(conn, experiment)
                conn.execute(runs_t.update().where(runs_t.c.experiment_id == eid, runs_t.c.key == key,
                                                   runs_t.c.image_sha256 == sha)
                             .values(image_size=size, image_mtime_ns=mtime_ns))

    def mark_failed(self, experiment: str, key: str, error: str, **fields: Any) -> None:
        self._set(experiment, [key], status="failed", error=error, finished_at=utcnow(), **self._results(fields))

    def mark_pending(self, experiment: str, keys: Iterable[str]) -> None:
        """Queue runs again (``--retry-failed``); their error is cleared."""
        self._set(experiment, list(keys), status="pending", error=None, started_at=None, finished_at=None)

    def _results(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(fields)
        if "image" in out:
            out["image_path"] = out.pop("image")
        if out.get("image_path") is not None:
            out["image_path"] = stored_image(self.home, out["image_path"])
        unknown = sorted(set(out) - set(RESULT_COLUMNS))
        if unknown:
            raise ValueError(f"unknown run result fields {unknown}; known: image, {', '.join(RESULT_COLUMNS)}")
        return out

    def _set(self, experiment: str, keys: list[str], **values: Any) -> None:
        if not keys:
            return
        with self._write() as conn:
            eid = self._require_experiment(conn, experiment)
            n = 0
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                n += conn.execute(runs_t.update().where(runs_t.c.experiment_id == eid, runs_t.c.key.in_(chunk))
                                  .values(**values)).rowcount
            if n != len(set(keys)):
                have = set(conn.execute(sa.select(runs_t.c.key).where(
                    runs_t.c.experiment_id == eid, runs_t.c.key.in_(keys[:500]))).scalars())
                missing = [k for k in keys if k not in have][:5]
                raise NotFoundError(f"experiment {experiment!r} has no run {', '.join(missing)}")

    def _select_runs(self):
        return (sa.select(runs_t, experiments_t.c.name.label("experiment"))
                .join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id))

    def _record(self, row: Mapping[str, Any]) -> RunRecord:
        """A RunRecord whose ``image`` is the file's path (a relative stored path resolved against the home)."""
        image = image_file(self.home, row["image_path"])
        return RunRecord.from_row({**row, "image_path": str(image) if image is not None else None})

    def runs(self, experiment: str | None = None, status: str | Iterable[str] | None = None,
             where: Mapping[str, str] | None = None, *, current: bool = False, _also: Any = None) -> list[RunRecord]:
        """Runs in plan order (by experiment name, then plan position), filtered.

        ``status``: one status or several; ``where``: axis name -> label, all must match
        (a run without that axis does not match). ``current``: only the runs of each experiment's current plan
        version (the file as last run; every run of an experiment recorded before versions were). An unknown
        experiment gives [].
        """
        q = self._select_runs()
        if experiment is not None:
            q = q.where(experiments_t.c.name == experiment)
        if current:
            q = q.where(sa.or_(experiments_t.c.plan_version.is_(None),
                               runs_t.c.plan_version == experiments_t.c.plan_version))
        if status is not None:
            q = q.where(runs_t.c.status.in_([status] if isinstance(status, str) else list(status)))
        if _also is not None:
            q = q.where(_also)
        q = q.order_by(experiments_t.c.name, runs_t.c.plan_index, runs_t.c.id)
        with self._read() as conn:
            rows = conn.execute(q).mappings().all()
        records = [self._record(r) for r in rows]
        if where:
            records = [r for r in records if all(r.axes.get(k) == str(v) for k, v in where.items())]
        return records

    def models_with_revision(self, prefix: str = "sha256:") -> list[tuple[str, str]]:
        """The distinct (model, model_revision) pairs of done runs whose revision starts with ``prefix`` (a
        single file's is ``sha256:<its sha256>``; A1111's ``Model hash`` is its first 10 hex digits)."""
        with self._read() as conn:
            rows = conn.execute(sa.select(runs_t.c.model, runs_t.c.model_revision).distinct()
                                .where(runs_t.c.model_revision.like(prefix.replace("%", "") + "%"))).all()
        return [(r.model, r.model_revision) for r in rows]

    def axes(self, experiment: str, current: bool = False) -> dict[str, list[str]]:
        """Axis name -> its labels, as stored for the experiment's runs (plan order); ``current``: of the runs of
        its current plan version only."""
        out: dict[str, list[str]] = {}
        for r in self.runs(experiment, current=current):
            for name, label in r.axes.items():
                labels = out.setdefault(name, [])
                if label not in labels:
                    labels.append(label)
        return out

    def get_run(self, key: str, experiment: str | None = None) -> RunRecord:
        """The run whose key is ``key`` or starts with it (unique prefix); NotFoundError otherwise."""
        key = (key or "").strip()
        if not key:
            raise NotFoundError("give a run key (or a unique prefix of one)")
        q = self._select_runs().where(runs_t.c.key.like(db.escape_like(key) + "%", escape="\\"))
        if experiment is not None:
            q = q.where(experiments_t.c.name == experiment)
        with self._read() as conn:
            rows = conn.execute(q.order_by(runs_t.c.key).limit(11)).mappings().all()
        exact = [r for r in rows if r["key"] == key]
        same = exact or (rows if len({r["key"] for r in rows}) == 1 else [])
        if same:
            # one key in several experiments: equal keys mean equal recipes, so the latest done one will do
            rows = sorted(same, key=lambda r: (r["status"] != "done", -_stamp(r["finished_at"])))[:1]
        where = f" in experiment {experiment!r}" if experiment else ""
        if not rows:
            raise NotFoundError(f"no run with key {key!r}{where} in the run store {self.url}")
        if len(rows) > 1:
            shown = ", ".join(f"{r['key']} ({r['experiment']})" for r in rows[:10])
            more = " ..." if len(rows) > 10 else ""
            raise NotFoundError(f"run key {key!r}{where} is ambiguous: {shown}{more}; give more characters"
                                + ("" if experiment else " or the experiment"))
        return self._record(rows[0])

    # -- MLflow sync -------------------------------------------------------------------------

    def mark_synced(self, experiment: str, key: str, mlflow_run_id: str) -> None:
        self.mark_synced_many(experiment, [(key, mlflow_run_id)])

    def mark_synced_many(self, experiment: str, synced: Sequence[tuple[str, str]]) -> None:
        """Runs logged to MLflow, ``(key, mlflow_run_id)`` each, marked in one transaction (a sweep's batch)."""
        if not synced:
            return
        now = utcnow()
        with self._write() as conn:
            eid = self._require_experiment(conn, experiment)
            missing = [key for key, rid in synced if not conn.execute(
                runs_t.update().where(runs_t.c.experiment_id == eid, runs_t.c.key == key)
                .values(mlflow_run_id=rid, mlflow_synced_at=now)).rowcount]
            if missing:
                raise NotFoundError(f"experiment {experiment!r} has no run {', '.join(missing[:5])}")

    def unsynced(self, experiment: str | None = None) -> list[RunRecord]:
        """Done runs not yet logged to MLflow, in plan order."""
        return self.runs(experiment, status="done", _also=runs_t.c.mlflow_synced_at.is_(None))


__all__ = ["RunRecord", "Store", "StoreError", "STATUSES", "metadata"]
