"""The writing stage of a sweep: while the accelerator makes batch k+1, batch k's images are written here.

For each image, in a small pool of threads (zlib, hashing and file I/O release the GIL): the pipeline's
array becomes an 8-bit image (NaN check), the recipe is built, the PNG is encoded with its metadata,
hashed, written atomically and fsynced (``pngmeta.save_png``), the report thumbnail is written from the
image in memory (``thumbs``). The thread that writes a batch's last image then makes the batch durable and
recorded at once: one fsync of the image folder (the renames), one store transaction marking the batch's
runs done, the experiment's metrics on the batch (``tracker.metrics.scoring``), and each run to MLflow.

Crash safety is the runner's as before: a run is ``done`` only after its PNG is durable (file and folder
fsynced before the transaction); until then it is ``running`` and a later sweep redoes it (same key, same
file name), so a kill -9 at any moment loses and duplicates nothing. The queue is bounded (``depth`` images): when writing falls behind, ``submit`` waits,
so memory stays bounded. An error writing one image fails that run with the reason; an error the stage
cannot record (the store itself failing) stops the sweep at the next ``submit`` or at ``close``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tracker.sweep.claim_loop import GATE_WAIT_S  # the longest a batch waits for the next pipeline call to begin

log = logging.getLogger("tracker")

_STOP = object()


@dataclass
class BatchFacts:
    """What the engine knew of a batch's settings, shared by its images."""

    scheduler_config: dict
    device: str
    environment: dict
    revision: Callable[[], str | None]  # may wait for a background hash: called in the writing stage only
    pipeline: dict | None = None  # what the recipe records of a user's pipeline object (Engine.pipeline_info)
    vae_revision: Callable[[], str | None] | None = None  # a single-file VAE's sha256 (the PNG's VAE hash)


class _Batch:
    """A submitted batch in the writing stage: its images are written in parallel; the thread that writes the
    last one records them all (``Writer._record``)."""

    def __init__(self, facts: BatchFacts, size: int):
        self.facts, self.left = facts, size
        self.written: list[tuple[Any, Any, dict]] = []  # (run, image, store fields), in the order written


def default_threads() -> int:
    """One writer per core, at most 4: a 512x512 PNG encode is ~45 ms on a fast core and ~170 ms on a slow
    shared one, against ~165 ms per image on an H200 (SD 1.5, batch 4). On a CPU sweep they run niced."""
    return max(1, min(4, os.cpu_count() or 2))


