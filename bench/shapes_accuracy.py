#!/usr/bin/env python
"""Accuracy of the built-in ``shapes`` model: does each image follow its prompt?

Generates every prompt "a {colour} {shape} on {background}" (4 x 3 x 2 = 24) for each seed with the
saved pipeline, reads each image back with ``tracker.demo.shapes.analyze`` and prints the accuracy of
background, colour and shape (chance: 0.5, 0.25, 0.33) with the settings used.

  .venv/bin/python bench/shapes_accuracy.py [--seeds 0 1 2 3] [--steps 20] [--guidance 7.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracker.demo import shapes as S  # noqa: E402


def load(folder: str):
    import torch  # noqa: F401
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts, seeds, steps, guidance, negative=None):
    import torch
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    size = S.SIZE
    out = pipe(list(prompts), negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
               generator=gens, height=size, width=size, output_type="pil")
    return out.images


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "tracker" / "models" / "shapes"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, nargs="+", default=[7.5])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save", default=None, help="folder to write a contact sheet PNG per guidance")
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(args.threads)
    pipe = load(args.model)
    combos = S.combos()
    for guidance in args.guidance:
        t0 = time.time()
        preds, truths, images = [], [], []
        for seed in args.seeds:
            imgs = generate(pipe, [S.prompt(*c) for c in combos], [seed] * len(combos), args.steps, guidance)
            for img, c in zip(imgs, combos):
                preds.append(S.analyze(img).triple)
                truths.append(c)
                images.append(img)
        acc = S.score(preds, truths)
        dt = time.time() - t0
        print(f"model={args.model} scheduler=DPMSolverMultistep steps={args.steps} guidance={guidance} "
              f"seeds={args.seeds} size={S.SIZE}x{S.SIZE} images={len(truths)} ({dt:.1f}s, "
              f"{dt / len(truths):.2f}s/image, {torch.get_num_threads()} thread)")
        print("  background {background:.3f}  colour {colour:.3f}  shape {shape:.3f}".format(**acc))
        errs = Counter((t[1], p[1]) for p, t in zip(preds, truths) if p[1] != t[1])
        if errs:
            print("  shape errors (truth, predicted):", dict(errs.most_common(6)))
        errs = Counter((t[0], p[0]) for p, t in zip(preds, truths) if p[0] != t[0])
        if errs:
            print("  colour errors (truth, predicted):", dict(errs.most_common(6)))
        if args.save:
            from PIL import Image
            Path(args.save).mkdir(parents=True, exist_ok=True)
            n = len(combos)
            sheet = Image.new("RGB", (n * S.SIZE, len(args.seeds) * S.SIZE), (128, 128, 128))
            for i, img in enumerate(images):
                sheet.paste(img, ((i % n) * S.SIZE, (i // n) * S.SIZE))
            sheet.resize((sheet.width * 3, sheet.height * 3), Image.NEAREST).save(
                Path(args.save) / f"shapes-g{guidance}.png")


if __name__ == "__main__":
    main()
