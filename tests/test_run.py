"""``tracker run`` end to end on the real tiny pipeline and a real SQLite store."""

from __future__ import annotations

import hashlib
import json
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
from tracker.workspace import image_file

SMALL = """\
name: small
model: tiny
prompt: "portrait photo of {{ age }} warrior chief"
axes:
  age: {old: "a old", young: "a young"}
seeds: [0, 1, 2]
scheduler: DPMSolverMultistep
steps: 2
"""


def _runs_json(cli, *args):
    res = cli("runs", *args, "--json")
    assert res.code == 0, res.err
    return json.loads(res.out)


def test_run_then_runs_json_lists_every_image(cli, write_yaml, tmp_path):
    path = write_yaml(SMALL)
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.err
    assert "6 done, 0 skipped" in res.out
    runs = _runs_json(cli, "small")
    assert len(runs) == 6 and {r["status"] for r in runs} == {"done"}
    for r in runs:
        img = Path(r["image"])
        assert img.is_absolute() and img.exists()
        assert hashlib.sha256(img.read_bytes()).hexdigest() == r["image_sha256"]
        assert Image.open(img).size == (r["width"], r["height"])
        assert r["seconds"] > 0 and r["seconds_per_step"] > 0 and r["peak_memory_bytes"] > 0
        assert r["batch_size"] >= 1 and r["scheduler"] == "DPMSolverMultistepScheduler"
    # the same file again does nothing new
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 0 and "0 done, 6 skipped" in res.out
    assert [r["image_sha256"] for r in _runs_json(cli, "small")] == [r["image_sha256"] for r in runs]
    # show by key prefix, experiments summary
    res = cli("show", runs[0]["key"][:8], "--json")
    assert res.code == 0 and json.loads(res.out)["key"] == runs[0]["key"]
    res = cli("experiments", "--json")
    assert res.code == 0 and "small" in res.out


def test_batch_and_single_give_the_same_image(cli, write_yaml):
    one = write_yaml(SMALL.replace("name: small", "name: single") + "batch_size: 1\n", "single.yaml")
    four = write_yaml(SMALL.replace("name: small", "name: batched") + "batch_size: 4\n", "batched.yaml")
    assert cli("run", one, "--no-mlflow", "-q").code == 0
    assert cli("run", four, "--no-mlflow", "-q").code == 0
    single = {r["key"]: r for r in _runs_json(cli, "single")}
    batched = {r["key"]: r for r in _runs_json(cli, "batched")}
    assert single.keys() == batched.keys()  # batch size is not part of a run key
    assert {r["batch_size"] for r in batched.values()} == {4, 2}
    import numpy as np
    for key in single:
        a = np.asarray(Image.open(single[key]["image"]), dtype=int)
        b = np.asarray(Image.open(batched[key]["image"]), dtype=int)
        # float differences of ~1e-6 between batched and single calls can flip a rounding: at most one level
        assert np.abs(a - b).max() <= 1


def test_failing_run_is_recorded_and_the_sweep_goes_on(write_yaml, tmp_path, monkeypatch):
    """A fault injected into one image: that run fails with its error, the others finish, --retry-failed redoes it."""
    from tracker.engine import core as engine_mod
    from tracker.sweep import driver, runner
    from tracker.workspace import WorkspaceConfig

    ws = WorkspaceConfig.from_options(home=str(tmp_path / "home"), no_mlflow=True)
    path = write_yaml(SMALL + "batch_size: 2\n")
    real = engine_mod.Engine.generate

    def flaky(self, runs):
        if any(r.seed == 1 and "young" in r.prompt for r in runs):
            raise RuntimeError("injected fault")
        return real(self, runs)

    monkeypatch.setattr(engine_mod.Engine, "generate", flaky)
    s = driver.run(ws, str(path), runner.RunOptions(progress=False))
    assert (s.done, s.failed) == (5, 1)
    assert "injected fault" in s.failures[0][1]
    monkeypatch.setattr(engine_mod.Engine, "generate", real)
    s = driver.run(ws, str(path), runner.RunOptions(progress=False))
    assert (s.done, s.failed, s.skipped, s.failed_earlier) == (0, 0, 5, 1)  # failed runs wait for --retry-failed
    s = driver.run(ws, str(path), runner.RunOptions(progress=False, retry_failed=True))
    assert (s.done, s.failed, s.skipped) == (1, 0, 5)


@pytest.mark.parametrize("seeds, calls", [
    ("[0, 1, 2, 3]", [8, 4, 2, 2, 2, 2]),  # 8 runs, auto starts at 8: halved twice
    # 16 runs are claimed 8 at a time: the second claim starts at the size that fitted, not at 8 again
    ("[0, 1, 2, 3, 4, 5, 6, 7]", [8, 4] + [2] * 8),
])
def test_out_of_memory_halves_the_batch_and_loses_nothing(write_yaml, tmp_path, monkeypatch, seeds, calls):
    from tracker.engine import core as engine_mod
    from tracker.sweep import driver, runner
    from tracker.store.runstore import Store
    from tracker.workspace import WorkspaceConfig

    ws = WorkspaceConfig.from_options(home=str(tmp_path / "home"), no_mlflow=True)
    path = write_yaml(SMALL.replace("seeds: [0, 1, 2]", f"seeds: {seeds}"))
    real = engine_mod.Engine.generate
    seen = []

    def small_gpu(self, runs):
        seen.append(len(runs))
        if len(runs) > 2:
            raise engine_mod.OutOfMemory("injected: CUDA out of memory")
        return real(self, runs)

    monkeypatch.setattr(engine_mod.Engine, "generate", small_gpu)
    s = driver.run(ws, str(path), runner.RunOptions(progress=False))
    assert (s.done, s.failed) == (sum(calls[2:]), 0)
    assert seen == calls
    with Store.open(ws.db_url) as store:
        assert [e["kind"] for e in store.events(s.sweep_id)] == ["oom", "oom"]
        assert {r.batch_size_used for r in store.runs("small")} == {2}


