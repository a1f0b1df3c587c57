"""``tracker run FILE --ray`` (no address) and ``driver.RayActors``: one experiment across a Ray cluster by actors
that live for the sweep. (``--ray ADDRESS`` uses the cluster's warm actors instead: ``tracker.sweep.ray_warm``.)

Ray's batch-inference pattern: one actor per GPU (``num_gpus=1``), or per CPU slot on a CPU-only
cluster, each holding a loaded pipeline for as long as the sweep lasts. The driver (this process)
keeps the plan, the run store and MLflow: it claims a batch-sized group of runs for an idle actor
(each actor is a worker in the store, its leases renewed by the driver), sends the runs, and writes
the images the actor sends back (PNG with its recipe, then ``done``). An actor that dies
(``ActorDiedError``: its machine or process went away) gets its claims given back at once and the
other actors redo them. ADDRESS: ``auto`` (a running cluster on this machine), ``ray://host:port`` (Ray
Client) or nothing (a local cluster started for this sweep and stopped after it).

The actors import prompt-tracker: on a remote cluster install it on every node (or pass a runtime
environment through ``RAY_RUNTIME_ENV``-style cluster configuration).
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tracker.engine.batches import BatchHooks
from tracker.errors import TrackerError

RAY_EXTRA_HINT = "install the Ray extra: pip install 'prompt-tracker[ray]'"


class RayMissing(TrackerError):
    exit_code = 2


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissing(f"--ray needs Ray, which is not installed; {RAY_EXTRA_HINT}") from None
    return ray


class Generator:
    """The actor: a loaded Engine that turns a batch-sized group of runs into images."""

    def __init__(self, base_dir: str, device: str | None, threads: int | None, inputs_dir: str | None = None):
        import socket

        if threads:
            import torch

            torch.set_num_threads(threads)
        from tracker.engine.core import Engine

        self.engine = Engine(device=device, base_dir=Path(base_dir))
        self.engine.inputs_dir = Path(inputs_dir) if inputs_dir else None  # the workspace's input images (shared)
        self.device = device
        self.fits: dict = {}  # settings -> batch size that fitted after out of memory, kept across batches
        self.where = {"host": socket.gethostname(), "pid": os.getpid(), "device": device}

    def info(self) -> dict:
        return self.where

    def environment(self) -> dict:
        return self.engine.environment()

    def prepare(self, settings: Sequence) -> None:
        """Load every pipeline the work needs now: a missing model fails before any run is claimed."""
        for s in settings:
            self.engine.prepare(s)

    def generate(self, runs: Sequence) -> dict:
        """One batch (runs sharing their settings) through the shared batch executor: out of memory halves
        the batch, another error retries its runs one at a time. Returns the finished batches, the failures,
        the halvings (recorded by the driver as a local sweep records them) and what the engine knew."""
        from tracker.engine import batches

        runs = list(runs)
        settings = runs[0].settings
        made = _Made()
        batches.execute(self.engine, runs, len(runs), made, fits=self.fits)  # the one batch executor, as a local sweep's
        done, failures = made.batches, made.failures
        for _, result in done:  # the engine's images convert lazily under a lock: send plain ones
            result.images = [_Image(i) for i in result.images]
        return {"batches": done, "failures": failures, "halved": made.halved_at, "facts": {
            "scheduler_config": self.engine.scheduler_config(), "model_revision": self.engine.model_revision(settings.model),
            "device": self.engine.device_for(settings), "environment": self.engine.environment()}}


class _Made(BatchHooks):
    """The batch executor's hooks on an actor: the finished batches and the runs that failed, sent back."""

    def __init__(self) -> None:
        self.batches: list = []
        self.failures: list = []
        self.halved_at: list = []  # (runs, batch size that ran out of memory, error text)

    def halved(self, runs, batch: int, error: BaseException) -> None:
        self.halved_at.append((list(runs), batch, f"{type(error).__name__}: {error}"))

    def done(self, runs, result) -> None:
        self.batches.append((list(runs), result))

    def failed(self, run, error: str) -> None:
        self.failures.append((run, error))


