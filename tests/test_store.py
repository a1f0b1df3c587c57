"""The run store on real SQLite files: planning, status transitions, queries, MLflow sync marks,
two processes writing one database, and the ``tracker runs/show/experiments/db`` commands."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from tracker.store import db
from tracker.experiment import plan, parse as spec
from tracker.errors import NotFoundError, StoreError
from tracker.store.records import RunRecord
from tracker.store.runstore import Store

BIG_SEED = 2**63 - 1
YAML = """
name: {name}
model: tiny
prompt: a {{{{ animal }}}} photo
negative_prompt: blurry
axes:
  animal: [cat, dog]
seeds: [1, {big}]
scheduler: [Euler a, DPM++ 2M Karras]
steps: 3
batch_size: {batch}
"""
JSON_KEYS = {"key", "prompt", "negative_prompt", "axes", "seed", "model", "scheduler", "steps", "guidance_scale",
             "width", "height", "vae", "dtype", "experiment", "status", "image", "image_sha256", "seconds",
             "seconds_per_step", "peak_memory_bytes", "batch_size", "error"}


def make_plan(name: str = "cats", batch: int | str = 2) -> plan.Plan:
    return plan.expand(spec.parse(YAML.format(name=name, big=BIG_SEED, batch=batch)))


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'not' / 'yet' / 'tracker.db'}"


@pytest.fixture
def store(url):
    s = Store.open(url)
    yield s
    s.close()


def planned(store: Store, p: plan.Plan) -> int:
    exp = p.experiment
    store.save_experiment(exp.name, f"/x/{exp.name}.yaml", exp.source)
    sweep = store.start_sweep(exp.name, {"command": "tracker run", "host": "box", "planned": len(p.runs),
                                         "versions": {"torch": "2.13"}, "device": "cpu"})
    store.plan_runs(sweep, p.runs)
    return sweep


def test_open_creates_the_folder_and_sets_wal_and_busy_timeout(url, store, tmp_path):
    path = tmp_path / "not" / "yet" / "tracker.db"
    assert path.is_file() and db.current(url) == db.newest_revision()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.BUSY_TIMEOUT_MS
    Store.open(url).close()  # a second open of an up-to-date store is fine


def test_plan_runs_inserts_pending_runs_once(store):
    p = make_plan()
    sweep = planned(store, p)
    again = store.plan_runs(sweep, p.runs)
    assert again == {r.key: "pending" for r in p.runs}
    recs = store.runs("cats")
    assert [r.key for r in recs] == [r.key for r in p.runs]  # plan order, no duplicates
    assert [r.planned() for r in recs] == list(p.runs)  # every planned field round-trips
    assert recs[1].seed == BIG_SEED and recs[2].scheduler_options == {"use_karras_sigmas": True}

    store.mark_done("cats", p.runs[0].key, image="/img/0.png", seconds=1.0)
    sweep2 = store.start_sweep("cats", {"planned": len(p.runs)})
    status = store.plan_runs(sweep2, p.runs)
    assert status[p.runs[0].key] == "done" and list(status.values()).count("pending") == len(p.runs) - 1
    assert len(store.runs("cats")) == len(p.runs)


def test_replanning_updates_runs_not_done_and_keeps_results(store):
    p = make_plan(batch=2)
    planned(store, p)
    done_key = p.runs[0].key
    store.mark_done("cats", done_key, image="/img/0.png", batch_size_used=2)
    p4 = make_plan(batch=4)  # batch size is not part of the key: same runs
    assert [r.key for r in p4.runs] == [r.key for r in p.runs]
    relabeled = replace(p4.runs[0], axes=tuple((a, lab.upper()) for a, lab in p4.runs[0].axes))
    store.plan_runs(store.start_sweep("cats", {}), [relabeled, *p4.runs[1:]])
    done = store.get_run(done_key)
    assert done.batch_size == 2 and done.batch_size_used == 2 and done.image == "/img/0.png"
    assert done.axes == {"animal": "CAT", "scheduler": "EULER A", "seed": "1"}
    assert {r.batch_size for r in store.runs("cats", status="pending")} == {4}


def test_status_transitions(store, tmp_path):
    p = make_plan()
    sweep = planned(store, p)
    k0, k1, k2 = (r.key for r in p.runs[:3])
    store.mark_running("cats", [k0, k1, k2], sweep)
    r = store.get_run(k0)
    assert (r.status, r.sweep_id, r.finished_at) == ("running", sweep, None) and r.started_at.tzinfo is not None

    image = tmp_path / "images" / ".." / "images" / "a.png"
    store.mark_done("cats", k0, image=image, image_sha256="ab" * 32, seconds=2.5, seconds_per_step=0.8,
                    peak_memory_bytes=3 * 2**32, batch_size_used=2, model_revision="rev1", device="cpu",
                    scheduler_config={"_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085})
    r = store.get_run(k0)
    assert r.status == "done" and r.image == str((tmp_path / "images" / "a.png").resolve())
    assert (r.seconds, r.seconds_per_step, r.peak_memory_bytes, r.batch_size_used) == (2.5, 0.8, 3 * 2**32, 2)
    assert r.scheduler_config["beta_start"] == 0.00085 and r.model_revision == "rev1"
    assert r.finished_at >= r.started_at

    store.mark_done("cats", k2, image_path="rel/b.png")
    assert store.get_run(k2).image == str(Path("rel/b.png").resolve())
    store.mark_running("cats", [k2], sweep)
    store.mark_failed("cats", k1, "NaN in output", seconds=1.0)
    r = store.get_run(k1)
    assert (r.status, r.error, r.image) == ("failed", "NaN in output", None)

    assert store.reset_stale("cats") == 1  # k2 was left running
    assert store.get_run(k2).status == "pending" and store.reset_stale("cats") == 0
    assert store.reset_stale("nope") == 0

    store.mark_pending("cats", [k1])
    r = store.get_run(k1)
    assert (r.status, r.error) == ("pending", None)

    with pytest.raises(NotFoundError, match="no run ffff"):
        store.mark_done("cats", "ffff")
    with pytest.raises(NotFoundError, match="no experiment 'dogs'"):
        store.mark_running("dogs", [k0], sweep)
    with pytest.raises(ValueError, match="unknown run result fields"):
        store.mark_done("cats", k0, status="pending")


def test_runs_filters(store):
    p = make_plan()
    planned(store, p)
    planned(store, make_plan("other"))
    store.mark_done("cats", p.runs[0].key)
    store.mark_failed("cats", p.runs[5].key, "boom")
    assert len(store.runs()) == 2 * len(p.runs)
    assert [r.key for r in store.runs("cats", status="done")] == [p.runs[0].key]
    assert {r.key for r in store.runs("cats", status=["done", "failed"])} == {p.runs[0].key, p.runs[5].key}
    dogs = store.runs("cats", where={"animal": "dog"})
    assert len(dogs) == 4 and all(r.axes["animal"] == "dog" for r in dogs)
    one = store.runs("cats", where={"animal": "dog", "scheduler": "DPM++ 2M Karras", "seed": str(BIG_SEED)})
    assert [r.key for r in one] == [p.runs[7].key]
    assert store.runs("cats", where={"seed": BIG_SEED}) == store.runs("cats", where={"seed": str(BIG_SEED)})
    assert store.runs("cats", where={"animal": "cow"}) == [] and store.runs("nope") == []
    assert store.axes("cats") == {"animal": ["cat", "dog"], "scheduler": ["Euler a", "DPM++ 2M Karras"],
                                  "seed": ["1", str(BIG_SEED)]}


def test_get_run_by_prefix(store):
    p = make_plan()
    planned(store, p)
    key = p.runs[3].key
    assert store.get_run(key).key == key
    assert store.get_run(key[:6]).key == key
    assert store.get_run(key[:6], "cats").key == key
    planned(store, make_plan("twin"))  # same plan under another name: the same keys
    # issue 13, problem 7: one key in two experiments means one recipe: it resolves (the done one first)
    store.mark_done("twin", key, image="/x.png", image_sha256="0" * 64)
    assert store.get_run(key).experiment == "twin" and store.get_run(key[:6]).experiment == "twin"
    assert store.get_run(key[:6], experiment="cats").experiment == "cats"
    others = [r.key for r in p.runs if r.key != key]
    a, b = next((a, b) for a in others for b in others if a < b and a[0] == b[0])
    with pytest.raises(NotFoundError, match=f"run key '{a[0]}' is ambiguous: .*{a}.*{b}"):
        store.get_run(a[0])
    for bad in ("zz", "%", "_", ""):
        with pytest.raises(NotFoundError):
            store.get_run(bad)
    with pytest.raises(NotFoundError, match="in experiment 'cats'"):
        store.get_run("0000000000000000x", "cats")


def test_record_json_carries_every_field(store):
    p = make_plan()
    planned(store, p)
    store.mark_done("cats", p.runs[1].key, image="/img/1.png", batch_size_used=1, seconds=0.5)
    data = store.get_run(p.runs[1].key).to_json()
    assert JSON_KEYS <= set(data)
    assert {f for f in RunRecord.__dataclass_fields__} <= set(data)
    assert json.loads(json.dumps(data)) == data
    assert (data["seed"], data["batch_size"], data["batch_size_planned"], data["image"]) == (BIG_SEED, 1, 2, "/img/1.png")
    assert data["axes"] == {"animal": "cat", "scheduler": "Euler a", "seed": str(BIG_SEED)}
    assert data["started_at"] is None and data["finished_at"].endswith("+00:00")


def test_experiments_sweeps_and_events(store):
    p = make_plan()
    assert store.experiment("cats") is None and store.experiments() == []
    sweep = planned(store, p)
    e = store.experiment("cats")
    assert e["source_path"] == "/x/cats.yaml" and "animal" in e["source_text"]
    store.save_experiment("cats", "/y/cats.yaml", "changed")
    e2 = store.experiment("cats")
    assert (e2["source_path"], e2["source_text"], e2["created_at"]) == ("/y/cats.yaml", "changed", e["created_at"])
    assert e2["updated_at"] >= e["updated_at"]

    store.add_event(sweep, "oom", "batch 4 -> 2", {"from": 4, "to": 2})
    store.add_event(sweep, "note", "plain")
    assert [(ev["kind"], ev["data"]) for ev in store.events(sweep)] == [("oom", {"from": 4, "to": 2}), ("note", None)]

    store.mark_done("cats", p.runs[0].key)
    store.finish_sweep(sweep, {"done": 1, "skipped": 0, "failed": 0, "seconds": 3.0, "images_per_second": 0.33})
    store.update_sweep(sweep, mlflow_run_id="abc", verify={"identical": 8, "differ": 0},
                       environment={"torch": "2.13", "cuda": None})
    s = store.sweep(sweep)
    assert (s["status"], s["done"], s["planned"], s["mlflow_run_id"], s["experiment"]) == ("done", 1, 8, "abc", "cats")
    assert s["verify"] == {"identical": 8, "differ": 0} and s["environment"]["cuda"] is None
    assert s["ended_at"] >= s["started_at"] and s["versions"] == {"torch": "2.13"}

    second = store.start_sweep("dogs", {"command": "tracker run dogs.yaml"})  # creates the experiment row
    store.finish_sweep(second, {"failed": 2})
    assert store.sweep(second)["status"] == "failed"
    assert [x["id"] for x in store.sweeps("cats")] == [sweep] and store.sweeps("nope") == []

    exps = {x["name"]: x for x in store.experiments()}
    assert exps["cats"]["runs"] == {"pending": 7, "running": 0, "done": 1, "failed": 0}
    assert exps["cats"]["total"] == 8 and exps["cats"]["last_sweep"]["id"] == sweep
    assert exps["dogs"]["total"] == 0 and exps["dogs"]["last_sweep"]["id"] == second

    with pytest.raises(NotFoundError):
        store.sweep(999)
    with pytest.raises(NotFoundError):
        store.update_sweep(999, status="x")
    with pytest.raises(ValueError, match="unknown sweep fields"):
        store.update_sweep(sweep, colour="red")


def test_unsynced_and_mark_synced(store):
    p = make_plan()
    planned(store, p)
    for r in p.runs[:3]:
        store.mark_done("cats", r.key)
    store.mark_failed("cats", p.runs[3].key, "x")
    assert [r.key for r in store.unsynced("cats")] == [r.key for r in p.runs[:3]]
    store.mark_synced("cats", p.runs[1].key, "mlflow-1")
    assert [r.key for r in store.unsynced()] == [p.runs[0].key, p.runs[2].key]
    r = store.get_run(p.runs[1].key)
    assert r.mlflow_synced and r.mlflow_run_id == "mlflow-1" and r.mlflow_synced_at is not None


WORKER = textwrap.dedent("""
    import sys
    from tracker.experiment import plan, parse as spec
    from tracker.store.runstore import Store
    url, yaml, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    exp = spec.parse(yaml)
    runs = plan.expand(exp).runs
    store = Store.open(url)  # both processes may create and migrate the database at once
    store.save_experiment(exp.name, None, yaml)
    sweep = store.start_sweep(exp.name, {"command": f"worker {who}", "planned": len(runs)})
    store.plan_runs(sweep, runs)
    for r in runs[who::2][:n]:
        store.mark_running(exp.name, [r.key], sweep)
        store.add_event(sweep, "run", r.key)
        store.mark_done(exp.name, r.key, seconds=0.1, image=f"/img/{r.key}.png")
    store.finish_sweep(sweep, {"done": n})
    store.close()
