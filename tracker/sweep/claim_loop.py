"""Claim-driven generation: how one worker of a sweep takes its work from the run store.

Every ``tracker run`` is a worker (a single process, one of ``--workers N``, an accelerate rank): it
registers in ``workers``, then repeatedly claims a batch-sized group of runs that share their
pipeline settings (``tracker.sweep.claims``), generates it through the sweep's batch executor and records
it. A heartbeat renews its leases meanwhile. When nothing is claimable it waits while other workers
still hold runs (they finish them, or their leases end and the runs become claimable here) and stops
when every run of its plan is done or failed. Two ``tracker run`` of one experiment thus share the
work instead of both generating it.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

from tracker.sweep import claims
from tracker.experiment.plan import PlannedRun

POLL_SECONDS = 0.5  # how often an idle worker looks for claimable runs
GATE_WAIT_S = 0.05  # background work waits at most this long for the next pipeline call to begin (``gate``)


def lease_seconds() -> float:
    """The lease of a claim: ``TRACKER_LEASE_SECONDS`` or 60 s (renewed every third of it)."""
    try:
        return max(0.5, float(os.environ.get("TRACKER_LEASE_SECONDS", claims.DEFAULT_LEASE_SECONDS)))
    except ValueError:
        return claims.DEFAULT_LEASE_SECONDS


def batch_of(group: Sequence[PlannedRun], auto_max: int) -> int:
    size = group[0].settings.batch_size
    return min(len(group), auto_max) if size == "auto" else int(size)


def generate_claimed(store, groups: Sequence[Sequence[PlannedRun]], worker: "claims.Worker", auto_max: int,
                     run_chunk: Callable[[list[PlannedRun]], None], summary, lease: float | None = None,
                     gate: threading.Event | None = None) -> None:
    """Claim batch-sized pieces of ``groups`` and hand each to ``run_chunk`` (generate and record it) until
    none of their runs is left to do. ``summary``: the sweep's counts (done, failed), copied to the worker.

    The next piece is claimed (one store transaction, carrying the worker's progress so far) in a helper
    thread while ``run_chunk`` generates the current one, so no store commit waits between two pipeline
    calls. ``gate`` (``Sweep.calling``): set once a pipeline call denoises, cleared when it is done; the claim
    waits for it (at most ``GATE_WAIT_S``), so its Python does not take the GIL from the work between two
    calls; set here once nothing is left to generate. When nothing is claimable, only other workers'
    running runs are waited for: this worker's own are in its writing stage, which the caller drains."""
    exp = groups[0][0].experiment
    lease = lease or lease_seconds()
    by_key = {r.key: r for g in groups for r in g}
    wanted = [([r.key for r in g], batch_of(g, auto_max)) for g in groups]
    busy = 0.0

    def counts() -> dict:
        return {"done": summary.done, "failed": summary.failed, "busy_seconds": busy}

    claims.reap_local(store)  # a killed earlier run on this machine: its runs are claimable now
    # leaving the executor waits for a claim in flight, so the caller's release (Ctrl-C, errors) covers it
    with claims.Heartbeat(store, worker, lease), ThreadPoolExecutor(1, thread_name_prefix="tracker-claim") as ahead:
        keys = claims.claim(store, exp, worker, wanted, lease)
        while True:
            if keys:
                if gate is not None:
                    gate.clear()  # (the first time; later the last call's end cleared it)
                following = ahead.submit(_claim_in_call, gate, store, exp, worker, wanted, lease, counts())
                began = time.perf_counter()
                run_chunk([by_key[k] for k in keys])
                busy += time.perf_counter() - began
                keys = following.result()
                continue
            if gate is not None:
                gate.set()  # nothing more to generate: what waits for the next call goes on now
            left = claims.remaining(store, exp, list(by_key), other_than=worker)
            if left["pending"] + left["running"] == 0:
                claims.progress(store, worker, **counts())
                return
            time.sleep(POLL_SECONDS)
            keys = claims.claim(store, exp, worker, wanted, lease, counts())


def _claim_in_call(gate: threading.Event | None, *args) -> list[str]:
    """``claims.claim`` once the pipeline call denoises (``gate``), or after ``GATE_WAIT_S`` at the latest."""
    if gate is not None:
        gate.wait(GATE_WAIT_S)
    return claims.claim(*args)
