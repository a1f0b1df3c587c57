"""The report's images: copied and thumbnailed once per sha256, files no longer used removed."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from tracker.fsutil import atomic_file, sha256_file

if TYPE_CHECKING:
    from tracker.mlflow.fetch import Images
    from tracker.store.records import RunRecord


from tracker.images.thumbs import JPEG_QUALITY, THUMB_SIZE, cached


ASSET_DIRS = ("full", "thumbs", "grids")
MANIFEST = "manifest.json"
MARKER = ".prompt-tracker-report.json"
MODIFIED_NOTE = "image modified since it was made"  # a cell's note for an edited image (state "modified")  # says the folder is a report's and lists the files the tracker wrote


# ---------------------------------------------------------------------------------------------
# the report folder: written only when it is the tracker's, and only its own files removed


def claim(out: Path, experiment: str, trusted: bool = False) -> set[str]:
    """The files (relative paths) the tracker wrote into ``out`` before; refuses a folder it does not own.

    A folder is the tracker's when it holds the marker file, is empty or new, or is ``trusted`` (the
    workspace's own ``reports/EXPERIMENT``, made before markers existed). Anything else, e.g.
    ``-o ~/Documents``, is a UsageError: nothing there is written, overwritten or removed.
    """
    from tracker.errors import UsageError

    for link in (out / d for d in ASSET_DIRS):  # a planted link would send writes and removals elsewhere
        if link.is_symlink():
            raise UsageError(f"{link} is a link (to {os.readlink(link)}), not a folder of the report; the tracker "
                             "writes and removes files only in folders it owns: remove the link or give -o another "
                             "folder")
    marker = out / MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text(encoding="utf-8")).get("files", [])
        except (OSError, ValueError, AttributeError):
            files = []
        return {f for f in files if isinstance(f, str) and ".." not in Path(f).parts and not Path(f).is_absolute()}
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file, not a folder; give -o a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        if not trusted:
            raise UsageError(f"{out} is not empty and holds no report of the tracker ({MARKER}); give -o a new or "
                             "empty folder (the tracker writes and removes files only in folders it owns)")
        return {f"{d}/{p.name}" for d in ASSET_DIRS if (out / d).is_dir() for p in (out / d).iterdir()} \
            | ({"index.html"} if (out / "index.html").is_file() else set())
    return set()


def write_marker(out: Path, experiment: str, files: Iterable[str]) -> None:
    write_text(out / MARKER, json.dumps({"report": experiment, "files": sorted(files)}, indent=1))


# ---------------------------------------------------------------------------------------------
# images: copied and thumbnailed once per sha256


@dataclass(frozen=True)
class Asset:
    thumb: str
    image: str
    width: int
    height: int


class Assets:
    """Full images and thumbnails under the report folder, named by the image's sha256.

    ``thumbs/manifest.json`` remembers each image's size and thumbnail, so a second build opens no
    image that did not change. Images no larger than a thumbnail serve as their own thumbnail. A thumbnail
    the sweep already wrote into ``cache`` (the workspace's thumbs/, from the image in memory) is linked,
    so a first build decodes no PNG either.
    """

    def __init__(self, root: Path, cache: Path | None = None, owned: Iterable[str] = ()):
        self.root, self.cache = root, cache
        self.owned = set(owned)  # files the tracker wrote before (from the marker): the only ones prune removes
        self.used: set[str] = {MANIFEST}
        for d in ASSET_DIRS:
            (root / d).mkdir(parents=True, exist_ok=True)
        self.manifest: dict[str, list] = _read_manifest(root / "thumbs" / MANIFEST)

    def prepare(self, records: Iterable["RunRecord"], images: "Images") -> dict[str, Asset | str]:
        """key -> Asset, or key -> the reason there is no image (``problems``: key -> missing/modified).
        ``images`` finds each run's file: the workspace's when it has the bytes the sweep recorded
        (``tracker.images.check.image_state``: one stat, a hash only when the stat changed), else a checked copy
        from MLflow's artifact store; a modified image is never published under its recorded sha256.
        Checks and thumbnails run in threads."""
        self.problems: dict[str, str] = {}
        records = list(records)
        with ThreadPoolExecutor(workers()) as pool:
            out = dict(zip((r.key for r in records), pool.map(lambda r: self._one(r, images), records)))
        write_text(self.root / "thumbs" / MANIFEST, json.dumps(self.manifest, sort_keys=True))
        return out

    def _one(self, r: "RunRecord", images: "Images") -> Asset | str:
        from tracker.images.check import MODIFIED

        found = images.locate(r)
        if found.path is None:
            self.problems[r.key] = found.state
            if found.state == MODIFIED:
                return f"{MODIFIED_NOTE} (its sha256 differs): {Path(r.image).name} is not shown"
            return found.problem
        return self._asset(found.path, r.image_sha256 or sha256_file(found.path), (r.width, r.height))

    def _asset(self, src: Path, sha: str, size: tuple[int, int]) -> Asset | str:
        name = sha[:32]
        full = f"full/{name}{src.suffix.lower() or '.png'}"
        try:
            if not (self.root / full).exists():
                _link_or_copy(src, self.root / full)
            known = self.manifest.get(name)
            if known is None or not (self.root / known[2]).exists():
                known = self.manifest[name] = list(self._from_cache(sha, name, size)
                                                   or _thumbnail(self.root / full, self.root / "thumbs", name))
        except (OSError, ValueError) as e:
            return f"image unreadable: {e}"
        self.used.update({Path(full).name, Path(known[2]).name})
        return Asset(known[2], full, known[0], known[1])

    def _from_cache(self, sha: str, name: str, size: tuple[int, int]) -> tuple[int, int, str] | None:
        """The sweep's thumbnail of this image (width, height, path), linked into the report; None if none."""
        thumb = cached(self.cache, sha) if self.cache is not None and all(size) else None
        if thumb is None:
            return None
        _link_or_copy(thumb, self.root / "thumbs" / thumb.name)
        return (*size, f"thumbs/{thumb.name}")

    def input(self, src: Path, sha: str) -> "Asset | str":
        """An input image of image-conditioned runs (the workspace's ``inputs/<sha256>.<ext>``), copied and
        thumbnailed as the outputs are."""
        from PIL import Image

        try:
            with Image.open(src) as im:
                size = im.size
        except (OSError, ValueError) as e:
            return f"image unreadable: {e}"
        return self._asset(src, sha, size)

    def add_used(self, rel: str) -> None:
        self.used.add(Path(rel).name)

    def files(self) -> set[str]:
        """The files this build uses (relative paths), for the marker."""
        return {f"{d}/{p.name}" for d in ASSET_DIRS for p in (self.root / d).iterdir() if p.name in self.used}

    def prune(self) -> int:
        """Remove files the tracker wrote before that no run shows any more; never a file it did not write."""
        n = 0
        for rel in sorted(self.owned - self.files() - {"index.html", MARKER}):
            p = self.root / rel
            if rel.split("/", 1)[0] in ASSET_DIRS and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                n += 1
        return n


def _read_manifest(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _thumbnail(src: Path, folder: Path, name: str) -> tuple[int, int, str]:
    """Write ``name``'s thumbnail into ``folder``: a JPEG, or for an image no larger than a thumbnail a
    link to the image itself (so thumbs/ alone can show every grid). Returns (width, height, path)."""
    from PIL import Image

    with Image.open(src) as im:
        size = im.size
        if max(size) <= THUMB_SIZE:
            dst = folder / f"{name}{src.suffix}"
            _link_or_copy(src, dst)
            return (*size, f"{folder.name}/{dst.name}")
        im.draft("RGB", (THUMB_SIZE, THUMB_SIZE))
        small = im.convert("RGB")
    small.thumbnail((THUMB_SIZE, THUMB_SIZE))
    dst = folder / f"{name}.jpg"
    with atomic_file(dst) as fh:
        small.save(fh, format="JPEG", quality=JPEG_QUALITY)
    return (*size, f"{folder.name}/{dst.name}")


def workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def write_text(path: Path, text: str) -> None:
    with atomic_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)
