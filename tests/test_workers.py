"""Several workers on one plan, real processes on the real tiny pipeline: ``--workers 2`` does every run
exactly once with the same pixels as one process; a worker killed with SIGKILL mid-batch leaves its runs
to the other; the same plan under ``accelerate launch`` (two CPU ranks); on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_tracker, tracker_process

PLAN = """\
name: shared
model: tiny
prompt: "a {{ animal }}"
axes:
  animal: [cat, dog, owl]
seeds: [0, 1, 2, 3]
steps: STEPS
batch_size: 2
"""


def _plan(write_yaml, steps: int = 2) -> Path:
    return write_yaml(PLAN.replace("STEPS", str(steps)))


def _status(env: dict) -> dict:
    res = run_tracker("status", "shared", "--json", env=env)
    assert res.code == 0, res.err
    return json.loads(res.out)


def _runs(env: dict) -> list[dict]:
    res = run_tracker("runs", "shared", "--json", env=env)
    assert res.code == 0, res.err
    return json.loads(res.out)


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path))


def _check_every_run_done_once(env: dict, planned: int) -> list[dict]:
    runs = _runs(env)
    assert len(runs) == planned and {r["status"] for r in runs} == {"done"}
    assert len({r["key"] for r in runs}) == planned
    for r in runs:
        assert hashlib.sha256(Path(r["image"]).read_bytes()).hexdigest() == r["image_sha256"]
    st = _status(env)
    # each run was generated once: the workers' done counts add up to the plan, nothing more
    assert sum(w["runs_done"] for w in st["workers"]) == planned
    return runs


@pytest.fixture
def env(tmp_path):
    """A workspace on SQLite."""
    return {"TRACKER_HOME": str(tmp_path / "home"), "TRACKER_LEASE_SECONDS": "3"}


@pytest.fixture
def pg_env(tmp_path, pg_url):
    """A workspace whose run store is a PostgreSQL database."""
    return {"TRACKER_HOME": str(tmp_path / "home"), "TRACKER_LEASE_SECONDS": "3", "TRACKER_DB_URL": pg_url}


@pytest.mark.slow
def test_two_workers_do_every_run_once_with_the_pixels_of_one_process(write_yaml, tmp_path, env):
    path = _plan(write_yaml)
    res = run_tracker("run", path, "--workers", "2", "--no-mlflow", "-q", env=env)
    assert res.code == 0, res.err
    assert "12 done, 0 failed, 0 not done of 12 planned by 2 workers" in res.out
    runs = _check_every_run_done_once(env, 12)
    st = _status(env)
    # both workers ran; how the 12 runs split between them depends on which one loaded its model first
    assert len(st["workers"]) == 2
    assert {w["status"] for w in st["workers"]} == {"done"}

    # one process, one thread (each of the 2 workers had one of the 2 cores): the same pixels
    single = {"TRACKER_HOME": str(tmp_path / "single"), "OMP_NUM_THREADS": "1"}
    assert run_tracker("run", path, "--no-mlflow", "-q", env=single).code == 0
    alone = {r["key"]: r for r in _runs(single)}
    for r in runs:
        assert np.array_equal(_pixels(r["image"]), _pixels(alone[r["key"]]["image"]))


@pytest.mark.slow
def test_a_worker_killed_mid_batch_leaves_its_runs_to_the_other(write_yaml, pg_env):
    """Two workers on one PostgreSQL store; one is killed with SIGKILL while it holds a batch."""
    env = pg_env
    path = _plan(write_yaml, steps=40)  # batches long enough to be killed in
    with tracker_process("run", path, "--workers", "2", "--no-mlflow", "-q", env=env) as proc:
        victim = _wait_for_a_worker_holding_runs(env, proc)
        os.kill(victim["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "12 done" in out and "1 worker(s) died" in out
    _check_every_run_done_once(env, 12)
    workers = {w["pid"]: w for w in _status(env)["workers"]}
    assert workers[victim["pid"]]["status"] == "died"
    assert any(w["status"] == "done" and w["runs_done"] > 0 for w in workers.values())


def _wait_for_a_worker_holding_runs(env: dict, proc) -> dict:
    """A worker in the middle of a batch: it holds claims (runs running under its id). Read from the store
    itself every 0.1 s: a ``tracker status`` process per poll (~1 s to start) missed whole batches."""
    import sqlalchemy as sa

    engine = sa.create_engine(env["TRACKER_DB_URL"])
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            try:
                with engine.connect() as db:
                    workers = db.execute(sa.text("SELECT id, pid FROM workers")).all()
                    held = db.execute(sa.text("SELECT w.pid FROM runs r JOIN workers w ON w.id = r.worker_id "
                                              "WHERE r.status = 'running'")).all()
            except sa.exc.ProgrammingError:  # the tables are being made
                time.sleep(0.1)
                continue
            if held and len(workers) == 2:
                return {"pid": held[0][0]}
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise AssertionError("no worker started a batch")


@pytest.mark.slow
def test_accelerate_launch_runs_the_plan_on_two_ranks(write_yaml, tmp_path):
    path = _plan(write_yaml)
    env = {"TRACKER_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tracker", "run",
         str(path), "--no-mlflow", "-q"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = _check_every_run_done_once(env, 12)
    workers = _status(env)["workers"]
    assert sorted(w["name"].split(":")[1] for w in workers) == ["rank0", "rank1"]
    # the ranks ran with one thread each (accelerate's default): the pixels of one single-thread process
    single = {"TRACKER_HOME": str(tmp_path / "single"), "OMP_NUM_THREADS": "1"}
    assert run_tracker("run", path, "--no-mlflow", "-q", env=single).code == 0
    alone = {r["key"]: r for r in _runs(single)}
    for r in runs:
        assert np.array_equal(_pixels(r["image"]), _pixels(alone[r["key"]]["image"]))


def test_two_tracker_runs_of_one_experiment_share_the_work(write_yaml, tmp_path):
    """The old limitation: two `tracker run` of the same file both generated everything."""
    path = _plan(write_yaml, steps=4)
    env = {**os.environ, "TRACKER_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "tracker", "run", str(path), "--no-mlflow", "-q"]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    _check_every_run_done_once({"TRACKER_HOME": env["TRACKER_HOME"]}, 12)


# Fault injection for the live-MLflow test, loaded by every process of the pool (the parent and its workers)
# through PYTHONPATH: a worker makes one batch, then waits (at most GATE_S) until the parent has logged some
# done run to MLflow, and writes down what it saw. Without live logging the gate times out while runs are
# still pending; the test then fails on what the gate recorded, whatever the machine's speed.
GATE = """\
import os, sqlite3, time
if os.environ.get("TRACKER_WORKER_NAME") and os.environ.get("GATE_FILE"):
    from tracker.engine import core as _engine
    _real, _made = _engine.Engine.generate, []

    def _gated(self, runs, *a, **kw):
        if _made:
            deadline, seen = time.monotonic() + float(os.environ["GATE_S"]), None
            while time.monotonic() < deadline:
                try:
                    with sqlite3.connect(os.environ["GATE_DB"], timeout=5) as db:
                        seen = db.execute("SELECT sum(status = 'done'), sum(mlflow_synced_at IS NOT NULL) "
                                          "FROM runs").fetchone()
                except sqlite3.Error:
                    seen = None
                if seen and seen[1]:
                    break
                time.sleep(0.1)
            with open(os.environ["GATE_FILE"], "a") as f:
                f.write(f"{seen[0] if seen else None} {seen[1] if seen else None}\\n")
        _made.append(len(runs))
        return _real(self, runs, *a, **kw)

    _engine.Engine.generate = _gated
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_workers_log_to_mlflow_while_they_run_each_run_once_under_one_parent(write_yaml, tmp_path):
    """--workers with MLflow on (the workspace's own store): the parent logs done runs as the workers
    finish them, not once they are all done; one MLflow parent for the pool; no run logged twice."""
    from mlflow import MlflowClient

    from tracker.mlflow.mapping import KEY_TAG, PARENT_TAG
    from tracker.store.runstore import Store

    home = tmp_path / "home"
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(GATE)
    gate = tmp_path / "gate.txt"
    env = {"TRACKER_HOME": str(home), "TRACKER_LEASE_SECONDS": "30", "GATE_FILE": str(gate), "GATE_S": "60",
           "GATE_DB": str(home / "tracker.db"),
           "PYTHONPATH": os.pathsep.join([str(inject), str(REPO), os.environ.get("PYTHONPATH", "")])}
    path = _plan(write_yaml)
    proc = subprocess.run([sys.executable, "-m", "tracker", "run", str(path), "--workers", "2", "-q"],
                          env={k: v for k, v in {**os.environ, **env}.items() if k != "MLFLOW_TRACKING_URI"},
                          capture_output=True, text=True, timeout=600)
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, err
    assert "12 done" in out and "logged 12 runs to MLflow" in out, out + err
    # live: each worker, after its first batch, waited for the parent to log a done run, and saw one logged
    # while runs were still to be made
    seen = [line.split() for line in gate.read_text().splitlines()]
    assert seen and all(logged not in ("None", "0") and int(done) < 12 for done, logged in seen), seen

    c = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = c.get_experiment_by_name("shared")
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("tracker.kind") == "sweep"]
    children = [r for r in runs if KEY_TAG in r.data.tags]
    assert len(parents) == 1 and parents[0].data.tags["tracker.workers"] == "2"
    assert parents[0].data.metrics["images"] == 12 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags[KEY_TAG] for r in children) == sorted(r["key"] for r in _runs(env))  # once each
    assert {r.data.tags[PARENT_TAG] for r in children} == {parents[0].info.run_id}
    with Store.open(f"sqlite:///{home / 'tracker.db'}") as store:
        sweeps = store.sweeps("shared")
    assert len(sweeps) == 2 and {s["mlflow_run_id"] for s in sweeps} == {parents[0].info.run_id}
    res = run_tracker("sync", "shared", env=env)
    assert res.code == 0 and res.out.startswith("nothing to sync"), res.out + res.err


