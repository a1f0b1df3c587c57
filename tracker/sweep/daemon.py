"""``tracker worker``: a warm worker, one long-lived process on one device that keeps pipelines loaded and
makes the runs submitted to the run store's queue (``tracker.sweep.queue``).

It registers a workers row (kind daemon) and heartbeats through ``claims.Heartbeat`` (which also renews the
leases of the runs it holds, so a killed worker's claims end and another worker takes them). In a loop it
picks the next submitted sweep (``queue.pick``: priority, round-robin between experiments, FIFO within
one), claims one batch-sized group of its runs with ``claims.claim`` and generates it through the sweep path
of ``tracker run``: a ``runner.Sweep`` per submitted sweep (the batch executor, the writing stage with PNG
recipe, metrics and MLflow), its engine shared by all of them, so a model loaded for one sweep is warm for
the next. Pipelines stay cached in the engine; the least recently used ones are unloaded before a new one
would pass the ``--max-memory`` budget (and again once it is loaded), or when the device's free memory is
less than the new one's weight files (``WarmPipelines``, ``free_memory``).

A run is made only if the plan that submitted it allows its model, VAE, LoRA adapters and ``allow_pickle``
(``queue.refusal``); otherwise it fails with the reason, unloaded.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tracker.sweep import claims, queue
from tracker.sweep.claim_loop import batch_of, lease_seconds
from tracker.workspace import WorkspaceConfig

log = logging.getLogger("tracker")
ACTIVITY_SECONDS = 2.0  # an idle worker writes its activity (and so its last_seen) this often
POLL_SECONDS = 0.1  # how often an idle worker reads the queue (one indexed query): a submitted run starts this soon


class WarmPipelines:
    """Least-recently-used pipelines out under ``max_bytes`` (None: no budget of its own) and whenever the
    device's free memory (``free_bytes``) would fall below what the next pipeline needs (its weight files'
    size): the worker keeps as many models loaded as the device holds."""

    def __init__(self, engine, max_bytes: int | None, note: Callable[[str], None], device: str | None = None):
        self.engine, self.max_bytes, self.note, self.device = engine, max_bytes, note, device
        self.order: "OrderedDict[tuple, str]" = OrderedDict()  # key -> model name, oldest first
        self.evicted = 0

    def free_bytes(self) -> int | None:
        """What the device has free now (``free_memory``); None: unknown, nothing is evicted for it."""
        return free_memory(self.device) if self.device else None

    def before(self, settings) -> None:
        """Make room for the pipeline ``settings`` need when it is not loaded yet: its weight files' size."""
        key = self.engine.pipeline_key(settings)
        if key is None or key in self.order:
            return
        incoming = _weights_on_disk(key[0])
        if self.max_bytes is not None:
            self._evict(self.engine.pipeline_bytes(), incoming, keep=None)
        self._make_room(incoming, settings.model)

    def after(self, settings) -> None:
        """The pipeline of ``settings`` is in use: most recently used; over budget, the oldest others go."""
        key = self.engine.pipeline_key(settings)
        if key is None:
            return
        self.order[key] = settings.model
        self.order.move_to_end(key)
        if self.max_bytes is not None:
            self._evict(self.engine.pipeline_bytes(), 0, keep=key)

    def _evict(self, sizes: dict, incoming: int, keep) -> None:
        for key in [k for k in self.order if k not in sizes]:
            del self.order[key]
        while sum(sizes.values()) + incoming > self.max_bytes:
            victim = next((k for k in self.order if k != keep), None)
            if victim is None:
                return
            name = self.order.pop(victim)
            freed = sizes.pop(victim, 0)
            self.engine.unload(victim)
            self.evicted += 1
            self.note(f"evicted {name} ({_mb(freed)}, least recently used) to stay within {_mb(self.max_bytes)}")

    def _make_room(self, incoming: int, model: str) -> None:
        """Unload the least recently used pipelines while the device's free memory is below ``incoming``."""
        free = self.free_bytes()
        if free is None or free >= incoming:
            return
        sizes = self.engine.pipeline_bytes()
        for key in [k for k in self.order if k not in sizes]:
            del self.order[key]
        while free < incoming and self.order:
            victim, name = self.order.popitem(last=False)
            freed = sizes.pop(victim, 0)
            self.engine.unload(victim)
            self.evicted += 1
            self.note(f"evicted {name} ({_mb(freed)}, least recently used): {self.device} had {_mb(free)} free, "
                      f"{model} needs {_mb(incoming)}")
            now = self.free_bytes()
            # a CPU allocator may keep freed pages from the OS: count what was unloaded as free at least
            free = max(now if now is not None else 0, free + freed)
        if free < incoming:
            self.note(f"{self.device} has {_mb(free)} free and {model} needs {_mb(incoming)}; nothing left to "
                      f"unload, loading it anyway")

    def models(self) -> list[str]:
        return list(self.order.values())


