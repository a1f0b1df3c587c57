"""The queue of warm workers: sweeps handed to ``tracker worker`` processes through the run store.

No new service: the queue is the run store. ``tracker run FILE`` with a live warm worker (``live_workers``)
plans as usual, records the sweep with a ``submission`` (who submitted it, its priority, the models, VAEs and
LoRA adapters it allows the worker to load, with their ``allow_pickle``, and the folder relative paths resolve
in), stores the plan's runs pending and attaches those not done to the sweep (``runs.sweep_id``); then it
follows the runs from the store (``follow``). A warm worker (``tracker.sweep.daemon``) picks the next sweep
with ``next_sweep``: highest priority first, round-robin between experiments, FIFO within one; it claims
batch-sized groups of its runs with ``tracker.sweep.claims`` (leases, ``SKIP LOCKED``), exactly as a sweep's
own worker does. Ctrl-C on the submitter ``withdraw``s the sweep: its runs not started stay pending but
leave the queue.

Nothing here imports torch: submitting and following cost a store connection, not a pipeline.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import sqlalchemy as sa

from tracker.experiment.plan import PlannedRun

QUEUED = ("queued", "running")  # statuses of a submitted sweep whose runs warm workers take
POLL_SECONDS = 0.1  # how often a submitter reads its runs' progress


def submitter() -> str:
    """``user@host`` of this process (recorded with a submitted plan)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


# ---------------------------------------------------------------------------------------------
# warm workers in the workers table


def register(store, device: str | None, name: str | None, experiments: Sequence[str] | None,
             beat_seconds: float):
    """A workers row for a warm worker (kind daemon, no sweep of its own); returns its ``claims.Worker``."""
    from tracker.sweep import claims

    return claims.register(store, None, device, name, status="idle", kind="daemon",
                           experiments=list(experiments) if experiments else None,
                           activity={"beat_seconds": beat_seconds})


def set_activity(store, worker_id: int, status: str, activity: dict) -> None:
    from tracker.store.db import utcnow
    from tracker.store.tables import workers_t

    with store._write() as conn:
        conn.execute(workers_t.update().where(workers_t.c.id == worker_id).values(
            status=status, activity=activity, last_seen=utcnow()))


def live_workers(store, experiment: str | None = None, device: str | None = None) -> list[dict]:
    """Warm workers that are up: kind daemon, status idle or working, seen within three heartbeats (and, on
    this host, their process alive); only those serving ``experiment`` and on ``device`` when given."""
    from tracker.store.db import utcnow
    from tracker.store.tables import workers_t
    from tracker.sweep.claims import alive_here

    now = utcnow()
    with store._read() as conn:
        rows = conn.execute(sa.select(workers_t).where(
            workers_t.c.kind == "daemon", workers_t.c.status.in_(("idle", "working")))
            .order_by(workers_t.c.id)).mappings().all()
    out = []
    for w in rows:
        beat = float((w["activity"] or {}).get("beat_seconds") or 20.0)
        if (now - w["last_seen"]).total_seconds() > 3 * beat + 2 or not alive_here(w["host"], w["pid"]):
            continue
        if experiment is not None and w["experiments"] and experiment not in w["experiments"]:
            continue
        if device is not None and (w["device"] or "").lower() != device.lower():
            continue
        out.append(dict(w))
    return out


def warm_workers(store) -> list[dict]:
    """Every warm worker's row with ``live`` (what ``tracker status`` lists), newest first."""
    from tracker.store.db import utcnow
    from tracker.store.records import aware_utc as _aware
    from tracker.store.tables import workers_t

    live = {w["id"] for w in live_workers(store)}
    now = utcnow()
    with store._read() as conn:
        rows = conn.execute(sa.select(workers_t).where(workers_t.c.kind == "daemon")
                            .order_by(workers_t.c.id.desc()).limit(50)).mappings().all()
    return [{"id": w["id"], "name": w["name"], "host": w["host"], "pid": w["pid"], "device": w["device"],
             "status": w["status"] if w["id"] in live or w["status"] not in ("idle", "working") else "gone",
             "live": w["id"] in live, "experiments": w["experiments"], "activity": w["activity"] or {},
             "runs_done": w["runs_done"], "runs_failed": w["runs_failed"],
             "started_at": _aware(w["started_at"]), "last_seen": _aware(w["last_seen"]),
             "seen_seconds_ago": round((now - w["last_seen"]).total_seconds(), 1)} for w in rows]


