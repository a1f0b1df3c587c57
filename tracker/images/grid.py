"""Labelled PNG grids: rows x columns of images with their axis labels drawn in, like AUTOMATIC1111's
X/Y plot, but a grid larger than the pixel budget is never refused: its tiles are scaled down instead
and ``GridImage.scaled`` says so, so the caller can tell the user.

Pure Pillow, no torch. Labels use Pillow's bundled default font (``ImageFont.load_default(size=)``), so
nothing is read from the network or the system's font folders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from tracker.errors import UsageError
from tracker.fsutil import atomic_file

DEFAULT_MAX_PIXELS = 64_000_000
# The report's grid images (JPEGs) are for sharing a whole sweep at a glance; `tracker grid` makes bigger PNGs.
REPORT_MAX_PIXELS = 16_000_000
MIN_TILE = 8  # below this a tile shows nothing useful
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PLACEHOLDER = (226, 226, 226)
PLACEHOLDER_INK = (120, 30, 30)
MAX_HEADER_LINES = 4
JPEG_QUALITY = 95  # grids written as .jpg (the report's)


@dataclass(frozen=True)
class Tile:
    """One cell: an image file, or a placeholder that says why there is none.

    ``preview``: a smaller copy of the image (a report thumbnail), ``preview_scale`` times its size;
    it is drawn instead whenever the tile is no larger than it, which saves decoding the full image.
    ``size``: the image's (width, height) when the caller knows it (the run store does), which saves
    reading the image's header."""

    image: Path | None
    note: str = ""
    preview: Path | None = None
    preview_scale: float = 0.0
    size: tuple[int, int] | None = None


@dataclass(frozen=True)
class GridSpec:
    """What to draw: ``tiles[row][col]``, one row label per row and one column label per column."""

    title: str
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    tiles: tuple[tuple[Tile, ...], ...]


@dataclass(frozen=True)
class GridImage:
    """What was written: its size, and the tile size it used against the images' own size."""

    path: Path
    width: int
    height: int
    tile: tuple[int, int]
    native_tile: tuple[int, int]

    @property
    def scaled(self) -> bool:
        return self.tile != self.native_tile

    def scale_note(self, max_pixels: int) -> str:
        """The line that tells the user tiles were shrunk to fit the budget."""
        nw, nh = self.native_tile
        tw, th = self.tile
        return (f"note: {self.path.name}: at {nw}x{nh} per tile the grid would exceed --max-pixels "
                f"{max_pixels:,}; tiles scaled down to {tw}x{th} ({self.width}x{self.height} px)")


@dataclass(frozen=True)
class _Geometry:
    tile_w: int
    tile_h: int
    font_size: int
    pad: int
    title_lines: tuple[str, ...]
    col_lines: tuple[tuple[str, ...], ...]
    row_band: int  # width of the row-label band on the left
    col_band: int  # height of the column-label band on top

    @property
    def line_h(self) -> int:
        return round(self.font_size * 1.25)

    @property
    def title_band(self) -> int:
        return len(self.title_lines) * self.line_h + 2 * self.pad if self.title_lines else 0

    def size(self, rows: int, cols: int) -> tuple[int, int]:
        return self.row_band + cols * self.tile_w, self.title_band + self.col_band + rows * self.tile_h


@lru_cache(maxsize=32)
def font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def wrap(text: str, width: float, size: int, max_lines: int | None = None) -> tuple[str, ...]:
    """Break ``text`` into lines no wider than ``width`` pixels; a last line that would not fit ends in '…'."""
    f = font(size)
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}" if line else word
            if f.getlength(trial) <= width:
                line = trial
                continue
            if line:
                lines.append(line)
            line = word
            while f.getlength(line) > width and len(line) > 1:  # a word wider than the band: break it
                cut = _fit(line, width, f)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and f.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return tuple(lines)


def _fit(text: str, width: float, f) -> int:
    n = 1
    while n < len(text) and f.getlength(text[: n + 1]) <= width:
        n += 1
    return n


def native_tile(spec: GridSpec) -> tuple[int, int]:
    """The largest image size among the tiles (as the tiles say, else read from the file headers)."""
    w = h = 0
    for row in spec.tiles:
        for t in row:
            if t.image is None:
                continue
            try:
                tw, th = t.size or _header_size(t.image)
            except (OSError, ValueError):
                continue
            w, h = max(w, tw), max(h, th)
    return (w, h) if w and h else (256, 256)


def _header_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        return im.size


