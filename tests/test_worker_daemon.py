"""Warm workers (``tracker worker``) and the queue in the run store (``tracker.sweep.queue``).

Fast tests: the queue's order (priority, round-robin between experiments, FIFO within one), what a worker
refuses, withdrawing, which workers are live, on a real SQLite store. Slow tests: real processes on the real
tiny pipeline: a worker makes a submitted plan with the pixels of an in-process run; two submitters share one
worker batch by batch; a worker killed with SIGKILL mid-batch loses and duplicates nothing (a second one
finishes); a model switch under --max-memory evicts the least recently used pipeline; ``tracker watch`` queues
only the new runs after an edit.
"""

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
import sqlalchemy as sa
from PIL import Image

from conftest import run_tracker, tracker_process

PLAN = """\
name: NAME
model: MODEL
prompt: "a {{ animal }}"
axes:
  animal: ANIMALS
seeds: [0, 1]
steps: STEPS
batch_size: 2
"""


def _write(folder: Path, name: str = "alpha", model: str = "tiny", animals: str = "[cat, dog]",
           steps: int = 2, file: str | None = None) -> Path:
    p = folder / (file or f"{name}.yaml")
    p.write_text(PLAN.replace("NAME", name).replace("MODEL", model).replace("ANIMALS", animals)
                 .replace("STEPS", str(steps)))
    return p


# ---------------------------------------------------------------------------------------------
# the queue, on a real store (no generation)


@pytest.fixture
def ws(tmp_path):
    from tracker.workspace import WorkspaceConfig

    return WorkspaceConfig.from_options(home=str(tmp_path / "home"))


def _submit(ws, path, priority=0):
    from tracker.sweep import queue, runner

    return queue.submit(ws, path, runner.RunOptions(progress=False), priority=priority, require_worker=False)


def _serve_one_batch(store, item, worker) -> list[str]:
    """What a worker does with a picked sweep, minus the pipeline: claim a batch, mark it done."""
    from tracker.sweep import claims, queue, runner
    from tracker.sweep.claim_loop import batch_of

    runs = queue.claimable_runs(store, item.sweep_id)
    wanted = [([r.key for r in g], batch_of(g, 8)) for g in runner.ordered_groups(runs)]
    keys = claims.claim(store, item.experiment, claims.Worker(worker.id, item.sweep_id, worker.name), wanted)
    store.mark_done_many(item.experiment, [(k, {}) for k in keys])
    return keys


def test_the_queue_serves_priority_first_then_experiments_in_turn_and_sweeps_in_order(ws, tmp_path):
    from tracker.sweep import queue
    from tracker.store.runstore import Store

    a1 = _submit(ws, _write(tmp_path, "alpha"))
    b = _submit(ws, _write(tmp_path, "beta"))
    a2 = _submit(ws, _write(tmp_path, "alpha", animals="[owl, bee]"))  # the file edited: a second sweep of alpha
    urgent = _submit(ws, _write(tmp_path, "gamma"), priority=5)
    assert [len(s.keys) for s in (a1, b, a2, urgent)] == [4, 4, 4, 4]
    with Store.open(ws.db_url, home=ws.home) as store:
        worker = queue.register(store, "cpu", "w", None, beat_seconds=1)
        served, last = [], None
        while True:
            item = queue.pick(queue.queued(store), last)
            if item is None:
                break
            keys = _serve_one_batch(store, item, worker)
            assert len(keys) == 2  # batch_size 2
            served.append(item.sweep_id)
            last = item.experiment
    # priority 5 first; then alpha and beta in turn batch by batch; alpha's two sweeps first come first served
    assert served == [urgent.sweep_id] * 2 + [a1.sweep_id, b.sweep_id, a1.sweep_id, b.sweep_id] + [a2.sweep_id] * 2


