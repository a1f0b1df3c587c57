"""Which zlib level and strategy should a sweep write its PNGs with? Encode time and file size at 512x512.

The writing stage has to keep up with the accelerator (an SD 1.5 batch of 4 at 512x512 takes ~0.66 s on an
H200: ~165 ms per image), so the encode time matters more than a few percent of disk. Images: photos that
ship with installed packages when they are there (matplotlib's and scikit-learn's sample images, cropped
square and resized), and the stand-in pictures of bench/gpu_standin.py. Prints per level and zlib strategy
(Pillow's ``compress_type``: default, or Z_RLE) the best of ``--repeat`` rounds: ms per image and size
relative to Pillow's default (level 6, default strategy). The tracker's choice is
``tracker.images.pngmeta.PNG_COMPRESS_LEVEL`` / ``PNG_COMPRESS_TYPE``.

    .venv/bin/python bench/png_level.py [--size 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# (level, zlib strategy): Pillow's default is (6, default); Z_RLE suits filtered PNG rows
CHOICES = ((0, "default"), (1, "default"), (1, "rle"), (2, "rle"), (3, "default"), (4, "default"), (6, "default"),
           (9, "default"))
STRATEGIES = {"default": -1, "rle": 3}  # zlib.Z_RLE


def photos(size: int) -> list:
    """Sample photos of installed packages (matplotlib, scikit-learn), square, ``size`` px; [] if none."""
    import importlib.util

    from PIL import Image

    found = []
    for package, rel in (("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
                         ("sklearn", "datasets/images/flower.jpg"), ("sklearn", "datasets/images/china.jpg")):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if path.is_file():
            im = Image.open(path).convert("RGB")
            side = min(im.size)
            found.append(im.crop((0, 0, side, side)).resize((size, size), Image.LANCZOS))
    return found


def standins(size: int) -> list:
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "bench"))
    from gpu_standin import picture

    return [Image.fromarray((picture(size, i) * 255).round().astype(np.uint8)) for i in range(3)]


def measure(images: list, level: int, strategy: str, repeat: int) -> tuple[float, int]:
    """Best ms per image over ``repeat`` rounds, and the total bytes."""
    best, total = float("inf"), 0
    for _ in range(repeat):
        start, total = time.perf_counter(), 0
        for im in images:
            buf = io.BytesIO()
            im.save(buf, format="PNG", compress_level=level, compress_type=STRATEGIES[strategy])
            total += len(buf.getvalue())
        best = min(best, (time.perf_counter() - start) / len(images))
    return best * 1000, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    from tracker.images.pngmeta import PNG_COMPRESS_LEVEL, PNG_COMPRESS_TYPE

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; the tracker writes level {PNG_COMPRESS_LEVEL}, "
          f"strategy {PNG_COMPRESS_TYPE} (3: Z_RLE)")
    for label, images in (("photos", photos(args.size)), ("stand-in pictures", standins(args.size))):
        if not images:
            print(f"{label}: none found")
            continue
        rows = {c: measure(images, *c, args.repeat) for c in CHOICES}
        base_ms, base_bytes = rows[(6, "default")]
        print(f"{label} ({len(images)} at {args.size}x{args.size}):")
        print(f"  {'level':>5} {'strategy':>8} {'ms/image':>9} {'KiB/image':>10} {'time vs 6':>10} {'size vs 6':>10}")
        for (lv, strategy), (ms, total) in rows.items():
            print(f"  {lv:5d} {strategy:>8} {ms:9.1f} {total / len(images) / 1024:10.1f} {ms / base_ms:10.2f} "
                  f"{total / base_bytes:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
