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