class Writer:
    """A bounded background stage; ``on_done(run)`` and ``on_fail(run, error, timing)`` run under its lock."""

    def __init__(self, ws, store, sink, on_done: Callable, on_fail: Callable, threads: int | None = None,
                 depth: int = 16, nice: int = 0, scorer=None, gate: threading.Event | None = None):
        self.ws, self.store, self.sink = ws, store, sink
        # ``Sweep.calling``: a batch handed over between two pipeline calls is started once the next call
        # denoises (at most GATE_WAIT_S later), so its Python does not take the GIL from the generating
        # thread's work between the calls
        self._gate = gate
        self.scorer = scorer  # tracker.metrics.scoring.Scorer: the experiment's metrics, or None
        self._on_done, self._on_fail = on_done, on_fail
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._lock = threading.Lock()
        self._fatal: BaseException | None = None  # sticky: after it the threads write nothing more
        self._raised = False
        self._nice = nice
        self.busy_seconds = 0.0  # summed over threads: time spent writing
        self._threads = [threading.Thread(target=self._work, name=f"tracker-writer-{i}", daemon=True)
                         for i in range(threads or default_threads())]
        for t in self._threads:
            t.start()

    # -- the runner's side -------------------------------------------------------------------------

    def submit(self, runs, result, facts: BatchFacts) -> None:
        """Queue a batch's images (waits while the queue is full); raises what the stage could not record."""
        self._raise_fatal()
        timing = {"peak_memory_bytes": result.peak_memory_bytes, "batch_size_used": result.batch_size}
        pairs = list(zip(runs, result.images))
        batch = _Batch(facts, len(pairs))
        for run, img in pairs:
            job = (run, img, {"seconds": img.seconds, "seconds_per_step": img.seconds_per_step, **timing}, batch)
            try:
                self._queue.put_nowait(job)
            except queue.Full:  # writing is behind: the caller waits for it, so nothing is held back
                if self._gate is not None:
                    self._gate.set()
                self._queue.put(job)

    def fail(self, run, error: str, timing: dict | None = None) -> None:
        """Record a run that produced no image (the runner's failures go through the same lock)."""
        self._fail(run, error, timing or {})

    def close(self) -> None:
        """Write everything queued, stop the threads, then raise what the stage could not record."""
        if self._gate is not None:
            self._gate.set()  # no more calls: write now
        for _ in self._threads:
            self._queue.put(_STOP)
        for t in self._threads:
            t.join()
        self._threads = []
        self._raise_fatal()

    def _raise_fatal(self) -> None:
        """Raise the stage's first unrecordable error once; the stage stays stopped after it."""
        if self._fatal is not None and not self._raised:
            self._raised = True
            raise self._fatal

    # -- the threads -------------------------------------------------------------------------------

    def _work(self) -> None:
        if self._nice:
            from tracker.engine.cpu import lower_thread_priority

            lower_thread_priority(self._nice)
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if self._gate is not None:
                self._gate.wait(GATE_WAIT_S)
            run, img, timing, batch = job
            start, written = time.perf_counter(), None
            try:
                if self._fatal is None:  # after it (the store or the disk failing) nothing more is written:
                    written = self._write(run, img, timing, batch.facts)  # those runs stay 'running'
            except BaseException as e:  # noqa: BLE001 - recorded, raised in the runner's thread
                self._fatal = self._fatal or e
            try:
                with self._lock:
                    if written is not None:
                        batch.written.append(written)
                    batch.left -= 1
                    last = batch.left == 0
                if last and batch.written:  # also after a fatal error: what is on disk gets recorded
                    self._record(batch)
            except BaseException as e:  # noqa: BLE001
                self._fatal = self._fatal or e
            with self._lock:
                self.busy_seconds += time.perf_counter() - start

    def _write(self, run, img, timing: dict, facts: BatchFacts) -> tuple | None:
        """Write one image (its PNG fsynced, not yet its folder): ``(run, image, store fields)``, or None when
        the run failed (recorded here)."""
        image = img.image  # the conversion from the pipeline's array happens here
        if image is None:
            self._fail(run, img.error or "no image", timing)
            return None
        revision = facts.revision()
        recipe = run.to_recipe(model_revision=revision, scheduler_config=facts.scheduler_config,
                               environment=facts.environment, device_used=facts.device, pipeline=facts.pipeline,
                               vae_revision=facts.vae_revision() if facts.vae_revision else None, **timing)
        target = self.ws.image_path(run.experiment, run.key)
        try:
            sha = save_image(self.ws, image, target, recipe, fsync_folder=False)
        except (OSError, ValueError) as e:
            from tracker.fsutil import is_fatal

            if is_fatal(e):  # read-only, disk full, no permission: the sweep stops (runs back to pending)
                raise
            self._fail(run, f"could not write the image {target}: {e}", timing)
            return None
        from tracker.images.check import image_stat

        return run, image, {"image_path": str(target), "image_sha256": sha,
                            **image_stat(target),  # the report hashes the file again only when this changes
                            "model_revision": revision, "scheduler_config": facts.scheduler_config,
                            "device": facts.device, **timing}

    def _record(self, batch: _Batch) -> None:
        """The batch's written images become durable (one fsync per folder), then their runs done (one
        transaction), scored and sent to MLflow."""
        from tracker.fsutil import fsync_dir

        runs = [run for run, _, _ in batch.written]
        for folder in dict.fromkeys(Path(fields["image_path"]).parent for _, _, fields in batch.written):
            fsync_dir(folder)
        self.store.mark_done_many(runs[0].experiment, [(run.key, fields) for run, _, fields in batch.written])
        if self.scorer is not None:  # scored after the PNGs are durable, before MLflow reads the runs
            self.scorer.add(runs, [image for _, image, _ in batch.written], batch.facts.device)
        if self.sink is not None:
            self.sink.submit_keys(runs[0].experiment, [run.key for run in runs])
        with self._lock:
            for run in runs:
                self._on_done(run)

    def _fail(self, run, error: str, timing: dict) -> None:
        with self._lock:
            self._on_fail(run, error, timing)


def save_image(ws, image, target, recipe: dict, fsync_folder: bool = True) -> str:
    """One image as a sweep writes it: the PNG with its recipe (atomic, fsynced; ``pngmeta.save_png``) and its
    report thumbnail from the image in memory (``thumbs``). Returns the PNG's sha256. ``fsync_folder=False``:
    the caller fsyncs the image folder before it relies on the file (once per batch)."""
    from tracker.images import pngmeta, thumbs

    sha = pngmeta.save_png(image, target, recipe, fsync_folder=fsync_folder)
    try:
        thumbs.write_cached(image, ws.thumbs_dir, sha)
    except (OSError, ValueError) as e:  # a cache: the report makes the thumbnail itself then
        log.warning("could not write the report thumbnail of %s: %s", target.name, e)
    return sha
