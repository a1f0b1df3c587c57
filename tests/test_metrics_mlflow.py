"""Metric values reach MLflow's child runs (a real local MLflow store): with the run when it is logged,
and again through ``tracker sync`` after ``tracker score`` changed them; syncing twice logs nothing new."""

from __future__ import annotations

import json

import pytest

from test_mlflow import EXPERIMENT, log_sweep, make_sweep, mlflow_template, runs_by_key, store_records, ws  # noqa: F401
from tracker.metrics import Scores, storage
from tracker.store.runstore import Store

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def save(ws, name: str, records, values: list[float]) -> None:
    with Store.open(ws.db_url) as store:
        storage.save(store, name, [r.key for r in records],
                     Scores("quality", "1", True, {"quality": values, "quality.part": [float("nan")] * len(values)}))


def pending(ws, name: str) -> dict:
    with Store.open(ws.db_url) as store:
        return storage.unsynced(store, name)


def test_child_runs_carry_the_metrics_and_sync_updates_rescored_ones(ws, cli):  # noqa: F811
    sweep, path, records = make_sweep(ws, "scoredml")
    save(ws, "scoredml", records, [10.0 + i for i in range(len(records))])
    result = log_sweep(ws, sweep, path, records)
    assert result.logged == len(records) and result.waiting == 0
    children = runs_by_key(ws, "scoredml")
    for i, rec in enumerate(records):
        [run] = children[rec.key]
        assert run.data.metrics["quality"] == 10.0 + i
        assert "quality.part" not in run.data.metrics  # a value that does not apply is not logged
        assert run.data.metrics["seconds"] > 0
    assert pending(ws, "scoredml") == {}

    # scored again (as tracker score does): the values wait for MLflow until tracker sync
    save(ws, "scoredml", records, [20.0 + i for i in range(len(records))])
    assert len(pending(ws, "scoredml")) == len(records)
    r = cli("sync", "scoredml", "-q")
    assert r.code == 0 and f"updated the metrics of {len(records)} runs" in r.out, r.out + r.err
    children = runs_by_key(ws, "scoredml")
    assert all(len(v) == 1 for v in children.values())  # no second MLflow run for any key
    for i, rec in enumerate(records):
        assert children[rec.key][0].data.metrics["quality"] == 20.0 + i
    again = cli("sync", "scoredml", "-q")
    assert again.code == 0 and "nothing to sync" in again.out
    assert pending(ws, "scoredml") == {}


@pytest.mark.slow
def test_a_sweep_with_metrics_logs_them_with_each_image(ws, cli, write_yaml):  # noqa: F811
    path = write_yaml("""
        name: shapesml
        model: shapes
        prompt: "a {{ colour }} circle on black"
        axes:
          colour: [green, yellow]
        seeds: [3]
        steps: 8
        metrics: [shapes]
    """, "shapesml.yaml")
    res = cli("run", path, "-q")
    assert res.code == 0, res.err
    rows = {x["key"]: x for x in json.loads(cli("runs", "shapesml", "--json").out)}
    children = runs_by_key(ws, "shapesml")
    assert sorted(children) == sorted(rows)
    for key, row in rows.items():
        logged = children[key][0].data.metrics
        assert {k: logged[k] for k in row["metrics"]} == row["metrics"] and "shapes.colour" in logged
    assert pending(ws, "shapesml") == {}
    assert all(r.mlflow_synced for r in store_records(ws, "shapesml"))