# ---------------------------------------------------------------------------------------------
# what a worker takes next


def _claimable(now):
    from tracker.store.tables import runs_t

    return sa.or_(runs_t.c.status == "pending",
                  sa.and_(runs_t.c.status == "running",
                          sa.or_(runs_t.c.lease_until.is_(None), runs_t.c.lease_until < now)))


@dataclass(frozen=True)
class Queued:
    sweep_id: int
    experiment: str
    submission: dict
    runs: int  # claimable now


def queued(store, experiments: Sequence[str] | None = None) -> list[Queued]:
    """Submitted sweeps with claimable runs (of ``experiments`` when given), in FIFO order."""
    from tracker.store.db import utcnow
    from tracker.store.tables import experiments_t, runs_t, sweeps_t

    q = (sa.select(sweeps_t.c.id, experiments_t.c.name, sa.func.count(runs_t.c.id))
         .join(experiments_t, experiments_t.c.id == sweeps_t.c.experiment_id)
         .join(runs_t, runs_t.c.sweep_id == sweeps_t.c.id)
         .where(sweeps_t.c.submission.is_not(None), sweeps_t.c.status.in_(QUEUED), _claimable(utcnow()))
         .group_by(sweeps_t.c.id, experiments_t.c.name).order_by(sweeps_t.c.id))  # (json has no = on PostgreSQL)
    if experiments:
        q = q.where(experiments_t.c.name.in_(list(experiments)))
    with store._read() as conn:
        rows = conn.execute(q).all()
        subs = dict(conn.execute(sa.select(sweeps_t.c.id, sweeps_t.c.submission).where(
            sweeps_t.c.id.in_([r[0] for r in rows]))).all()) if rows else {}
    return [Queued(sid, name, subs[sid] if isinstance(subs[sid], dict) else json.loads(subs[sid]), n)
            for sid, name, n in rows]


def pick(items: Sequence[Queued], last_experiment: str | None) -> Queued | None:
    """The next sweep to serve: the highest priority; among those, the experiment after ``last_experiment``
    (round-robin by name, so submitters alternate batch by batch); within an experiment the oldest sweep."""
    if not items:
        return None
    top = max(int(i.submission.get("priority") or 0) for i in items)
    best = [i for i in items if int(i.submission.get("priority") or 0) == top]
    names = sorted({i.experiment for i in best})
    after = [n for n in names if last_experiment is not None and n > last_experiment]
    name = (after or names)[0]
    return min((i for i in best if i.experiment == name), key=lambda i: i.sweep_id)


def claimable_runs(store, sweep_id: int) -> list[PlannedRun]:
    """The sweep's runs a worker may claim now, as planned runs (plan order)."""
    from tracker.store.db import utcnow
    from tracker.store.tables import runs_t

    recs = store.runs(_also=sa.and_(runs_t.c.sweep_id == sweep_id, _claimable(utcnow())))
    return [r.planned() for r in recs]


def _adapter(a) -> str:
    return json.dumps(dict(a), sort_keys=True, default=str)


def allowance(runs: Sequence[PlannedRun]) -> dict:
    """What a submitted plan lets a worker load: each model with whether pickle checkpoints may be loaded for
    it, each VAE likewise, each LoRA adapter (its whole recipe)."""
    models: dict[str, bool] = {}
    vaes: dict[str, bool] = {}
    loras: set[str] = set()
    for r in runs:
        s = r.settings
        models[s.model] = models.get(s.model, False) or bool(s.allow_pickle)
        if s.vae != "default":
            vaes[s.vae] = vaes.get(s.vae, False) or bool(s.allow_pickle)
        loras.update(_adapter(a) for a in s.lora)
    return {"models": models, "vaes": vaes, "loras": sorted(loras)}