def test_a_run_changed_in_the_store_after_it_was_submitted_is_refused(ws, tmp_path):
    """What the submitted plan allowed travels with it: a pickle permission, a model or a LoRA adapter that
    another process wrote into the queued run later is not loaded."""
    from tracker.sweep import queue
    from tracker.store.runstore import Store
    from tracker.store.tables import runs_t

    sub = _submit(ws, _write(tmp_path))
    with Store.open(ws.db_url, home=ws.home) as store:
        item = queue.queued(store)[0]
        assert item.submission["by"] == queue.submitter() and "@" in item.submission["by"]
        assert item.submission["allow"] == {"models": {"tiny": False}, "vaes": {}, "loras": []}
        runs = queue.claimable_runs(store, sub.sweep_id)
        assert [queue.refusal(item.submission, r) for r in runs] == [None] * 4
        with store._write() as conn:
            conn.execute(runs_t.update().where(runs_t.c.key == runs[0].key).values(allow_pickle=True))
            conn.execute(runs_t.update().where(runs_t.c.key == runs[1].key).values(model="/elsewhere/model"))
            conn.execute(runs_t.update().where(runs_t.c.key == runs[2].key).values(
                lora=[{"name": "x", "path": "/tmp/x.safetensors", "scale": 1.0}]))
        changed = {r.key: queue.refusal(item.submission, r) for r in queue.claimable_runs(store, sub.sweep_id)}
    assert "allow_pickle for model 'tiny' was not allowed" in changed[runs[0].key]
    assert "model '/elsewhere/model' is not in the plan" in changed[runs[1].key]
    assert "lora 'x' is not in the plan" in changed[runs[2].key]
    assert changed[runs[3].key] is None


def test_withdrawn_runs_stay_pending_but_leave_the_queue(ws, tmp_path):
    from tracker.sweep import queue
    from tracker.store.runstore import Store

    sub = _submit(ws, _write(tmp_path))
    with Store.open(ws.db_url, home=ws.home) as store:
        assert [q.runs for q in queue.queued(store)] == [4]
        assert queue.withdraw(store, sub.sweep_id) == 4
        assert queue.queued(store) == []
        assert {r.status for r in store.runs("alpha")} == {"pending"}
        assert store.sweep(sub.sweep_id)["status"] == "interrupted"


