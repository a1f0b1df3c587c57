"""The sweep's writing stage (tracker/sweep/writer.py): overlapped with generation, crash safe, errors recorded."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO
from test_run import SMALL as SWEEP
from test_run import _check_done_images

# Runs ``tracker run`` in a fresh process with a fault injected into the writing stage: each image waits
# DELAY seconds after its PNG is durable and before its run is marked done, so a kill lands mid-batch.
SLOW_WRITER = """\
import sys, time
from tracker.images import pngmeta
from tracker.cli import main

delay = float(sys.argv[1])
save_png = pngmeta.save_png

def slow_save_png(image, path, recipe, **kw):
    sha = save_png(image, path, recipe, **kw)
    time.sleep(delay)
    return sha

pngmeta.save_png = slow_save_png
main(sys.argv[2:])
"""


def _statuses(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("select status, count(*) from runs group by status").fetchall())


def test_sweep_records_idle_fraction_and_writes_report_thumbnails(cli, write_yaml, tmp_path):
    path = write_yaml(SWEEP.replace("seeds: [0, 1, 2]", "seeds: [0]") + "size: 264x264\n")
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.err
    assert "outside pipeline calls (idle)" in res.out
    db = tmp_path / "home" / "tracker.db"
    with sqlite3.connect(db) as conn:
        idle, = conn.execute("select idle_fraction from sweeps").fetchone()
        shas = [r[0] for r in conn.execute("select image_sha256 from runs where status='done'")]
    assert 0 <= idle < 1 and len(shas) == 2
    for sha in shas:  # written from the image in memory, named by the PNG's sha256
        with Image.open(tmp_path / "home" / "thumbs" / f"{sha[:32]}.jpg") as thumb:
            assert max(thumb.size) == 256


def test_a_write_error_fails_those_runs_with_the_reason(cli, write_yaml, tmp_path):
    path = write_yaml(SWEEP)
    images = tmp_path / "home" / "images"
    images.mkdir(parents=True)
    (images / "small").write_text("a file where the experiment's image folder should be")
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 1
    assert "6 failed" in res.out and "could not write the image" in res.out
    with sqlite3.connect(tmp_path / "home" / "tracker.db") as conn:
        errors = [e for (e,) in conn.execute("select error from runs where status='failed'")]
    assert len(errors) == 6 and all(e.startswith("could not write the image") and "small" in e for e in errors)


@pytest.mark.slow
def test_kill_9_while_a_batch_is_being_written_loses_and_duplicates_nothing(write_yaml, tmp_path):
    path = write_yaml(SWEEP.replace("seeds: [0, 1, 2]", "seeds: '0-5'") + "batch_size: 4\n")
    home = tmp_path / "home"
    env = {**os.environ, "TRACKER_HOME": str(home), "PYTHONPATH": str(REPO)}
    args = ["run", str(path), "--no-mlflow", "-q"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, "0.4", *args], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = home / "tracker.db"
    deadline, caught = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None and not caught:
        time.sleep(0.02)
        try:
            with sqlite3.connect(db) as conn:
                key_paths = [home / "images" / "small" / f"{k}.png"
                             for (k,) in conn.execute("select key from runs where status='running'")]
                done = conn.execute("select count(*) from runs where status='done'").fetchone()[0]
        except sqlite3.OperationalError:
            continue
        # a batch is being written: some of its PNGs are durable, their runs not marked done yet
        caught = done >= 1 and any(p.exists() for p in key_paths)
    assert caught and proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    statuses = _statuses(db)
    assert 1 <= statuses.get("done", 0) < 12 and statuses.get("running", 0) >= 1
    _check_done_images(db)
    rerun = subprocess.run([sys.executable, "-m", "tracker", *args], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select key, status from runs").fetchall()
    assert len(rows) == 12 and {s for _, s in rows} == {"done"}
    _check_done_images(db)
    files = [p for p in home.rglob("*") if p.is_file() and "images" in p.parts]
    assert sorted(p.name for p in files) == sorted(f"{k}.png" for k, _ in rows)  # no temp file, no extra image


@pytest.mark.slow
def test_ctrl_c_drains_the_writing_stage(write_yaml, tmp_path):
    path = write_yaml(SWEEP.replace("seeds: [0, 1, 2]", "seeds: '0-5'") + "batch_size: 4\n")
    home = tmp_path / "home"
    env = {**os.environ, "TRACKER_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, "0.3", "run", str(path), "--no-mlflow", "-q"],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = home / "tracker.db"
    deadline, written = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None and not written:
        time.sleep(0.02)
        written = list((home / "images" / "small").glob("*.png")) if (home / "images" / "small").is_dir() else []
    # the first batch is being written (its PNGs durable, its runs not yet marked done)
    assert written and proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err.decode()
    statuses = _statuses(db)
    assert statuses.get("running", 0) == 0, statuses  # drained, the rest reset to pending
    with sqlite3.connect(db) as conn:
        done = {k for (k,) in conn.execute("select key from runs where status='done'")}
    assert {p.stem for p in written} <= done  # what was being written when Ctrl-C came was finished
    _check_done_images(db)
    assert not [p for p in (home / "images").rglob("*") if p.suffix != ".png" and p.is_file()]


def test_a_batch_is_written_once_the_next_call_denoises(write_yaml, tmp_path, monkeypatch):
    """Between two pipeline calls the generating thread's work comes first: a batch's images are written
    (and the next claim made) once the next call reaches its denoiser, the last batch once none is next.
    The bounded wait is made unbounded here, so an image written on time proves the gate was opened."""
    from tracker.sweep import driver, runner, claim_loop as work, writer
    from tracker.workspace import WorkspaceConfig

    monkeypatch.setattr(writer, "GATE_WAIT_S", 600)
    monkeypatch.setattr(work, "GATE_WAIT_S", 600)
    seen, sweeps = [], []
    write_one = writer.Writer._write

    def watched(self, run, *args):
        seen.append((run.key, self._gate.is_set()))
        return write_one(self, run, *args)

    monkeypatch.setattr(writer.Writer, "_write", watched)
    handed, submit = [], writer.Writer.submit
    monkeypatch.setattr(writer.Writer, "submit", lambda self, *a: (handed.append(self._gate.is_set()), submit(self, *a))[1])
    init = runner.Sweep.__post_init__
    monkeypatch.setattr(runner.Sweep, "__post_init__", lambda self: (sweeps.append(self), init(self))[1])
    path = write_yaml(SWEEP + "batch_size: 2\n")
    ws = WorkspaceConfig.from_options(home=str(tmp_path / "home"), no_mlflow=True)
    summary = driver.run(ws, str(path), runner.RunOptions(progress=False))
    assert summary.done == 6 and summary.failed == 0
    assert handed == [False] * 3  # handed over while the generating thread works between calls ...
    assert len(seen) == 6 and all(open_ for _, open_ in seen)  # ... written once the gate opened
    assert sweeps[0].engine.denoising is sweeps[0].calling  # the engine opens the gate at its first UNet call
