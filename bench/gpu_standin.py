"""Does the sweep keep a GPU busy? The real ``tracker run`` path against a stand-in for a GPU pipeline.

A GPU pipeline call blocks the Python thread without holding the GIL (the CPU waits for the device). The
stand-in does the same: its call sleeps (``time.sleep`` releases the GIL) for ``--call`` seconds per batch
(default 0.66 s per batch of 4, an SD 1.5 call at 512x512 on an H200) and returns 512x512 images that
compress like pictures. Everything else is the real tracker: ``driver.run`` with a real
``Engine`` (only its pipeline loading is replaced: ``StandInEngine``), a real SQLite store, real PNG writing
with metadata and fsync, MLflow off and on (a real local MLflow store).

Printed: the stand-in's own rate (its call in a plain loop, nothing saved), the sweep rate as the sweep
reports it (images / sweep seconds), their ratio (target >= 0.97) and the idle fraction, the share of
sweep wall time outside pipeline calls (target <= 3%); then where that idle time is: the gaps between two
pipeline calls (the steady state) apart from the time before the first call and after the last one (start-up,
writing the last batch, closing the sweep), which a longer sweep spreads over more images.

    .venv/bin/python bench/gpu_standin.py [--images 64] [--batch 4] [--call 0.66] [--size 512] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")


def picture(size: int, salt: int):
    """A float image in [0, 1] (H, W, 3) with gradients, shapes and a little noise: PNG-encodes like a picture."""
    import numpy as np

    rng = np.random.default_rng(salt)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < r * r).astype(np.float32)
    base = np.stack([x, y, 0.5 + 0.5 * np.sin(8 * (x + y) + salt)], axis=-1)
    img = 0.6 * base + 0.3 * disc[..., None] * rng.uniform(0, 1, 3) + rng.normal(0, 0.03, (size, size, 3))
    return np.clip(img, 0, 1).astype(np.float32)


class StandInPipeline:
    """Looks like a diffusers text-to-image pipeline to ``Engine``; its call blocks like a GPU call.

    One UNet "call" at the start (the engine's first-UNet-call hook sees it), ``callback_on_step_end``
    after each step, ``output_type="np"`` images (N, H, W, 3) float32 in [0, 1]."""

    def __init__(self, tokenizer, scheduler, call_seconds: float, batch: int, size: int):
        import torch

        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.unet = torch.nn.Identity()
        self.vae = SimpleNamespace(enable_slicing=_nop, disable_slicing=_nop, enable_tiling=_nop,
                                   disable_tiling=_nop, to=lambda *a, **k: None)
        self.call_seconds, self.batch = call_seconds, batch
        self.pictures = [picture(size, i) for i in range(16)]  # made once: the call itself only waits
        self.calls = 0
        self.busy = 0.0  # seconds inside calls
        self.spans: list[tuple[float, float]] = []  # (start, end) of each call: the gaps between them
        self._lock = threading.Lock()

    def __call__(self, prompt, negative_prompt=None, num_inference_steps=20, generator=None,
                 callback_on_step_end=None, output_type="np", **_):
        import numpy as np
        import torch

        start = time.perf_counter()
        n = len(prompt)
        deadline = start + self.call_seconds * n / self.batch
        self.unet(torch.zeros(1))
        seeds = [g.initial_seed() for g in generator] if generator else list(range(n))
        images = np.stack([self.pictures[s % len(self.pictures)] for s in seeds])
        for step in range(num_inference_steps):
            time.sleep(max(0.0, start + (deadline - start) * (step + 1) / num_inference_steps - time.perf_counter()))
            if callback_on_step_end is not None:
                callback_on_step_end(self, step, step, {})
        with self._lock:
            end = time.perf_counter()
            self.calls += 1
            self.busy += end - start
            self.spans.append((start, end))
        return SimpleNamespace(images=images)

    def to(self, *args, **kwargs):
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        pass

    enable_attention_slicing = disable_attention_slicing = remove_all_hooks = lambda self, *a, **k: None


def _nop(*args, **kwargs) -> None:
    return None


def standin_engine(call_seconds: float, batch: int, size: int):
    """An ``Engine`` whose pipelines are ``StandInPipeline`` (tokenizer and scheduler of the tiny model)."""
    from diffusers import PNDMScheduler
    from transformers import CLIPTokenizer

    from tracker.experiment import model_refs as models
    from tracker.engine.core import Engine
    from tracker.engine.loading import PipelineCache, _Loaded

    class StandInCache(PipelineCache):
        def pipeline(self, settings):
            key = ("stand-in", settings.dtype)
            if key not in self.pipes:
                tiny = Path(models.resolve("tiny").location)
                pipe = StandInPipeline(CLIPTokenizer.from_pretrained(tiny / "tokenizer"),
                                       PNDMScheduler.from_pretrained(tiny / "scheduler"), call_seconds, batch, size)
                self.pipes[key] = _Loaded(pipe=pipe, vae=pipe.vae, scheduler_config=dict(pipe.scheduler.config),
                                          scheduler_class=type(pipe.scheduler).__name__, device="cpu")
            return self.pipes[key]

    class StandInEngine(Engine):
        pipeline_cache = StandInCache

    return StandInEngine(device="cpu")


def experiment_yaml(name: str, images: int, batch: int, size: int) -> str:
    return (f"name: {name}\nmodel: tiny\nsize: {size}x{size}\nsteps: 20\nscheduler: DPMSolverMultistep\n"
            f"batch_size: {batch}\n"
            'prompt: "portrait photo of {{ age }} warrior chief"\nnegative_prompt: "blurry, low quality"\n'
            'axes:\n  age: {old: "a old", young: "a young"}\n'
            f"seeds: {{start: 0, count: {images // 2}}}\n")


def standin_rate(engine, images: int, batch: int) -> float:
    """The stand-in's own rate: its call in a plain loop, nothing saved (the GPU's ceiling)."""
    pipe = engine.pipelines.pipeline(SimpleNamespace(dtype="float32")).pipe
    import torch

    start = time.perf_counter()
    for i in range(0, images, batch):
        pipe(prompt=["x"] * batch, generator=[torch.Generator().manual_seed(i + j) for j in range(batch)])
    return images / (time.perf_counter() - start)


def sweep(work: Path, name: str, images: int, batch: int, size: int, call: float, mlflow: bool):
    from tracker.sweep import driver, runner
    from tracker.workspace import WorkspaceConfig

    home = work / name
    home.mkdir(parents=True)
    path = home / f"{name}.yaml"
    path.write_text(experiment_yaml(name, images, batch, size))
    ws = WorkspaceConfig(home=home, db_url=f"sqlite:///{home / 'tracker.db'}",
                   mlflow_uri=f"sqlite:///{work / 'mlflow.db'}" if mlflow else None, mlflow_enabled=mlflow)
    engine = standin_engine(call, batch, size)
    summary = driver.run(ws, str(path), runner.RunOptions(progress=False), driver.InProcess(engine=engine))
    if summary.done != images or summary.failed:
        raise SystemExit(f"{name}: {summary.done} of {images} images done, {summary.failed} failed: "
                         f"{summary.failures[:3]}")
    pipe = next(iter(engine.pipelines.pipes.values())).pipe
    return summary, pipe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="images per sweep (even) [64]")
    ap.add_argument("--batch", type=int, default=4, help="batch size [4]")
    ap.add_argument("--call", type=float, default=0.66, help="seconds per stand-in call of a full batch [0.66]")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels [512]")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder)")
    args = ap.parse_args(argv)
    images = max(2, args.images - args.images % 2)
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="tracker-standin-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(work, images, args.batch, args.size, args.call)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _bench(work: Path, images: int, batch: int, size: int, call: float) -> int:
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}").search_experiments()  # store made before timing
    ceiling = standin_rate(standin_engine(call, batch, size), images, batch)
    print(f"stand-in: {call:.2f} s per call of {batch} images at {size}x{size} (GIL released); {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"stand-in's own rate (plain loop, nothing saved): {ceiling:.3f} images/s")
    print(f"{'sweep':14} {'images':>6} {'seconds':>8} {'images/s':>9} {'ratio':>6} {'idle':>6}")
    ok, splits = True, []
    for label, mlflow in (("--no-mlflow", False), ("mlflow", True)):
        summary, pipe = sweep(work, label.strip("-"), images, batch, size, call, mlflow)
        ratio = summary.images_per_second / ceiling
        idle = getattr(summary, "idle_fraction", None)
        idle = 1 - pipe.busy / summary.seconds if idle is None else idle
        ok = ok and ratio >= 0.97 and idle <= 0.03
        print(f"{label:14} {summary.done:6d} {summary.seconds:8.2f} {summary.images_per_second:9.3f} "
              f"{ratio:6.3f} {idle:6.1%}" + (f"  ({summary.mlflow_waiting} waiting for MLflow)"
                                             if summary.mlflow_waiting else ""))
        splits.append((label, summary.seconds - pipe.busy, [b[0] - a[1] for a, b in zip(pipe.spans, pipe.spans[1:])]))
    print(f"targets: ratio >= 0.97, idle <= 3%: {'met' if ok else 'NOT met'}")
    print("where the idle time is (ms): between pipeline calls (sum / mean / max) | before the first call + after the "
          "last one (sweep start-up, the last batch's writing, closing the sweep)")
    for label, outside, gaps in splits:
        between = sum(gaps)
        print(f"  {label:12} {1000 * between:7.1f} / {1000 * between / max(1, len(gaps)):5.1f} / "
              f"{1000 * max(gaps, default=0):5.1f} | {1000 * (outside - between):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