@pytest.mark.parametrize("visible", ["", "-1"])
def test_a_pool_without_cuda_devices_is_planned_without_importing_torch(visible):
    """The parent of ``--workers`` only watches: where CUDA surely has no device it does not pay torch's import
    (~2 s, in series before the workers start, each of which imports torch again)."""
    code = "import sys; from tracker.sweep.pool import devices_for; print(devices_for(2, None), 'torch' in sys.modules)"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": visible, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['cpu', 'cpu'] False"


def test_cap_workers_to_the_runs_the_devices_and_the_cores(monkeypatch):
    from tracker import limits
    from tracker.sweep import pool

    monkeypatch.setattr(pool, "_cores", lambda: 8)
    assert pool.cap_workers(["cpu"] * 1000, 4, 1000) == (["cpu"] * 4, "--workers 1000: starting 4 workers "
                                                                      "(the plan has 4 runs)")
    assert pool.cap_workers(["cpu"] * 20, 100, 20) == (["cpu"] * 8, "--workers 20: starting 8 workers "
                                                                   "(this machine has 8 CPU cores)")
    cuda = [f"cuda:{i % 2}" for i in range(6)]
    assert pool.cap_workers(cuda, 100, 6) == (["cuda:0", "cuda:1"], "--workers 6: starting 2 workers (2 CUDA devices)")
    assert pool.cap_workers(["cpu"] * 3, 100, 3) == (["cpu"] * 3, None)  # within every bound: as asked
    monkeypatch.setattr(pool, "_cores", lambda: 10_000)
    kept, line = pool.cap_workers(["cpu"] * 5000, 10_000, 5000)
    assert len(kept) == limits.MAX_WORKERS and "tracker.limits.MAX_WORKERS" in line


@pytest.mark.slow
def test_a_thousand_workers_on_a_four_run_plan_cap_and_say_so(write_yaml, env):
    """--workers 1000 on a 4-run plan: real processes; no more start than runs and cores allow, said in one line."""
    path = write_yaml(PLAN.replace("STEPS", "2").replace("[cat, dog, owl]", "[cat, dog]").replace("[0, 1, 2, 3]", "[0, 1]"))
    cores = len(os.sched_getaffinity(0))
    want = min(4, cores)
    res = run_tracker("run", path, "--workers", "1000", "--no-mlflow", "-q", env=env, timeout=300)
    assert res.code == 0, res.err
    lines = [ln for ln in res.err.splitlines() if ln.strip()]
    assert lines == [f"--workers 1000: starting {want} worker{'s' if want > 1 else ''} ("
                     + ("the plan has 4 runs)" if want == 4 else f"this machine has {cores} CPU core"
                        + ("s)" if cores > 1 else ")"))], res.err
    assert f"4 done, 0 failed, 0 not done of 4 planned by {want} workers" in res.out
    assert 1 <= len(_status(env)["workers"]) <= want  # the processes that registered with the store
    _check_every_run_done_once(env, 4)
