"""Issue 13, problem 2: lost or altered images are noticed: ``tracker check`` lists them (--fix queues them
again) and ``tracker run`` regenerates a done run whose image is gone instead of "0 done, N skipped"."""

from __future__ import annotations

import json
from pathlib import Path

SWEEP = """\
name: checked
model: tiny
prompt: "a {{ age }} chief"
axes:
  age: [old, young]
seeds: [0, 1]
steps: 1
"""


def test_check_finds_missing_and_modified_images_and_run_regenerates_them(cli, write_yaml):
    path = write_yaml(SWEEP)
    assert cli("run", path, "--no-mlflow", "-q").code == 0
    res = cli("check", "checked")
    assert res.code == 0 and "all 4 done runs have their image, unchanged" in res.out
    runs = json.loads(cli("runs", "checked", "--json").out)
    gone, edited = Path(runs[0]["image"]), Path(runs[1]["image"])
    gone.unlink()
    edited.write_bytes(edited.read_bytes() + b"tampered")
    res = cli("check", "checked")
    assert res.code == 1
    assert f"missing   checked  {runs[0]['key']}" in res.out and f"modified  checked  {runs[1]['key']}" in res.out
    assert "2 of 4 done runs have a missing or modified image" in res.out

    res = cli("run", path, "--no-mlflow", "-q")  # the missing image is noticed by a stat and made again
    assert res.code == 0 and "1 done, 3 skipped" in res.out and "lost their image" in res.err
    assert gone.is_file()

    res = cli("check", "--fix")
    assert res.code == 0 and "marked pending" in res.out and f"modified  checked  {runs[1]['key']}" in res.out
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0 and "1 done, 3 skipped" in res.out
    assert cli("check").code == 0


def test_a_run_logged_to_mlflow_whose_image_is_gone_here_is_named_not_made_again(cli, write_yaml):
    """Team mode: a done run logged to MLflow may have been made on another machine; its PNG is read from MLflow,
    so ``run`` does not make it again, but says so in one line with the command that does."""
    path = write_yaml(SWEEP)
    assert cli("run", path, "-q").code == 0  # MLflow on: the workspace's own store
    runs = json.loads(cli("runs", "checked", "--json").out)
    assert all(r["mlflow_run_id"] for r in runs)
    Path(runs[0]["image"]).unlink()
    res = cli("run", path, "--no-mlflow", "-q")  # what was logged is in the store: no MLflow needed to see it
    assert res.code == 0 and "0 done, 4 skipped" in res.out
    assert "1 done runs of checked have no image in this workspace but were logged to MLflow" in res.err
    assert "`tracker check --fix checked` then `tracker run` makes them here" in res.err
    assert cli("check", "--fix").code == 0
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0 and "1 done, 3 skipped" in res.out and Path(runs[0]["image"]).is_file()


def test_a_moved_workspace_keeps_its_images(cli, write_yaml, tmp_path):
    """Image paths are recorded relative to the workspace: the whole home folder moved elsewhere still has
    every image (check finds nothing missing, a rerun skips everything, the report shows them)."""
    path = write_yaml(SWEEP)
    assert cli("run", path, "--no-mlflow", "-q").code == 0
    moved = tmp_path / "somewhere" / "else"
    moved.parent.mkdir()
    (tmp_path / "home").rename(moved)

    res = cli("--home", moved, "check", "checked")
    assert res.code == 0 and "all 4 done runs have their image, unchanged" in res.out, res.out
    runs = json.loads(cli("--home", moved, "runs", "checked", "--json").out)
    assert all(Path(r["image"]).parent == moved / "images" / "checked" for r in runs)
    res = cli("--home", moved, "run", path, "--no-mlflow", "-q")
    assert res.code == 0 and "0 done, 4 skipped" in res.out and "lost" not in res.err
    res = cli("--home", moved, "report", "checked", "--no-mlflow")
    assert res.code == 0, res.err
    page = (moved / "reports" / "checked" / "index.html").read_text()
    assert "image missing" not in page
    assert len(list((moved / "reports" / "checked" / "full").glob("*.png"))) == 4


def test_the_report_notices_a_modified_image_by_itself(cli, write_yaml, tmp_path, monkeypatch):
    """An image edited after the sweep (a real edit: a pixel changed, saved in place) is shown as modified,
    never published under its recorded sha256; a deleted one as missing; only files whose stat changed are
    hashed again."""
    import hashlib

    from PIL import Image

    from tracker.images import check

    path = write_yaml(SWEEP)
    assert cli("run", path, "--no-mlflow", "-q").code == 0
    out = tmp_path / "report"
    res = cli("report", "checked", "--no-mlflow", "-o", out)
    assert res.code == 0 and "not shown" not in res.err
    runs = json.loads(cli("runs", "checked", "--json").out)
    edited, gone = Path(runs[1]["image"]), Path(runs[2]["image"])
    with Image.open(edited) as im:
        im.load()
        pixels = im.copy()
    pixels.putpixel((0, 0), tuple(255 - v for v in pixels.getpixel((0, 0))))
    pixels.save(edited)  # in place, as an image editor would
    gone.unlink()

    hashed = []
    real = check.sha256_file
    monkeypatch.setattr(check, "sha256_file", lambda p: hashed.append(Path(p)) or real(p))
    res = cli("report", "checked", "--no-mlflow", "-o", out)
    assert res.code == 0, res.err
    assert "2 done runs not shown (images: 1 missing, 1 modified since they were made)" in res.err
    assert hashed == [edited]  # unchanged images: one stat each, no hash
    page = (out / "index.html").read_text()
    assert 'class="cell-td state-modified"' in page and "image modified since it was made" in page
    assert f"image missing: {gone.name}" in page and 'id="image-problems"' in page
    published = list((out / "full").iterdir())
    assert len(published) == 2
    for f in published:  # every published image holds the bytes its name (sha256) says
        assert hashlib.sha256(f.read_bytes()).hexdigest().startswith(f.stem)

    # runs recorded before their stat was (schema < 0008): hashed by each report until `tracker check`
    # verifies them and records their stat again
    import sqlite3

    with sqlite3.connect(tmp_path / "home" / "tracker.db") as conn:
        conn.execute("update runs set image_size = null, image_mtime_ns = null")
    hashed.clear()
    assert cli("report", "checked", "--no-mlflow", "-o", out).code == 0
    assert sorted(hashed) == sorted(Path(r["image"]) for r in runs if r["image"] != str(gone))
    assert cli("check", "checked").code == 1  # the edited and the deleted image are still listed
    hashed.clear()
    assert cli("report", "checked", "--no-mlflow", "-o", out).code == 0
    assert hashed == [edited]