def refusal(submission: dict, run: PlannedRun) -> str | None:
    """Why a worker must not make ``run`` for this submission (a model, VAE, LoRA or pickle permission the
    submitted plan did not carry: the run was changed in the store after it was submitted), else None."""
    allow = submission.get("allow") or {}
    s = run.settings
    models, vaes, loras = allow.get("models") or {}, allow.get("vaes") or {}, set(allow.get("loras") or ())
    if s.model not in models:
        return f"model {s.model!r} is not in the plan {submission.get('by', '?')} submitted; not loaded"
    if s.allow_pickle and not (models.get(s.model) or (s.vae != "default" and vaes.get(s.vae))):
        return (f"allow_pickle for model {s.model!r} was not allowed by the plan {submission.get('by', '?')} "
                f"submitted; not loaded")
    if s.vae != "default" and s.vae not in vaes:
        return f"vae {s.vae!r} is not in the plan {submission.get('by', '?')} submitted; not loaded"
    for a in s.lora:
        if _adapter(a) not in loras:
            return f"lora {dict(a).get('name')!r} is not in the plan {submission.get('by', '?')} submitted; not loaded"
    return None


# ---------------------------------------------------------------------------------------------
# submitting


@dataclass
class Submitted:
    sweep_id: int
    experiment: str
    keys: tuple[str, ...]  # the runs handed to the workers (not done when submitted)
    summary: Any  # runner.SweepSummary: planned, skipped, images_dir, keys
    workers: list[dict] = field(default_factory=list)  # the live warm workers when submitted


def submit(ws, path, options, priority: int = 0, require_worker: bool = True) -> Submitted | None:
    """Plan ``path`` and hand the runs not done to the warm workers of the store. None (nothing written) when
    ``require_worker`` and no live warm worker serves the experiment: the caller runs it in-process."""
    from tracker.version import __version__
    from tracker.sweep import preparation, runner
    from tracker.store.runstore import Store

    if require_worker:  # no warm worker at all: nothing is parsed here (the in-process sweep parses the file)
        if not ws.has_store():
            return None
        with Store.open(ws.db_url, home=ws.home) as store:
            if not live_workers(store, None, options.device):
                return None
    prepared = preparation.prepare(ws, path, options)
    exp, the_plan, file = prepared.experiment, prepared.plan, prepared.file
    ws.ensure()
    with Store.open(ws.db_url, home=ws.home) as store:
        live = live_workers(store, exp.name, options.device)
        if require_worker and not live:
            return None
        preparation.claim_name(store, exp, file)
        preparation.store_inputs(exp, store.home)  # the warm worker reads them from the workspace by hash
        found = preparation.find_work(store.runs(exp.name), the_plan.runs, options.retry_failed)
        todo, status = found.todo, found.status
        summary = runner.SweepSummary(exp.name, planned=len(the_plan.runs), images_dir=ws.images_dir / exp.name,
                                      keys=tuple(r.key for r in the_plan.runs))
        store.save_experiment(exp.name, str(file) if file is not None else None, exp.source, the_plan.version)
        base = exp.base_dir or (file.parent if file is not None else None)
        sweep_id = store.start_sweep(exp.name, {
            "command": options.command or " ".join(["tracker", *sys.argv[1:]]), "host": socket.gethostname(),
            "versions": {"prompt-tracker": __version__}, "planned": len(the_plan.runs), "status": "queued",
            "device": options.device or (live[0]["device"] if live else None),
            "submission": {"by": submitter(), "priority": int(priority), "allow": allowance(todo),
                           "base_dir": str(Path(base).resolve()) if base is not None else None,
                           "device": options.device, "pid": os.getpid()},
        })
        summary.sweep_id = sweep_id
        store.plan_runs(sweep_id, the_plan.runs, the_plan.version)
        if found.lost:
            store.mark_pending(exp.name, found.lost)
        if options.retry_failed:
            store.mark_pending(exp.name, [r.key for r in todo if status.get(r.key) == "failed"])
        if found.in_mlflow:
            import logging

            logging.getLogger("tracker").warning(
                f"{len(found.in_mlflow)} done runs of {exp.name} have no image in this workspace but were logged to "
                f"MLflow; not made again (`tracker check --fix {exp.name}` then `tracker run` makes them here)")
        # queued: the runs not done (those another sweep holds are followed, and queued if their lease ends)
        attach(store, exp.name, sweep_id, [r.key for r in todo])
        summary.skipped, summary.failed_earlier = found.done, found.failed_earlier
        return Submitted(sweep_id, exp.name, tuple(r.key for r in todo), summary, live)


