"""Labelled grid images: the report's (a JPEG per grid, drawn only when changed) and ``tracker grid``'s PNGs."""

from __future__ import annotations

import hashlib
import re
from concurrent.futures import Executor, Future
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from tracker.images import grid as gridimage
from tracker.errors import NotFoundError
from tracker.mlflow.fetch import Images
from tracker.images.thumbs import THUMB_SIZE
from tracker.report.assets import Asset
from tracker.report.data import Grid
from tracker.report.layout import Layout, Section, choose_layout, parse_where, sections, select
from tracker.report.source import STATE_NOTES, Entry, load
from tracker.workspace import WorkspaceConfig


def grid_images(grids: Sequence[Grid], secs: Sequence[Section], layout: Layout, images: Mapping[str, Asset | str],
                out: Path, max_pixels: int) -> tuple[tuple[Grid, ...], list[tuple[gridimage.GridSpec, Path]]]:
    """Each grid's labelled image (a JPEG: its tiles are JPEG thumbnails already), named by a hash of its
    images and labels, so it is drawn only when that changed: the grids with their file names, and the
    (spec, path) of each image still to draw (``draw``)."""
    jobs, named = [], []
    for grid, sec in zip(grids, secs):
        spec = grid_spec(sec, layout, lambda key: _tile_for(images, out, key), with_title=True,
                         preview_of=lambda key: _preview_for(images, out, key))
        digest = hashlib.sha256(repr((spec, max_pixels)).encode()).hexdigest()[:12]
        rel = f"grids/{grid.id}-{digest}.jpg"
        named.append(replace(grid, png=rel))
        if not (out / rel).exists():
            jobs.append((spec, out / rel))
    return tuple(named), jobs


def draw(pool: Executor, jobs: Sequence[tuple[gridimage.GridSpec, Path]], max_pixels: int) -> list[Future]:
    """Start drawing the grid images in ``pool``'s threads (Pillow decodes, resizes and compresses without
    holding the GIL, so the caller's own work goes on meanwhile); wait on the futures."""
    return [pool.submit(gridimage.write, spec, path, max_pixels) for spec, path in jobs]


def _tile_for(images: Mapping[str, Asset | str], out: Path, key: str) -> Path | None:
    asset = images.get(key)
    return out / asset.image if isinstance(asset, Asset) else None


def _preview_for(images: Mapping[str, Asset | str], out: Path, key: str) -> tuple[Path | None, float, tuple | None]:
    asset = images.get(key)
    if not isinstance(asset, Asset):
        return None, 0.0, None
    size = (asset.width, asset.height) if asset.width and asset.height else None
    return out / asset.thumb, min(1.0, THUMB_SIZE / max(asset.width, asset.height)), size


def grid_spec(sec: Section, layout: Layout, image_of: Callable[[str], Path | None], with_title: bool = True,
              preview_of: Callable[[str], tuple[Path | None, float, tuple | None]] | None = None) -> gridimage.GridSpec:
    """A section as a labelled grid image: ``image_of(key)`` gives the file of a done run, ``preview_of(key)``
    a smaller copy, its scale and the image's size (report thumbnails)."""
    tiles = []
    for rl in sec.row_labels:
        row = []
        for cl in sec.col_labels:
            e = sec.cells.get((rl, cl))
            path = image_of(e.key) if e is not None and e.state == "done" else None
            preview = preview_of(e.key) if path is not None and preview_of is not None else (None, 0.0, None)
            row.append(gridimage.Tile(path, "" if path else _tile_note(e), *preview))
        tiles.append(tuple(row))
    rows = tuple(f"{layout.rows}: {lab}" if layout.rows == "seed" else lab for lab in sec.row_labels)
    cols = tuple(f"{layout.cols}: {lab}" if layout.cols == "seed" else lab for lab in sec.col_labels)
    return gridimage.GridSpec(sec.title if with_title else "", rows, cols, tuple(tiles))


def _tile_note(e: Entry | None) -> str:
    if e is None:
        return STATE_NOTES["absent"]
    if e.state == "failed":
        return f"failed: {e.record.error or 'unknown error'}"
    if e.state == "done":
        return "image missing"
    return STATE_NOTES.get(e.state, e.state)


# ---------------------------------------------------------------------------------------------
# labelled PNG grids for ``tracker grid``


def grid_specs(ws: WorkspaceConfig, experiment: str, rows: str | None, cols: str | None,
               where: Iterable[str]) -> list[tuple[tuple, gridimage.GridSpec]]:
    """(combination, GridSpec) per combination of the axes left varying, titled with it and with ``where``'s
    pinned labels; the full-size images as tiles (``tracker grid`` and the Python API's grids)."""
    source = load(ws, experiment)
    pinned = parse_where(source, where)
    layout = choose_layout(source, rows, cols, fixed=pinned)
    secs = sections(source, layout, select(source, pinned))
    if not secs:
        raise NotFoundError(f"no runs of {experiment!r} match --where {' '.join(where)}")
    pinned_title = " · ".join(f"{k}: {v}" for k, v in pinned.items())
    # only images with the bytes they were made with (a stat each), else MLflow's checked copy; else a placeholder
    images = Images(ws)
    records = {e.key: e.record for e in source.entries if e.record is not None and e.state == "done"}
    out = []
    for sec in secs:
        spec = grid_spec(sec, layout, lambda key: images.locate(records[key]).path if key in records else None)
        title = " · ".join(t for t in (pinned_title, spec.title) if t)
        out.append((sec.combo, gridimage.GridSpec(title, spec.row_labels, spec.col_labels, spec.tiles)))
    return out


def write_grids(ws: WorkspaceConfig, experiment: str, rows: str | None, cols: str | None, where: Iterable[str],
                out: Path, max_pixels: int = gridimage.DEFAULT_MAX_PIXELS) -> list[gridimage.GridImage]:
    """One PNG at ``out`` for one grid; when other axes still vary, one PNG per combination named
    ``<stem>-<axis=label,...><suffix>`` beside it."""
    specs = grid_specs(ws, experiment, rows, cols, where)
    names = _combo_names(out, [combo for combo, _ in specs])
    return [gridimage.write(spec, path, max_pixels) for (_, spec), path in zip(specs, names)]


def _combo_names(out: Path, combos: Sequence[tuple]) -> list[Path]:
    if len(combos) == 1:
        return [out]
    names, used = [], set()
    for combo in combos:
        slug = re.sub(r"[^A-Za-z0-9._=,-]+", "_", ",".join(f"{k}={v}" for k, v in combo))[:80].strip("._") or "grid"
        candidate, n = slug, 2
        while candidate in used:
            candidate, n = f"{slug}-{n}", n + 1
        used.add(candidate)
        names.append(out.with_name(f"{out.stem}-{candidate}{out.suffix or '.png'}"))
    return names
