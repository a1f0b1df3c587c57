"""``tracker run FILE --workers N``: N worker processes on one machine sharing one sweep's work.

Each worker is a plain ``tracker run FILE`` child process (``--no-mlflow -q``) pinned to its device:
``cuda:i`` when CUDA has several devices, else the CPU with its share of the cores
(``OMP_NUM_THREADS``). The workers load their pipeline once and take batch-sized groups through the
run store's claims (``tracker.sweep.claim_loop``), so nothing is generated twice. This parent process does not
generate: it watches the children, gives the claims of a child that died back at once (other
workers redo them; without this they would wait for the lease to end), and logs the finished runs
to MLflow while they work: one MLflow parent run for the pool, each child's sweep adopted under it,
and each done run logged once (``LiveMlflow``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tracker import limits
from tracker.errors import UsageError
from tracker.sweep.preparation import Prepared
from tracker.sweep.runner import RunOptions, SweepSummary, progress_bar
from tracker.workspace import WorkspaceConfig


@dataclass
class PoolSummary(SweepSummary):
    """A sweep's figures (``runner.SweepSummary``) for a pool: the workers, the runs left not done, the workers
    that died, and what the parent's MLflow logging says."""

    workers: int = 0
    pending: int = 0
    died: int = 0
    mlflow_note: str | None = None


def devices_for(n: int | None, device: str | None) -> list[str]:
    """One device per worker: every CUDA device when there are several (n defaults to their number),
    else ``device`` (or cpu) for each of the n workers."""
    if (device is None or device == "cuda") and _cuda_may_exist():
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count >= 1 and device in (None, "cuda"):
            n = n or count
            return [f"cuda:{i % count}" for i in range(n)]
    if not n:
        raise UsageError("--workers auto needs several CUDA devices; on a CPU give a number, e.g. --workers 2")
    return [device or "cpu"] * n


def cap_workers(devices: list[str], runs: int, asked: int | None) -> tuple[list[str], str | None]:
    """``devices`` (one per worker) cut to what can work at once: at most ``limits.MAX_WORKERS``, one per run of
    the plan, one per CUDA device (more would share a device, each loading the model again) and else one per
    CPU core (each worker gets at least one thread). Returns the devices kept and, when cut, one line saying so."""
    limits_ = [(limits.MAX_WORKERS, f"at most {limits.MAX_WORKERS} (tracker.limits.MAX_WORKERS)"),
               (max(1, runs), f"the plan has {runs} run{'s' if runs != 1 else ''}")]
    cuda = sorted({d for d in devices if d.startswith("cuda")})
    if cuda:
        limits_.append((len(cuda), f"{len(cuda)} CUDA device{'s' if len(cuda) != 1 else ''}"))
    else:
        cores = _cores()
        limits_.append((cores, f"this machine has {cores} CPU core{'s' if cores != 1 else ''}"))
    keep, why = min(limits_, key=lambda lw: lw[0])
    if keep >= len(devices):
        return devices, None
    return devices[:keep], f"--workers {asked or len(devices)}: starting {keep} worker{'s' if keep != 1 else ''} ({why})"


def _cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cuda_may_exist() -> bool:
    """False only where CUDA surely has no device, told without importing torch (~2 s that every worker pays
    again): CUDA_VISIBLE_DEVICES empty or -1, or a Linux machine with neither NVIDIA's kernel driver
    (/proc/driver/nvidia) nor ROCm's (/dev/kfd)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in ("", "-1"):
        return False
    return not sys.platform.startswith("linux") or Path("/proc/driver/nvidia").exists() or Path("/dev/kfd").exists()


def _wait_any(procs: list[subprocess.Popen], seconds: float) -> None:
    """Return when one of ``procs`` has ended or after ``seconds``, whichever comes first."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and all(p.poll() is None for p in procs):
        time.sleep(0.05)