""")


def test_two_processes_write_one_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    yaml = "name: busy\nmodel: tiny\nprompt: p {{ i }}\naxes:\n  i: [" + ", ".join(map(str, range(60))) + "]\nseeds: [1]\n"
    n = 30
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, yaml, str(who), str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert "locked" not in err
    with Store.open(url) as store:
        runs = store.runs("busy")
        assert len(runs) == 60 and all(r.status == "done" for r in runs)
        sweeps = store.sweeps("busy")
        assert len(sweeps) == 2 and all(s["status"] == "done" for s in sweeps)
        assert sum(len(store.events(s["id"])) for s in sweeps) == 2 * n
        assert {r.sweep_id for r in runs} == {s["id"] for s in sweeps}


def test_a_write_lock_held_past_the_timeout_is_a_store_error_and_readers_go_on(tmp_path):
    path = tmp_path / "t.db"
    with Store.open(f"sqlite:///{path}", busy_timeout=0.2) as store:
        planned(store, make_plan())
        other = sqlite3.connect(path, isolation_level=None)  # another process in the middle of a write
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE runs SET status = 'running'")
        try:
            assert len(store.runs("cats", status="pending")) == 8  # WAL: reads see the last commit
            with pytest.raises(StoreError, match="run store .* failed: database is locked"):
                store.mark_done("cats", make_plan().runs[0].key)
        finally:
            other.execute("ROLLBACK")
            other.close()
        store.mark_done("cats", make_plan().runs[0].key)  # and works once the lock is gone
        assert len(store.runs("cats", status="done")) == 1


# --- the commands ------------------------------------------------------------------------------


@pytest.fixture
def filled(tmp_path):
    """The workspace store the ``cli`` fixture uses (TRACKER_HOME=tmp_path/home), with one experiment."""
    p = make_plan()
    with Store.open(f"sqlite:///{tmp_path / 'home' / 'tracker.db'}") as s:
        sweep = planned(s, p)
        s.mark_running("cats", [p.runs[0].key, p.runs[1].key], sweep)
        s.mark_done("cats", p.runs[0].key, image=tmp_path / "home" / "images" / "cats" / "a.png", seconds=1.25,
                    batch_size_used=2, image_sha256="0" * 64)
        s.mark_failed("cats", p.runs[1].key, "NaN in output")
        s.finish_sweep(sweep, {"done": 1, "failed": 1})
    return p


def test_cli_runs_table_and_json(cli, filled, tmp_path):
    res = cli("runs", "cats")
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0].split() == ["key", "status", "animal", "scheduler", "seed", "steps", "seconds", "image"]
    assert len(lines) == 1 + len(filled.runs)
    first = lines[1].split()
    assert first[:2] == [filled.runs[0].key, "done"] and first[-1].endswith("images/cats/a.png")
    assert "error: NaN in output" in lines[2]

    res = cli("runs", "cats", "--json", "--status", "done", "--status", "failed")
    data = json.loads(res.out)
    assert [d["key"] for d in data] == [r.key for r in filled.runs[:2]]
    assert all(JSON_KEYS <= set(d) for d in data)
    assert data[0]["image"] == str(tmp_path / "home" / "images" / "cats" / "a.png") and data[0]["batch_size"] == 2

    res = cli("runs", "--json", "--where", "animal=dog", "--where", "seed=1")
    assert sorted(d["key"] for d in json.loads(res.out)) == sorted(
        r.key for r in filled.runs if r.labels["animal"] == "dog" and r.seed == 1)
    assert cli("runs").out.splitlines()[0].startswith("experiment")


@pytest.mark.parametrize("where, message", [
    ("animal", "--where 'animal': expected AXIS=LABEL (e.g. seed=1); known axes: animal, scheduler, seed"),
    ("=cat", "expected AXIS=LABEL"),
    ("colour=red", "--where 'colour=red': unknown axis 'colour'; known axes: animal, scheduler, seed"),
    ("animal=cow", "axis 'animal' has no label 'cow'; its labels: cat, dog"),
])
def test_cli_bad_where_is_one_line_and_exit_2(cli, filled, where, message):
    res = cli("runs", "cats", "--where", where)
    assert res.code == 2 and res.out == ""
    assert res.err.strip().splitlines() == [f"error: {res.err.strip().removeprefix('error: ')}"]
    assert message in res.err


def test_cli_unknown_experiment_and_key(cli, filled):
    res = cli("runs", "dogs")
    assert res.code == 2 and res.err.strip() == "error: no experiment 'dogs' in the run store; known: cats"
    res = cli("show", "zzz")
    assert res.code == 2 and res.err.startswith("error: no run with key 'zzz'") and len(res.err.splitlines()) == 1


def test_cli_show(cli, filled):
    key = filled.runs[0].key
    res = cli("show", key[:5])
    assert res.code == 0, res.err
    fields = dict(line.split(None, 1) if len(line.split(None, 1)) == 2 else (line.strip(), "")
                  for line in res.out.splitlines())
    assert {f for f in RunRecord.__dataclass_fields__} <= set(fields)
    assert fields["key"] == key and fields["status"] == "done" and fields["seed"] == "1"
    assert json.loads(fields["axes"]) == {"animal": "cat", "scheduler": "Euler a", "seed": "1"}
    data = json.loads(cli("show", key[:5], "--json").out)
    assert JSON_KEYS <= set(data) and data["key"] == key and data["seconds"] == 1.25
    assert json.loads(cli("show", key, "-e", "cats", "--json").out) == data


def test_cli_experiments(cli, filled):
    res = cli("experiments")
    assert res.code == 0, res.err
    header, row = res.out.splitlines()
    assert header.split()[:6] == ["name", "runs", "pending", "running", "done", "failed"]
    assert row.split()[:6] == ["cats", "8", "6", "0", "1", "1"] and row.endswith("failed")
    data = json.loads(cli("experiments", "--json").out)
    assert data[0]["name"] == "cats" and data[0]["runs"] == {"pending": 6, "running": 0, "done": 1, "failed": 1}
    assert data[0]["last_sweep"]["status"] == "failed"


def test_cli_db_upgrade_and_current(cli, tmp_path):
    path = tmp_path / "home" / "tracker.db"
    res = cli("db", "current")
    assert res.code == 0 and "(no database yet)" in res.out and not path.exists()
    res = cli("db", "upgrade")
    assert res.code == 0 and res.out.strip() == f"sqlite:///{path}: (empty) -> {db.newest_revision()}"
    assert cli("db", "upgrade").out.strip() == f"sqlite:///{path}: already at {db.newest_revision()}"
    assert cli("db", "current").out.strip() == f"sqlite:///{path}: {db.newest_revision()} (head)"
    db.downgrade(f"sqlite:///{path}", "0001_initial")
    assert "0001_initial (newest known" in cli("db", "current").out
    assert cli("db", "upgrade").out.strip().endswith(f"0001_initial -> {db.newest_revision()}")


def test_cli_refuses_a_store_from_the_future(cli, filled, tmp_path):
    with sqlite3.connect(tmp_path / "home" / "tracker.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0042_future'")
    for args in (["runs"], ["db", "current"], ["db", "upgrade"]):
        res = cli(*args)
        assert res.code == 2 and len(res.err.splitlines()) == 1 and res.out == ""
        assert "schema revision '0042_future'" in res.err and "upgrade prompt-tracker" in res.err


def test_open_refuses_a_bad_url():
    with pytest.raises(StoreError, match="not a database URL"):
        Store.open("not a url")


def test_a_new_store_opens_while_another_connection_holds_it_before_it_is_in_wal_mode(tmp_path):
    """Two sweeps started together both open a new store: the second one's switch to WAL meets the first one's
    lock, and SQLite answers that switch with "database is locked" at once (no busy wait). Here a plain SQLite
    connection holds a write lock on a fresh rollback-journal file for 0.5 s: opening the store waits for it."""
    import threading

    path = tmp_path / "tracker.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")  # a reserved lock: SQLite refuses the switch to WAL at once, not after waiting
    threading.Timer(0.5, holder.execute, ("COMMIT",)).start()
    with Store.open(f"sqlite:///{path}") as store:
        assert store.experiments() == []
    holder.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_tilde_in_a_sqlite_url_is_expanded_the_same_way_everywhere(tmp_path, monkeypatch):
    """--db 'sqlite:///~/x.db': the workspace's URL (what every command and child process gets), Store.open
    given the URL itself, and the read commands' existence check all mean $HOME/x.db, never ./~/x.db."""
    from tracker.workspace import WorkspaceConfig

    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    monkeypatch.chdir(tmp_path)
    ws = WorkspaceConfig.from_options(home=str(tmp_path / "ws"), db="sqlite:///~/x.db")
    assert ws.db_url == f"sqlite:///{tmp_path / 'h' / 'x.db'}"
    with Store.open("sqlite:///~/x.db") as st:  # the Python API, given the URL as the user wrote it
        planned(st, plan.expand(spec.parse("name: t\nprompt: a\nseeds: [0]\n", "t.yaml")))
    assert (tmp_path / "h" / "x.db").is_file() and not (tmp_path / "~").exists()
    with Store.open(ws.db_url, create=False) as st:
        assert [r.status for r in st.runs("t")] == ["pending"]


