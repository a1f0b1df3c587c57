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
        from tracker.store.runstore import Store

        home = Path(os.environ["TRACKER_HOME"])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            time.sleep(0.2)
            if not (home / "tracker.db").exists():
                continue
            try:
                from tracker.sweep import claims

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


@pytest.mark.slow
def test_an_actor_out_of_memory_halves_its_batch_like_a_local_sweep(ray_cluster, cli, write_yaml, monkeypatch):
    """A stand-in for a GPU that holds 2 images: batches of 4 run out of memory on the actor; the shared batch
    executor halves them to 2 (not one run at a time) and the driver records the "oom" events."""
    from tracker.sweep import ray_cluster as raydist
    from tracker.store.runstore import Store

    class TwoImagesFit(raydist.Generator):  # defined here, so Ray ships the class itself to the actor processes
        def __init__(self, *args):
            super().__init__(*args)
            real = self.engine.generate

            def generate(runs, *a, **kw):
                if len(runs) > 2:
                    from tracker.engine.batches import OutOfMemory

                    raise OutOfMemory(f"stand-in: CUDA out of memory at batch size {len(runs)}")
                return real(runs, *a, **kw)

            self.engine.generate = generate

    monkeypatch.setattr(raydist, "Generator", TwoImagesFit)
    path = write_yaml(PLAN.replace("STEPS", "2").replace("batch_size: 2", "batch_size: 4"))
    res = cli("run", path, "--ray", "--no-mlflow", "-q")
    assert res.code == 0, res.err
    assert "12 done, 0 skipped" in res.out and "0 failed" in res.out
    _every_run_done_once(cli, 12)
    assert {r["batch_size"] for r in _runs(cli)} == {2}  # halved once, not retried one run at a time
    home = Path(os.environ["TRACKER_HOME"])
    with Store.open(f"sqlite:///{home / 'tracker.db'}", home=home) as store:
        [sweep] = store.sweeps("rayed")
        events = [e for e in store.events(sweep["id"]) if e["kind"] == "oom"]
    # each actor remembers the size that fitted: at most one out-of-memory per actor, not one per claimed batch
    assert 1 <= len(events) <= 2 and {e["data"]["batch_size"] for e in events} == {4}
    assert all("retrying at 2" in e["message"] for e in events)


def test_without_ray_the_error_names_the_extra(cli, write_yaml, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    path = write_yaml(PLAN.replace("STEPS", "2"))
    res = cli("run", path, "--ray", "--no-mlflow", "-q")
    assert res.code == 2 and "prompt-tracker[ray]" in res.err and res.err.count("\n") == 1
