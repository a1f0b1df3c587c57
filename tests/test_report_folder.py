"""Issue 13, problem 1: ``report -o`` writes only into a folder it owns and never deletes what it did not write;
problem 6: a read-only output folder (report -o, grid -o, reproduce --save) is one line naming the path."""

from __future__ import annotations

import json

import pytest

from tests.test_faults import mounts  # noqa: F401  (fixture)
from tests.test_spec_errors import assert_one_line_error

EXP = """\
name: owned
model: tiny
prompt: "a {{ age }} chief"
axes:
  age: [old, young]
seeds: [0]
steps: 1
"""


@pytest.fixture
def done(cli, write_yaml):
    res = cli("run", write_yaml(EXP), "--no-mlflow", "-q")
    assert res.code == 0, res.err
    return cli


def _foreign(folder):
    files = {}
    for rel in ("index.html", "full/holiday.png", "thumbs/notes.txt", "grids/mine.png", "letter.txt"):
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"user file {rel}")
        files[p] = p.read_text()
    return files


def test_report_refuses_a_folder_it_does_not_own_and_touches_nothing(done, tmp_path):
    folder = tmp_path / "Documents"
    files = _foreign(folder)
    res = done("report", "owned", "-o", folder, "--no-mlflow")
    assert_one_line_error(res, str(folder), "not empty", "new or empty folder")
    assert {p: p.read_text() for p in files} == files
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(folder).as_posix() for p in files)


def test_report_never_deletes_files_it_did_not_write_in_its_own_folder(done, tmp_path):
    folder = tmp_path / "new-report"
    res = done("report", "owned", "-o", folder, "--no-mlflow")
    assert res.code == 0, res.err
    marker = json.loads((folder / ".prompt-tracker-report.json").read_text())
    assert "index.html" in marker["files"] and any(f.startswith("thumbs/") for f in marker["files"])
    user = folder / "full" / "my-notes.png"
    user.write_text("mine")
    stale = folder / "thumbs" / ("0" * 32 + ".jpg")  # a file the tracker wrote once and no run shows now
    stale.write_text("old thumbnail")
    marker["files"].append("thumbs/" + stale.name)
    (folder / ".prompt-tracker-report.json").write_text(json.dumps(marker))
    res = done("report", "owned", "-o", folder, "--no-mlflow")
    assert res.code == 0, res.err
    assert user.read_text() == "mine"  # not the tracker's: kept
    assert not stale.exists()  # the tracker's own, no longer used: removed


def test_read_only_output_folders_are_one_line(done, tmp_path, mounts):  # noqa: F811
    ro = mounts("ro", tmp_path / "ro")
    assert_one_line_error(done("report", "owned", "-o", ro / "rep", "--no-mlflow"), str(ro / "rep"), "Read-only")
    assert_one_line_error(done("grid", "owned", "--rows", "age", "--cols", "seed", "-o", ro / "g.png"),
                          str(ro), "Read-only")
    key = done("runs", "owned", "--json")
    first = json.loads(key.out)[0]["key"]
    res = done("reproduce", first, "--save", ro / "again.png")
    assert_one_line_error(res, str(ro), "Read-only")


def test_report_links_follow_the_ui_port_or_mlflow_ui_url(tmp_path):
    """Issue 13, problem 7: the report's MLflow links were fixed to port 5000."""
    from dataclasses import replace
    from types import SimpleNamespace

    from tracker.mlflow.ui import run_url
    from tracker.workspace import WorkspaceConfig

    ws = WorkspaceConfig.from_options(home=str(tmp_path))
    rec = SimpleNamespace(mlflow_run_id="abc")
    assert run_url(ws, rec) == "http://127.0.0.1:5000/#/runs/abc"
    (tmp_path / "mlflow-ui.url").write_text("http://127.0.0.1:5123\n")  # what `tracker ui --port 5123` writes
    assert run_url(ws, rec) == "http://127.0.0.1:5123/#/runs/abc"
    assert run_url(replace(ws, mlflow_ui_url="https://mlflow.example/"), rec) == "https://mlflow.example/#/runs/abc"


def test_a_linked_asset_folder_is_refused_and_nothing_behind_it_touched(done, tmp_path):
    """A link planted in a report folder (``full -> elsewhere``) sent the report's writes there and removed a
    file there that a forged marker listed."""
    folder = tmp_path / "report"
    assert done("report", "owned", "-o", folder, "--no-mlflow").code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.png").write_text("mine")
    for p in (folder / "full").iterdir():
        p.unlink()
    (folder / "full").rmdir()
    (folder / "full").symlink_to(elsewhere)
    marker = json.loads((folder / ".prompt-tracker-report.json").read_text())
    marker["files"].append("full/precious.png")
    (folder / ".prompt-tracker-report.json").write_text(json.dumps(marker))
    res = done("report", "owned", "-o", folder, "--no-mlflow")
    assert_one_line_error(res, str(folder / "full"), "is a link", str(elsewhere))
    assert [p.name for p in elsewhere.iterdir()] == ["precious.png"]
