"""Warm workers on a real two-node Ray cluster on this machine (``ray start --head``, then a second ``ray start
--address``, each node with one CPU, its own resources and its own temp folder): the detached actors spread
over both nodes and are reused by the next sweep; ``tracker worker --ray`` starts them ahead and stops them;
a node killed mid-sweep (kill -9 of its raylet and everything under it) loses and duplicates nothing: its
claims expire and the actor on the other node takes them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, run_tracker

RAY = str(Path(sys.executable).with_name("ray"))

PLAN = """\
name: spread
model: tiny
prompt: "a {{ animal }}"
axes:
  animal: ANIMALS
seeds: [0, 1, 2, 3]
steps: STEPS
batch_size: 2
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(folder: str) -> list:
    """The processes of one Ray node: those whose command line names its temp folder, and their children."""
    import psutil

    roots = [p for p in psutil.process_iter(["cmdline"]) if p.pid != os.getpid()
             and any(folder in part for part in (p.info["cmdline"] or ()))]
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    return list(found.values())


def _kill(folder: str) -> int:
    import psutil

    procs = _processes_of(folder)
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=30)
    return len(procs)


class TwoNodes:
    """A head node and a second node joined to it, each one CPU; ``env`` reaches both nodes' processes (the
    actors import this checkout's tracker)."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="rw", dir="/tmp")  # short: Ray's socket paths live under it
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                    "TRACKER_LEASE_SECONDS": "5"}
        self.folders = {"a": f"{self.root}/a", "b": f"{self.root}/b"}

    def start(self) -> None:
        common = ["--num-cpus", "1", "--disable-usage-stats"]
        self._ray("start", "--head", "--port", str(self.port), "--include-dashboard", "false",
                  "--resources", '{"node_a": 1}', "--temp-dir", self.folders["a"], *common)
        self._ray("start", "--address", self.address, "--resources", '{"node_b": 1}',
                  "--temp-dir", self.folders["b"], *common)

    def _ray(self, *args: str) -> None:
        res = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    def node_id(self, node: str) -> str:
        """The Ray node id of node ``a`` or ``b``, read from its raylet's command line."""
        for p in _processes_of(self.folders[node]):
            for part in p.cmdline():
                if part.startswith("--node_id="):
                    return part.split("=", 1)[1]
        raise AssertionError(f"no raylet for node {node}")

    def kill(self, node: str) -> int:
        """kill -9 of the node's raylet and every process under it, and of its other processes (the head's
        GCS): as if its machine went away."""
        return _kill(self.folders[node])

    def close(self) -> None:
        for node in ("b", "a"):
            _kill(self.folders[node])
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def two_nodes():
    cluster = TwoNodes()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def _env(tmp_path: Path, cluster: TwoNodes) -> dict:
    return {**cluster.env, "TRACKER_HOME": str(tmp_path / "home")}