class _Image:
    """A converted ``engine.ImageResult`` that pickles (the PIL image, or the reason there is none)."""

    def __init__(self, result):
        self.key, self.seconds, self.seconds_per_step = result.key, result.seconds, result.seconds_per_step
        self.image = result.image
        self.error = result.error


@dataclass
class _Facts:
    """Stands in for the engine on the driver: what the actor knew of the settings it generated with."""

    facts: dict = field(default_factory=dict)

    def scheduler_config(self) -> dict:
        return self.facts.get("scheduler_config") or {}

    def model_revision(self, model: str) -> str | None:
        return self.facts.get("model_revision")

    def model_revision_later(self, model: str):
        revision = self.facts.get("model_revision")
        return lambda: revision

    def pipeline_info(self, model: str) -> dict | None:
        return None

    def device_for(self, settings: Any) -> str:
        return self.facts.get("device") or "cpu"

    def environment(self) -> dict:
        return self.facts.get("environment") or {}


def _start(ray, address: str | None) -> bool:
    """Connect to (or start) the cluster; True when this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
    except Exception as e:  # no cluster at that address, a version mismatch ...
        raise TrackerError(f"cannot start or join the Ray cluster {address or '(local)'}: {e}") from None
    return True


def _actors(ray, n: int | None, device: str | None, base_dir: Path, inputs_dir: Path | None = None):
    """One actor per GPU of the cluster, else one per CPU slot (or ``n``), each with a loaded engine."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and device in (None, "cuda") or (device or "").startswith("cuda"):
        count, opts, dev, threads = n or gpus, {"num_gpus": 1}, "cuda", None
    else:
        count = n or max(1, int(resources.get("CPU", 1)))
        opts, dev, threads = {"num_cpus": 1}, device or "cpu", 1
    cls = ray.remote(**opts)(Generator)
    # named tracker:<driver pid>:<sweep token>:<i>, so that `ray list actors` shows whose they are; the token keeps
    # two sweeps of one driver process (a notebook, the tests) apart while the first one's actors are still going away
    token = uuid.uuid4().hex[:8]
    return [cls.options(name=f"tracker:{os.getpid()}:{token}:{i}").remote(str(base_dir), dev, threads,
                                                                              str(inputs_dir) if inputs_dir else None)
            for i in range(count)]


def run_ray(ws, prepared, address: str | None, options, n: int | None = None):
    """The Ray executor: generate every run of the prepared plan (``preparation.prepare``) not done yet on a Ray
    cluster; returns the SweepSummary."""
    from tracker.sweep import claims, preparation, runner, claim_loop as work
    from tracker.errors import ModelError
    from tracker.store.runstore import Store

    ray = import_ray()
    # 1. The file was parsed and planned once (``preparation.prepare``): a bad file failed before any cluster starts.
    exp, the_plan, where = prepared.experiment, prepared.plan, prepared.where
    summary = runner.SweepSummary(exp.name, planned=len(the_plan.runs), images_dir=ws.images_dir / exp.name,
                                  keys=tuple(r.key for r in the_plan.runs))
    ws.ensure()
    store = Store.open(ws.db_url, home=ws.home)
    started = _start(ray, address)
    actors: list = []
    try:
        found = preparation.find_work_in(store, prepared, options)
        todo = found.todo

        # 2. The actors: each loads the pipelines once (a missing model fails here, naming the file).
        actors = _actors(ray, n, options.device, prepared.base_dir or Path.cwd(), ws.inputs_dir)
        groups = list(runner.ordered_groups(todo))
        try:
            where_actors = ray.get([a.info.remote() for a in actors])
            ray.get([a.prepare.remote([g[0].settings for g in groups]) for a in actors])
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None) or e
            raise ModelError(f"{where}: {cause}") from None
        except ray.exceptions.RayActorError as e:
            raise TrackerError(f"{where}: the Ray actors could not start: {e}") from None

        # 3. The sweep, its runs and MLflow, all kept here on the driver (environment: the first actor's), recorded
        #    as a local sweep records them (``preparation.start_sweep``).
        facts = _Facts({"environment": ray.get(actors[0].environment.remote())})
        sink = runner.mlflow_sink(ws, exp.name)
        preparation.start_sweep(store, prepared, options, found, summary, "ray", facts.environment())
        sweep_id = summary.sweep_id
        if sink is not None:
            sink.start_sweep(sweep_id, str(prepared.file) if prepared.file is not None else None, {})

        # 4. Drive the actors: claim for each idle one, record what comes back, give a dead one's runs back.
        workers = {a: claims.register(store, sweep_id, w["device"], name=f"ray:{w['host']}:{w['pid']}")
                   for a, w in zip(actors, where_actors)}
        sweep = runner.Sweep(ws, store, facts, sink, sweep_id, summary, claimed=True)
        try:
            with runner.progress_bar(len(todo), exp.name, options.progress) as bar:
                sweep.bar = bar
                sweep.writer = runner.writer_for(ws, store, sink, facts, exp.settings, sweep)
                try:
                    _drive(ray, store, sweep, facts, workers, groups, work.lease_seconds())
                finally:
                    sweep.writer.close()
        except KeyboardInterrupt:
            for w in workers.values():
                claims.finish(store, w, "interrupted")
            sweep.finish("interrupted")
            raise
        sweep.finish("failed" if summary.failed else "done")
    finally:
        store.close()
        for actor in actors:  # this sweep's actors end with it, also on a cluster it only joined
            ray.kill(actor)
        if started:
            ray.shutdown()
    return summary


