#!/usr/bin/env python
"""What ``deterministic: true`` costs: the same batches with torch's deterministic algorithms off and on.

One Engine in this process generates the same batch (``--batch`` runs of the built-in ``tiny`` model, or
``--model``) alternately with ``deterministic`` off and on, ``--repeat`` times each after one untimed call
of each, and prints the median pipeline seconds of each and their ratio (on / off), and whether the images
are identical. On a CPU the kernels are deterministic already; on CUDA the figure is the cost of cuDNN's
deterministic algorithms (no autotuned ones) and a fixed cuBLAS workspace.

  .venv/bin/python bench/deterministic.py [--repeat 12] [--batch 4] [--steps 4] [--size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    from tracker.experiment import plan
    from tracker.engine.core import Engine
    from tracker.experiment.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    base = Settings(model=args.model, steps=args.steps, width=args.size, height=args.size, device=args.device)
    runs = {}
    for on in (False, True):
        s = replace(base, deterministic=on)
        runs[on] = [plan.PlannedRun(key=plan.run_key(s, seed, "a red square", ""), index=i, experiment="bench",
                                    axes=(("seed", str(seed)),), prompt="a red square", negative_prompt="",
                                    prompt_template="a red square", negative_template="", seed=seed, settings=s)
                    for i, seed in enumerate(range(args.batch))]
    engine = Engine(device=args.device)
    try:
        images = {on: [im.image.tobytes() for im in engine.generate(runs[on]).images] for on in (False, True)}
        seconds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):
            for on in (False, True):
                seconds[on].append(engine.generate(runs[on]).seconds)
    finally:
        engine.close()
    off, on = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"{args.model} {args.size}x{args.size}, {args.steps} steps, batch {args.batch} on {args.device}: "
          f"median {off:.4f} s off, {on:.4f} s on; ratio on/off {on / off:.3f} "
          f"({args.repeat} interleaved calls each; images identical: {images[False] == images[True]}; "
          f"load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
