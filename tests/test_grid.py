"""``tracker grid``: labelled PNG grids read back pixel by pixel."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from test_report import make_workspace

TILE = 64
EXP = {
    "name": "g",
    "model": "tiny",
    "size": f"{TILE}x{TILE}",
    "steps": 2,
    "prompt": "portrait photo of {{ age }} warrior chief{{ style }}",
    "axes": {
        "age": {"oldest": "the oldest", "old": "a old", "a-rather-long-label-that-has-to-wrap-in-the-band": "a"},
        "style": {"plain": "", "../up/tribal": ", tribal"},
    },
    "seeds": [1, 2],
}
# plan order: age, style, seed (seed fastest); run index -> the colour test_report.write_image paints
FAILED = 1  # oldest, plain, seed 2


def colour(i: int) -> tuple[int, int, int]:
    return ((40 * i) % 256, (90 + 17 * i) % 256, 200)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    home = tmp_path_factory.mktemp("grid")
    ws, runs = make_workspace(home, EXP, failed={FAILED: "NaN in output"})
    return ws, runs


def grid_cli(cli, ws, *args):
    return cli("--home", ws.home, "grid", "g", *args)


def band_has_ink(im: Image.Image, box: tuple[int, int, int, int]) -> bool:
    region = im.crop(box).convert("L")
    return region.getextrema()[0] < 128  # some dark (text) pixels on the white band


def test_one_grid_with_labels_and_one_tile_per_run(cli, ws, tmp_path):
    ws, runs = ws
    out = tmp_path / "grid.png"
    res = grid_cli(cli, ws, "--rows", "age", "--cols", "seed", "--where", "style=plain", "-o", out)
    assert res.code == 0, res.err
    assert res.out.strip() == str(out) and res.err == ""
    im = Image.open(out).convert("RGB")
    rows, cols = 3, 2
    band_w, band_h = im.width - cols * TILE, im.height - rows * TILE
    assert band_w > 0 and band_h > 0  # a row-label band on the left, column labels (and title) on top
    assert band_has_ink(im, (band_w, 0, im.width, band_h))  # column labels
    assert band_has_ink(im, (0, band_h, band_w, im.height))  # row labels
    # every tile shows its own run: the plain-style runs are indexes 0, 1 (age oldest), 4, 5, 8, 9
    by_labels = {(dict(r.axes)["age"], dict(r.axes)["style"], r.seed): i for i, r in enumerate(runs)}
    ages = list(EXP["axes"]["age"])
    for r, age in enumerate(ages):
        for c, seed in enumerate([1, 2]):
            i = by_labels[(age, "plain", seed)]
            centre = (band_w + c * TILE + TILE // 2, band_h + r * TILE + TILE // 2)
            pixel = im.getpixel(centre)
            if i == FAILED:
                assert pixel != colour(i)  # a placeholder, not an image
                tile = im.crop((band_w + c * TILE, band_h + r * TILE, band_w + (c + 1) * TILE, band_h + (r + 1) * TILE))
                assert tile.convert("L").getextrema()[0] < 200  # its text is drawn
            else:
                assert pixel == colour(i), (age, seed)


def test_without_where_one_png_per_combination(cli, ws, tmp_path):
    ws, runs = ws
    out = tmp_path / "sub" / "grid.png"
    res = grid_cli(cli, ws, "-o", out)
    assert res.code == 0, res.err
    paths = [Path(p) for p in res.out.split()]
    assert [p.name for p in paths] == ["grid-style=plain.png", "grid-style=.._up_tribal.png"]
    assert all(p.parent == out.parent and p.is_file() for p in paths)
    # default layout: the prompt axis with most labels down (age), seeds across
    for p in paths:
        im = Image.open(p)
        assert (im.width - 2 * TILE) > 0 and (im.height - 3 * TILE) > 0


def test_pixel_budget_scales_tiles_down_and_says_so(cli, ws, tmp_path):
    ws, _ = ws
    out = tmp_path / "small.png"
    res = grid_cli(cli, ws, "--where", "style=plain", "--max-pixels", "20000", "-o", out)
    assert res.code == 0, res.err
    assert res.err.startswith("note: small.png: at 64x64 per tile the grid would exceed --max-pixels 20,000; tiles scaled down to ")
    im = Image.open(out)
    assert im.width * im.height <= 20000
    full = tmp_path / "full.png"
    assert grid_cli(cli, ws, "--where", "style=plain", "-o", full).code == 0
    assert Image.open(full).width * Image.open(full).height > 20000


def test_budget_too_small_for_any_tile_is_a_usage_error(cli, ws, tmp_path):
    ws, _ = ws
    res = grid_cli(cli, ws, "--where", "style=plain", "--max-pixels", "500", "-o", tmp_path / "x.png")
    assert res.code == 2 and "does not fit in --max-pixels 500" in res.err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--rows", "ages"], "error: unknown axis 'ages' in --rows; known axes: age, style, seed"),
    (["--cols", "sed"], "error: unknown axis 'sed' in --cols; known axes: age, style, seed"),
    (["--where", "styl=plain"], "error: --where 'styl=plain': unknown axis 'styl'; known axes: age, style, seed"),
    (["--where", "style=fancy"], "error: --where 'style=fancy': axis 'style' has no label 'fancy'; its labels: plain, ../up/tribal"),
    (["--where", "style"], "error: --where 'style': expected AXIS=LABEL (e.g. seed=1); known axes: age, style, seed"),
    (["--max-pixels", "lots"], "error: --max-pixels must be a positive number of pixels such as 64000000 or 64M but is 'lots'"),
])
def test_bad_input_is_one_line_and_exit_2(cli, ws, tmp_path, args, message):
    ws, _ = ws
    res = grid_cli(cli, ws, *args, "-o", tmp_path / "bad.png")
    assert res.code == 2
    assert res.err.strip() == message
    assert not list(tmp_path.glob("bad*.png"))


def test_compose_wraps_long_labels_inside_the_band():
    from tracker.images import grid as gridimage

    lines = gridimage.wrap("a-rather-long-label-that-has-to-wrap-in-the-band and more words", 80, 12)
    assert len(lines) > 1
    assert all(gridimage.font(12).getlength(line) <= 80 for line in lines)
    capped = gridimage.wrap("word " * 200, 80, 12, max_lines=3)
    assert len(capped) == 3 and capped[-1].endswith("…")


def test_report_grids_are_jpegs_drawn_from_the_thumbnails(tmp_path, monkeypatch):
    """The report's grid images are JPEGs (their tiles are JPEG thumbnails already), and a tile no larger
    than a thumbnail is drawn from it: no full-size image is opened, not even for its size (the store
    has it). Each tile shows its run's image."""
    from tracker.images import grid as gridimage
    from tracker.report.html import build

    ws, _ = make_workspace(tmp_path / "home", {**EXP, "name": "big"}, size=(320, 320))
    build(ws, "big", rows="age", cols="seed", out=tmp_path / "r")  # makes the thumbnails
    drawn, opened = [], []
    write, open_ = gridimage.write, Image.open
    monkeypatch.setattr(gridimage, "write", lambda *a: drawn.append(write(*a)) or drawn[-1])
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(Path(fp)) or open_(fp, *a, **k))
    _, rep = build(ws, "big", rows="age", cols="seed", out=tmp_path / "r", max_pixels=120_000)  # new budget: redrawn
    assert len(drawn) == len(rep.grids) == 2 and all(g.png.endswith(".jpg") for g in rep.grids)
    assert opened and all(p.parent.name == "thumbs" and p.suffix == ".jpg" for p in opened)
    plain = next(d for d in drawn if d.path.name == Path(rep.grids[0].png).name)
    im = Image.open(plain.path)
    assert im.format == "JPEG" and im.width * im.height <= 120_000
    (tw, th), rows, cols = plain.tile, 3, 2
    assert tw < 320 * 0.8  # drawn smaller than the thumbnail (256 of 320)
    for r in range(rows):
        for c in range(cols):  # run index age * 4 + style * 2 + seed; style plain = 0
            x, y = im.width - (cols - c) * tw + tw // 2, im.height - (rows - r) * th + th * 3 // 4
            assert max(abs(a - b) for a, b in zip(im.getpixel((x, y)), colour(r * 4 + c))) <= 12
