"""``tracker run --ray`` on a real local Ray cluster (two CPUs, one cluster for the module): every run
done once by the actors with the driver writing images and the store; a killed actor's runs are
redone by the other; without Ray installed the error names the extra."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from test_workers import PLAN as WORKERS_PLAN

PLAN = WORKERS_PLAN.replace("name: shared", "name: rayed")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _runs(cli) -> list[dict]:
    res = cli("runs", "rayed", "--json")
    assert res.code == 0, res.err
    return json.loads(res.out)


def _every_run_done_once(cli, planned: int) -> dict:
    runs = _runs(cli)
    assert len(runs) == planned and {r["status"] for r in runs} == {"done"}
    for r in runs:
        assert hashlib.sha256(Path(r["image"]).read_bytes()).hexdigest() == r["image_sha256"]
    st = json.loads(cli("status", "rayed", "--json").out)
    assert sum(w["runs_done"] for w in st["workers"]) == planned
    return st


@pytest.mark.slow
def test_ray_actors_do_every_run_once(ray_cluster, cli, write_yaml):
    path = write_yaml(PLAN.replace("STEPS", "2"))
    res = cli("run", path, "--ray", "--no-mlflow", "-q")
    assert res.code == 0, res.err
    assert "12 done, 0 skipped" in res.out
    st = _every_run_done_once(cli, 12)
    assert len(st["workers"]) == 2 and all(w["name"].startswith("ray:") for w in st["workers"])
    assert ray_cluster.is_initialized()  # a cluster the sweep did not start is left running


@pytest.mark.slow
def test_a_killed_actor_s_runs_are_redone_by_the_other(ray_cluster, cli, write_yaml, monkeypatch):
    monkeypatch.setenv("TRACKER_LEASE_SECONDS", "5")
    path = write_yaml(PLAN.replace("STEPS", "25"))
    killed = []

    def kill_one_mid_batch():
        """Wait until an actor holds claims, then kill it (Ray's own ray.kill: the process goes away)."""
        from tracker.store import Store

        home = Path(os.environ["TRACKER_HOME"])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            time.sleep(0.2)
            if not (home / "tracker.db").exists():
                continue
            try:
                from tracker import claims

                with Store.open(f"sqlite:///{home / 'tracker.db'}") as store:
                    st = claims.status(store, "rayed")
            except Exception:
                continue
            if any(w["holding"] for w in st["workers"]):
                ours = [a for a in ray_cluster.util.list_named_actors(all_namespaces=True)
                        if a["name"].startswith("tracker:")]
                if ours:
                    ray_cluster.kill(ray_cluster.get_actor(ours[0]["name"], namespace=ours[0]["namespace"]))
                    killed.append(ours[0]["name"])

    t = threading.Thread(target=kill_one_mid_batch, daemon=True)
    t.start()
    res = cli("run", path, "--ray", "--no-mlflow", "-q")
    t.join(timeout=10)
    assert killed, "no actor was killed"
    assert res.code == 0, res.err
    assert "12 done" in res.out
    st = _every_run_done_once(cli, 12)
    assert sorted(w["status"] for w in st["workers"]) == ["died", "done"]


def test_without_ray_the_error_names_the_extra(cli, write_yaml, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    path = write_yaml(PLAN.replace("STEPS", "2"))
    res = cli("run", path, "--ray", "--no-mlflow", "-q")
    assert res.code == 2 and "prompt-tracker[ray]" in res.err and res.err.count("\n") == 1
