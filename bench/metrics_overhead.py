#!/usr/bin/env python
"""What scoring costs a sweep: the README's shapes demo with and without ``metrics: [shapes]``.

Runs ``tracker run`` in this process on ``examples/shapes.yaml`` (96 images, --no-mlflow) in fresh
workspaces, alternating the two variants (plain = the same file without ``metrics:``) for
``--repeat`` rounds after one untimed warm-up each, and prints the median sweep seconds of each and
their ratio (target: <= 1.10). Also prints the scoring work alone (``tracker.metrics.score`` over the
96 images, median of 5) as a fraction of the plain sweep, a steadier figure on a busy machine. The
pixels of the two variants are compared: scoring must not change them.

  .venv/bin/python bench/metrics_overhead.py [--repeat 3] [--seeds 4] [--threads 0]

--seeds 1 makes a 24-image sweep for a quick try.

``--scorer`` measures a CLIP-size preference scorer instead: ``pickscore`` on a ViT-B/32-size CLIP built from
transformers' default CLIPConfig (random weights, ~150 M parameters, 224 px) over a sweep of the built-in ``tiny``
SD pipeline (20 steps at ``--size``: 64 px is ~0.08 s per image on a quiet 2-core CPU, a toy; 256 px seconds),
plain against ``metrics: [pickscore]``. Prints the ratio (target <= 1.10), the scoring work alone per image and
as a fraction of the plain sweep, and the machine load (``os.getloadavg()``: the machine is shared). The scorer's
cost per image does not depend on the generator (CLIP sees 224 px whatever the size), so its share of a sweep
is its cost over the generator's cost per image.

  .venv/bin/python bench/metrics_overhead.py --scorer [--images 16] [--repeat 1] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEMO = ROOT / "examples" / "shapes.yaml"


def files(folder: Path, seeds: int) -> dict[str, Path]:
    """The demo file with its metrics (``scored``) and without (``plain``), the seed list cut to ``seeds``."""
    text = DEMO.read_text()
    assert "metrics: [shapes]" in text, "examples/shapes.yaml lost its metrics: line"
    text = text.replace("seeds: [0, 1, 2, 3]", f"seeds: {list(range(seeds))}")
    out = {}
    for name, body in (("scored", text), ("plain", "\n".join(
            line for line in text.splitlines() if not line.startswith("metrics:")) + "\n")):
        out[name] = folder / f"{name}.yaml"
        out[name].write_text(body)
    return out


def sweep(path: Path, home: Path) -> tuple[float, dict[str, bytes]]:
    """One ``tracker run`` in a fresh workspace: its sweep seconds and its images' pixels by run key."""
    from PIL import Image

    from tracker.sweep import driver, runner
    from tracker.workspace import WorkspaceConfig

    ws = WorkspaceConfig.from_options(home=str(home), no_mlflow=True)
    summary = driver.run(ws, str(path), runner.RunOptions(progress=False))
    assert summary.failed == 0 and summary.done > 0, summary
    images = {}
    for p in (home / "images" / summary.experiment).glob("*.png"):  # pixels: the PNG's recipe holds timings
        with Image.open(p) as im:
            images[p.stem] = im.convert("RGB").tobytes()
    return summary.seconds, images


def scoring_alone(home: Path, repeat: int = 5) -> tuple[float, int]:
    """Median seconds of scoring the stored images with ``shapes`` (images already decoded)."""
    from PIL import Image

    from tracker import metrics
    from tracker.store.runstore import Store

    with Store.open(f"sqlite:///{home / 'tracker.db'}") as store:
        runs = store.runs(status="done")
    images = [Image.open(r.image).convert("RGB") for r in runs]
    metric = metrics.get("shapes")
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        metrics.score(metric, images, runs)
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(runs)


SCORER_SPEC = """name: {name}
model: tiny
size: {size}x{size}
steps: 20
prompt: "a photo of a {{{{ thing }}}}"
axes:
  thing: [cat, dog, red cube, house, tree, car, boat, lamp]
seeds: {seeds}
"""