def test_missing_model_is_one_line_and_writes_nothing(cli, write_yaml, tmp_path):
    path = write_yaml(SMALL.replace("model: tiny", f"model: {tmp_path / 'no-such-model'}"))
    res = cli("run", path, "--no-mlflow", "-q")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "no-such-model" in lines[0] and "Traceback" not in res.err
    db = tmp_path / "home" / "tracker.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0
            assert conn.execute("select count(*) from sweeps").fetchone()[0] == 0


def test_dry_run_generates_nothing(cli, write_yaml, tmp_path):
    res = cli("run", write_yaml(SMALL), "--dry-run")
    assert res.code == 0, res.err
    assert "6 of 6 runs would be generated" in res.out
    assert not (tmp_path / "home" / "images").exists()


def test_kill_9_then_rerun_finishes_exactly_the_plan(write_yaml, tmp_path):
    path = write_yaml(SMALL.replace("seeds: [0, 1, 2]", "seeds: '0-5'").replace("steps: 2", "steps: 12")
                      + "batch_size: 1\n")
    home = tmp_path / "home"
    env = {**os.environ, "TRACKER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "tracker", "run", str(path), "--no-mlflow", "-q"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = home / "tracker.db"
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    done = conn.execute("select count(*) from runs where status='done'").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as conn:
        statuses = dict(conn.execute("select status, count(*) from runs group by status").fetchall())
    assert 2 <= statuses.get("done", 0) < 12
    # no done run without its complete image, even right after the kill
    _check_done_images(db)
    rerun = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select key, status from runs").fetchall()
    assert len(rows) == 12 and len({k for k, _ in rows}) == 12
    assert {s for _, s in rows} == {"done"}
    _check_done_images(db)
    leftovers = [p for p in (home / "images").rglob("*") if p.is_file() and p.suffix != ".png"]
    assert leftovers == []


def _check_done_images(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("select image_path, image_sha256 from runs where status='done'").fetchall()
    for stored, sha in rows:
        image = image_file(db.parent, stored)  # recorded relative to the workspace (HOME/tracker.db)
        data = image.read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha
        Image.open(image).load()  # a complete, decodable PNG


def test_two_sweeps_write_one_database_at_once(write_yaml, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "TRACKER_HOME": str(home)}
    a = write_yaml(SMALL.replace("name: small", "name: first"), "a.yaml")
    b = write_yaml(SMALL.replace("name: small", "name: second") + "batch_size: 1\n", "b.yaml")
    procs = [subprocess.Popen([sys.executable, "-m", "tracker", "run", str(p), "--no-mlflow", "-q"], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (a, b)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    with sqlite3.connect(home / "tracker.db") as conn:
        counts = dict(conn.execute(
            "select e.name, count(*) from runs r join experiments e on e.id = r.experiment_id "
            "where r.status = 'done' group by e.name").fetchall())
    assert counts == {"first": 6, "second": 6}


def test_a_rerun_with_one_done_and_one_failed_counts_each_and_dry_run_agrees(cli, write_yaml, monkeypatch):
    """1 done + 1 failed, run again: "1 skipped (already done), 1 failed earlier (use --retry-failed)" (it said
    "2 skipped (already done)"), and --dry-run says what the run does: 0 would run (it said 1); with
    --retry-failed both say 1."""
    from tracker.engine import core as engine_mod

    path = write_yaml("""\
        name: rerun
        model: tiny
        prompt: "a {{ colour }} cat"
        axes:
          colour: [red, blue]
        seeds: [0]
        steps: 2
        size: 32x32
        batch_size: 1
        """)
    real = engine_mod.Engine.generate

    def flaky(self, runs):
        if any("blue" in r.prompt for r in runs):
            raise RuntimeError("injected fault")
        return real(self, runs)

    monkeypatch.setattr(engine_mod.Engine, "generate", flaky)
    first = cli("run", path, "--no-mlflow", "-q")
    assert first.code == 1 and "1 done, 0 skipped (already done), 1 failed of 2 planned" in first.out, first.out
    monkeypatch.setattr(engine_mod.Engine, "generate", real)

    dry = cli("run", path, "--no-mlflow", "--dry-run")
    assert "dry run: 0 of 2 runs would be generated (1 already done, 1 failed earlier (use --retry-failed))" \
        in dry.out, dry.out
    again = cli("run", path, "--no-mlflow", "-q")
    assert "0 done, 1 skipped (already done), 1 failed earlier (use --retry-failed), 0 failed of 2 planned" \
        in again.out, again.out

    dry = cli("run", path, "--no-mlflow", "--dry-run", "--retry-failed")
    assert "dry run: 1 of 2 runs would be generated (1 already done)" in dry.out, dry.out
    retried = cli("run", path, "--no-mlflow", "-q", "--retry-failed")
    assert retried.code == 0 and "1 done, 1 skipped (already done), 0 failed of 2 planned" in retried.out, retried.out
