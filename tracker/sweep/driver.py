"""The one sweep driver: ``tracker run``, ``tracker.run()``, ``--workers``, ``--ray`` and each rank of an
``accelerate launch`` all come through ``run``, which parses the experiment and expands its plan once
(``preparation.prepare``) and hands them to an executor. The executor is the only thing that differs:

- ``InProcess``: this process generates (``runner.run_prepared``); under ``accelerate launch`` it is one rank;
- ``LocalPool``: N worker processes on this machine (``pool.run_workers``); each child is a ``tracker run`` of
  the same file, which parses it in its own process;
- ``RayActors``: actors on a Ray cluster for this sweep only, fed by this process (``ray_cluster.run_ray``).

``tracker run FILE --ray ADDRESS`` does not come here: it hands the plan to the cluster's warm actors through the
run store's queue (``ray_warm.start``, ``queue.submit``), as to any warm worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tracker.experiment.model import ExperimentSpec
from tracker.sweep import preparation, runner
from tracker.sweep.preparation import Prepared
from tracker.sweep.runner import RunOptions, SweepSummary
from tracker.workspace import WorkspaceConfig


@dataclass(frozen=True)
class InProcess:
    """Generate here. ``pipeline``: a user's pipeline (``tracker.engine.userpipe.UserPipeline``); ``engine``: an
    Engine to use instead of a new one (bench/gpu_standin.py)."""

    pipeline: Any = None
    engine: Any = None

    def run(self, ws: WorkspaceConfig, prepared: Prepared, options: RunOptions) -> SweepSummary:
        return runner.run_prepared(ws, prepared, options, pipeline=self.pipeline, engine=self.engine)


@dataclass(frozen=True)
class LocalPool:
    """``--workers N``: N processes on this machine (None: one per CUDA device); ``note`` gets the line saying
    the count was cut to the plan's size."""

    workers: int | None = None
    note: Callable[[str], None] | None = None

    def run(self, ws: WorkspaceConfig, prepared: Prepared, options: RunOptions) -> SweepSummary:
        from tracker.sweep import pool

        return pool.run_workers(ws, prepared, self.workers, options, note=self.note)


@dataclass(frozen=True)
class RayActors:
    """``--ray [ADDRESS]``: actors on a Ray cluster (``actors``: how many; None: one per GPU or CPU slot)."""

    address: str | None = None
    actors: int | None = None

    def run(self, ws: WorkspaceConfig, prepared: Prepared, options: RunOptions) -> SweepSummary:
        from tracker.sweep import ray_cluster

        return ray_cluster.run_ray(ws, prepared, self.address, options, self.actors)


def run(ws: WorkspaceConfig, source: "str | Path | ExperimentSpec", options: RunOptions = RunOptions(),
        executor: "InProcess | LocalPool | RayActors" = InProcess()) -> SweepSummary:
    """Generate every planned run of ``source`` (an experiment file, or a parsed ExperimentSpec) not done yet."""
    prepared = preparation.prepare(ws, source, options)
    return executor.run(ws, prepared, options)
