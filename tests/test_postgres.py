"""The run store on a real PostgreSQL server (a throwaway cluster the tests start: tests/pgcluster.py):
Alembic migrations from empty and back, the store's tables equal to the migrated schema, and every
command on ``--db postgresql+psycopg://...``."""

from __future__ import annotations

import json

import sqlalchemy as sa

from tracker.store import db
from tracker.store.runstore import Store
from tracker.store.tables import metadata

from test_migrations import REVISIONS, columns, expected_at

SMALL = """\
name: pgsmall
model: tiny
prompt: "a {{ animal }}"
axes:
  animal: [cat, dog]
seeds: [0, 1]
steps: 2
"""


def test_migrations_from_empty_to_head_and_down_again(pg_url):
    assert db.upgrade(pg_url, REVISIONS[0]) == (None, REVISIONS[0])
    assert db.upgrade(pg_url) == (REVISIONS[0], REVISIONS[-1])
    cols = columns(pg_url)
    assert cols.pop("alembic_version") == {"version_num"}
    assert cols == expected_at(REVISIONS[-1])
    for rev in reversed(REVISIONS[:-1]):
        db.downgrade(pg_url, rev)
        cols = columns(pg_url)
        cols.pop("alembic_version")
        assert cols == expected_at(rev)
    assert db.downgrade(pg_url, "base") == (REVISIONS[0], None)
    assert set(columns(pg_url)) == {"alembic_version"}


