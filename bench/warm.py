"""A warm worker (``tracker worker``) against a cold ``tracker run``, on the CPU with the built-in ``tiny`` model.

Three measurements, each the real command line timed from start to exit (what a user waits for), medians of
``--repeat`` rounds:
  1. one image: ``tracker run ONE.yaml`` with a live warm worker whose pipeline is loaded (the next
     iteration of a prompt) vs ``tracker run ONE.yaml --local`` in a fresh workspace (a cold process: imports,
     model loading, then the image). Target: warm <= 0.2x cold. Also, from the store: the time from the
     sweep's submission to its first image against that image's pipeline call (the GPU target is <= 1.2x).
  2. a 16-image sweep: the same through the warm worker vs ``--local`` in-process in a fresh workspace.
     Target: warm no slower than in-process.
  3. with ``--two-workers``: the 32-image plan of ``bench/workers.py`` (4 prompts x 8 seeds, batch 4) through
     one warm worker with 2 torch threads vs two warm workers with 1 thread each (both warmed by an 8-image
     sweep first). Target: two >= 1.6x one.
Each round asks for images not made yet (another seed), so every command generates. The machine is shared:
the load average (``os.getloadavg()``) is printed before and after; read the ratios with it.

    .venv/bin/python bench/warm.py [--steps 20] [--repeat 3] [--keep DIR]

Exit status 1 when a command fails. Timings are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def plan_text(name: str, seed: int, images: int, steps: int) -> str:
    return (f"name: {name}\nmodel: tiny\nprompt: \"a red circle\"\nseeds: {{start: {seed}, count: {images}}}\n"
            f"steps: {steps}\nbatch_size: 4\n")


def env_for(home: Path, threads: int | None = None) -> dict:
    env = {**os.environ, "TRACKER_HOME": str(home), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TRACKER_DB_URL", None)
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def tracker(home: Path, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    began = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tracker", *args], env=env_for(home), capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        sys.exit(f"tracker {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, proc


def start_worker(home: Path, log: Path, threads: int | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tracker", "worker", "--no-mlflow"], env=env_for(home, threads),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(workers) -> None:
    for w in workers:
        w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.kill()


def two_workers(root: Path, steps: int, repeat: int) -> tuple[float, float]:
    """Median seconds of the 32-image plan through one warm worker x 2 threads and two x 1 thread."""
    sys.path.insert(0, str(ROOT / "bench"))
    from workers import plan_text as plan32

    out = []
    for count, threads in ((1, 2), (2, 1)):
        home = root / f"pool{count}"
        procs = [start_worker(home, root / f"pool{count}-{i}.log", threads) for i in range(count)]
        try:
            for p in procs:
                wait_live(home, p, count)
            warmup = root / f"warmup{count}.yaml"
            warmup.write_text(plan_text("bench-warmup", 50_000, 8, steps))
            tracker(home, "run", str(warmup), "-q")
            times = []
            for i in range(repeat):
                f = root / f"pool{count}.yaml"  # one file edited each round: a name belongs to one file
                f.write_text(plan32(32, steps).replace("start: 0", f"start: {100 * i}"))
                t, proc = tracker(home, "run", str(f), "-q")
                assert "32 done" in proc.stdout, proc.stdout
                times.append(t)
            out.append(statistics.median(times))
        finally:
            stop(procs)
    return out[0], out[1]


def first_image(home: Path, experiment: str) -> tuple[float, float]:
    """For the experiment's newest sweep: seconds from its submission (the sweep row the submitter writes once it
    has planned) to its first image written, and that image's pipeline call (the run's ``seconds``)."""
    import sqlite3
    from datetime import datetime

    with sqlite3.connect(home / "tracker.db") as db:
        submitted, finished, call = db.execute(
            "SELECT s.started_at, r.finished_at, r.seconds FROM runs r JOIN sweeps s ON r.sweep_id = s.id "
            "JOIN experiments e ON s.experiment_id = e.id WHERE e.name = ? AND r.status = 'done' "
            "ORDER BY s.id DESC, r.finished_at LIMIT 1", (experiment,)).fetchone()
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(submitted)).total_seconds(), call


def wait_live(home: Path, worker: subprocess.Popen, count: int = 1) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            sys.exit("the warm worker stopped")
        proc = subprocess.run([sys.executable, "-m", "tracker", "status", "--json"], env=env_for(home),
                              capture_output=True, text=True)
        if proc.returncode == 0 and sum(w["live"] for w in json.loads(proc.stdout)["warm_workers"]) >= count:
            return
        time.sleep(0.5)
    sys.exit("the warm worker did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", metavar="DIR", help="keep the workspaces here")
    ap.add_argument("--two-workers", action="store_true", help="also measure 3. (one vs two warm workers)")
    args = ap.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-warm-"))
    root.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(f"load average before (1, 5, 15 min): {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f} "
          f"on {os.cpu_count()} cores")
    warm_home = root / "warm"
    worker = start_worker(warm_home, root / "worker.log")
    times: dict[str, list[float]] = {"cold1": [], "warm1": [], "first": [], "call": [], "local16": [], "warm16": []}
    try:
        wait_live(warm_home, worker)
        # one file per experiment, edited between rounds as a user iterates (a name belongs to one file)
        one, sixteen = root / "one.yaml", root / "sixteen.yaml"
        one.write_text(plan_text("bench-warm", 10_000, 1, args.steps))
        tracker(warm_home, "run", str(one), "-q")  # the worker loads the pipeline once
        for i in range(args.repeat):
            one.write_text(plan_text("bench-warm", i, 1, args.steps))
            sixteen.write_text(plan_text("bench-warm16", 1000 + 16 * i, 16, args.steps))
            t, proc = tracker(root / f"cold{i}", "run", str(one), "-q", "--local", "--no-mlflow")
            times["cold1"].append(t)
            t, proc = tracker(warm_home, "run", str(one), "-q")
            assert "made by warm worker" in proc.stdout and "1 done" in proc.stdout, proc.stdout
            times["warm1"].append(t)
            to_first, call = first_image(warm_home, "bench-warm")
            times["first"].append(to_first)
            times["call"].append(call)
            t, proc = tracker(root / f"local{i}", "run", str(sixteen), "-q", "--local", "--no-mlflow")
            times["local16"].append(t)
            t, proc = tracker(warm_home, "run", str(sixteen), "-q")
            assert "16 done" in proc.stdout, proc.stdout
            times["warm16"].append(t)
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    finally:
        stop([worker])
    med = {k: statistics.median(v) for k, v in times.items()}
    if args.two_workers:
        one, two = two_workers(root, args.steps, args.repeat)
        print(f"32 images (bench/workers.py plan), whole command: one warm worker x 2 threads {one:.2f} s "
              f"({32 / one:.2f} images/s), two x 1 thread {two:.2f} s ({32 / two:.2f} images/s): "
              f"{one / two:.2f}x (target >= 1.6)")
    load_after = os.getloadavg()
    print(f"one image, whole command (median of {args.repeat}): cold {med['cold1']:.2f} s, warm worker "
          f"{med['warm1']:.2f} s: warm/cold = {med['warm1'] / med['cold1']:.3f} (target <= 0.2)")
    print(f"time to first image of the next sweep, from its submission to the worker (median of {args.repeat}): "
          f"{med['first']:.3f} s, one pipeline call {med['call']:.3f} s: {med['first'] / med['call']:.2f}x "
          f"(GPU target <= 1.2x; the 0.1 s queue poll is part of it)")
    print(f"16 images, whole command: in-process {med['local16']:.2f} s ({16 / med['local16']:.2f} images/s), warm "
          f"worker {med['warm16']:.2f} s ({16 / med['warm16']:.2f} images/s): in-process/warm = "
          f"{med['local16'] / med['warm16']:.2f}x (target >= 1.0)")
    print(f"load average after (1, 5, 15 min): {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