def _rows(tmp_path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(tmp_path / "home" / "tracker.db", timeout=30) as db:
        return db.execute(sql).fetchall()


def _check_every_run_done_once(tmp_path: Path, env: dict, planned: int) -> list[dict]:
    res = run_tracker("runs", "spread", "--json", env=env)
    assert res.code == 0, res.err
    runs = json.loads(res.out)
    assert len(runs) == planned and {r["status"] for r in runs} == {"done"}
    for r in runs:
        assert hashlib.sha256(Path(r["image"]).read_bytes()).hexdigest() == r["image_sha256"]
    assert len(list((tmp_path / "home" / "images" / "spread").glob("*.png"))) == planned
    return runs


def _workers_by_node(tmp_path: Path, cluster: TwoNodes) -> dict[str, int]:
    """node (a, b) -> the id of its actor's warm worker in the store (named ...@host:<node id>)."""
    ids = {n: cluster.node_id(n)[:8] for n in ("a", "b")}
    out = {}
    for wid, name in _rows(tmp_path, "SELECT id, name FROM workers WHERE kind = 'daemon'"):
        for node, prefix in ids.items():
            if name.startswith("ray:tracker-warm-") and name.endswith(f":{prefix}"):
                out[node] = wid
    return out


@pytest.mark.slow
def test_warm_actors_spread_over_two_nodes_and_the_next_sweep_reuses_them(tmp_path, two_nodes):
    env = _env(tmp_path, two_nodes)
    res = run_tracker("worker", "--ray", two_nodes.address, "--idle-timeout", "300", "--no-mlflow", env=env)
    assert res.code == 0, res.err
    assert res.out.count(": started; worker ray:tracker-warm-") == 2, res.out
    st = json.loads(run_tracker("status", "--json", env=env).out)["warm_workers"]
    assert len(st) == 2 and all(w["live"] and w["name"].startswith("ray:tracker-warm-") for w in st)
    workers = _workers_by_node(tmp_path, two_nodes)
    assert set(workers) == {"a", "b"}  # one actor on each node
    _wait_actors(two_nodes, env, 2)

    path = tmp_path / "spread.yaml"
    path.write_text(PLAN.replace("ANIMALS", "[cat, dog]").replace("STEPS", "2"))
    res = run_tracker("run", path, "--ray", two_nodes.address, env=env)
    assert res.code == 0, res.err
    assert res.err.count("warm, reused") == 2 and "started;" not in res.err
    assert "8 done, 0 skipped" in res.out and "made by warm worker ray:tracker-warm-" in res.out
    path.write_text(PLAN.replace("ANIMALS", "[cat, dog, owl]").replace("STEPS", "2"))
    res = run_tracker("run", path, "--ray", two_nodes.address, env=env)
    assert res.code == 0 and "4 done, 8 skipped" in res.out, res.err
    runs = _check_every_run_done_once(tmp_path, env, 12)
    # the same two workers (the same actors, their pipelines loaded) made both sweeps
    assert {wid for (wid,) in _rows(tmp_path, "SELECT worker_id FROM runs")} <= set(workers.values())
    assert len(_rows(tmp_path, "SELECT id FROM workers")) == 2 and len(runs) == 12
    assert {w["activity"]["models"] == ["tiny"] for w in
            json.loads(run_tracker("status", "--json", env=env).out)["warm_workers"]} == {True}

    # no room for a third actor (each node's one CPU is held), no GPU at all: one clear line each
    res = run_tracker("worker", "--ray", two_nodes.address, "--actors", "3", env=env)
    assert res.code == 2 and "has no room for the warm actor tracker-warm-" in res.err, res.err
    assert "CPU 0 free of 2" in res.err and res.err.count("\n") == 1
    res = run_tracker("run", path, "--ray", two_nodes.address, "--device", "cuda", env=env)
    assert res.code == 2 and "--device cuda: the Ray cluster has no GPU" in res.err and res.err.count("\n") == 1

    res = run_tracker("worker", "--ray", two_nodes.address, "--stop", env=env)
    assert res.code == 0 and "stopped 2 warm actor(s)" in res.out, res.err
    st = json.loads(run_tracker("status", "--json", env=env).out)["warm_workers"]
    assert {w["status"] for w in st} == {"stopped"} and not any(w["live"] for w in st)
    _wait_actors(two_nodes, env, 0)  # the stopped actors ended themselves

    # an actor with an idle timeout stops by itself and leaves the cluster
    res = run_tracker("worker", "--ray", two_nodes.address, "--actors", "1", "--idle-timeout", "1", env=env)
    assert res.code == 0 and res.out.count(": started;") == 1, res.err
    _wait_actors(two_nodes, env, 0)
    st = json.loads(run_tracker("status", "--json", env=env).out)["warm_workers"]
    assert len(st) == 3 and st[0]["status"] == "stopped" and st[0]["runs_done"] == 0


def _wait_actors(cluster: TwoNodes, env: dict, n: int) -> None:
    """Until ``n`` named actors of the prompt-tracker namespace are alive on the cluster (asked from a driver)."""
    script = ("import ray, sys, time\n"
              f"ray.init(address={cluster.address!r}, log_to_driver=False)\n"
              "for _ in range(120):\n"
              "    alive = [a['name'] for a in ray.util.list_named_actors(all_namespaces=True)\n"
              "             if a['namespace'] == 'prompt-tracker']\n"
              f"    if len(alive) == {n}: sys.exit(0)\n"
              "    time.sleep(0.5)\n"
              "print(alive); sys.exit(1)\n")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]


