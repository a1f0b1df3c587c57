"""Does a CPU sweep hold up when something else wants a core, and what does MLflow cost on a CPU?

Runs the README's demo as the README runs it (``tracker run examples/shapes.yaml`` in a fresh workspace, a
new process each time) and reads the sweep time it prints. Four variants: quiet with ``--no-mlflow``,
quiet with MLflow on, and both again while one competing busy single-threaded process runs (started and
stopped by this script). Targets (issue 11, point 5):
  - MLflow on costs <= 10% of the quiet ``--no-mlflow`` rate;
  - one competing busy process leaves >= 0.45x of the quiet rate.
Also printed: the whole process's wall time (imports, model loading, MLflow draining at the end).

    .venv/bin/python bench/contention.py [--repeat 3] [--seeds 4] [--file examples/shapes.yaml]

``--seeds N`` keeps the first N seeds of the file (the demo has 4: 96 images); use 1 to try it quickly.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUMMARY_RE = re.compile(r"(\d+) done, .* in ([\d.]+) s \(([\d.]+) images/s\)")
BUSY = "while True: pass"


def experiment(src: Path, seeds: int | None, out: Path) -> Path:
    text = src.read_text()
    if seeds is not None:
        text = re.sub(r"^seeds:.*$", f"seeds: {{start: 0, count: {seeds}}}", text, flags=re.M)
    out.write_text(text)
    return out


def sweep(work: Path, name: str, exp: Path, mlflow: bool) -> tuple[float, float, int]:
    """(sweep seconds as printed, whole process wall seconds, images) of one fresh ``tracker run``."""
    home = work / name
    env = {**os.environ, "TRACKER_HOME": str(home), "HF_HUB_OFFLINE": "1", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "tracker", "run", str(exp), "-q", *([] if mlflow else ["--no-mlflow"])]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - start
    m = SUMMARY_RE.search(proc.stdout)
    if proc.returncode != 0 or not m:
        raise SystemExit(f"{name}: tracker run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    shutil.rmtree(home, ignore_errors=True)
    return float(m.group(2)), wall, int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=Path, default=ROOT / "examples" / "shapes.yaml")
    ap.add_argument("--seeds", type=int, help="keep only this many seeds (default: the file's)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported [3]")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tracker-contention-"))
    try:
        exp = experiment(args.file, args.seeds, work / args.file.name)
        variants = [("quiet --no-mlflow", False, False), ("quiet mlflow", True, False),
                    ("busy --no-mlflow", False, True), ("busy mlflow", True, True)]
        times: dict[str, list[tuple[float, float]]] = {v[0]: [] for v in variants}
        images = 0
        load = os.getloadavg()[0]
        for i in range(args.repeat):
            for label, mlflow, busy in variants:
                competitor = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
                try:
                    seconds, wall, images = sweep(work, f"{label.replace(' ', '-')}-{i}", exp, mlflow)
                finally:
                    if competitor is not None:
                        competitor.kill()
                        competitor.wait()
                times[label].append((seconds, wall))
        rate = {k: images / statistics.median(s for s, _ in v) for k, v in times.items()}
        print(f"{args.file.name}: {images} images per sweep; {os.cpu_count()} CPUs; medians of {args.repeat}; "
              f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
        print(f"{'variant':20} {'sweep s':>8} {'images/s':>9} {'vs quiet':>9} {'process s':>10}")
        quiet = rate["quiet --no-mlflow"]
        for label, v in times.items():
            print(f"{label:20} {statistics.median(s for s, _ in v):8.2f} {rate[label]:9.2f} "
                  f"{rate[label] / quiet:9.3f} {statistics.median(w for _, w in v):10.2f}")
        cost = 1 - rate["quiet mlflow"] / quiet
        print(f"MLflow on costs {cost:.1%} of the quiet rate (target <= 10%)")
        for label in ("busy --no-mlflow", "busy mlflow"):
            print(f"{label}: {rate[label] / quiet:.2f}x the quiet --no-mlflow rate (target >= 0.45)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
