"""Two worker processes x 1 thread vs one process x 2 threads on the same plan. Target: ratio >= 1.4x.

The plan: 32 images of the built-in ``tiny`` model (4 prompts x 8 seeds, 64x64, ``--steps`` steps,
batch size 4), no MLflow. Each variant is the real command line in a fresh workspace, timed from start
to exit (imports and model loading included, as a user waits for them):
  1. ``OMP_NUM_THREADS=2 tracker run FILE`` (one process, two torch threads);
  2. ``tracker run FILE --workers 2`` (two worker processes, one thread each, claiming from one store).
Two rates are printed for each: the whole command (what a user waits for) and the generation phase (from
the first sweep's start of generation, after imports and model loading, to the last sweep's end, read from
the sweeps the run store recorded: on a short plan the whole command is mostly start-up, which two workers pay
in parallel, once, like the single process). The start-up of each variant and the most the whole command could
gain over it (a perfect 2x generation phase, the same start-up) are printed too. Both must finish every run; the pixels of the workers are checked against a single-thread process
(identical). The variants alternate over ``--repeat`` rounds; medians are reported, with images/s of
each and the ratio workers/single.

    .venv/bin/python bench/workers.py [--images 32] [--steps 20] [--repeat 3] [--keep DIR]

Exit status 1 when a variant fails or the images differ. Timings are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


def plan_text(images: int, steps: int) -> str:
    seeds = max(1, images // len(PROMPTS))
    labels = ", ".join(f'p{i}: "{p}"' for i, p in enumerate(PROMPTS))
    return (f"name: bench-workers\nmodel: tiny\nprompt: \"{{{{ thing }}}}\"\naxes:\n  thing: {{{labels}}}\n"
            f"seeds: {{start: 0, count: {seeds}}}\nsteps: {steps}\nbatch_size: 4\n")


def tracker(home: Path, *args: str, threads: int | None = None) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "TRACKER_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRACKER_DB_URL", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    else:
        env.pop("OMP_NUM_THREADS", None)
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tracker", *args], env=env, capture_output=True, text=True)
    return time.perf_counter() - began, proc


def runs(home: Path) -> dict[str, dict]:
    _, proc = tracker(home, "runs", "bench-workers", "--json")
    return {r["key"]: r for r in json.loads(proc.stdout)}


def generation_seconds(home: Path) -> float:
    """From the earliest start of generation to the latest end over the plan's sweeps (one per worker); a
    sweep's ``seconds`` are its generation time, counted from after its model loaded to its end."""
    sys.path.insert(0, str(ROOT))
    from tracker.store.runstore import Store

    with Store.open(f"sqlite:///{home / 'tracker.db'}", home=home) as store:
        sweeps = [s for s in store.sweeps("bench-workers") if s["ended_at"] and s["seconds"]]
    ends = [s["ended_at"].timestamp() for s in sweeps]
    return max(ends) - min(e - s["seconds"] for e, s in zip(ends, sweeps))


def same_pixels(a: dict[str, dict], b: dict[str, dict]) -> bool:
    import numpy as np
    from PIL import Image

    return a.keys() == b.keys() and all(
        np.array_equal(np.asarray(Image.open(a[k]["image"])), np.asarray(Image.open(b[k]["image"]))) for k in a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the workspaces here")
    args = ap.parse_args()

    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-workers-"))
    root.mkdir(parents=True, exist_ok=True)
    plan = root / "plan.yaml"
    plan.write_text(plan_text(args.images, args.steps))
    variants = {
        "1 process x 2 threads": lambda home: tracker(home, "run", str(plan), "--no-mlflow", "-q", threads=2),
        "2 workers x 1 thread": lambda home: tracker(home, "run", str(plan), "--no-mlflow", "-q", "--workers", "2"),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    generation: dict[str, list[float]] = {name: [] for name in variants}
    planned = None
    ok = True
    for round_ in range(args.repeat):
        order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in order:
            home = root / f"{name.split()[0]}-{round_}"
            shutil.rmtree(home, ignore_errors=True)
            seconds, proc = variants[name](home)
            done = runs(home)
            planned = planned or len(done)
            if proc.returncode != 0 or not done or any(r["status"] != "done" for r in done.values()):
                print(f"{name}: FAILED (exit {proc.returncode})\n{proc.stderr[-2000:]}", file=sys.stderr)
                ok = False
                continue
            times[name].append(seconds)
            generation[name].append(generation_seconds(home))
            print(f"round {round_ + 1} {name}: {seconds:.1f} s ({len(done) / seconds:.2f} images/s); generation "
                  f"{generation[name][-1]:.2f} s ({len(done) / generation[name][-1]:.2f} images/s)", flush=True)

    # the workers' pixels equal a single-thread process's
    single = root / "single-thread"
    shutil.rmtree(single, ignore_errors=True)
    tracker(single, "run", str(plan), "--no-mlflow", "-q", threads=1)
    if not same_pixels(runs(single), runs(root / "2-0")):
        print("the workers' images differ from a single-thread process's", file=sys.stderr)
        ok = False

    if all(times.values()):
        rate = {name: planned / statistics.median(t) for name, t in times.items()}
        for name, r in rate.items():
            print(f"{name}: {r:.2f} images/s (median of {len(times[name])}, {planned} images, wall time "
                  "including imports and model loading)")
        ratio = rate["2 workers x 1 thread"] / rate["1 process x 2 threads"]
        print(f"ratio workers/single, whole command: {ratio:.2f}x (target >= 1.4x)")
        gen = {name: planned / statistics.median(t) for name, t in generation.items()}
        for name, r in gen.items():
            print(f"{name}: {r:.2f} images/s in the generation phase (median of {len(generation[name])})")
        ratio = gen["2 workers x 1 thread"] / gen["1 process x 2 threads"]
        print(f"ratio workers/single, generation phase: {ratio:.2f}x (target >= 1.4x)")
        # Amdahl: start-up (imports, model loading) is paid once per variant, in series, whatever the workers do
        startup = {name: statistics.median(t) - statistics.median(generation[name]) for name, t in times.items()}
        for name, s in startup.items():
            print(f"{name}: start-up {s:.1f} s (whole command minus generation phase)")
        single = "1 process x 2 threads"
        bound = statistics.median(times[single]) / (startup[single] + statistics.median(generation[single]) / 2)
        print(f"the most the whole command could gain with a perfect 2x generation phase and the single process's "
              f"start-up: {bound:.2f}x")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