def attach(store, experiment: str, sweep_id: int, keys: Sequence[str]) -> int:
    """Put the claimable runs of ``keys`` (pending, or running past their lease) in the sweep's queue;
    returns how many."""
    from tracker.store.db import utcnow
    from tracker.store.tables import experiments_t, runs_t

    n = 0
    with store._write() as conn:
        eid = conn.execute(sa.select(experiments_t.c.id).where(experiments_t.c.name == experiment)).scalar()
        keys = list(keys)
        for i in range(0, len(keys), 500):
            n += conn.execute(runs_t.update().where(
                runs_t.c.experiment_id == eid, runs_t.c.key.in_(keys[i:i + 500]), _claimable(utcnow()))
                .values(sweep_id=sweep_id)).rowcount
    return n


def taken(store, sweep_id: int, device: str, environment: dict) -> None:
    """A warm worker starts on the sweep: its device and environment; queued -> running (a sweep withdrawn
    meanwhile stays withdrawn)."""
    from tracker.store.tables import sweeps_t

    with store._write() as conn:
        conn.execute(sweeps_t.update().where(sweeps_t.c.id == sweep_id).values(device=device, environment=environment))
        conn.execute(sweeps_t.update().where(sweeps_t.c.id == sweep_id, sweeps_t.c.status == "queued")
                     .values(status="running"))


def withdraw(store, sweep_id: int, status: str = "interrupted") -> int:
    """Take the sweep out of the queue: its runs not started stay pending but no worker takes them for it
    (runs a worker holds are finished and recorded). Returns how many runs were withdrawn."""
    from tracker.store.db import utcnow
    from tracker.store.tables import runs_t, sweeps_t

    with store._write() as conn:
        conn.execute(sweeps_t.update().where(sweeps_t.c.id == sweep_id).values(status=status, ended_at=utcnow()))
        return conn.execute(runs_t.update().where(runs_t.c.sweep_id == sweep_id, runs_t.c.status == "pending")
                            .values(sweep_id=None)).rowcount


# ---------------------------------------------------------------------------------------------
# following a submitted sweep


def follow(ws, sub: Submitted, bar, orphan_seconds: float | None = None,
           note: Callable[[str], None] | None = None) -> str:
    """Update ``bar`` from the store until every submitted run is done or failed; returns "done", or
    "orphaned" when no live warm worker was seen for ``orphan_seconds`` while runs were still pending (the
    caller makes the rest in-process). Ctrl-C withdraws the sweep's runs not started."""
    from tracker.sweep import claims
    from tracker.store.runstore import Store

    with Store.open(ws.db_url, home=ws.home) as store:
        shown = 0
        unseen_since = None
        try:
            while True:
                left = claims.remaining(store, sub.experiment, sub.keys)
                finished = left["done"] + left["failed"]
                if finished > shown:
                    bar.update(finished - shown)
                    shown = finished
                if left["pending"] + left["running"] == 0:
                    return "done"
                if orphan_seconds is not None:
                    if live_workers(store, sub.experiment):
                        unseen_since = None
                    elif unseen_since is None:
                        unseen_since = time.monotonic()
                    elif time.monotonic() - unseen_since > orphan_seconds:
                        return "orphaned"
                time.sleep(POLL_SECONDS)
        except BaseException:
            n = withdraw(store, sub.sweep_id)
            if note is not None and n:
                note(f"withdrew {n} runs of {sub.experiment} not started from the queue")
            raise


def finish(ws, sub: Submitted, seconds: float) -> None:
    """Fill the submitter's summary from the store (runs done and failed, who made them) and close the sweep."""
    from tracker.store.runstore import Store
    from tracker.store.tables import experiments_t, runs_t, workers_t

    summary = sub.summary
    summary.seconds = seconds
    with Store.open(ws.db_url, home=ws.home) as store:
        recs = {r.key: r for r in store.runs(sub.experiment)}
        mine = [recs[k] for k in sub.keys if k in recs]
        summary.done = sum(r.status == "done" for r in mine)
        summary.failed = sum(r.status == "failed" for r in mine)
        summary.failures = [(r.key, r.error or "") for r in mine if r.status == "failed"]
        summary.busy_seconds = sum(r.seconds or 0.0 for r in mine if r.status == "done")
        with store._read() as conn:
            made = conn.execute(
                sa.select(workers_t.c.name, workers_t.c.device, sa.func.count(runs_t.c.id))
                .join(runs_t, runs_t.c.worker_id == workers_t.c.id)
                .join(experiments_t, experiments_t.c.id == runs_t.c.experiment_id)
                .where(experiments_t.c.name == sub.experiment, runs_t.c.status == "done",
                       runs_t.c.key.in_(list(sub.keys)[:5000]))
                .group_by(workers_t.c.name, workers_t.c.device).order_by(workers_t.c.name)).all()
        sub.workers = [{"name": n, "device": d, "made": c} for n, d, c in made]
        store.finish_sweep(sub.sweep_id, {**summary.to_dict(), "status": "failed" if summary.failed else "done"})