def test_a_worker_is_live_while_it_heartbeats_and_its_process_is_there(ws, tmp_path):
    from tracker.sweep import queue
    from tracker.store.runstore import Store
    from tracker.store.tables import workers_t

    _submit(ws, _write(tmp_path))
    with Store.open(ws.db_url, home=ws.home) as store:
        w = queue.register(store, "cpu", "warm", ["alpha"], beat_seconds=1)
        assert [x["id"] for x in queue.live_workers(store, "alpha")] == [w.id]
        assert queue.live_workers(store, "beta") == []  # it serves alpha only
        assert queue.live_workers(store, "alpha", device="cuda") == []
        with store._write() as conn:  # a process of this host that is gone (kill -9): not live at once
            conn.execute(workers_t.update().values(pid=_dead_pid()))
        assert queue.live_workers(store) == []
        with store._write() as conn:  # alive, but silent for longer than three heartbeats
            conn.execute(workers_t.update().values(pid=os.getpid(), last_seen=sa.func.datetime("now", "-10 seconds")))
        assert queue.live_workers(store) == []
        assert [x["status"] for x in queue.warm_workers(store)] == ["gone"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_max_memory_sizes(cli):
    from tracker.sweep.daemon import parse_memory

    assert parse_memory("8MB") == 8_000_000 and parse_memory("1.5GiB") == int(1.5 * 2**30)
    assert parse_memory("123") == 123 and parse_memory(None) is None
    res = cli("worker", "--max-memory", "lots")
    assert res.code == 2 and "--max-memory: 'lots' is not a size" in res.err and "Traceback" not in res.err


# ---------------------------------------------------------------------------------------------
# real processes


@pytest.fixture
def env(tmp_path):
    return {"TRACKER_HOME": str(tmp_path / "home"), "TRACKER_LEASE_SECONDS": "3", "OMP_NUM_THREADS": "1"}


class Workers:
    """``tracker worker`` processes started by a test, stopped (SIGTERM) at its end."""

    def __init__(self, env: dict, tmp_path: Path):
        self.env, self.tmp, self.procs = env, tmp_path, []

    def start(self, *args: str, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen([sys.executable, "-m", "tracker", "worker", "--no-mlflow", "--name", name, *args],
                             env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT, text=True)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def wait_live(self, *names: str) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            res = run_tracker("status", "--json", env=self.env)
            if res.code == 0:
                live = {w["name"] for w in json.loads(res.out)["warm_workers"] if w["live"]}
                if set(names) <= live:
                    return
            for p in self.procs:
                assert p.poll() is None, [self.log(n) for n in names]
            time.sleep(0.3)
        raise AssertionError(f"workers {names} did not start")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def workers(env, tmp_path):
    w = Workers(env, tmp_path)
    yield w
    w.stop()


def _runs(env: dict, experiment: str) -> list[dict]:
    res = run_tracker("runs", experiment, "--json", env=env)
    assert res.code == 0, res.err
    return json.loads(res.out)


def _all_done_each_with_its_image(env: dict, planned: int) -> list[dict]:
    """Every run of alpha done, and its images folder holds exactly their PNGs (no half-written or extra file)."""
    runs = _runs(env, "alpha")
    assert len(runs) == planned and {r["status"] for r in runs} == {"done"}
    files = sorted(p.name for p in (Path(env["TRACKER_HOME"]) / "images" / "alpha").iterdir())
    assert files == sorted(f"{r['key']}.png" for r in runs)
    return runs


def _wait_for_a_running_run(env: dict, sub: subprocess.Popen) -> None:
    """Until some run of the store is running (a worker holds it), while the submitter ``sub`` is still up."""
    _wait_for(lambda: _db_rows(env, "SELECT count(*) FROM runs WHERE status = 'running'")[0][0], sub, every=0.1)


def _db_rows(env: dict, sql: str) -> list[tuple]:
    import sqlite3

    with sqlite3.connect(Path(env["TRACKER_HOME"]) / "tracker.db") as db:
        return db.execute(sql).fetchall()


@pytest.mark.slow
def test_a_warm_worker_makes_a_submitted_plan_with_the_pixels_of_an_in_process_run(tmp_path, env, workers):
    path = _write(tmp_path, animals="[cat, dog, owl]")
    workers.start(name="warm")
    workers.wait_live("warm")
    res = run_tracker("run", path, "-q", env=env)
    assert res.code == 0, res.err
    assert "alpha: 6 done, 0 skipped (already done), 0 failed of 6 planned" in res.out
    assert "made by warm worker warm (cpu): 6 images" in res.out
    assert "queued 6 runs of alpha" in res.err
    runs = _runs(env, "alpha")
    assert {r["status"] for r in runs} == {"done"} and len(runs) == 6
    for r in runs:
        assert hashlib.sha256(Path(r["image"]).read_bytes()).hexdigest() == r["image_sha256"]
    # every run was made by the warm worker, in the sweep the submitter recorded (who, from where)
    made = _db_rows(env, "SELECT w.name, w.kind, r.sweep_id FROM runs r JOIN workers w ON w.id = r.worker_id")
    sweep_id = made[0][2]
    assert set(made) == {("warm", "daemon", sweep_id)}
    (submission,), = _db_rows(env, f"SELECT submission FROM sweeps WHERE id = {sweep_id}")
    assert "@" in json.loads(submission)["by"]
    status = json.loads(run_tracker("status", "alpha", "--json", env=env).out)
    assert [(w["name"], w["kind"], w["runs_done"]) for w in status["workers"]] == [("warm", "daemon", 6)]

    # a second run is all skipped; --local makes the same pixels in-process in another workspace
    again = run_tracker("run", path, "-q", env=env)
    assert again.code == 0 and "0 done, 6 skipped" in again.out
    local_env = {**env, "TRACKER_HOME": str(tmp_path / "local")}
    local = run_tracker("run", path, "-q", "--local", "--no-mlflow", env=local_env)
    assert local.code == 0 and "made by" not in local.out
    alone = {r["key"]: r for r in _runs(local_env, "alpha")}
    for r in runs:
        assert np.array_equal(np.asarray(Image.open(r["image"])), np.asarray(Image.open(alone[r["key"]]["image"])))


@pytest.mark.slow
def test_a_warm_worker_makes_image_to_image_runs_from_the_inputs_in_the_workspace(tmp_path, env, workers):
    """An img2img strength axis through a warm worker: the worker reads the input by its sha256 from the
    workspace the submitter copied it into (the path in the file is never read again), and makes the pixels an
    in-process run makes."""
    from test_img2img import make_images

    make_images(tmp_path / "pics")
    path = tmp_path / "cond.yaml"
    path.write_text("name: alpha\nmodel: tiny\nprompt: a red square\nimage: pics/source.png\n"
                    "strength: [0.5, 0.9]\nseeds: [0, 1]\nsteps: 4\nbatch_size: 2\n")
    workers.start(name="warm")
    workers.wait_live("warm")
    res = run_tracker("run", path, "-q", env=env, cwd=tmp_path)
    assert res.code == 0 and "made by warm worker warm (cpu): 4 images" in res.out, res.out + res.err
    runs = _all_done_each_with_its_image(env, 4)
    local_env = {**env, "TRACKER_HOME": str(tmp_path / "local")}
    local = run_tracker("run", path, "-q", "--local", "--no-mlflow", env=local_env, cwd=tmp_path)
    assert local.code == 0, local.err
    alone = {r["key"]: r for r in _runs(local_env, "alpha")}
    for r in runs:
        assert np.array_equal(np.asarray(Image.open(r["image"])), np.asarray(Image.open(alone[r["key"]]["image"])))
    assert len({np.asarray(Image.open(r["image"])).tobytes() for r in runs}) == 4  # strength and seed both matter


@pytest.mark.slow
def test_two_submitters_share_one_worker_batch_by_batch(tmp_path, env, workers):
    a = _write(tmp_path, "alpha", animals="[cat, dog, owl, bee]", steps=6)
    b = _write(tmp_path, "beta", animals="[cat, dog, owl, bee]", steps=6)
    workers.start(name="warm")
    workers.wait_live("warm")
    procs = [subprocess.Popen([sys.executable, "-m", "tracker", "run", str(p), "-q"], env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (a, b)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("8 done" in out and "made by warm worker warm" in out for out, _ in outs)
    # each claimed batch: (experiment, claim time); once both are queued they alternate batch by batch
    batches = _db_rows(env, "SELECT e.name, r.started_at FROM runs r JOIN experiments e ON e.id = r.experiment_id "
                            "GROUP BY e.name, r.started_at ORDER BY r.started_at")
    names = [n for n, _ in batches]
    assert sorted(names) == ["alpha"] * 4 + ["beta"] * 4
    first, second = names[0], ("beta" if names[0] == "alpha" else "alpha")
    start = names.index(second)
    last_both = min(max(i for i, n in enumerate(names) if n == x) for x in ("alpha", "beta"))
    window = names[start:last_both + 1]
    assert all(x != y for x, y in zip(window, window[1:])), names
    assert start <= 2, names  # the first submitter had at most one batch (in flight) before the second came in
    del first


@pytest.mark.slow
def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(tmp_path, env, workers):
    path = _write(tmp_path, animals="[cat, dog, owl]", steps=15)  # batches long enough to be killed in
    victim = workers.start(name="victim")
    workers.start(name="second")
    workers.wait_live("victim", "second")
    with tracker_process("run", path, "-q", env=env) as sub:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the victim holds a batch it has not finished
            held = _db_rows(env, "SELECT count(*) FROM runs r JOIN workers w ON w.id = r.worker_id "
                                 "WHERE w.name = 'victim' AND r.status = 'running'") if (
                Path(env["TRACKER_HOME"]) / "tracker.db").exists() else [(0,)]
            if held[0][0]:
                break
            assert sub.poll() is None, sub.communicate()
            time.sleep(0.1)
        else:
            raise AssertionError("the victim took no batch")
        os.kill(victim.pid, signal.SIGKILL)
        out, err = sub.communicate(timeout=600)
    assert sub.returncode == 0, err
    assert "6 done, 0 skipped (already done), 0 failed of 6 planned" in out
    runs = _all_done_each_with_its_image(env, 6)
    for r in runs:
        assert hashlib.sha256(Path(r["image"]).read_bytes()).hexdigest() == r["image_sha256"]
    made = dict(_db_rows(env, "SELECT w.name, count(*) FROM runs r JOIN workers w ON w.id = r.worker_id "
                              "WHERE r.status = 'done' GROUP BY w.name"))
    assert made.get("second", 0) >= 2 and sum(made.values()) == 6  # the second finished the victim's batch


@pytest.mark.slow
def test_a_model_switch_evicts_the_least_recently_used_pipeline_under_a_budget(tmp_path, env, workers):
    """tiny and shapes weigh ~5 MB each: a budget of 8 MB holds one of them."""
    workers.start("--max-memory", "8MB", name="warm")
    workers.wait_live("warm")
    for name, model in (("t1", "tiny"), ("s1", "shapes"), ("t2", "tiny")):
        res = run_tracker("run", _write(tmp_path, name, model=model, animals="[cat]"), "-q", env=env)
        assert res.code == 0 and "made by warm worker warm" in res.out, res.err
        st = json.loads(run_tracker("status", "--json", env=env).out)["warm_workers"][0]["activity"]
        assert st["models"] == [model]  # only the model in use stays loaded
    log = workers.log("warm")
    assert "evicted tiny" in log and "evicted shapes" in log and st["evicted"] == 2
    # without a budget both stay loaded
    env2 = {**env, "TRACKER_HOME": str(tmp_path / "nobudget")}
    w2 = Workers(env2, tmp_path / "nb")
    (tmp_path / "nb").mkdir()
    try:
        w2.start(name="roomy")
        w2.wait_live("roomy")
        for name, model in (("t1", "tiny"), ("s1", "shapes")):
            assert run_tracker("run", _write(tmp_path, name, model=model, animals="[cat]"), "-q", env=env2).code == 0
        st = json.loads(run_tracker("status", "--json", env=env2).out)["warm_workers"][0]["activity"]
        assert st["models"] == ["tiny", "shapes"] and st["evicted"] == 0
    finally:
        w2.stop()


@pytest.mark.slow
def test_watch_queues_only_the_new_runs_after_an_edit(tmp_path, env, workers):
    path = _write(tmp_path, animals="[cat, dog]")
    workers.start(name="warm")
    workers.wait_live("warm")
    log = open(tmp_path / "watch.log", "w")
    watch = subprocess.Popen([sys.executable, "-m", "tracker", "watch", str(path), "--interval", "0.2", "--report"],
                             env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, text=True)
    index = Path(env["TRACKER_HOME"]) / "reports" / "alpha" / "index.html"
    try:
        _wait_done(env, 4, watch)
        first = {k: (mtime, wid) for k, mtime, wid in _db_rows(env, "SELECT key, image_mtime_ns, worker_id FROM runs")}
        _wait_for(lambda: (tmp_path / "watch.log").read_text().count("alpha: report file://") == 1, watch)
        assert all(k in index.read_text() for k in first)  # --report: rebuilt once the queued runs were made
        path.write_text(path.read_text().replace("[cat, dog]", "[cat, dog, owl]"))
        _wait_done(env, 6, watch)
        after = {k: (mtime, wid) for k, mtime, wid in _db_rows(env, "SELECT key, image_mtime_ns, worker_id FROM runs")}
        _wait_for(lambda: (tmp_path / "watch.log").read_text().count("alpha: report file://") == 2, watch)
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=60)
    text = (tmp_path / "watch.log").read_text()
    assert "alpha: planned 4 runs: 4 queued, 0 done already" in text
    assert "alpha: 2 new runs queued, 0 no longer planned, 4 unchanged (4 done, 0 still queued)" in text
    assert len(after) == 6 and all(after[k] == v for k, v in first.items())  # the first 4 were not made again
    assert "warm: alpha: 2 runs" in workers.log("warm")
    assert all(k in index.read_text() for k in after)  # and again after the edit, with the new runs


def _wait_for(condition, proc, seconds: float = 300, every: float = 0.2) -> None:
    """Until ``condition()`` holds, while ``proc`` is still up (at most ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, "the process ended first"
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(every)


def _wait_done(env: dict, n: int, proc) -> None:
    db = Path(env["TRACKER_HOME"]) / "tracker.db"
    _wait_for(lambda: db.exists() and _db_rows(env, "SELECT count(*) FROM runs WHERE status = 'done'")[0][0] == n,
              proc)


def test_a_worker_loads_nothing_for_runs_the_submitted_plan_did_not_allow(ws, tmp_path):
    """A real warm worker (in this process, real store) given only runs changed after submission: each fails
    with the reason and no pipeline is loaded."""
    from tracker.sweep import queue
    from tracker.sweep.daemon import Daemon
    from tracker.store.runstore import Store
    from tracker.store.tables import runs_t

    sub = _submit(ws, _write(tmp_path))
    with Store.open(ws.db_url, home=ws.home) as store, store._write() as conn:
        conn.execute(runs_t.update().values(allow_pickle=True))
    lines: list[str] = []
    daemon = Daemon(ws, device="cpu", idle_timeout=0.5, name="strict", note=lines.append)
    assert daemon.run() == 0 and daemon.failed == 4
    with Store.open(ws.db_url, home=ws.home) as store:
        recs = store.runs("alpha")
        warm = queue.warm_workers(store)[0]
    assert {r.status for r in recs} == {"failed"}
    assert all("allow_pickle for model 'tiny' was not allowed by the plan" in r.error for r in recs)
    assert warm["status"] == "stopped" and warm["activity"]["models"] == [] and sub.sweep_id
    assert any("stopped: 0 images made, 4 failed" in line for line in lines)


@pytest.mark.slow
def test_two_warm_workers_on_postgresql_make_a_submitted_plan_once(tmp_path, pg_url):
    env = {"TRACKER_HOME": str(tmp_path / "home"), "TRACKER_LEASE_SECONDS": "3", "OMP_NUM_THREADS": "1",
           "TRACKER_DB_URL": pg_url}
    w = Workers(env, tmp_path)
    try:
        w.start(name="one")
        w.start(name="two")
        w.wait_live("one", "two")
        res = run_tracker("run", _write(tmp_path, animals="[cat, dog, owl, bee]", steps=6), "-q", env=env)
        assert res.code == 0, res.err
        assert "8 done, 0 skipped (already done), 0 failed of 8 planned" in res.out
        status = json.loads(run_tracker("status", "alpha", "--json", env=env).out)
        made = {x["name"]: x["runs_done"] for x in status["workers"]}
        assert sum(made.values()) == 8 and set(made) <= {"one", "two"}
        runs = _runs(env, "alpha")
        assert len({r["key"] for r in runs}) == 8 and {r["status"] for r in runs} == {"done"}
    finally:
        w.stop()


@pytest.mark.slow
def test_ctrl_c_on_the_submitter_withdraws_its_runs_not_started(tmp_path, env, workers):
    path = _write(tmp_path, animals="[cat, dog, owl, bee]", steps=15)
    workers.start(name="warm")
    workers.wait_live("warm")
    with tracker_process("run", path, "-q", env=env) as sub:
        _wait_for_a_running_run(env, sub)
        sub.send_signal(signal.SIGINT)
        out, err = sub.communicate(timeout=120)
    assert sub.returncode == 130, err
    assert "withdrew" in err and "runs of alpha not started from the queue" in err
    deadline = time.monotonic() + 300  # the worker finishes what it holds, takes nothing more, goes idle
    while _db_rows(env, "SELECT count(*) FROM runs WHERE status = 'running'")[0][0]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    rows = _db_rows(env, "SELECT status, sweep_id IS NULL FROM runs")
    assert ("pending", 1) in rows and all(s in ("done", "pending") for s, _ in rows)
    assert all(detached for s, detached in rows if s == "pending")
    assert _db_rows(env, "SELECT status FROM sweeps") == [("interrupted",)]
    time.sleep(1)  # nothing more is taken
    assert _db_rows(env, "SELECT count(*) FROM runs WHERE status = 'pending'") == [
        (sum(s == "pending" for s, _ in rows),)]


@pytest.mark.slow
def test_when_the_only_worker_dies_the_submitter_makes_the_rest_itself(tmp_path, env, workers):
    path = _write(tmp_path, animals="[cat, dog, owl]", steps=15)
    victim = workers.start(name="only")
    workers.wait_live("only")
    with tracker_process("run", path, "-q", "--no-mlflow", env=env) as sub:
        _wait_for_a_running_run(env, sub)
        os.kill(victim.pid, signal.SIGKILL)
        out, err = sub.communicate(timeout=600)
    assert sub.returncode == 0, err
    assert "no warm worker serves alpha any more; generating the rest here" in err
    _all_done_each_with_its_image(env, 6)

def test_free_memory_reads_the_cpu_s_available_memory():
    from tracker.sweep.daemon import free_memory

    free = free_memory("cpu")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert free is not None and 0 < free <= total
    assert free_memory("mps") is None


@pytest.mark.slow
def test_a_model_switch_evicts_when_the_device_s_free_memory_holds_one_model(ws, tmp_path, monkeypatch):
    """No --max-memory: the device's free memory decides. The fault injected is its reading only: a stand-in
    for a GPU with room for one of tiny and shapes (~5 MB of weights each), whose free memory is what the
    pipelines the worker really has loaded leave of ROOM."""
    from tracker.sweep import daemon as warm
    from tracker.store.runstore import Store
    from tracker.sweep import queue

    room = 8 * 10**6
    readings: list[int] = []

    def free_bytes(self):
        readings.append(room - sum(self.engine.pipeline_bytes().values()))
        return readings[-1]

    monkeypatch.setattr(warm.WarmPipelines, "free_bytes", free_bytes)
    for name, model in (("a1", "tiny"), ("b1", "shapes"), ("c1", "tiny")):  # served in this order (round-robin)
        _submit(ws, _write(tmp_path, name, model=model, animals="[cat]"))
    lines: list[str] = []
    daemon = warm.Daemon(ws, device="cpu", idle_timeout=0.5, name="small", note=lines.append)
    assert daemon.run() == 6 and daemon.failed == 0
    with Store.open(ws.db_url, home=ws.home) as store:
        activity = queue.warm_workers(store)[0]["activity"]
        assert {r.status for n in ("a1", "b1", "c1") for r in store.runs(n)} == {"done"}
    evictions = [line for line in lines if "evicted" in line]
    assert len(evictions) == 2 and activity["evicted"] == 2 and activity["models"] == ["tiny"]
    assert "evicted tiny" in evictions[0] and "cpu had" in evictions[0] and "shapes needs" in evictions[0]
    assert "evicted shapes" in evictions[1] and "tiny needs" in evictions[1]
    assert readings[0] == room  # the first model found the device empty: nothing to evict


def test_with_room_for_both_models_nothing_is_evicted(ws, tmp_path, monkeypatch):
    """The same stand-in with room for two models: both stay loaded (WarmPipelines on a real engine, whose
    two pipelines are loaded for real)."""
    from tracker.engine.core import Engine
    from tracker.experiment import parse as spec
    from tracker.sweep import daemon as warm

    monkeypatch.setattr(warm.WarmPipelines, "free_bytes",
                        lambda self: 20 * 10**6 - sum(self.engine.pipeline_bytes().values()))
    engine = Engine(device="cpu")
    lines: list[str] = []
    cache = warm.WarmPipelines(engine, None, lines.append, "cpu")
    for model in ("tiny", "shapes"):
        settings = spec.parse_file(_write(tmp_path, model, model=model)).settings
        cache.before(settings)
        engine.prepare(settings)
        cache.after(settings)
    assert cache.models() == ["tiny", "shapes"] and cache.evicted == 0 and not lines
    engine.close()