def free_memory(device: str) -> int | None:
    """Bytes free on ``device`` now: ``torch.cuda.mem_get_info`` on CUDA; on the CPU the memory the system can
    give this process (psutil's available memory, or MemAvailable of /proc/meminfo, within a cgroup's limit);
    None when it cannot be read (mps)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    if device != "cpu":
        return None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        available = _meminfo_available()
    limit = _cgroup_room()
    if available is None:
        return limit
    return available if limit is None else min(available, limit)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves (memory.max - memory.current); None without a limit."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((base / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def _weights_on_disk(location: str) -> int:
    folder = Path(location)
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")
               and p.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def parse_memory(text: str | None) -> int | None:
    """``--max-memory``: bytes, or a number with KB/MB/GB/KiB/MiB/GiB; None for no budget."""
    if text is None:
        return None
    from tracker.errors import UsageError

    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
    t = text.strip().lower().replace(" ", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    try:
        value = float(num)
    except ValueError:
        value = -1
    if unit not in units or not value > 0:
        raise UsageError(f"--max-memory: {text!r} is not a size (a number with B, KB, MB, GB, KiB, MiB or GiB)")
    return int(value * units[unit])


@dataclass
class _Active:
    """One submitted sweep this worker is making runs of: its Sweep (writer, MLflow sink) and counts."""

    sweep: Any  # runner.Sweep
    experiment: str
    submission: dict
    began: float = field(default_factory=time.perf_counter)


class Daemon:
    def __init__(self, ws: WorkspaceConfig, device: str | None = None, experiments: Sequence[str] | None = None,
                 max_memory: int | None = None, idle_timeout: float | None = None, name: str | None = None,
                 note: Callable[[str], None] | None = None):
        self.ws, self.device, self.experiments = ws, device, list(experiments or ())
        self.max_memory, self.idle_timeout, self.name = max_memory, idle_timeout, name
        self.note = note or (lambda line: print(line, file=sys.stderr, flush=True))
        self.active: dict[int, _Active] = {}
        self.done = self.failed = 0
        self.worker = None
        self.stopping = False  # ``stop()``: the loop ends before its next claim (a Ray actor asked to stop)

    def stop(self) -> None:
        """Stop after the batch in hand (from another thread); its sweeps are drained and closed as usual."""
        self.stopping = True

    def run(self) -> int:
        """Serve the queue until Ctrl-C / SIGTERM or ``idle_timeout`` seconds without work; returns runs made."""
        from tracker.engine.core import Engine
        from tracker.store.runstore import Store

        self.ws.ensure()
        store = Store.open(self.ws.db_url, home=self.ws.home)
        engine = Engine(device=self.device)
        engine.inputs_dir = self.ws.inputs_dir  # a queued sweep's input images (its submitter stored them)
        device = self.device or "auto"
        try:
            device = engine._resolve_device(device.lower(), "--device")
        except Exception:
            store.close()
            raise
        lease = lease_seconds()
        self.worker = queue.register(store, device, self.name, self.experiments, beat_seconds=lease / 3)
        cache = WarmPipelines(engine, self.max_memory, lambda line: self.note(f"{self.worker.name}: {line}"),
                             device)
        served = ", ".join(self.experiments) or "every experiment"
        self.note(f"warm worker {self.worker.name} (id {self.worker.id}) on {device}, serving {served} of "
                  f"{self.ws.db_url}" + (f"; pipelines within {_mb(self.max_memory)}" if self.max_memory else "")
                  + (f"; stops after {self.idle_timeout:g} s idle" if self.idle_timeout else ""))
        status = "stopped"
        try:
            with claims.Heartbeat(store, self.worker, lease):
                self._serve(store, engine, cache, lease, device)
        except BaseException:
            status = "interrupted"
            raise
        finally:
            try:
                self._close_all(store)
            finally:
                claims.finish(store, self.worker, status, done=self.done, failed=self.failed)
                queue.set_activity(store, self.worker.id, status, self._activity(cache, None, []))
                engine.close()
                store.close()
                self.note(f"warm worker {self.worker.name} {status}: {self.done} images made, {self.failed} failed")
        return self.done

    # -- the loop ---------------------------------------------------------------------------------

    def _serve(self, store, engine, cache: WarmPipelines, lease: float, device: str) -> None:
        from tracker.sweep.runner import AUTO_BATCH_MAX, ordered_groups

        last_experiment: str | None = None
        idle_since = time.monotonic()
        shown = 0.0
        status = "idle"
        while not self.stopping:
            items = queue.queued(store, self.experiments)
            self._close_finished(store, {i.sweep_id for i in items})
            item = queue.pick(items, last_experiment)
            if item is None:
                if status != "idle" or time.monotonic() - shown > ACTIVITY_SECONDS:
                    claims.reap_local(store)  # a killed worker of this host: its claims are taken at once
                    if status != "idle":
                        self.note(f"{self.worker.name}: idle; {self.done} images made so far")
                    status = "idle"
                    queue.set_activity(store, self.worker.id, status, self._activity(cache, None, items))
                    shown = time.monotonic()
                if self.idle_timeout is not None and time.monotonic() - idle_since > self.idle_timeout:
                    self.note(f"{self.worker.name}: no work for {self.idle_timeout:g} s; stopping")
                    return
                time.sleep(POLL_SECONDS)
                continue
            runs = queue.claimable_runs(store, item.sweep_id)
            if not runs:
                continue
            by_key = {r.key: r for r in runs}
            wanted = [([r.key for r in g], batch_of(g, AUTO_BATCH_MAX)) for g in ordered_groups(runs)]
            mine = claims.Worker(self.worker.id, item.sweep_id, self.worker.name)
            keys = claims.claim(store, item.experiment, mine, wanted, lease,
                                {"done": self.done, "failed": self.failed})
            if not keys:
                continue  # another worker took them first
            if store.sweep(item.sweep_id)["status"] not in queue.QUEUED:  # withdrawn while we claimed
                claims.release(store, self.worker.id, keys)
                continue
            last_experiment = item.experiment
            active = self._activate(store, engine, item, device)
            chunk = [by_key[k] for k in keys]
            if status != "working" or time.monotonic() - shown > ACTIVITY_SECONDS or active.sweep.summary.done == 0:
                status = "working"
                queue.set_activity(store, self.worker.id, status, self._activity(cache, item, items))
                shown = time.monotonic()
            self._make(engine, cache, active, chunk)
            idle_since = time.monotonic()

    def _make(self, engine, cache: WarmPipelines, active: _Active, chunk: list) -> None:
        """One claimed batch through the sweep path; what the submission does not allow fails unloaded."""
        from tracker.errors import ModelError

        sweep = active.sweep
        allowed = []
        for run in chunk:
            why = queue.refusal(active.submission, run)
            if why is None:
                allowed.append(run)
            else:
                self._fail(sweep, run, why)
        if not allowed:
            return
        base = active.submission.get("base_dir")
        engine.base_dir = Path(base) if base else None
        try:
            cache.before(allowed[0].settings)
            engine.prepare(allowed[0].settings)
            engine.check_prompts(allowed)
        except ModelError as e:
            for run in allowed:
                self._fail(sweep, run, str(e))
            return
        cache.after(allowed[0].settings)
        began = time.perf_counter()
        sweep.run_group(allowed)
        seconds = max(1e-9, time.perf_counter() - began)
        self.note(f"{self.worker.name}: {active.experiment}: {len(allowed)} runs in {seconds:.2f} s "
                  f"({len(allowed) / seconds:.2f} images/s)")

    def _fail(self, sweep, run, why: str) -> None:
        sweep.fail(run, why)  # counted by the wrapper _activate sets
        self.note(f"{self.worker.name}: {run.experiment} {run.key[:12]}: {why}")

    # -- one Sweep per submitted sweep ------------------------------------------------------------

    def _activate(self, store, engine, item: "queue.Queued", device: str) -> _Active:
        from tracker.sweep import runner

        active = self.active.get(item.sweep_id)
        if active is not None:
            return active
        exp = _experiment(store, item.experiment, item.submission)
        summary = runner.SweepSummary(item.experiment, planned=0, images_dir=self.ws.images_dir / item.experiment)
        sink = runner.mlflow_sink(self.ws, item.experiment)
        sweep = runner.Sweep(self.ws, store, engine, sink, item.sweep_id, summary, claimed=True)
        on_done = sweep.written

        def written(run) -> None:  # the worker's own count beside the sweep's
            on_done(run)
            self.done += 1

        sweep.written = written
        on_fail = sweep.fail

        def failed(run, error: str, **timing) -> None:
            on_fail(run, error, **timing)
            self.failed += 1

        sweep.fail = failed
        scorer = runner.scorer_for(store, exp, engine) if exp is not None else None
        from tracker.sweep.writer import Writer

        cpu = device == "cpu"
        sweep.writer = Writer(self.ws, store, sink, sweep.written,
                              lambda run, error, timing: sweep.fail(run, error, **timing),
                              nice=10 if cpu else 0, scorer=scorer, gate=sweep.calling)
        environment = engine.environment()
        queue.taken(store, item.sweep_id, device, environment)
        store.add_event(item.sweep_id, "worker", f"warm worker {self.worker.name} on {device} takes runs",
                        {"worker_id": self.worker.id, "worker": self.worker.name})
        if sink is not None:
            from tracker.mlflow.mapping import environment_tags

            source = exp.path if exp is not None else None
            sink.start_sweep(item.sweep_id, source, environment_tags(environment))
        active = self.active[item.sweep_id] = _Active(sweep, item.experiment, item.submission)
        self.note(f"{self.worker.name}: takes {item.experiment} (sweep {item.sweep_id}, submitted by "
                  f"{item.submission.get('by', '?')}, priority {item.submission.get('priority', 0)})")
        return active

    def _close_finished(self, store, queued_sweeps: set[int]) -> None:
        for sweep_id in [s for s in self.active if s not in queued_sweeps]:
            self._close(store, sweep_id)

    def _close(self, store, sweep_id: int) -> None:
        """Drain the sweep's writing stage (its images done) and close its MLflow sink."""
        active = self.active.pop(sweep_id)
        sweep = active.sweep
        try:
            sweep.writer.close()
        finally:
            if sweep.sink is not None:
                sweep.sink.finish_sweep({**sweep.summary.to_dict(), "status": "done"})
                sweep.sink.close()
        s = sweep.summary
        seconds = time.perf_counter() - active.began
        self.note(f"{self.worker.name}: {active.experiment}: sweep {sweep_id} drained: {s.done} made, {s.failed} "
                  f"failed in {seconds:.1f} s" + (f" ({s.done / seconds:.2f} images/s)" if s.done and seconds else ""))

    def _close_all(self, store) -> None:
        errors = []
        for sweep_id in list(self.active):
            try:
                self._close(store, sweep_id)
            except Exception as e:  # noqa: BLE001 - close the others; the first error is raised
                errors.append(e)
        if errors:
            raise errors[0]

    def _activity(self, cache: WarmPipelines, item, items: Sequence["queue.Queued"]) -> dict:
        active = self.active.get(item.sweep_id) if item is not None else None
        rate = None
        if active is not None and active.sweep.summary.done:
            rate = round(active.sweep.summary.done / max(1e-9, time.perf_counter() - active.began), 3)
        return {"beat_seconds": lease_seconds() / 3, "experiment": item.experiment if item else None,
                "sweep_id": item.sweep_id if item else None, "images_per_second": rate,
                "queue_runs": sum(i.runs for i in items), "queue_experiments": len({i.experiment for i in items}),
                "models": cache.models(), "evicted": cache.evicted, "made": self.done, "failed": self.failed}


def _experiment(store, name: str, submission: dict):
    """The experiment as stored (its metrics and options); None when its text cannot be read here."""
    from tracker.errors import TrackerError
    from tracker.experiment import parse as spec

    row = store.experiment(name)
    if not row or not row.get("source_text"):
        return None
    base = submission.get("base_dir")
    try:
        return spec.parse(row["source_text"], row.get("source_path") or name, default_name=name,
                          base_dir=Path(base) if base else None)
    except TrackerError as e:
        log.warning(f"experiment {name}: its stored text does not parse here ({e}); no metrics for its runs")
        return None