def run_workers(ws: WorkspaceConfig, prepared: Prepared, n: int | None, options: RunOptions,
                note: Callable[[str], None] | None = None) -> PoolSummary:
    """The local pool executor: ``n`` ``tracker run`` children of the experiment file (None: one per CUDA device,
    at most as many as ``cap_workers`` allows; ``note`` gets the one line saying the count was cut) share the
    prepared plan's work through the store's claims (each child parses the file in its own process); this
    process watches them."""
    from tracker.sweep import claims
    from tracker.store.runstore import Store

    # 1. The file was parsed and planned once here (``preparation.prepare``): a bad file fails before any child starts.
    exp, path = prepared.experiment, prepared.file
    if path is None:
        raise UsageError(f"{prepared.where}: --workers runs an experiment file in each worker; this experiment "
                         "has none (write it to a file, or run it without workers)")
    keys = [r.key for r in prepared.plan.runs]
    device, max_runs, from_key = options.device, options.max_runs, options.from_key
    devices, cut = cap_workers(devices_for(n, device), len(keys), n)
    if cut and note is not None:
        note(cut)
    ws.ensure()
    store = Store.open(ws.db_url, home=ws.home)  # creates or upgrades the store once, not in N children at once
    try:
        if options.retry_failed:
            failed = [r.key for r in store.runs(exp.name, status="failed") if r.key in set(keys)]
            store.mark_pending(exp.name, failed)

        # 2. Start the workers, each with its share of the CPU threads.
        threads = max(1, (os.cpu_count() or 1) // len(devices))
        procs = [_spawn(ws, path, dev, threads, i, max_runs, from_key) for i, dev in enumerate(devices)]
        summary = PoolSummary(exp.name, len(keys), workers=len(procs), images_dir=ws.images_dir / exp.name)

        # 3. Watch them: a child that dies gives its claims back now; finished runs go to MLflow meanwhile.
        live = LiveMlflow(ws, exp.name, str(Path(path).resolve()), keys, [p.pid for p in procs]) \
            if ws.mlflow_enabled else None
        began = time.perf_counter()
        status = "interrupted"
        try:
            with progress_bar(len(keys), exp.name, options.progress) as bar:
                seen = 0
                while procs:
                    _wait_any(procs, 0.5)
                    for p in [p for p in procs if p.poll() is not None]:
                        procs.remove(p)
                        if p.returncode not in (0, 1):  # 1: some runs failed, the worker itself finished
                            summary.died += 1
                            _release_dead(store, p.pid)
                    done = claims.remaining(store, exp.name, keys)["done"]
                    bar.update(done - seen)
                    seen = done
                    if live is not None:
                        live.tick(store)
            summary.seconds = time.perf_counter() - began
            left = claims.remaining(store, exp.name, keys)
            summary.done, summary.failed, summary.pending = left["done"], left["failed"], left["pending"] + left["running"]
            status = "failed" if summary.failed else "done"
        finally:
            # 4. MLflow: what is left (also runs an earlier outage left unsynced), then the parent's summary.
            if live is not None:
                summary.mlflow_note = live.close(store, summary, status)
    finally:
        store.close()
    return summary


class LiveMlflow:
    """The pool's MLflow logging, from the parent while the workers run: one parent MLflow run for the
    pool, the workers' sweeps adopted under it (their ``mlflow_run_id`` is the pool's parent, so a later
    ``tracker sync`` and report attachments find it), and each done run submitted once, as soon as the
    store says it is done. ``MlflowSink`` logs from its own process, so watching never waits for MLflow;
    at most the sink's free room is submitted per tick, the rest on a later one."""

    EVERY_S = 1.0

    def __init__(self, ws: WorkspaceConfig, experiment: str, spec_path: str, keys: list[str], pids: list[int]):
        from tracker.mlflow.worker import MlflowSink

        self.experiment, self.spec_path, self.keys, self.pids = experiment, spec_path, set(keys), list(pids)
        self.sink = MlflowSink(ws.mlflow_tracking_uri, experiment, ws.db_url, ws.mlflow_artifacts_dir, home=ws.home)
        self.opened = False
        self.adopted: set[int] = set()
        self.submitted: set[str] = set()
        self._last = 0.0

    def tick(self, store, force: bool = False) -> int:
        """Adopt new worker sweeps and submit newly done runs; returns how many runs were submitted."""
        from tracker.sweep import claims

        if not force and time.monotonic() - self._last < self.EVERY_S:
            return 0
        self._last = time.monotonic()
        for sweep_id in sorted(set(claims.local_sweeps(store, self.pids).values()) - self.adopted):
            if not self.opened:
                self._open(store, sweep_id)
            self.sink.adopt(sweep_id)
            self.adopted.add(sweep_id)
        todo = [k for k, sweep_id in claims.unsynced_done(store, self.experiment)
                if sweep_id in self.adopted and k in self.keys and k not in self.submitted]
        return self._submit(todo)

    def _open(self, store, sweep_id: int) -> None:
        """The pool's parent run, tagged like a sweep's (the first worker's environment) plus the pool size."""
        from tracker.mlflow.mapping import environment_tags

        environment = store.sweep(sweep_id).get("environment") or {}
        self.sink.start_sweep(None, self.spec_path, {**environment_tags(environment),
                                                     "tracker.workers": str(len(self.pids))})
        self.opened = True

    def _submit(self, keys: list[str]) -> int:
        keys = keys[:self.sink.room()]
        for key in keys:
            self.sink.submit_key(self.experiment, key)
            self.submitted.add(key)
        return len(keys)

    def close(self, store, summary: "PoolSummary", status: str) -> str:
        """Submit what is left (the workers' last runs, and done runs of the plan an earlier outage left
        unsynced, under their own sweeps' parents), end the parent with the pool's figures; one line."""
        from tracker.sweep import claims

        try:
            while True:
                self.tick(store, force=True)
                rest = [k for k, _ in claims.unsynced_done(store, self.experiment)
                        if k in self.keys and k not in self.submitted]
                if not rest:
                    break
                if self.sink.down:  # counted as waiting for `tracker sync`, not sent
                    for key in rest:
                        self.sink.submit_key(self.experiment, key)
                    break
                if not self._submit(rest):
                    time.sleep(0.2)  # the sink is full: wait for room
            if self.opened:
                self.sink.finish_sweep({**summary.to_dict(), "status": status})
        finally:
            result = self.sink.close()
        return result.message(self.experiment)


def _spawn(ws: WorkspaceConfig, path: str, device: str, threads: int, index: int, max_runs, from_key) -> subprocess.Popen:
    args = [sys.executable, "-m", "tracker", "run", str(path), "--no-mlflow", "-q", "--device", device]
    if max_runs:
        args += ["--max-runs", str(max_runs)]
    if from_key:
        args += ["--from", from_key]
    env = {**os.environ, "TRACKER_HOME": str(ws.home), "TRACKER_DB_URL": ws.db_url,
           "TRACKER_WORKER_NAME": f"{socket.gethostname()}:w{index}:{device}",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)


def _release_dead(store, pid: int) -> None:
    """Give back the running runs of this host's worker with ``pid`` (the newest such worker)."""
    import sqlalchemy as sa

    from tracker.sweep import claims
    from tracker.store.tables import workers_t

    with store._read() as conn:
        wid = conn.execute(sa.select(workers_t.c.id).where(workers_t.c.pid == pid,
                                                          workers_t.c.host == socket.gethostname())
                           .order_by(workers_t.c.id.desc()).limit(1)).scalar()
    if wid is not None:
        claims.release(store, wid)
        with store._write() as conn:
            conn.execute(workers_t.update().where(workers_t.c.id == wid).values(status="died"))


def format_pool(s: PoolSummary) -> str:
    lines = [f"{s.experiment}: {s.done} done, {s.failed} failed, {s.pending} not done of {s.planned} planned "
             f"by {s.workers} workers in {s.seconds:.1f} s"
             + (f" ({s.images_per_second:.2f} images/s)" if s.done else "")]
    if s.died:
        lines.append(f"{s.died} worker(s) died; their runs were given back to the others")
    if s.images_dir is not None:
        lines.append(f"images: {s.images_dir}")
    if s.mlflow_note:
        lines.append(s.mlflow_note)
    return "\n".join(lines)