@pytest.mark.slow
def test_run_and_runs_open_the_same_store_for_a_tilde_url(tmp_path):
    """Real processes: `tracker --db sqlite:///~/x.db run` then `runs`: the run is found (run wrote ./~/x.db
    or failed, while runs looked in $HOME)."""
    from conftest import run_tracker

    env = {"HOME": str(tmp_path / "h"), "TRACKER_HOME": str(tmp_path / "ws")}
    (tmp_path / "h").mkdir()
    (tmp_path / "e.yaml").write_text("name: t\nmodel: tiny\nprompt: a\nseeds: [0]\nsteps: 1\n")
    res = run_tracker("--db", "sqlite:///~/x.db", "run", tmp_path / "e.yaml", "--no-mlflow", "-q", env=env, cwd=tmp_path)
    assert res.code == 0 and "1 done" in res.out, res.err
    res = run_tracker("--db", "sqlite:///~/x.db", "runs", "t", "--json", env=env, cwd=tmp_path)
    assert res.code == 0 and [r["status"] for r in json.loads(res.out)] == ["done"], res.err
    assert (tmp_path / "h" / "x.db").is_file() and not (tmp_path / "~").exists()


def test_non_finite_floats_in_json_columns_round_trip_as_strict_json(tmp_path):
    """A scheduler config's ``-inf`` (and any inf/nan in any JSON column) is stored as strict JSON, which
    PostgreSQL's json type also takes (tests/test_postgres.py), and read back as the same floats; a user's dict
    that looks like the encoding comes back unchanged too."""
    import math

    url = f"sqlite:///{tmp_path / 't.db'}"
    p = make_plan()
    odd = {"lambda_min_clipped": -math.inf, "n": [math.nan, math.inf], "$tracker.float": "inf"}
    with Store.open(url) as store:
        sweep = store.start_sweep("cats", {"planned": len(p.runs), "environment": {"x": {"$tracker.float": "nan"}}})
        store.plan_runs(sweep, p.runs)
        store.mark_done("cats", p.runs[0].key, scheduler_config=odd)
        got = store.runs("cats", status="done")[0].scheduler_config
        assert got["lambda_min_clipped"] == -math.inf and math.isnan(got["n"][0]) and got["n"][1] == math.inf
        assert got["$tracker.float"] == "inf"
        assert store.sweep(sweep)["environment"] == {"x": {"$tracker.float": "nan"}}
    raw = sqlite3.connect(tmp_path / "t.db").execute("select scheduler_config from runs where status='done'").fetchone()[0]
    assert "Infinity" not in raw and "NaN" not in raw
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-JSON token {c}"))
