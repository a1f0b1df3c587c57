"""Work assignment that survives failures: a run is claimed by a worker before it is generated.

A worker is one process generating images for a sweep (``tracker run``, one of ``--workers N``, an
accelerate rank, a Ray actor driven by the Ray driver). It registers a row in ``workers``, then
takes batch-sized groups of runs with ``claim``: each claimed run turns ``running`` with the worker's
id and a lease end (``lease_until``). A ``Heartbeat`` thread renews the leases of the worker's
running runs (and its ``last_seen``) every third of the lease. A worker that dies stops renewing;
once its leases end its runs are claimable again (``pending`` runs and ``running`` runs whose lease
ended are claimable). ``done`` stays the only final state; ``failed`` runs wait for --retry-failed.

Claiming is one write transaction: ``BEGIN IMMEDIATE`` on SQLite (one writer at a time), and on
PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED`` on the chosen rows, so two workers never claim the
same run: the second skips the rows the first holds and re-checks the claim condition on the rest.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import sqlalchemy as sa

from tracker.store.db import utcnow
from tracker.store.runstore import Store
from tracker.store.tables import experiments_t, runs_t, workers_t

DEFAULT_LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class Worker:
    id: int
    sweep_id: int | None  # None: a warm worker (``tracker.sweep.queue``), which serves many sweeps
    name: str


def register(store: Store, sweep_id: int | None, device: str | None, name: str | None = None,
             status: str = "working", **row) -> Worker:
    """A new worker row for ``sweep_id`` (host, pid, device); ``name`` defaults to host:pid. ``row``: further
    columns (a warm worker's ``kind``, ``experiments`` and ``activity``)."""
    host, pid = socket.gethostname(), os.getpid()
    name = name or f"{host}:{pid}"
    now = utcnow()
    with store._write() as conn:
        wid = conn.execute(workers_t.insert().values(
            sweep_id=sweep_id, name=name, host=host, pid=pid, device=device, started_at=now, last_seen=now,
            status=status, **row)).inserted_primary_key[0]
    return Worker(wid, sweep_id, name)


def _claimable(now):
    return sa.or_(runs_t.c.status == "pending",
                  sa.and_(runs_t.c.status == "running",
                          sa.or_(runs_t.c.lease_until.is_(None), runs_t.c.lease_until < now)))


def claim(store: Store, experiment: str, worker: Worker, groups: Sequence[tuple[Sequence[str], int]],
          lease_seconds: float = DEFAULT_LEASE_SECONDS, counts: dict | None = None) -> list[str]:
    """Claim up to ``limit`` claimable runs of the first group (keys in order, limit) that has any.
    ``counts``: the worker's progress (``progress``'s keyword arguments), set in the same transaction.

    Returns the claimed keys in the group's order ([] when nothing of ``groups`` is claimable now).
    """
    now = utcnow()
    with store._write() as conn:
        if counts is not None:
            _set_progress(conn, worker, now, **counts)
        eid = conn.execute(sa.select(experiments_t.c.id).where(experiments_t.c.name == experiment)).scalar()
        if eid is None:
            return []
        available = set(conn.execute(sa.select(runs_t.c.key).where(
            runs_t.c.experiment_id == eid, _claimable(now))).scalars())
        for keys, limit in groups:
            candidates = [k for k in keys if k in available]
            got = _lock_some(conn, eid, candidates, max(1, limit), now)
            if not got:
                continue
            conn.execute(runs_t.update().where(runs_t.c.id.in_(list(got.values()))).values(
                status="running", worker_id=worker.id, sweep_id=worker.sweep_id, started_at=now,
                lease_until=now + timedelta(seconds=lease_seconds), finished_at=None, error=None))
            return [k for k in candidates if k in got]
    return []


def _lock_some(conn, eid: int, candidates: list[str], limit: int, now) -> dict[str, int]:
    """Up to ``limit`` of ``candidates`` (first ones first) still claimable, locked: key -> row id.

    On PostgreSQL rows another worker is claiming right now are skipped (SKIP LOCKED), not waited for,
    and the claim condition is checked again on the rows we lock."""
    got: dict[str, int] = {}
    for i in range(0, len(candidates), 500):
        q = (sa.select(runs_t.c.id, runs_t.c.key)
             .where(runs_t.c.experiment_id == eid, runs_t.c.key.in_(candidates[i:i + 500]), _claimable(now))
             .order_by(runs_t.c.plan_index, runs_t.c.id).limit(limit - len(got)))
        if conn.dialect.name != "sqlite":  # SQLite: BEGIN IMMEDIATE already holds the only write lock
            q = q.with_for_update(skip_locked=True)
        got.update({r.key: r.id for r in conn.execute(q)})
        if len(got) >= limit:
            break
    return got


def remaining(store: Store, experiment: str, keys: Sequence[str], other_than: Worker | None = None) -> dict[str, int]:
    """Of ``keys``: how many are ``pending``, ``running`` (by anyone, or by anyone but ``other_than``: a
    worker's own running runs are its writing stage's, finished when it closes), ``done`` and ``failed``."""
    out = {"pending": 0, "running": 0, "done": 0, "failed": 0}
    with store._read() as conn:
        eid = conn.execute(sa.select(experiments_t.c.id).where(experiments_t.c.name == experiment)).scalar()
        if eid is None:
            return out
        keys = list(keys)
        for i in range(0, len(keys), 500):
            q = sa.select(runs_t.c.status, sa.func.count()).where(
                runs_t.c.experiment_id == eid, runs_t.c.key.in_(keys[i:i + 500]))
            if other_than is not None:
                q = q.where(sa.or_(runs_t.c.status != "running", runs_t.c.worker_id.is_(None),
                                   runs_t.c.worker_id != other_than.id))
            for status, n in conn.execute(q.group_by(runs_t.c.status)).all():
                out[status] = out.get(status, 0) + n
    return out


def renew(store: Store, worker: Worker, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> int:
    """Extend the leases of the worker's running runs; mark it seen. Returns how many runs it holds."""
    now = utcnow()
    with store._write() as conn:
        conn.execute(workers_t.update().where(workers_t.c.id == worker.id).values(last_seen=now))
        return conn.execute(runs_t.update().where(runs_t.c.worker_id == worker.id, runs_t.c.status == "running")
                            .values(lease_until=now + timedelta(seconds=lease_seconds))).rowcount


def release(store: Store, worker_id: int, keys: Sequence[str] | None = None) -> int:
    """Give the worker's running runs (or those of ``keys``) back as pending; returns how many."""
    with store._write() as conn:
        return _release(conn, worker_id, keys)


def _release(conn, worker_id: int, keys: Sequence[str] | None = None) -> int:
    q = runs_t.update().where(runs_t.c.worker_id == worker_id, runs_t.c.status == "running")
    if keys is not None:
        q = q.where(runs_t.c.key.in_(list(keys)))
    return conn.execute(q.values(status="pending", lease_until=None, started_at=None)).rowcount


def progress(store: Store, worker: Worker, done: int | None = None, failed: int | None = None,
             busy_seconds: float | None = None) -> None:
    """Set the worker's counts so far (runs it made, runs that failed, seconds spent generating)."""
    with store._write() as conn:
        _set_progress(conn, worker, utcnow(), done, failed, busy_seconds)


def _set_progress(conn, worker: Worker, now, done: int | None = None, failed: int | None = None,
                  busy_seconds: float | None = None) -> None:
    values = {k: v for k, v in (("runs_done", done), ("runs_failed", failed), ("busy_seconds", busy_seconds))
              if v is not None}
    conn.execute(workers_t.update().where(workers_t.c.id == worker.id).values(last_seen=now, **values))


def finish(store: Store, worker: Worker, status: str = "done", release_claims: bool = True,
           done: int | None = None, failed: int | None = None) -> None:
    """The worker stops, with its final counts when given: its unfinished claims go back to pending (unless
    told otherwise). One transaction."""
    with store._write() as conn:
        if release_claims:
            _release(conn, worker.id)
        _set_progress(conn, worker, utcnow(), done, failed)
        conn.execute(workers_t.update().where(workers_t.c.id == worker.id).values(status=status))


class Heartbeat:
    """Renews a worker's leases every ``lease/3`` seconds in a daemon thread while generation runs."""

    def __init__(self, store: Store, worker: Worker, lease_seconds: float = DEFAULT_LEASE_SECONDS):
        self.store, self.worker, self.lease = store, worker, lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{worker.id}", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                renew(self.store, self.worker, self.lease)
            except Exception:  # a database hiccup: try again next beat (the lease has slack for two misses)
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def status(store: Store, experiment: str, max_workers: int = 50) -> dict:
    """What ``tracker status`` shows: run counts, the experiment's workers (newest first) and claims
    whose lease has ended (a worker that died or hangs)."""
    from tracker.errors import NotFoundError
    from tracker.experiment.plan import STATUSES
    from tracker.store.records import aware_utc
    from tracker.store.tables import sweeps_t

    now = utcnow()
    with store._read() as conn:
        eid = conn.execute(sa.select(experiments_t.c.id).where(experiments_t.c.name == experiment)).scalar()
        if eid is None:
            raise NotFoundError(f"no experiment {experiment!r} in the run store {store.url}")
        counts = dict(conn.execute(sa.select(runs_t.c.status, sa.func.count()).where(runs_t.c.experiment_id == eid)
                                   .group_by(runs_t.c.status)).all())
        workers = conn.execute(  # the sweeps' own workers, and warm workers (no sweep) that took runs of it
            sa.select(workers_t).where(sa.or_(
                workers_t.c.sweep_id.in_(sa.select(sweeps_t.c.id).where(sweeps_t.c.experiment_id == eid)),
                workers_t.c.id.in_(sa.select(runs_t.c.worker_id).where(runs_t.c.experiment_id == eid))))
            .order_by(workers_t.c.id.desc()).limit(max_workers)).mappings().all()
        holding = dict(conn.execute(
            sa.select(runs_t.c.worker_id, sa.func.count()).where(runs_t.c.experiment_id == eid,
                                                                 runs_t.c.status == "running")
            .group_by(runs_t.c.worker_id)).all())
        made = dict(conn.execute(  # the runs each worker made, from the runs themselves: exact even for a
            # worker killed before it last reported its counts (its images are written in the background)
            sa.select(runs_t.c.worker_id, sa.func.count()).where(runs_t.c.experiment_id == eid,
                                                                 runs_t.c.status == "done")
            .group_by(runs_t.c.worker_id)).all())
        stale = conn.execute(
            sa.select(runs_t.c.key, runs_t.c.worker_id, runs_t.c.lease_until, workers_t.c.name)
            .outerjoin(workers_t, workers_t.c.id == runs_t.c.worker_id)
            .where(runs_t.c.experiment_id == eid, runs_t.c.status == "running",
                   sa.or_(runs_t.c.lease_until.is_(None), runs_t.c.lease_until < now))
            .order_by(runs_t.c.plan_index)).mappings().all()
    out_workers = []
    for w in workers:
        alive = (w["last_seen"] - w["started_at"]).total_seconds()
        out_workers.append({
            "id": w["id"], "name": w["name"], "sweep_id": w["sweep_id"], "host": w["host"], "pid": w["pid"],
            "device": w["device"], "status": w["status"], "kind": w["kind"], "runs_done": made.get(w["id"], 0), "runs_failed": w["runs_failed"],
            "holding": holding.get(w["id"], 0),
            "images_per_second": round(made.get(w["id"], 0) / alive, 4) if alive > 0 else None,
            "busy_seconds": round(w["busy_seconds"], 3), "started_at": aware_utc(w["started_at"]),
            "last_seen": aware_utc(w["last_seen"]), "seen_seconds_ago": round((now - w["last_seen"]).total_seconds(), 1),
        })
    runs = {s: counts.get(s, 0) for s in STATUSES}
    return {
        "experiment": experiment, "planned": sum(counts.values()), "runs": runs, "workers": out_workers,
        "expired_claims": [{"key": r["key"], "worker_id": r["worker_id"], "worker": r["name"],
                            "lease_until": aware_utc(r["lease_until"])} for r in stale],
    }


def unsynced_by_others(store: Store, experiment: str, worker: Worker) -> list[str]:
    """Done runs of the experiment not yet in MLflow that another worker generated."""
    with store._read() as conn:
        return list(conn.execute(
            sa.select(runs_t.c.key).join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id)
            .where(experiments_t.c.name == experiment, runs_t.c.status == "done", runs_t.c.mlflow_synced_at.is_(None),
                   sa.or_(runs_t.c.worker_id.is_(None), runs_t.c.worker_id != worker.id))
            .order_by(runs_t.c.plan_index)).scalars())


def unsynced_done(store: Store, experiment: str) -> list[tuple[str, int | None]]:
    """(key, sweep id) of the experiment's done runs not yet in MLflow, in plan order (a light query)."""
    with store._read() as conn:
        return [tuple(r) for r in conn.execute(
            sa.select(runs_t.c.key, runs_t.c.sweep_id).join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id)
            .where(experiments_t.c.name == experiment, runs_t.c.status == "done", runs_t.c.mlflow_synced_at.is_(None))
            .order_by(runs_t.c.plan_index))]