def build_clip_b32(folder: Path) -> str:
    """A CLIPModel of ViT-B/32's sizes (transformers' CLIPConfig defaults) with random weights, and a processor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(ROOT / "tracker" / "models" / "shapes" / "tokenizer"))
    config = CLIPConfig(text_config={"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id})
    torch.manual_seed(0)
    model = CLIPModel(config)
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer).save_pretrained(folder)
    return str(folder), sum(p.numel() for p in model.parameters())


def scorer_main(args) -> int:
    import torch
    from PIL import Image

    from tracker import metrics
    from tracker.store.runstore import Store

    with tempfile.TemporaryDirectory(prefix="scorer-overhead-") as tmp:
        tmp = Path(tmp)
        folder, params = build_clip_b32(tmp / "clip-b32")
        seeds = list(range(max(1, args.images // 8)))
        paths = {}
        for name, extra in (("plain", ""), ("scored", f"metrics: [pickscore]\nmetric_options: {{pickscore: "
                                                        f"{{model: {folder}, batch_size: 16}}}}\n")):
            paths[name] = tmp / f"{name}.yaml"
            paths[name].write_text(SCORER_SPEC.format(name=name, seeds=seeds, size=args.size) + extra)
        times: dict[str, list[float]] = {"plain": [], "scored": []}
        for round_ in range(args.repeat + 1):
            for name in (("plain", "scored") if round_ % 2 else ("scored", "plain")):
                seconds, images = sweep(paths[name], tmp / f"{name}-{round_}")
                if round_:
                    times[name].append(seconds)
                print(f"round {round_}{' (warm-up)' if not round_ else ''}: {name:6s} {seconds:7.2f} s "
                      f"({len(images)} images) load {os.getloadavg()[0]:.2f}", flush=True)
        with Store.open(f"sqlite:///{tmp / 'scored-1' / 'tracker.db'}") as store:
            runs = store.runs(status="done")
        images = [Image.open(r.image).convert("RGB") for r in runs]
        metric = metrics.get("pickscore", {"model": folder, "batch_size": 16})
        alone = []
        for _ in range(3):
            metric.texts.clear()  # each prompt encoded once, as in a sweep
            t = time.perf_counter()
            metrics.score(metric, images, runs)
            alone.append(time.perf_counter() - t)
        parts = profile(metric, images, [r.prompt for r in runs])
    plain, scored, alone_s = (statistics.median(times["plain"]), statistics.median(times["scored"]),
                              statistics.median(alone))
    n = len(runs)
    print()
    print(f"machine load (1, 5, 15 min): {os.getloadavg()}; cpus: {os.cpu_count()}; torch threads: "
          f"{torch.get_num_threads()}")
    print(f"scorer: pickscore on a ViT-B/32-size CLIP, {params / 1e6:.0f} M parameters, random weights")
    print(f"plain sweep ({n} images, tiny SD {args.size}x{args.size}, 20 steps) median {plain:7.2f} s "
          f"({1000 * plain / n:.0f} ms per image)")
    print(f"sweep with metrics: [pickscore]                 median {scored:7.2f} s")
    print(f"ratio scored / plain: {scored / plain:.3f} (target <= 1.10)")
    print(f"scoring alone: {alone_s:.3f} s for {n} images ({1000 * alone_s / n:.1f} ms per image) "
          f"= {alone_s / plain:.3f} of the plain sweep")
    print("where scoring's time goes (median of 3, all images in one batch): "
          + ", ".join(f"{k} {1000 * v / n:.1f} ms" for k, v in parts.items()) + " per image")
    return 0


def profile(metric, images, prompts) -> dict[str, float]:
    """Seconds of each part of ``clip.text_image_scores`` on these images: the processor's PIL work, the text
    tower over the distinct prompts, the image tower (medians of 3)."""
    import torch

    distinct = list(dict.fromkeys(prompts))
    parts: dict[str, list[float]] = {}
    for _ in range(3):
        t0 = time.perf_counter()
        pixels = metric.processor(images=images, return_tensors="pt")["pixel_values"]
        tokens = metric.processor(text=distinct, return_tensors="pt", padding=True, truncation=True)
        t1 = time.perf_counter()
        with torch.inference_mode():
            metric.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            t2 = time.perf_counter()
            metric.model.get_image_features(pixel_values=pixels)
            t3 = time.perf_counter()
        for k, v in (("preprocess", t1 - t0), (f"text tower ({len(distinct)} prompts)", t2 - t1),
                     ("image tower", t3 - t2)):
            parts.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds of each variant [3]")
    ap.add_argument("--seeds", type=int, default=4, help="seeds (24 images each) [4: the demo's 96 images]")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default [0]")
    ap.add_argument("--scorer", action="store_true", help="measure pickscore on a ViT-B/32-size CLIP instead")
    ap.add_argument("--images", type=int, default=16, help="--scorer: images per sweep (multiples of 8) [16]")
    ap.add_argument("--size", type=int, default=64, help="--scorer: image size of the tiny pipeline's sweep [64]")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scorer:
        return scorer_main(args)
    with tempfile.TemporaryDirectory(prefix="metrics-overhead-") as tmp:
        tmp = Path(tmp)
        paths = files(tmp, args.seeds)
        times: dict[str, list[float]] = {"plain": [], "scored": []}
        first: dict[str, dict[str, bytes]] = {}
        for round_ in range(args.repeat + 1):  # round 0 warms up (imports, model load, caches)
            for name in (("plain", "scored") if round_ % 2 else ("scored", "plain")):
                seconds, images = sweep(paths[name], tmp / f"{name}-{round_}")
                first.setdefault(name, images)
                if round_:
                    times[name].append(seconds)
                print(f"round {round_}{' (warm-up)' if not round_ else ''}: {name:6s} {seconds:7.2f} s "
                      f"({len(images)} images)", flush=True)
        same = first["plain"] == first["scored"]
        alone, n = scoring_alone(tmp / "scored-1")
    plain, scored = statistics.median(times["plain"]), statistics.median(times["scored"])
    print()
    print(f"torch threads: {torch.get_num_threads()}; images per sweep: {n}; rounds: {args.repeat}")
    print(f"plain sweep (no metrics)     median {plain:7.2f} s")
    print(f"sweep with metrics: [shapes] median {scored:7.2f} s")
    print(f"ratio scored / plain: {scored / plain:.3f} (target <= 1.10)")
    print(f"scoring alone: {alone:.3f} s for {n} images ({1000 * alone / n:.1f} ms per image) "
          f"= {alone / plain:.3f} of the plain sweep")
    print(f"images identical with and without metrics: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
