"""How long does ``tracker report`` take over a large experiment, first and again?

Builds a workspace of N runs (default 2,000: 10 age labels x 5 styles x 40 seeds) in a real run
store, with synthetic PNGs drawn by PIL and written the way a sweep's writing stage writes them (PNG with
its recipe, atomic and fsynced, plus the report thumbnail made from the image in memory), then times:
  1. the first report build (every image linked, the sweep's thumbnails linked, every grid image drawn;
     target <= 5 s for 2,000 runs at 512x512),
  2. a second build with nothing changed (thumbnails and grid images reused by sha256),
  3. a build after a few runs got new images (only those are redone),
  4. a build after a few images were edited outside the tracker (each image is one stat against what the
     sweep recorded; only those are hashed, and shown as modified instead of published).

    .venv/bin/python bench/report_scale.py [--runs 2000] [--size 512] [--changed 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def experiment_text(runs: int, size: int) -> str:
    """An experiment of about ``runs`` runs: 10 ages x 5 styles x the seeds that make up the rest."""
    seeds = max(1, math.ceil(runs / 50))
    ages = "\n".join(f'    age{i}: "age variant {i}"' for i in range(10))
    styles = "\n".join(f'    style{i}: ", style suffix {i}"' for i in range(5))
    return (f"name: scale\nmodel: tiny\nsize: {size}x{size}\nsteps: 2\n"
            f'prompt: "portrait photo of {{{{ age }}}} warrior chief{{{{ style }}}}"\n'
            f"axes:\n  age:\n{ages}\n  style:\n{styles}\n"
            f"seeds: {{start: 0, count: {seeds}}}\n")


def synthetic(i: int, size: int, salt: int = 0):
    """A cheap image that still compresses like a picture (gradients and shapes), different per run."""
    from PIL import Image, ImageDraw

    im = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(im)
    r = (37 * i + salt) % 256
    draw.ellipse((size // 8, size // 8, size * 7 // 8, size * 7 // 8), fill=(r, (r * 3) % 256, 255 - r))
    draw.text((4, 4), f"run {i} {salt}", fill=(255, 255, 255))
    return im


def write_run_image(ws, store, run, i: int, size: int, salt: int = 0) -> None:
    """As a sweep's writing stage does it: PNG with its recipe, and the report thumbnail from memory."""
    from tracker.images import pngmeta
    from tracker.sweep.writer import save_image

    path = ws.image_path(run.experiment, run.key)
    sha = save_image(ws, synthetic(i, size, salt), path, pngmeta.recipe_for(run))
    from tracker.images.check import image_stat

    store.mark_done(run.experiment, run.key, image=path, image_sha256=sha, **image_stat(path),
                    seconds=0.4 + (i % 7) / 10, seconds_per_step=0.02, peak_memory_bytes=(900 + i % 50) * 2**20,
                    batch_size_used=4, device="cpu")


def build_workspace(home: Path, runs: int, size: int):
    from tracker.experiment.plan import expand
    from tracker.experiment.parse import parse
    from tracker.store.runstore import Store
    from tracker.workspace import WorkspaceConfig

    ws = WorkspaceConfig.from_options(home=str(home), no_mlflow=True).ensure()
    text = experiment_text(runs, size)
    plan = expand(parse(text, "scale.yaml")).runs[:runs]
    with Store.open(ws.db_url, home=ws.home) as store:
        store.save_experiment("scale", "scale.yaml", text)
        store.plan_runs(store.start_sweep("scale", {"command": "bench"}), plan)
        for i, run in enumerate(plan):
            write_run_image(ws, store, run, i, size)
    return ws, plan


def timed(fn):
    """(wall seconds, CPU seconds of all threads, result): CPU time shows the work on a shared machine."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (default 512, as Stable Diffusion 1.5)")
    ap.add_argument("--changed", type=int, default=20, help="runs given a new image before the third build")
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it (default: a temp folder)")
    args = ap.parse_args()

    from tracker.report import html as report
    from tracker.store.runstore import Store

    home = args.keep or Path(tempfile.mkdtemp(prefix="report-scale-"))
    try:
        setup, _, (ws, plan) = timed(lambda: build_workspace(home, args.runs, args.size))
        print(f"workspace: {len(plan)} runs, {args.size}x{args.size} PNGs, built in {setup:.1f} s ({home})")
        first, first_cpu, (index, rep) = timed(lambda: report.build(ws, "scale"))
        cells = sum(len(r.cells) for g in rep.grids for r in g.rows)
        print(f"first build:  {first:6.2f} s wall, {first_cpu:6.2f} s CPU  ({len(rep.grids)} grids, {cells} cells, "
              f"{index.stat().st_size / 1e6:.1f} MB index.html)")
        second, second_cpu, _ = timed(lambda: report.build(ws, "scale"))
        print(f"second build: {second:6.2f} s wall, {second_cpu:6.2f} s CPU  (nothing changed: thumbnails and grid images reused)")
        with Store.open(ws.db_url, home=ws.home) as store:
            for i, run in enumerate(plan[: args.changed]):
                write_run_image(ws, store, run, i, args.size, salt=1)
        third, third_cpu, _ = timed(lambda: report.build(ws, "scale"))
        print(f"third build:  {third:6.2f} s wall, {third_cpu:6.2f} s CPU  ({args.changed} runs with new images: "
              f"their thumbnails and grid redone)")
        for run in plan[args.changed: 2 * args.changed]:  # edited by hand: appended bytes, a new mtime
            with open(ws.image_path(run.experiment, run.key), "ab") as fh:
                fh.write(b"edited")
        fourth, fourth_cpu, (_, rep4) = timed(lambda: report.build(ws, "scale"))
        print(f"fourth build: {fourth:6.2f} s wall, {fourth_cpu:6.2f} s CPU  ({args.changed} images edited by hand: "
              f"{dict(rep4.image_problems).get('modified', 0)} shown as modified)")
        print(f"ratio first/second: {first / second:.1f}x wall, {first_cpu / second_cpu:.1f}x CPU "
              f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