def local_sweeps(store: Store, pids: Sequence[int]) -> dict[int, int]:
    """pid -> sweep id of this host's workers with those pids (the newest worker of each pid)."""
    if not pids:
        return {}
    with store._read() as conn:
        rows = conn.execute(sa.select(workers_t.c.pid, workers_t.c.sweep_id).where(
            workers_t.c.host == socket.gethostname(), workers_t.c.pid.in_(list(pids))).order_by(workers_t.c.id)).all()
    return {pid: sweep for pid, sweep in rows}


def reap_local(store: Store) -> int:
    """Workers of this host whose process is gone (killed, crashed) give their claims back now instead
    of when their leases end, so that rerunning a killed sweep starts at once. Returns runs released."""
    host = socket.gethostname()
    with store._read() as conn:
        rows = conn.execute(sa.select(workers_t.c.id, workers_t.c.pid).where(
            workers_t.c.host == host, workers_t.c.status.in_(("working", "idle")))).all()
    released = 0
    for wid, pid in rows:
        if pid is None or pid == os.getpid() or alive_here(host, pid):
            continue
        released += release(store, wid)
        with store._write() as conn:
            conn.execute(workers_t.update().where(workers_t.c.id == wid).values(status="died"))
    return released


def alive_here(host: str | None, pid: int | None) -> bool:
    """False only for a process of this host that is gone (a kill -9 is seen at once, not a lease later)."""
    if host != socket.gethostname() or not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
