"""Issue 13, problems 2 and 6: faults on real file systems end in one line naming the path, with the sweep's
unfinished runs pending again and the sweep marked ``interrupted`` (SIGTERM like Ctrl-C); a run store
deleted mid-sweep is noticed instead of ending "N done, rc 0" with an empty store."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.test_spec_errors import assert_one_line_error

SWEEP = """\
name: faults
model: tiny
prompt: "a {{ age }} chief"
axes:
  age: [old, young]
seeds: [0, 1, 2, 3]
steps: 1
batch_size: 2
"""


def _mount(args: list[str], target: Path) -> None:
    proc = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a test file system needs root: {proc.stderr.strip()}")


@pytest.fixture
def mounts():
    done: list[Path] = []

    def mount(kind: str, target: Path, size: str = "64k") -> Path:
        target.mkdir(parents=True, exist_ok=True)
        if kind == "tmpfs":
            _mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs"], target)
        else:  # a read-only bind mount: stops root too, unlike chmod
            _mount(["--bind", str(target)], target)
            done.append(target)
            _mount(["-o", "remount,ro,bind"], target)
            return target
        done.append(target)
        return target

    yield mount
    for target in reversed(done):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _state(db: Path) -> tuple[dict[str, int], list[str]]:
    con = sqlite3.connect(db)
    try:
        runs = dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        sweeps = [r[0] for r in con.execute("SELECT status FROM sweeps ORDER BY id")]
    finally:
        con.close()
    return runs, sweeps


def _generate_hook(monkeypatch, on_call: int, action) -> None:
    """Fault injection: run ``action`` just before the engine's ``on_call``-th batch."""
    from tracker.engine import core as engine_mod

    real = engine_mod.Engine.generate
    calls = {"n": 0}

    def hooked(self, runs):
        calls["n"] += 1
        if calls["n"] == on_call:
            action()
        return real(self, runs)

    monkeypatch.setattr(engine_mod.Engine, "generate", hooked)


def test_sigterm_mid_sweep_resets_runs_and_marks_the_sweep_interrupted(cli, write_yaml, tmp_path, monkeypatch):
    _generate_hook(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    res = cli("run", write_yaml(SWEEP), "--no-mlflow", "-q")
    assert res.code == 143, (res.out, res.err)
    assert res.err.strip() == "terminated" and "Traceback" not in res.err
    runs, sweeps = _state(tmp_path / "home" / "tracker.db")
    assert runs == {"done": 2, "pending": 6} and sweeps == ["interrupted"]
    res = cli("run", write_yaml(SWEEP), "--no-mlflow", "-q")  # and the next run finishes the rest
    assert res.code == 0 and "6 done, 2 skipped" in res.out


def test_read_only_workspace_is_one_line_naming_the_path(cli, write_yaml, tmp_path, mounts, monkeypatch):
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # torch imports them once: keep them writable
        monkeypatch.setenv(var, str(tmp_path / "compile-cache" / var))
    home = mounts("ro", tmp_path / "ro-home")
    db = tmp_path / "db" / "t.db"
    res = cli("--home", home, "--db", f"sqlite:///{db}", "run", write_yaml(SWEEP), "--no-mlflow", "-q")
    assert_one_line_error(res, str(home), "Read-only file system", "writable folder")
    if db.exists():  # it may stop before anything is recorded; never with runs or the sweep left running
        runs, sweeps = _state(db)
        assert "running" not in runs and "running" not in sweeps


def test_disk_full_mid_sweep_is_one_line_and_loses_nothing(cli, write_yaml, tmp_path, mounts):
    home = mounts("tmpfs", tmp_path / "small-home", size="40k")
    db = tmp_path / "db" / "t.db"
    res = cli("--home", home, "--db", f"sqlite:///{db}", "run", write_yaml(SWEEP), "--no-mlflow", "-q")
    assert_one_line_error(res, str(home / "images" / "faults"), "No space left on device", "disk is full")
    runs, sweeps = _state(db)
    assert "running" not in runs and runs.get("pending", 0) >= 1 and sweeps == ["interrupted"]
    done_images = {p.name for p in (home / "images" / "faults").glob("*.png")}
    assert len(done_images) == runs.get("done", 0)  # every done run has its image; no temp file stays
    assert not list((home / "images" / "faults").glob(".*.tmp"))


def test_run_store_deleted_mid_sweep_is_not_a_clean_finish(cli, write_yaml, tmp_path, monkeypatch):
    db = tmp_path / "home" / "tracker.db"

    def delete():
        for p in db.parent.glob("tracker.db*"):
            p.unlink()

    _generate_hook(monkeypatch, 2, delete)
    res = cli("run", write_yaml(SWEEP), "--no-mlflow", "-q")
    assert_one_line_error(res, str(db), "while this command ran", "run the same command again")
    assert "done" not in res.out


def test_read_commands_never_create_a_store(cli, tmp_path):
    """Issue 13, problem 7: a mistyped --db must not create folders and an empty store."""
    missing = tmp_path / "nonexistent" / "x.db"
    (tmp_path / "exp.yaml").write_text("prompt: hi\nmodel: tiny\n")
    for args in (["runs"], ["experiments"], ["show", "abc"], ["runs", "exp", "--json"], ["report", "exp"],
                 ["verify", "exp"], ["reproduce", "abc"], ["status", "exp"], ["sync"], ["score", "exp"],
                 ["effects", "exp", "--metric", "shapes"],
                 ["run", str(tmp_path / "exp.yaml"), "--from", "abc", "--dry-run"]):
        res = cli("--db", f"sqlite:///{missing}", *args)
        assert res.code in (0, 2) and "Traceback" not in res.err, (args, res.err)
        if args != ["experiments"]:  # an empty listing there
            assert_one_line_error(res, "no run store")
    assert not missing.parent.exists()


def test_files_honour_the_umask(cli, write_yaml, tmp_path):
    """Issue 13, problem 7: images, reports and grids were 0600 whatever the umask."""
    old = os.umask(0o022)
    try:
        res = cli("run", write_yaml(SWEEP.replace("seeds: [0, 1, 2, 3]", "seeds: [0]")), "--no-mlflow", "-q")
        assert res.code == 0, res.err
        res = cli("grid", "faults", "--rows", "age", "--cols", "seed", "-o", tmp_path / "grid.png")
        assert res.code == 0, res.err
    finally:
        os.umask(old)
    images = list((tmp_path / "home" / "images" / "faults").glob("*.png"))
    assert images
    for p in [*images, tmp_path / "grid.png"]:
        assert p.stat().st_mode & 0o777 == 0o644, (p, oct(p.stat().st_mode))


def test_a_store_on_a_read_only_file_system_says_what_to_do(cli, tmp_path, mounts):
    """SQLite's own reason ("unable to open database file": WAL mode writes -shm beside the store even to read)
    comes with what to do, as an OSError's does."""
    home = tmp_path / "ro-store"
    assert cli("--home", home, "db", "upgrade").code == 0
    mounts("ro", home)
    assert_one_line_error(cli("--home", home, "runs"), str(home / "tracker.db"), "unable to open database file",
                          "writable")
