"""Images read back from MLflow's artifact store (``tracker.mlflow.fetch``): a done run whose PNG is not in
this workspace is fetched from the MLflow run it was logged to, checked against the run store's sha256
(a mismatch is reported, never shown), cached inside the workspace under its sha256, the cache bounded.

The fast tests use the workspace's own MLflow store (real SQLite + artifact folder); the slow one a real
``mlflow server`` shared by two workspaces (homes) on one run store: a sweep on home A, then report,
reproduce and verify on home B, which has none of the images.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from test_mlflow import (  # noqa: F401 -- mlflow_template and ws are fixtures
    EXPERIMENT, closed_port, log_sweep, make_sweep, mlflow_template, store_records, ws)
from tracker.mlflow import fetch
from tracker.mlflow.fetch import Images

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _logged_without_images(ws) -> list:
    """A sweep of 4 runs logged to the workspace's MLflow store, then its image folder removed."""
    sweep, path, records = make_sweep(ws)
    assert log_sweep(ws, sweep, path, records).logged == 4
    shutil.rmtree(ws.images_dir)
    records = store_records(ws, "chief")
    assert all(r.mlflow_run_id for r in records)
    return records


def _artifact(ws, key: str) -> Path:
    [path] = [p for p in ws.mlflow_artifacts_dir.rglob(f"{key}.png")]
    return path


def test_an_image_missing_here_is_read_from_mlflow_checked_and_cached(ws):
    records = _logged_without_images(ws)
    images = Images(ws)
    for rec in records:
        found = images.locate(rec)
        assert found.origin == "mlflow", found.problem
        assert found.path == ws.home / "cache" / "mlflow-images" / f"{rec.image_sha256}.png"
        assert _sha(found.path) == rec.image_sha256
    assert images.fetched == 4 and "read 4 images from MLflow" in images.note()
    again = Images(ws)  # a second command: from the cache, nothing downloaded
    assert all(again.locate(r).origin == "mlflow" for r in records) and again.fetched == 0
    assert sorted(p.name for p in (ws.home / "cache" / "mlflow-images").iterdir()) == \
        sorted(f"{r.image_sha256}.png" for r in records)


def test_a_copy_in_mlflow_that_does_not_match_the_store_is_reported_not_used(ws, cli):
    records = _logged_without_images(ws)
    bad = records[1]
    art = _artifact(ws, bad.key)
    art.write_bytes(art.read_bytes() + b"tampered")
    images = Images(ws)
    found = images.locate(bad)
    assert found.path is None and found.state == "missing" and "was not used: its sha256" in found.problem
    assert images.mismatched == [bad.key] and "did not match the run store's sha256" in images.note()
    assert not list((ws.home / "cache" / "mlflow-images").glob("*.png"))  # nothing kept, no temp folder either
    assert not list((ws.home / "cache" / "mlflow-images").iterdir())

    res = cli("report", "chief")
    assert res.code == 0, res.err
    assert "read 3 images from MLflow" in res.err and "1 image in MLflow did not match" in res.err
    out = ws.home / "reports" / "chief"
    shown = {_sha(p) for p in (out / "full").iterdir()}
    assert shown == {r.image_sha256 for r in records if r.key != bad.key}
    assert _sha(art) not in shown
    assert "was not used: its sha256" in (out / "index.html").read_text()

    res = cli("reproduce", bad.key)
    assert res.code == 2 and "was not used: its sha256" in res.err and res.err.count("\n") == 1


def test_the_cache_is_bounded_least_recently_used_first(ws, monkeypatch):
    records = _logged_without_images(ws)
    size = max(r_size for r_size in (len(_artifact(ws, r.key).read_bytes()) for r in records))
    monkeypatch.setattr(fetch, "KEEP_RECENT_S", 0.0)  # no report is linking them: evict at once
    images = Images(ws, limit_bytes=int(size * 1.5))
    for rec in records:
        found = images.locate(rec)
        assert found.origin == "mlflow" and _sha(found.path) == rec.image_sha256  # usable when returned
    left = list((ws.home / "cache" / "mlflow-images").glob("*.png"))
    assert [p.name for p in left] == [f"{records[-1].image_sha256}.png"]  # only the newest fits
    assert images.fetched == 4