def _drive(ray, store, sweep, facts: _Facts, workers: dict, groups: list, lease: float) -> None:
    """``sweep``: the driver's ``runner.Sweep``, recording what the actors send back."""
    from tracker.sweep import claims, claim_loop as work
    from tracker.sweep.runner import AUTO_BATCH_MAX

    exp = groups[0][0].experiment if groups else None
    if exp is None:
        return
    by_key = {r.key: r for g in groups for r in g}
    wanted = [([r.key for r in g], work.batch_of(g, AUTO_BATCH_MAX)) for g in groups]
    beats = {a: claims.Heartbeat(store, w, lease).__enter__() for a, w in workers.items()}
    idle, inflight = list(workers), {}
    made: dict = {}  # actor -> images it made
    busy: dict = {}
    try:
        while True:
            while idle:
                keys = claims.claim(store, exp, workers[idle[0]], wanted, lease)
                if not keys:
                    break
                actor = idle.pop(0)
                runs = [by_key[k] for k in keys]
                inflight[actor.generate.remote(runs)] = (actor, runs, time.perf_counter())
            if not inflight:
                left = claims.remaining(store, exp, list(by_key))
                if left["pending"] + left["running"] == 0:
                    return
                if not workers:
                    raise TrackerError(f"every Ray actor died; {left['pending'] + left['running']} runs are not done "
                                       "(run the same command again to finish them)")
                time.sleep(work.POLL_SECONDS)
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                actor, runs, began = inflight.pop(ref)
                worker = workers[actor]
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayActorError:
                    beats.pop(actor).__exit__(None, None, None)
                    claims.finish(store, worker, "died")  # its runs go back to pending; others redo them
                    del workers[actor]
                    continue
                facts.facts = {**facts.facts, **out["facts"]}
                sweep.facts = None  # this actor's facts: the sweep reads them again for its batches
                for halved_runs, batch, error in out["halved"]:
                    sweep.halved(halved_runs, batch, error)  # an "oom" event, as a local sweep records it
                for chunk, result in out["batches"]:
                    sweep.record(chunk, result)
                for run, error in out["failures"]:
                    sweep.writer.fail(run, error)
                made[actor] = made.get(actor, 0) + sum(len(c) for c, _ in out["batches"])
                busy[actor] = busy.get(actor, 0.0) + time.perf_counter() - began
                claims.progress(store, worker, done=made[actor], busy_seconds=busy[actor])
                idle.append(actor)
    finally:
        for b in beats.values():
            b.__exit__(None, None, None)
        for w in workers.values():
            claims.finish(store, w)
