"""The writing stage of a sweep: while the accelerator makes batch k+1, batch k's images are written here.

For each image, in a small pool of threads (zlib, hashing and file I/O release the GIL): the pipeline's
array becomes an 8-bit image (NaN check), the recipe is built, the PNG is encoded with its metadata,
hashed, written atomically and fsynced (``pngmeta.save_png``), the report thumbnail is written from the
image in memory (``thumbs``), the run is marked done in the store, scored with the experiment's metrics
(``tracker.metrics.scoring``) and handed to MLflow.

Crash safety is the runner's as before: a run is ``done`` only after its PNG is durable; until then it is
``running`` and a later sweep redoes it (same key, same file name), so a kill -9 at any moment loses and
duplicates nothing. The queue is bounded (``depth`` images): when writing falls behind, ``submit`` waits,
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
from typing import Any, Callable

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


def default_threads() -> int:
    """One writer per core, at most 4: a 512x512 PNG encode is ~45 ms on a fast core and ~170 ms on a slow
    shared one, against ~165 ms per image on an H200 (SD 1.5, batch 4). On a CPU sweep they run niced."""
    return max(1, min(4, os.cpu_count() or 2))


class Writer:
    """A bounded background stage; ``on_done(run)`` and ``on_fail(run, error, timing)`` run under its lock."""

    def __init__(self, ws, store, sink, on_done: Callable, on_fail: Callable, threads: int | None = None,
                 depth: int = 16, nice: int = 0, scorer=None):
        self.ws, self.store, self.sink = ws, store, sink
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
        for run, img in zip(runs, result.images):
            self._queue.put((run, img, {"seconds": img.seconds, "seconds_per_step": img.seconds_per_step,
                                        **timing}, facts))

    def fail(self, run, error: str, timing: dict | None = None) -> None:
        """Record a run that produced no image (the runner's failures go through the same lock)."""
        self._fail(run, error, timing or {})

    def close(self) -> None:
        """Write everything queued, stop the threads, then raise what the stage could not record."""
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
            from tracker.cpu import lower_thread_priority

            lower_thread_priority(self._nice)
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if self._fatal is not None:
                continue  # the store is failing: leave the rest 'running' (a later sweep redoes them)
            start = time.perf_counter()
            try:
                self._write(*job)
            except BaseException as e:  # noqa: BLE001 - recorded, raised in the runner's thread
                self._fatal = self._fatal or e
            with self._lock:
                self.busy_seconds += time.perf_counter() - start

    def _write(self, run, img, timing: dict, facts: BatchFacts) -> None:
        image = img.image  # the conversion from the pipeline's array happens here
        if image is None:
            self._fail(run, img.error or "no image", timing)
            return
        revision = facts.revision()
        recipe = run.to_recipe(model_revision=revision, scheduler_config=facts.scheduler_config,
                               environment=facts.environment, device_used=facts.device, pipeline=facts.pipeline,
                               **timing)
        target = self.ws.image_path(run.experiment, run.key)
        try:
            sha = save_image(self.ws, image, target, recipe)
        except (OSError, ValueError) as e:
            from tracker.fsutil import is_fatal

            if is_fatal(e):  # read-only, disk full, no permission: the sweep stops (runs back to pending)
                raise
            self._fail(run, f"could not write the image {target}: {e}", timing)
            return
        from tracker.check import image_stat

        self.store.mark_done(run.experiment, run.key, image_path=str(target), image_sha256=sha,
                             **image_stat(target),  # the report hashes the file again only when this changes
                             model_revision=revision, scheduler_config=facts.scheduler_config, device=facts.device,
                             **timing)
        if self.scorer is not None:  # scored after the PNG is durable, before MLflow reads the run
            self.scorer.add([run], [image], facts.device)
        if self.sink is not None:
            self.sink.submit_key(run.experiment, run.key)
        with self._lock:
            self._on_done(run)

    def _fail(self, run, error: str, timing: dict) -> None:
        with self._lock:
            self._on_fail(run, error, timing)


def save_image(ws, image, target, recipe: dict) -> str:
    """One image as a sweep writes it: the PNG with its recipe (atomic, fsynced; ``pngmeta.save_png``) and its
    report thumbnail from the image in memory (``thumbs``). Returns the PNG's sha256."""
    from tracker import pngmeta, thumbs

    sha = pngmeta.save_png(image, target, recipe)
    try:
        thumbs.write_cached(image, ws.thumbs_dir, sha)
    except (OSError, ValueError) as e:  # a cache: the report makes the thumbnail itself then
        log.warning("could not write the report thumbnail of %s: %s", target.name, e)
    return sha
