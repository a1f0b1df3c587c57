"""Claims in the run store, on real SQLite files and a real PostgreSQL server: several processes claiming
at once never get the same run; an ended lease makes a run claimable again; renewing keeps it."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from tracker.sweep import claims
from tracker.store.tables import workers_t
from tracker.experiment import plan, parse as spec
from tracker.store.runstore import Store

EXP = """\
name: claimed
model: tiny
prompt: "a {{ animal }}"
axes:
  animal: [cat, dog, owl, fox]
seeds: "0-9"
steps: 2
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tracker.db'}"
    return request.getfixturevalue("pg_url")


def _planned(url: str) -> tuple[int, list[str]]:
    runs = plan.expand(spec.parse(EXP, "claimed.yaml")).runs
    with Store.open(url) as store:
        sweep = store.start_sweep("claimed", {"planned": len(runs)})
        store.plan_runs(sweep, runs)
    return sweep, [r.key for r in runs]


def _claim_all(url: str, sweep: int, keys: list[str], out, barrier) -> None:
    """A worker process: claim batches of 3 until nothing is left, mark each done; report what it got.
    Every worker holds its first claim until all have one (the claims overlap in time)."""
    got = []
    with Store.open(url) as store:
        w = claims.register(store, sweep, "cpu")
        while True:
            batch = claims.claim(store, "claimed", w, [(keys, 3)])
            if not batch:
                break
            if not got:
                barrier.wait(timeout=120)
            got.extend(batch)
            for k in batch:
                store.mark_done("claimed", k)
    out.put(got)


def test_concurrent_workers_claim_every_run_exactly_once(url):
    sweep, keys = _planned(url)
    ctx = multiprocessing.get_context("fork")
    out, barrier = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_claim_all, args=(url, sweep, keys, out, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    every = [k for g in got for k in g]
    assert sorted(every) == sorted(keys)  # each exactly once
    assert all(got)  # every worker had work while the others held theirs
    with Store.open(url) as store:
        assert {r.status for r in store.runs("claimed")} == {"done"}


def test_an_ended_lease_makes_runs_claimable_and_renewing_keeps_them(url):
    sweep, keys = _planned(url)
    with Store.open(url) as store:
        a = claims.register(store, sweep, "cpu", name="a")
        b = claims.register(store, sweep, "cpu", name="b")
        # leases long enough that a busy 2-core machine cannot end one between two store calls by accident
        first = claims.claim(store, "claimed", a, [(keys[:4], 4)], lease_seconds=2)
        assert first == keys[:4]
        assert claims.claim(store, "claimed", b, [(keys[:4], 4)]) == []  # held by a
        assert claims.claim(store, "claimed", b, [(keys[:4], 4), (keys[4:], 2)]) == keys[4:6]  # next group
        assert claims.remaining(store, "claimed", keys)["running"] == 6
        claims.renew(store, a, lease_seconds=30)
        time.sleep(2.2)  # past the first lease
        assert claims.claim(store, "claimed", b, [(keys[:4], 4)]) == []  # renewed: still a's
        claims.renew(store, a, lease_seconds=0.2)  # a stops renewing (as if killed)
        time.sleep(0.4)
        assert claims.claim(store, "claimed", b, [(keys[:4], 4)]) == keys[:4]
        runs = {r.key: r for r in store.runs("claimed")}
        assert {runs[k].status for k in keys[:6]} == {"running"}
        assert claims.release(store, b.id, keys[:2]) == 2
        assert claims.remaining(store, "claimed", keys) == {"pending": 36, "running": 4, "done": 0, "failed": 0}
        store.mark_done("claimed", keys[2])  # done is final: never claimable again
        claims.release(store, b.id)
        got = claims.claim(store, "claimed", a, [(keys[:4], 4)])
        assert got == [keys[0], keys[1], keys[3]]


def test_heartbeat_renews_while_the_worker_lives(tmp_path):
    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    sweep, keys = _planned(url)
    with Store.open(url) as store:
        a = claims.register(store, sweep, "cpu", name="a")
        b = claims.register(store, sweep, "cpu", name="b")
        with claims.Heartbeat(store, a, lease_seconds=1.5):  # a beat every 0.5 s
            assert claims.claim(store, "claimed", a, [(keys, 2)], lease_seconds=1.5) == keys[:2]
            time.sleep(3.5)  # past two leases: only the beats keep the claims
            assert claims.claim(store, "claimed", b, [(keys[:2], 2)]) == []
        time.sleep(1.8)  # no more beats: the lease ends
        assert claims.claim(store, "claimed", b, [(keys[:2], 2)]) == keys[:2]


def test_status_shows_counts_workers_and_expired_claims(cli, url):
    import json

    sweep, keys = _planned(url)
    with Store.open(url) as store:
        a = claims.register(store, sweep, "cuda:0", name="gpu-a")
        b = claims.register(store, sweep, "cuda:1", name="gpu-b")
        claims.claim(store, "claimed", a, [(keys, 3)], lease_seconds=0.01)  # a "dies" holding 3
        held = claims.claim(store, "claimed", b, [(keys[3:], 2)])
        for k in held:
            store.mark_done("claimed", k)
        claims.progress(store, b, done=2, busy_seconds=1.0)
        store.mark_failed("claimed", keys[10], "boom")
    time.sleep(0.05)
    res = cli("--db", url, "status", "claimed", "--json")
    assert res.code == 0, res.err
    st = json.loads(res.out)
    assert st["planned"] == 40 and st["runs"] == {"pending": 34, "running": 3, "done": 2, "failed": 1}
    by_name = {w["name"]: w for w in st["workers"]}
    assert by_name["gpu-b"]["runs_done"] == 2 and by_name["gpu-b"]["device"] == "cuda:1"
    assert by_name["gpu-a"]["holding"] == 3 and by_name["gpu-a"]["host"]
    assert sorted(c["key"] for c in st["expired_claims"]) == sorted(keys[:3])
    assert {c["worker"] for c in st["expired_claims"]} == {"gpu-a"}
    res = cli("--db", url, "status", "claimed")
    assert res.code == 0 and "40 planned, 2 done, 3 running, 34 pending, 1 failed" in res.out
    assert "gpu-a" in res.out and "3 claims past their lease" in res.out
    res = cli("--db", url, "status", "nope")
    assert res.code != 0 and "no experiment 'nope'" in res.err


def test_a_dead_local_worker_s_claims_are_released_at_once(tmp_path):
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'tracker.db'}"
    sweep, keys = _planned(url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with Store.open(url) as store:
        w = claims.register(store, sweep, "cpu", name="gone")
        claims.claim(store, "claimed", w, [(keys, 4)], lease_seconds=600)
        with store._write() as conn:  # as if that (now finished) process had registered it
            conn.execute(workers_t.update().values(pid=int(dead.stdout)))
        alive = claims.register(store, sweep, "cpu", name="me")
        claims.claim(store, "claimed", alive, [(keys[4:], 2)], lease_seconds=600)
        assert claims.reap_local(store) == 4
        left = claims.remaining(store, "claimed", keys)
        assert left["running"] == 2 and left["pending"] == 38
        assert {w["name"]: w["status"] for w in claims.status(store, "claimed")["workers"]} == {
            "gone": "died", "me": "working"}
