"""Alembic migrations of the run store on real SQLite files: create, upgrade with data, downgrade,
refuse unknown revisions, and roll back a failed batch migration completely."""

from __future__ import annotations

import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tracker.store import db
from tracker.errors import StoreError
from tracker.store.runstore import Store
from tracker.store.tables import metadata

REVISIONS = ["0001_initial", "0002_mlflow_sync", "0003_reproducibility", "0004_claims", "0005_throughput",
             "0006_prompt_language", "0007_metrics", "0008_image_files", "0009_attention",
             "0011_plan_version", "0012_ratings", "0013_call_arguments",
             "0014_warm_workers", "0015_image_inputs"]

COLUMNS_0001 = {
    "experiments": {"id", "name", "source_path", "source_text", "created_at", "updated_at"},
    "sweeps": {"id", "experiment_id", "started_at", "ended_at", "host", "command", "device", "versions", "planned",
               "done", "skipped", "failed", "seconds", "images_per_second", "status"},
    "runs": {"id", "experiment_id", "key", "axes", "prompt", "negative_prompt", "prompt_template",
             "negative_template", "seed", "model", "model_revision", "vae", "scheduler", "scheduler_options",
             "scheduler_config", "steps", "guidance_scale", "width", "height", "dtype", "device", "generator_device",
             "attention_slicing", "vae_slicing", "vae_tiling", "cpu_offload", "batch_size", "batch_size_used",
             "allow_pickle", "status", "error", "sweep_id", "started_at", "finished_at", "seconds",
             "seconds_per_step", "peak_memory_bytes", "image_path", "image_sha256", "plan_index"},
    "events": {"id", "sweep_id", "at", "kind", "message", "data"},
}
ADDED = {  # revision -> table -> columns it adds
    "0002_mlflow_sync": {"runs": {"mlflow_run_id", "mlflow_synced_at"}, "sweeps": {"mlflow_run_id"}},
    "0003_reproducibility": {"sweeps": {"environment", "verify"}},
    "0004_claims": {"runs": {"worker_id", "lease_until"}},
    "0005_throughput": {"sweeps": {"idle_fraction", "warmup_seconds"}, "runs": {"compile"}},
    "0006_prompt_language": {"runs": {"prompt_syntax", "lora"}},
    "0007_metrics": {},
    "0008_image_files": {"runs": {"image_size", "image_mtime_ns", "deterministic"}},
    "0009_attention": {"runs": {"attention"}},
    "0011_plan_version": {"runs": {"plan_version"}, "experiments": {"plan_version"}},
    "0012_ratings": {},
    "0013_call_arguments": {"runs": {"call"}},
    "0014_warm_workers": {"workers": {"kind", "experiments", "activity"}, "sweeps": {"submission"}},
    "0015_image_inputs": {"runs": {"image", "mask_image", "control_image", "ip_adapter_image", "strength",
                                   "controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end",
                                   "ip_adapter_scale", "denoising_end", "denoising_start", "controlnet", "ip_adapter",
                                   "refiner"}},
}
CREATED = {  # revision -> tables it creates, with their columns
    "0004_claims": {"workers": {"id", "sweep_id", "name", "host", "pid", "device", "started_at", "last_seen",
                                "runs_done", "runs_failed", "busy_seconds", "status"}},
    "0007_metrics": {"metrics": {"id", "run_id", "name", "value", "version", "higher_is_better", "scored_at",
                                 "mlflow_synced_at"}},
    "0012_ratings": {"ratings": {"id", "run_id", "other_run_id", "kind", "value", "rater", "comment", "created_at"}},
}
BIG_SEED = 2**63 - 1


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def columns(url: str) -> dict[str, set[str]]:
    engine = sa.create_engine(url)
    try:
        insp = sa.inspect(engine)
        return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names()}
    finally:
        engine.dispose()


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def expected_at(revision: str) -> dict[str, set[str]]:
    out = {t: set(c) for t, c in COLUMNS_0001.items()}
    for rev in REVISIONS[1:REVISIONS.index(revision) + 1]:
        out.update({t: set(c) for t, c in CREATED.get(rev, {}).items()})
        for t, cols in ADDED[rev].items():
            out.setdefault(t, set()).update(cols)
    return out