def test_names_from_the_store_never_leave_the_cache_and_mlflow_off_fetches_nothing(ws):
    records = _logged_without_images(ws)
    evil = replace(records[0], image=str(ws.home / "nowhere" / "x.png"), image_sha256="../../" + "0" * 58)
    found = Images(ws).locate(evil)
    assert found.path is None and found.state == "missing"
    off = Images(replace(ws, mlflow_enabled=False))
    found = off.locate(records[0])
    assert found.path is None and found.state == "missing" and off.fetched == 0
    assert not (ws.home / "cache").exists()


def test_an_unreachable_server_is_tried_once(ws, monkeypatch):
    from mlflow import MlflowClient

    records = _logged_without_images(ws)
    calls = []
    real = MlflowClient.download_artifacts

    def counted(self, *args, **kwargs):
        calls.append(args)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "download_artifacts", counted)
    down = Images(replace(ws, mlflow_uri=f"http://127.0.0.1:{closed_port()}"))
    problems = [down.locate(r).problem for r in records]
    assert len(calls) == 1 and all(p and "image missing" in p for p in problems)
    assert "failed" in problems[-1] and "failed" in down.note()


# ---------------------------------------------------------------------------------------------
# two homes, one run store, one MLflow server


@pytest.mark.slow
def test_home_b_reports_and_reproduces_from_the_server_s_artifact_store(tmp_path, cli, write_yaml, monkeypatch):
    from test_mlflow_server import Server

    server = Server(tmp_path)
    server.start()
    try:
        db = f"sqlite:///{tmp_path / 'team.db'}"
        home_a, home_b = tmp_path / "machine-a", tmp_path / "machine-b"
        path = write_yaml(EXPERIMENT.format(name="team"), "team.yaml")
        res = cli("--home", home_a, "--db", db, "run", path, "--mlflow-uri", server.url, "-q")
        assert res.code == 0, res.err
        shutil.rmtree(home_a)  # machine A and its images are gone; the store and the server remain

        runs = json.loads(cli("--home", home_b, "--db", db, "runs", "team", "--json").out)
        assert len(runs) == 4 and all(r["status"] == "done" and r["mlflow_run_id"] for r in runs)
        res = cli("--home", home_b, "--db", db, "report", "team", "--mlflow-uri", server.url)
        assert res.code == 0, res.err
        assert f"read 4 images from MLflow at {server.url}" in res.err
        full = home_b / "reports" / "team" / "full"
        assert {_sha(p) for p in full.iterdir()} == {r["image_sha256"] for r in runs}
        cache = home_b / "cache" / "mlflow-images"
        assert sorted(p.name for p in cache.iterdir()) == sorted(f"{r['image_sha256']}.png" for r in runs)

        # a sweep on home B makes nothing again: the images are in MLflow, not lost
        res = cli("--home", home_b, "--db", db, "run", path, "--no-mlflow", "-q")
        assert res.code == 0 and "0 done, 4 skipped" in res.out, res.out + res.err
        assert not (home_b / "images").exists()

        key = runs[0]["key"]
        res = cli("--home", home_b, "--db", db, "reproduce", key, "--mlflow-uri", server.url)
        assert res.code == 0, res.out + res.err
        assert "read from MLflow run" in res.out and "identical" in res.out

        # a copy changed in the artifact store is reported, not used (the cache emptied: fetched again)
        shutil.rmtree(cache)
        [art] = list((tmp_path / "artifacts").rglob(f"{runs[1]['key']}.png"))
        art.write_bytes(art.read_bytes() + b"tampered")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)  # the environment works as the option does
        res = cli("--home", home_b, "--db", db, "verify", "team", "--sample", "4")
        assert res.code == 1, res.out + res.err
        rows = {line.split()[0]: line for line in res.out.splitlines() if line.split() and line.split()[0] in
                {r["key"] for r in runs}}
        assert "was not used: its sha256" in rows[runs[1]["key"]]
        assert sum("identical" in line for line in rows.values()) == 3
    finally:
        server.stop()