def format_made_by(sub: Submitted) -> str:
    if not sub.workers:
        return "made by: no warm worker (nothing was generated)"
    return "made by warm worker " + ", ".join(f"{w['name']} ({w['device'] or '?'}): {w['made']} images"
                                              for w in sub.workers)


# ---------------------------------------------------------------------------------------------
# tracker watch: re-plan a file on every save, queue only what is new


def watched_files(path: Path) -> list[Path]:
    """The experiment file and, when it uses Dynamic Prompts wildcards, every file of its wildcard folder."""
    from tracker.errors import TrackerError
    from tracker.experiment import parse as spec

    files = [path]
    try:
        exp = spec.parse_file(path)
    except TrackerError:
        return files
    folder = getattr(exp.variants, "wildcards", None) if exp.variants is not None else None
    if folder and Path(folder).is_dir():
        # the folders too: a wildcard file added or removed changes their mtime
        files += sorted(p for p in [Path(folder), *Path(folder).rglob("*")])[:10000]
    return files


def signature(files: Sequence[Path]) -> tuple:
    out = []
    for p in files:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), None, None))
    return tuple(out)


@dataclass
class Watch:
    """``tracker watch``: each ``replan`` submits the plan as a new sweep (runs done are not made again, runs
    still queued stay queued) and withdraws what the previous plan queued that the new one no longer has."""

    ws: Any
    path: Path
    options: Any  # runner.RunOptions
    priority: int = 0
    sweep_id: int | None = None
    keys: tuple[str, ...] = ()  # the plan's keys at the last re-plan
    experiment: str | None = None

    def replan(self) -> str:
        """Re-plan and queue; returns what changed, in one line."""
        from tracker.store.runstore import Store

        sub = submit(self.ws, self.path, self.options, self.priority, require_worker=False)
        with Store.open(self.ws.db_url, home=self.ws.home) as store:
            previous, self.sweep_id = self.sweep_id, sub.sweep_id
            withdrawn = withdraw(store, previous, status="superseded") if previous is not None else 0
            live = live_workers(store, sub.experiment)
        planned = sub.summary.keys
        old = set(self.keys) if self.experiment == sub.experiment else set()
        new = [k for k in sub.keys if k not in old]
        self.keys, self.experiment = planned, sub.experiment
        done = sub.summary.skipped
        if not old:
            line = (f"{sub.experiment}: planned {len(planned)} runs: {len(sub.keys)} queued, {done} done already")
        else:
            gone = len(old - set(planned))
            line = (f"{sub.experiment}: {len(new)} new runs queued, {gone} no longer planned"
                    + (f" ({withdrawn} withdrawn from the queue)" if withdrawn else "")
                    + f", {len(planned) - len(new)} unchanged ({done} done, {len(sub.keys) - len(new)} still queued)")
        if not live and sub.keys:
            line += "; no live warm worker: the runs wait in the queue (start `tracker worker`)"
        return line

    def progress(self) -> dict[str, int]:
        from tracker.sweep import claims
        from tracker.store.runstore import Store

        with Store.open(self.ws.db_url, home=self.ws.home) as store:
            return claims.remaining(store, self.experiment, self.keys) if self.experiment else {}

    def stop(self) -> int:
        """Withdraw the runs still queued (Ctrl-C)."""
        from tracker.store.runstore import Store

        if self.sweep_id is None:
            return 0
        with Store.open(self.ws.db_url, home=self.ws.home) as store:
            return withdraw(store, self.sweep_id)