def test_empty_database_migrates_to_head_with_the_full_schema(tmp_path):
    url = url_of(tmp_path / "new" / "folder" / "t.db")
    before, after = db.upgrade(url)
    assert (before, after) == (None, REVISIONS[-1])
    cols = columns(url)
    assert cols.pop("alembic_version") == {"version_num"}
    assert cols == expected_at(REVISIONS[-1])
    engine = sa.create_engine(url)
    insp = sa.inspect(engine)
    assert {ix["name"]: ix["column_names"] for ix in insp.get_indexes("runs")}["ix_runs_experiment_status"] == [
        "experiment_id", "status"]
    assert any(u["column_names"] == ["experiment_id", "key"] for u in insp.get_unique_constraints("runs"))
    engine.dispose()


def test_store_tables_match_the_migrated_schema(tmp_path):
    """tracker.store.runstore's tables mirror the migrations' head: Alembic's autogenerate finds no difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = url_of(tmp_path / "t.db")
    db.upgrade(url)
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    engine.dispose()
    assert diff == []


def test_head_constant_and_file_names_match_alembic():
    assert db.head() == db.newest_revision() == REVISIONS[-1]
    stems = sorted(p.stem for p in (db.migrations_dir() / "versions").glob("*.py"))
    assert stems == REVISIONS


def _fill_0001(url: str) -> dict[str, list[dict]]:
    """Rows in every table of a 0001 database, every column set; returns what was inserted."""
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    t = meta.tables
    when = datetime(2026, 1, 2, 3, 4, 5, 678000)
    exp = {"id": 1, "name": "old", "source_path": "/x/old.yaml", "source_text": "name: old\n", "created_at": when,
           "updated_at": when}
    sweep = {"id": 1, "experiment_id": 1, "started_at": when, "ended_at": when, "host": "box", "command": "tracker run",
             "device": "cpu", "versions": {"torch": "2.13"}, "planned": 3, "done": 2, "skipped": 0, "failed": 1,
             "seconds": 12.5, "images_per_second": 0.16, "status": "failed"}
    runs = []
    for i in range(3):
        runs.append({
            "id": i + 1, "experiment_id": 1, "key": f"{i:016x}", "axes": {"animal": f"a{i}", "seed": str(BIG_SEED)},
            "prompt": f"p{i}", "negative_prompt": "n", "prompt_template": "p{{ a }}", "negative_template": "n",
            "seed": BIG_SEED - i, "model": "tiny", "model_revision": "abc", "vae": "default",
            "scheduler": "DPMSolverMultistepScheduler", "scheduler_options": {"use_karras_sigmas": True},
            "scheduler_config": {"beta_start": 0.00085}, "steps": 20, "guidance_scale": 7.5, "width": 64,
            "height": 64, "dtype": "float32", "device": "cpu", "generator_device": "cpu", "attention_slicing": True,
            "vae_slicing": False, "vae_tiling": True, "cpu_offload": False, "batch_size": "auto" if i else "4",
            "batch_size_used": 4, "allow_pickle": False, "status": "failed" if i == 2 else "done",
            "error": "NaN in output" if i == 2 else None, "sweep_id": 1, "started_at": when, "finished_at": when,
            "seconds": 1.5 + i, "seconds_per_step": 0.07, "peak_memory_bytes": 5 * 2**33,
            "image_path": f"/ws/images/old/{i}.png", "image_sha256": "f" * 64, "plan_index": i})
    event = {"id": 1, "sweep_id": 1, "at": when, "kind": "oom", "message": "batch 4 -> 2", "data": {"from": 4}}
    with engine.begin() as conn:
        conn.execute(t["experiments"].insert(), [exp])
        conn.execute(t["sweeps"].insert(), [sweep])
        conn.execute(t["runs"].insert(), runs)
        conn.execute(t["events"].insert(), [event])
    engine.dispose()
    return {"experiments": [exp], "sweeps": [sweep], "runs": runs, "events": [event]}


def _rows(url: str) -> dict[str, list[dict]]:
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        out = {name: [dict(r) for r in conn.execute(sa.select(t).order_by(t.c.id)).mappings()]
               for name, t in meta.tables.items() if name != "alembic_version"}
    engine.dispose()
    return out


def test_upgrade_from_0001_keeps_every_row_and_value(tmp_path):
    url = url_of(tmp_path / "t.db")
    db.upgrade(url, "0001_initial")
    assert db.current(url) == "0001_initial"
    inserted = _fill_0001(url)

    assert db.upgrade(url) == ("0001_initial", REVISIONS[-1])
    rows = _rows(url)
    for table, old in inserted.items():
        assert len(rows[table]) == len(old)
        for before, after in zip(old, rows[table]):
            assert {k: after[k] for k in before} == before
            new_cols = set(after) - set(before)
            assert new_cols == set().union(*(ADDED[r].get(table, set()) for r in ADDED))
            assert all(after[c] is None for c in new_cols)

    with Store.open(url) as store:  # the store reads rows written before the new columns existed
        recs = store.runs("old")
        assert [r.seed for r in recs] == [BIG_SEED, BIG_SEED - 1, BIG_SEED - 2]
        assert recs[0].batch_size == 4 and recs[1].batch_size == "auto"
        assert recs[0].peak_memory_bytes == 5 * 2**33 and recs[0].vae_tiling is True
        assert recs[0].mlflow_synced is False and recs[0].mlflow_run_id is None
        assert [r.key for r in store.unsynced("old")] == [f"{i:016x}" for i in range(2)]
        assert store.sweep(1)["environment"] is None and store.sweep(1)["versions"] == {"torch": "2.13"}


def test_downgrade_step_by_step_keeps_rows_then_base_drops_everything(tmp_path):
    url = url_of(tmp_path / "t.db")
    db.upgrade(url, "0001_initial")
    inserted = _fill_0001(url)
    db.upgrade(url)
    for rev in reversed(REVISIONS[:-1]):
        db.downgrade(url, rev)
        assert db.current(url) == rev
        cols = columns(url)
        cols.pop("alembic_version")
        assert cols == expected_at(rev)
        rows = _rows(url)  # tables a later revision created stay empty
        assert {t: len(rows[t]) for t in inserted} == {t: len(r) for t, r in inserted.items()}
        assert not any(rows[t] for t in set(rows) - set(inserted))
    assert db.downgrade(url, "base") == ("0001_initial", None)
    assert table_names(tmp_path / "t.db") == {"alembic_version"}
    assert db.upgrade(url) == (None, REVISIONS[-1])  # and back up again


def _stamp_raw(path: Path, revision: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        conn.execute("DELETE FROM alembic_version")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (revision,))


def test_database_from_a_newer_version_is_refused(tmp_path):
    path = tmp_path / "t.db"
    db.upgrade(url_of(path))
    _stamp_raw(path, "0009_from_the_future")
    with pytest.raises(StoreError, match="0009_from_the_future.*does not know.*newer prompt-tracker"):
        Store.open(url_of(path))
    with pytest.raises(StoreError, match="0009_from_the_future"):
        db.upgrade(url_of(path))
    assert db.current(url_of(path)) == "0009_from_the_future"  # left as it was


def test_a_file_that_is_no_database_is_a_store_error(tmp_path):
    path = tmp_path / "t.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot read the run store"):
        Store.open(url_of(path))


# --- a failing batch migration -------------------------------------------------------------

BOOM = '''
from alembic import op
import sqlalchemy as sa

revision = "9999_boom"
down_revision = "{HEAD}"
branch_labels = None
depends_on = None


def upgrade():
    # batch mode copies "runs" into _alembic_tmp_runs; {DEFAULT}
    with op.batch_alter_table("runs", recreate="always") as batch:
        batch.add_column(sa.Column("rating", sa.Integer, nullable=False{SERVER_DEFAULT}))


def downgrade():
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("rating")
'''


@pytest.fixture
def faulty_migrations(tmp_path):
    """A copy of the migrations with a 9999 whose batch copy fails on existing rows (NOT NULL, no default);
    ``fix()`` rewrites it to work."""
    scripts = tmp_path / "migrations"
    shutil.copytree(db.migrations_dir(), scripts, ignore=shutil.ignore_patterns("__pycache__"))
    boom = scripts / "versions" / "9999_boom.py"
    boom.write_text(BOOM.replace("{DEFAULT}", "without a default the copy fails").replace("{SERVER_DEFAULT}", "")
                    .replace("{HEAD}", REVISIONS[-1]))

    class Scripts:
        path = scripts

        @staticmethod
        def fix():
            boom.write_text(BOOM.replace("{DEFAULT}", "fixed").replace("{SERVER_DEFAULT}", ', server_default="3"')
                            .replace("{HEAD}", REVISIONS[-1]))
            shutil.rmtree(scripts / "versions" / "__pycache__", ignore_errors=True)

    return Scripts


def _db_with_runs(path: Path) -> str:
    url = url_of(path)
    db.upgrade(url, "0001_initial")
    _fill_0001(url)
    db.upgrade(url)
    return url


def test_failed_batch_migration_rolls_back_completely_and_retry_works(tmp_path, faulty_migrations):
    path = tmp_path / "t.db"
    url = _db_with_runs(path)
    with pytest.raises(StoreError, match="cannot migrate the run store.*NOT NULL"):
        db.upgrade(url, script_location=faulty_migrations.path)
    assert not {t for t in table_names(path) if t.startswith("_alembic_tmp")}
    assert db.current(url) == REVISIONS[-1]
    assert len(_rows(url)["runs"]) == 3

    faulty_migrations.fix()
    assert db.upgrade(url, script_location=faulty_migrations.path) == (REVISIONS[-1], "9999_boom")
    runs = _rows(url)["runs"]
    assert [r["rating"] for r in runs] == [3, 3, 3] and [r["seed"] for r in runs][0] == BIG_SEED


def test_without_the_transaction_recipe_the_same_failure_leaves_a_temp_table(tmp_path, faulty_migrations):
    """The control for the test above: plain pysqlite runs the DDL outside the transaction."""
    from alembic import command

    path = tmp_path / "t.db"
    url = _db_with_runs(path)
    plain = sa.create_engine(url)
    cfg = db.alembic_config(url, faulty_migrations.path)
    with pytest.raises(sa.exc.IntegrityError):
        with plain.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    plain.dispose()
    assert "_alembic_tmp_runs" in table_names(path)


# --- 0008: image paths relative to the workspace -------------------------------------------

def _set_image_paths(url: str, paths: list[str | None]) -> None:
    engine = sa.create_engine(url)
    runs = sa.table("runs", sa.column("id", sa.Integer), sa.column("image_path", sa.Text))
    with engine.begin() as conn:
        for i, p in enumerate(paths, start=1):
            conn.execute(runs.update().where(runs.c.id == i).values(image_path=p))
    engine.dispose()


def test_0008_records_image_paths_under_the_workspace_relative_to_it(tmp_path):
    """An old store (absolute paths) upgraded with its workspace: paths under the home become relative, one
    outside stays absolute; the store hands out paths resolved against the home, so a moved home keeps its
    images; a downgrade makes them absolute again."""
    home = tmp_path / "home"
    url = url_of(tmp_path / "elsewhere" / "t.db")  # --db outside the workspace: the home comes from Store.open
    db.upgrade(url, "0001_initial")
    _fill_0001(url)
    db.upgrade(url, "0007_metrics")
    inside, outside = str(home / "images" / "old" / "0.png"), "/ws/images/old/1.png"
    _set_image_paths(url, [inside, outside, None])

    with Store.open(url, home=home) as store:
        assert [r.image for r in store.runs("old")] == [inside, outside, None]
    assert [r["image_path"] for r in _rows(url)["runs"]] == ["images/old/0.png", outside, None]
    moved = tmp_path / "moved"
    with Store.open(url, home=moved) as store:
        assert [r.image for r in store.runs("old")] == [str(moved / "images" / "old" / "0.png"), outside, None]

    db.downgrade(url, "0007_metrics", home=home)
    assert [r["image_path"] for r in _rows(url)["runs"]] == [inside, outside, None]


def test_0008_without_a_home_takes_the_sqlite_files_folder(tmp_path):
    home = tmp_path / "ws"
    url = url_of(home / "tracker.db")  # the workspace layout: HOME/tracker.db
    db.upgrade(url, "0001_initial")
    _fill_0001(url)
    db.upgrade(url, "0007_metrics")
    _set_image_paths(url, [str(home / "images" / "old" / "0.png"), str(tmp_path / "other.png"), None])
    db.upgrade(url)  # e.g. `tracker db upgrade` or the alembic command line
    assert [r["image_path"] for r in _rows(url)["runs"]] == ["images/old/0.png", str(tmp_path / "other.png"), None]
