"""The one batch executor: how ``tracker run`` (through ``runner.Sweep``), ``verify`` and ``reproduce`` turn a
group of runs that share every pipeline setting into images.

A group is generated in batches of ``batch`` runs. An out-of-memory error gives the batch back and halves
the batch size (at size 1 its runs fail); any other error in a batch of several retries its runs one by
one, so one bad run never costs its companions. What happens around each step (marking runs running,
recording images, counting failures) is the caller's, through ``BatchHooks``.

``pad`` fills a short last batch by repeating its first run: ``reproduce`` makes a run again in a batch
of the size it was first made in, because batch size can shift float results by one 8-bit level.

``fits`` remembers, across calls, the batch size that fitted after an out-of-memory error, per pipeline
settings: a sweep (or a Ray actor) that takes its work in batch-sized claims pays one out-of-memory error
per settings, not one per claim.

What a batch gives back lives here too (``BatchResult``, ``ImageResult``, ``OutOfMemory``), so the executor
and its callers need no torch; ``tracker.engine.core`` makes them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from tracker.experiment.plan import PlannedRun

NAN_ERROR = "NaN in output"


class OutOfMemory(Exception):
    """The device ran out of memory during a batch; the caller may retry with a smaller batch."""


class ImageResult:
    """One image of a batch. The pipeline's float array is converted (NaN check, 8-bit PIL image) on first
    use of ``error`` or ``image``, so a sweep does it in its writing stage, off the accelerator's path."""

    def __init__(self, key: str, array: Any, seconds: float, seconds_per_step: float):
        self.key = key
        self.seconds = seconds  # this image's share of the batch's wall time
        self.seconds_per_step = seconds_per_step  # this image's share of the denoising time / settings.steps
        self._array = array  # (H, W, 3) float in [0, 1], as diffusers' output_type="np" gives it
        self._image: Any = None
        self._lock = threading.Lock()

    @property
    def error(self) -> str | None:
        """Why there is no image (e.g. "NaN in output"), else None."""
        return None if self.image is not None else NAN_ERROR

    @property
    def image(self) -> Any:
        """The PIL image (diffusers' ``numpy_to_pil`` conversion), or None when the output has NaN/inf."""
        with self._lock:
            if self._array is not None:
                arr, self._array = self._array, None
                import numpy as np
                from diffusers.image_processor import VaeImageProcessor

                self._image = VaeImageProcessor.numpy_to_pil(arr[None])[0] if np.isfinite(arr).all() else None
            return self._image


@dataclass
class BatchResult:
    images: list[ImageResult]
    seconds: float
    batch_size: int
    peak_memory_bytes: int
    step_seconds: list[float]  # one per denoising-loop iteration (UNet call), first UNet call to last step end
    warmup_seconds: float = 0.0  # compile warm-up before this batch (not in ``seconds``)
    deterministic: bool = False  # torch reported its deterministic algorithms on during the call (the setting)


class BatchHooks:
    """What the executor tells its caller; every hook does nothing unless overridden."""

    def started(self, runs: Sequence["PlannedRun"]) -> None:
        """A batch is about to be generated."""

    def given_back(self, runs: Sequence["PlannedRun"]) -> None:
        """A started batch did not finish and will be tried again (smaller, or one run at a time)."""

    def halved(self, runs: Sequence["PlannedRun"], batch: int, error: BaseException) -> None:
        """Out of memory at ``batch``: the executor goes on at ``batch // 2``."""

    def done(self, runs: Sequence["PlannedRun"], result: "BatchResult") -> None:
        """A batch finished; ``result.images`` holds one image (or per-image error) per run, in order."""

    def failed(self, run: "PlannedRun", error: str) -> None:
        """A run could not be generated at all."""


def execute(engine, group: Sequence["PlannedRun"], batch: int, hooks: BatchHooks, pad: bool = False,
            fits: dict | None = None) -> None:
    """Generate ``group`` (runs sharing their settings) in batches of ``batch`` through ``engine``; ``fits``
    (settings -> the batch size that fitted) is read and updated when given."""
    engine.prepare(group[0].settings)
    settings = repr(group[0].settings)  # dataclass repr: every pipeline setting, hashable
    batch = max(1, min(batch, fits.get(settings, batch)) if fits is not None else batch)
    i = 0
    while i < len(group):
        chunk = list(group[i:i + batch])
        hooks.started(chunk)
        try:
            result = _generate(engine, chunk, batch if pad else len(chunk))
        except OutOfMemory as e:
            hooks.given_back(chunk)
            if batch == 1:
                for run in chunk:
                    hooks.failed(run, f"out of memory at batch size 1: {e}")
                i += len(chunk)
                continue
            hooks.halved(chunk, batch, e)
            batch //= 2
            if fits is not None:
                fits[settings] = batch
            continue
        except Exception as e:  # one bad batch must not end the work: retry its runs one by one
            if len(chunk) > 1:
                hooks.given_back(chunk)
                for run in chunk:
                    _one(engine, run, hooks)
            else:
                hooks.failed(chunk[0], f"{type(e).__name__}: {e}")
            i += len(chunk)
            continue
        hooks.done(chunk, result)
        i += len(chunk)


def _one(engine, run: "PlannedRun", hooks: BatchHooks) -> None:
    hooks.started([run])
    try:
        result = _generate(engine, [run], 1)
    except Exception as e:
        hooks.failed(run, f"{type(e).__name__}: {e}")
        return
    hooks.done([run], result)


def _generate(engine, chunk: list["PlannedRun"], size: int) -> "BatchResult":
    """One engine call of ``size`` runs (the chunk, padded with its first run); the padding's images dropped."""
    result = engine.generate(chunk + [chunk[0]] * (size - len(chunk)))
    if len(result.images) > len(chunk):
        result.images = result.images[:len(chunk)]
    return result