def test_store_tables_match_the_migrated_schema_on_postgresql(pg_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    db.upgrade(pg_url)
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert diff == []


def test_big_seeds_and_json_round_trip(pg_url):
    from tracker.experiment import plan, parse as spec

    exp = spec.parse(SMALL.replace("seeds: [0, 1]", f"seeds: [{2**63 - 1}]"), "x.yaml")
    runs = plan.expand(exp).runs
    with Store.open(pg_url) as store:
        sweep = store.start_sweep("pgsmall", {"planned": len(runs), "versions": {"torch": "x"}})
        store.plan_runs(sweep, runs)
        recs = store.runs("pgsmall")
        assert [r.seed for r in recs] == [2**63 - 1] * 2
        assert recs[0].axes == dict(runs[0].axes) and store.sweep(sweep)["versions"] == {"torch": "x"}


def test_every_command_works_on_postgresql(cli, write_yaml, pg_url, tmp_path):
    path = write_yaml(SMALL)
    res = cli("--db", pg_url, "db", "upgrade")
    assert res.code == 0, res.err
    res = cli("--db", pg_url, "run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.err
    assert "4 done" in res.out
    res = cli("--db", pg_url, "run", path, "--no-mlflow", "-q")
    assert res.code == 0 and "0 done, 4 skipped" in res.out
    res = cli("--db", pg_url, "runs", "pgsmall", "--json")
    runs = json.loads(res.out)
    assert len(runs) == 4 and {r["status"] for r in runs} == {"done"}
    assert cli("--db", pg_url, "show", runs[0]["key"][:8]).code == 0
    assert "pgsmall" in cli("--db", pg_url, "experiments").out
    res = cli("--db", pg_url, "report", "pgsmall", "-o", tmp_path / "rep")
    assert res.code == 0, res.err
    assert (tmp_path / "rep" / "index.html").exists()
    res = cli("--db", pg_url, "reproduce", runs[0]["image"])
    assert res.code == 0, res.err
    res = cli("--db", pg_url, "verify", "pgsmall")
    assert res.code == 0, res.err


def test_a_missing_driver_names_the_extra(cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    res = cli("--db", "postgresql+psycopg://u@/x?host=/nowhere", "runs")
    assert res.code == 2 and res.err.count("\n") == 1
    assert "prompt-tracker[postgres]" in res.err and "Traceback" not in res.err


def test_0008_image_paths_relative_to_the_workspace_on_postgresql(pg_url, tmp_path):
    from test_migrations import _fill_0001, _rows, _set_image_paths

    home = tmp_path / "home"
    db.upgrade(pg_url, REVISIONS[0])
    _fill_0001(pg_url)
    db.upgrade(pg_url, "0007_metrics")
    _set_image_paths(pg_url, [str(home / "images" / "old" / "0.png"), "/ws/images/old/1.png", None])
    db.upgrade(pg_url, home=home)
    assert [r["image_path"] for r in _rows(pg_url)["runs"]] == ["images/old/0.png", "/ws/images/old/1.png", None]
    with Store.open(pg_url, home=tmp_path / "moved") as store:
        assert store.runs("old")[0].image == str(tmp_path / "moved" / "images" / "old" / "0.png")
    db.downgrade(pg_url, "0007_metrics", home=home)
    assert _rows(pg_url)["runs"][0]["image_path"] == str(home / "images" / "old" / "0.png")
    db.downgrade(pg_url, "base")



def test_processes_opening_one_new_postgresql_store_at_once_migrate_it_once(pg_url):
    """Workers on several machines start together against a fresh database: each opens the store, which
    migrates it. One migrates, the others wait for it and find the store at head (they used to fail with
    'duplicate key value violates unique constraint' from two concurrent CREATE TABLEs)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    # each process imports what it needs, says so, then opens the store when the test says go (all at once)
    code = ("import sys, alembic.command, psycopg; from tracker.store.runstore import Store; print('ready', flush=True); "
            "sys.stdin.readline(); Store.open(sys.argv[1]).close()")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 4
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert db.current(pg_url) == REVISIONS[-1]


def test_a_scheduler_config_with_infinity_round_trips_on_postgresql(pg_url):
    """DPMSolverMultistep's config holds ``lambda_min_clipped: -inf``; PostgreSQL's JSON type refuses the
    ``-Infinity`` that Python's json writes. Every JSON column takes non-finite floats and gives the same floats back."""
    import math

    from tracker.experiment import plan, parse as spec

    runs = plan.expand(spec.parse(SMALL, "x.yaml")).runs
    odd = {"lambda_min_clipped": -math.inf, "top": math.inf, "nan": math.nan, "nested": [1.5, {"x": -math.inf}]}
    with Store.open(pg_url) as store:
        sweep = store.start_sweep("pgsmall", {"planned": len(runs), "versions": {"odd": math.inf}})
        store.plan_runs(sweep, runs)
        store.add_event(sweep, "note", "odd data", odd)
        store.mark_done("pgsmall", store.runs("pgsmall")[0].key, scheduler_config=odd, seconds=1.0)
        rec = next(r for r in store.runs("pgsmall") if r.status == "done")
        got = rec.scheduler_config
        assert got["lambda_min_clipped"] == -math.inf and got["top"] == math.inf and math.isnan(got["nan"])
        assert got["nested"] == [1.5, {"x": -math.inf}]
        assert store.sweep(sweep)["versions"] == {"odd": math.inf}
        assert store.events(sweep)[-1]["data"]["nested"] == [1.5, {"x": -math.inf}]


def test_every_scheduler_the_project_knows_sweeps_on_postgresql(cli, write_yaml, pg_url):
    """One PostgreSQL sweep over every scheduler in ``schedulers.SCHEDULERS`` on the tiny model, each run done
    (their configs hold non-finite floats: DPMSolverMultistep's ``lambda_min_clipped: -inf``). DPMSolverSDE needs
    torchsde: where it is not installed, a plan naming it is refused before anything starts, in one line."""
    import importlib.util

    from tracker.experiment.schedulers import SCHEDULERS

    has_sde = importlib.util.find_spec("torchsde") is not None
    wanted = [s for s in SCHEDULERS if has_sde or s != "DPMSolverSDEScheduler"]
    text = """\
        name: pgsched
        model: tiny
        prompt: "a cat"
        scheduler: [{names}]
        seeds: [0]
        steps: 2
        width: 32
        height: 32
        """
    if not has_sde:
        res = cli("--db", pg_url, "run", write_yaml(text.format(names="DPMSolverSDE"), "sde.yaml"), "--no-mlflow")
        assert res.code == 2 and res.err.count("\n") == 1 and "pip install torchsde" in res.err
    path = write_yaml(text.format(names=", ".join(s.removesuffix("Scheduler") for s in wanted)))
    res = cli("--db", pg_url, "run", path, "--no-mlflow", "-q")
    assert res.code == 0, res.err
    assert f"{len(wanted)} done" in res.out
    runs = json.loads(cli("--db", pg_url, "runs", "pgsched", "--json").out)
    assert sorted((r["scheduler"], r["status"]) for r in runs) == sorted((s, "done") for s in wanted)
