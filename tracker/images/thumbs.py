"""Report thumbnails: made once per image (named by the PNG's sha256), by the sweep while the image is still
in memory, so a first ``tracker report`` decodes no PNG. Pillow only.

The workspace keeps them in ``thumbs/<sha256[:32]>.jpg``; the report links them into its own folder. An
image no larger than a thumbnail is its own thumbnail (none is written).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

THUMB_SIZE = 256
JPEG_QUALITY = 88


def name(sha256: str) -> str:
    """The file stem of an image's report assets: the first 32 hex digits of its sha256."""
    return sha256[:32]


def needed(size: tuple[int, int]) -> bool:
    return max(size) > THUMB_SIZE


def cached(folder: Path, sha256: str) -> Path | None:
    """The workspace's thumbnail of the image with this sha256, if the sweep wrote one."""
    p = Path(folder) / f"{name(sha256)}.jpg"
    try:
        return p if p.stat().st_size > 0 else None
    except OSError:
        return None


def save(image, dst: Path) -> None:
    """Write ``image`` (a PIL image, any mode) as a JPEG thumbnail at ``dst``, atomically (temp file, rename)."""
    small = image.convert("RGB") if image.mode != "RGB" else image.copy()
    small.thumbnail((THUMB_SIZE, THUMB_SIZE))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        small.save(tmp, format="JPEG", quality=JPEG_QUALITY)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_cached(image, folder: Path, sha256: str) -> Path | None:
    """The sweep's side: the thumbnail of a just-written PNG, from the image in memory (None: not needed)."""
    if not needed(image.size):
        return None
    dst = Path(folder) / f"{name(sha256)}.jpg"
    if cached(folder, sha256) is None:
        save(image, dst)
    return dst