def _geometry(spec: GridSpec, tile_w: int, tile_h: int) -> _Geometry:
    fs = max(12, min(48, round(min(tile_w, tile_h) / 9)))
    pad = max(3, fs // 2)
    f = font(fs)
    cols = len(spec.col_labels)
    col_lines = tuple(wrap(lab, max(tile_w - 2 * pad, fs), fs, MAX_HEADER_LINES) if lab else () for lab in spec.col_labels)
    line_h = round(fs * 1.25)
    n_col = max((len(c) for c in col_lines), default=0)
    col_band = n_col * line_h + 2 * pad if n_col else 0
    widest = max((f.getlength(lab) for lab in spec.row_labels if lab), default=0)
    row_band = 0
    if widest:
        row_band = int(min(widest + 2 * pad, max(tile_w, 12 * fs))) + 1
    total_w = row_band + cols * tile_w
    title_lines = wrap(spec.title, max(total_w - 2 * pad, fs), fs, 3) if spec.title else ()
    return _Geometry(tile_w, tile_h, fs, pad, title_lines, col_lines, row_band, col_band)


def plan_geometry(spec: GridSpec, max_pixels: int) -> tuple[_Geometry, tuple[int, int]]:
    """Choose the tile size: the images' own, or smaller until the whole grid fits ``max_pixels``."""
    nw, nh = native_tile(spec)
    rows, cols = len(spec.row_labels), len(spec.col_labels)
    geo = _geometry(spec, nw, nh)
    scale = 1.0
    for _ in range(40):
        w, h = geo.size(rows, cols)
        if w * h <= max_pixels:
            return geo, (nw, nh)
        scale *= min(0.97, math.sqrt(max_pixels / (w * h)))
        tw, th = int(nw * scale), int(nh * scale)
        if min(tw, th) < MIN_TILE:
            break
        geo = _geometry(spec, tw, th)
    raise UsageError(
        f"a grid of {rows} x {cols} tiles does not fit in --max-pixels {max_pixels:,} even with "
        f"{MIN_TILE}-pixel tiles; raise --max-pixels or narrow the grid with --where")


def compose(spec: GridSpec, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Draw the grid. Returns (PIL image, tile size used, the images' own tile size)."""
    from PIL import Image, ImageDraw

    if not spec.row_labels or not spec.col_labels:
        raise UsageError("a grid needs at least one row and one column")
    geo, native = plan_geometry(spec, max_pixels)
    width, height = geo.size(len(spec.row_labels), len(spec.col_labels))
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    _draw_lines(draw, geo.title_lines, 0, 0, width, geo.title_band, geo, bold=True)
    top = geo.title_band + geo.col_band
    for c, lines in enumerate(geo.col_lines):
        _draw_lines(draw, lines, geo.row_band + c * geo.tile_w, geo.title_band, geo.tile_w, geo.col_band, geo)
    max_row_lines = max(1, (geo.tile_h - 2 * geo.pad) // geo.line_h)
    for r, (label, row) in enumerate(zip(spec.row_labels, spec.tiles)):
        y = top + r * geo.tile_h
        if geo.row_band:
            lines = wrap(label, geo.row_band - 2 * geo.pad, geo.font_size, max_row_lines)
            _draw_lines(draw, lines, 0, y, geo.row_band, geo.tile_h, geo)
        for c, tile in enumerate(row):
            _paste_tile(canvas, draw, tile, geo.row_band + c * geo.tile_w, y, geo)
    return canvas, (geo.tile_w, geo.tile_h), native


def _draw_lines(draw, lines: Sequence[str], x: int, y: int, w: int, h: int, geo: _Geometry,
                ink=INK, bold: bool = False) -> None:
    """Centre ``lines`` in the box (x, y, w, h)."""
    if not lines:
        return
    f = font(geo.font_size)
    top = y + (h - len(lines) * geo.line_h) / 2
    for i, line in enumerate(lines):
        lx = x + (w - f.getlength(line)) / 2
        draw.text((lx, top + i * geo.line_h), line, font=f, fill=ink,
                  stroke_width=1 if bold and geo.font_size >= 20 else 0, stroke_fill=ink)


def _paste_tile(canvas, draw, tile: Tile, x: int, y: int, geo: _Geometry) -> None:
    from PIL import Image, ImageOps

    img = None
    note = tile.note
    if tile.image is not None:
        try:
            with Image.open(_source(tile, geo)) as im:
                im.draft("RGB", (geo.tile_w, geo.tile_h))  # a JPEG preview decodes at 1/2, 1/4 ... scale when that is enough
                img = ImageOps.contain(im.convert("RGB"), (geo.tile_w, geo.tile_h))
        except (OSError, ValueError) as e:
            note = f"image unreadable: {e}"
    if img is not None:
        canvas.paste(img, (x + (geo.tile_w - img.width) // 2, y + (geo.tile_h - img.height) // 2))
        return
    inset = max(1, geo.pad // 2)
    draw.rectangle((x + inset, y + inset, x + geo.tile_w - inset - 1, y + geo.tile_h - inset - 1), fill=PLACEHOLDER)
    lines = wrap(note or "no image", geo.tile_w - 2 * geo.pad, geo.font_size,
                 max(1, (geo.tile_h - 2 * geo.pad) // geo.line_h))
    _draw_lines(draw, lines, x, y, geo.tile_w, geo.tile_h, geo, ink=PLACEHOLDER_INK)


def _source(tile: Tile, geo: _Geometry) -> Path:
    """The tile's preview when it holds enough pixels for the tile size, else the full image."""
    if tile.preview is None:
        return tile.image
    w, h = tile.size or _header_size(tile.image)
    scale = min(geo.tile_w / w, geo.tile_h / h)
    return tile.preview if scale <= tile.preview_scale else tile.image


def write(spec: GridSpec, path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> GridImage:
    """Compose and write the grid (temp file renamed into place: never a half-written file): a JPEG when
    ``path`` ends in .jpg/.jpeg, else a PNG."""
    canvas, tile, native = compose(spec, max_pixels)
    path = Path(path)
    with atomic_file(path) as fh:
        save(canvas, fh, path.suffix)
    return GridImage(path, canvas.width, canvas.height, tile, native)


def save(canvas, fh, suffix: str) -> None:
    """PNG at the sweep's fast level (big grids: speed over a few % of size, as ``tracker.images.pngmeta``), or JPEG
    at quality ``JPEG_QUALITY`` without chroma subsampling (label text stays crisp): the report's grids, whose
    tiles are JPEG thumbnails already; ~7x cheaper to encode than the PNG and about half its size."""
    if suffix.lower() in (".jpg", ".jpeg"):
        canvas.save(fh, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
        return
    from tracker.images.pngmeta import PNG_COMPRESS_LEVEL, PNG_COMPRESS_TYPE

    canvas.save(fh, format="PNG", compress_level=PNG_COMPRESS_LEVEL, compress_type=PNG_COMPRESS_TYPE)