@pytest.mark.slow
def test_a_node_killed_mid_sweep_loses_and_duplicates_nothing(tmp_path, two_nodes):
    env = _env(tmp_path, two_nodes)
    # both actors up before the sweep, so both claim from its start (one started by the sweep itself came up
    # late on a quiet machine, made one batch and never held a claim while it could be killed)
    res = run_tracker("worker", "--ray", two_nodes.address, "--idle-timeout", "300", "--no-mlflow", env=env)
    assert res.code == 0 and res.out.count(": started; worker ray:tracker-warm-") == 2, res.out + res.err
    _wait_actors(two_nodes, env, 2)
    path = tmp_path / "spread.yaml"
    path.write_text(PLAN.replace("ANIMALS", "[cat, dog, owl, fox]").replace("STEPS", "40"))
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tracker", "run", str(path), "--ray", two_nodes.address,
                             "--no-mlflow", "-q"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    orphaned: list[str] = []
    try:
        deadline = time.monotonic() + 400
        workers: dict = {}
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not (tmp_path / "home" / "tracker.db").exists():
                continue
            try:
                workers = workers if len(workers) == 2 else _workers_by_node(tmp_path, two_nodes)
                if "b" not in workers:
                    continue
                made, held = _rows(tmp_path, f"SELECT sum(status = 'done'), sum(status = 'running') FROM runs "
                                             f"WHERE worker_id = {workers['b']}")[0]
            except sqlite3.OperationalError:  # the store is being created
                continue
            if made and held:  # node b made images and holds claims: it goes away mid-batch
                assert two_nodes.kill("b") > 0
                orphaned = [k for (k,) in _rows(tmp_path, f"SELECT key FROM runs WHERE status = 'running' "
                                                          f"AND worker_id = {workers['b']}")]
                break
        assert proc.wait(timeout=400) == 0, (tmp_path / "run.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (tmp_path / "run.log").read_text()
    assert orphaned, f"node b was not killed while it held claims: {out}"
    assert "16 done, 0 skipped" in out and "0 failed" in out
    runs = {r["key"]: r for r in _check_every_run_done_once(tmp_path, env, 16)}
    made_by = dict(_rows(tmp_path, "SELECT key, worker_id FROM runs"))
    assert set(made_by.values()) == {workers["a"], workers["b"]}  # both nodes made images
    assert all(made_by[k] == workers["a"] for k in orphaned) and all(k in runs for k in orphaned)


def test_actor_names_are_per_workspace_and_hide_the_password(tmp_path):
    from tracker.sweep.ray_warm import actor_name
    from tracker.workspace import WorkspaceConfig

    a = WorkspaceConfig.from_options(home=str(tmp_path / "a"))
    b = WorkspaceConfig.from_options(home=str(tmp_path / "b"))
    assert actor_name(a, 0) == actor_name(WorkspaceConfig.from_options(home=str(tmp_path / "a")), 0)
    assert actor_name(a, 0) != actor_name(b, 0) and actor_name(a, 0) != actor_name(a, 1)
    pg = [WorkspaceConfig.from_options(home=str(tmp_path / "a"), db=f"postgresql+psycopg://u:{pw}@db/t")
          for pw in ("one", "two")]
    assert actor_name(pg[0], 0) == actor_name(pg[1], 0)  # the password is not part of the identity


@pytest.mark.parametrize("args, word", [(("--stop",), "--stop"), (("--actors", "2"), "--actors")])
def test_ray_only_options_without_ray_are_one_clear_line(cli, args, word):
    res = cli("worker", *args)
    assert res.code == 2 and f"{word} goes with --ray ADDRESS" in res.err and res.err.count("\n") == 1


def test_without_ray_run_and_worker_with_an_address_name_the_extra(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    path = tmp_path / "spread.yaml"
    path.write_text(PLAN.replace("ANIMALS", "[cat]").replace("STEPS", "2"))
    for args in (("run", path, "--ray", "auto"), ("worker", "--ray", "auto")):
        res = cli(*args)
        assert res.code == 2 and "prompt-tracker[ray]" in res.err and res.err.count("\n") == 1, res.err
