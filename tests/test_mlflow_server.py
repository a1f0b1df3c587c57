"""MLflow over HTTP: a real ``mlflow server`` on 127.0.0.1 that dies mid-sweep, and ``tracker ui``.

Each server takes ~10 s to answer /health (more on a busy machine), so these tests are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_mlflow import (  # noqa: F401 -- mlflow_template and ws are fixtures
    EXPERIMENT, KEY_TAG, PARENT_TAG, log_sweep, make_sweep, mlflow_template, ws)
from tracker.mlflow import ui, worker

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")]
START_TIMEOUT = 240  # seconds for a server to answer /health on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real ``mlflow server`` (one worker) on a backend store that outlives restarts."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = ui.server_command(self.root / "artifacts", "127.0.0.1", self.port)
        env = ui.server_env(f"sqlite:///{self.root / 'server.db'}")
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        log.close()
        if not ui.wait_for_health(self.url, START_TIMEOUT, lambda: self.proc.poll() is None):
            self.stop()
            pytest.fail(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            ui.stop_process_group(self.proc)
            self.proc = None


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


def _client(url: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=url)


def _children_by_key(url: str, name: str) -> dict[str, list]:
    c = _client(url)
    exp = c.get_experiment_by_name(name)
    out: dict[str, list] = {}
    for run in c.search_runs([exp.experiment_id], max_results=1000):
        if KEY_TAG in run.data.tags:
            out.setdefault(run.data.tags[KEY_TAG], []).append(run)
    return out


def test_server_dies_mid_sweep_then_sync_logs_each_key_once(server, ws, cli, write_yaml, monkeypatch, capsys):
    from dataclasses import replace

    from tracker.sweep import driver, runner
    from tracker.store.runstore import Store

    text = EXPERIMENT.format(name="outage").replace("seeds: [1, 2]", "seeds: [1, 2, 3, 4]")
    path = write_yaml(text, "outage.yaml")
    submitted: list[str] = []
    submitted_at_stop: list[int] = []
    real_submit = worker.MlflowSink.submit_keys

    def submit_then_kill_server(sink, experiment, keys):
        real_submit(sink, experiment, keys)
        before = len(submitted)
        submitted.extend(keys)
        if before < 3 <= len(submitted):  # let a few runs reach the server, then take it away mid-sweep
            deadline = time.monotonic() + 120  # (a batch's runs are marked synced together, after the last)
            while sink._logged < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            server.stop()
            submitted_at_stop.append(len(submitted))

    monkeypatch.setattr(worker.MlflowSink, "submit_keys", submit_then_kill_server)
    live = replace(ws, mlflow_uri=server.url)
    summary = driver.run(live, str(path), runner.RunOptions(progress=False))

    assert summary.done == 8 and summary.failed == 0  # generation went on without MLflow
    with Store.open(ws.db_url) as store:
        records = store.runs("outage")
        waiting = [r for r in records if not r.mlflow_synced]
        parent_id = store.sweep(summary.sweep_id)["mlflow_run_id"]
    [at_stop] = submitted_at_stop
    assert summary.mlflow_waiting == len(waiting) >= 8 - at_stop  # every run submitted after the stop waits
    assert len(records) - len(waiting) >= 2 and parent_id
    assert f"MLflow at {server.url} failed" in capsys.readouterr().err

    server.start()  # same backend store, same port
    res = cli("sync", "outage", "--mlflow-uri", server.url, "-q")
    assert res.code == 0 and f"logged {len(waiting)} runs" in res.out, res.out + res.err
    assert cli("sync", "outage", "--mlflow-uri", server.url, "-q").out.startswith("nothing to sync")

    children = _children_by_key(server.url, "outage")
    assert sorted(children) == sorted(r.key for r in records)
    assert all(len(runs) == 1 for runs in children.values())
    assert {runs[0].data.tags[PARENT_TAG] for runs in children.values()} == {parent_id}
    c = _client(server.url)
    for key, [run] in children.items():
        # the PNG and its recipe, and the log_image entries MLflow's image card and image grid read (over REST)
        assert {a.path for a in c.list_artifacts(run.info.run_id)} == {f"{key}.png", "recipe.json", "images"}
        assert any(a.path.endswith(".png") for a in c.list_artifacts(run.info.run_id, "images"))


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read()


def test_tracker_ui_serves_the_workspace_store_and_stops_on_ctrl_c(ws):
    sweep, path, records = make_sweep(ws)
    assert log_sweep(ws, sweep, path, records).logged == 4
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TRACKER_HOME": str(ws.home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    # started as a background job of a non-interactive shell would be: SIGINT ignored (issue 13, problem 7)
    proc = subprocess.Popen([sys.executable, "-m", "tracker", "ui", "--port", str(port)], cwd=ws.home.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert ui.wait_for_health(url, START_TIMEOUT, lambda: proc.poll() is None), proc.communicate()
        # the server runs without MLflow 3's job runner, and report links follow the UI's port
        servers = [e for e in _children_environ(proc.pid) if b"mlflow" in e.get(b"_cmdline", b"")]
        assert servers and all(e.get(b"MLFLOW_SERVER_ENABLE_JOB_EXECUTION") == b"false" for e in servers)
        # the store's URI (a database password, in team mode) is in no server's command line (ps shows those to
        # every local user), only in its environment, which only its owner can read
        store_uri = os.fsencode(ws.mlflow_tracking_uri)
        assert all(store_uri not in e[b"_cmdline"] for e in servers)
        assert all(e.get(b"MLFLOW_BACKEND_STORE_URI") == store_uri for e in servers)
        assert (ws.home / "mlflow-ui.url").read_text().strip() == url
        exp = json.loads(_get(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=chief")[1])["experiment"]
        runs = _post(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        keys = {t["value"] for r in runs for t in r["data"].get("tags", []) if t["key"] == KEY_TAG}
        assert keys == {r.key for r in records} and len(runs) == 5
        status, page = _get(f"{url}/")
        assert status == 200 and b"<html" in page.lower()
        # the images of local-path experiments are viewable through the server
        rec = records[0]
        status, png = _get(f"{url}/get-artifact?path={rec.key}.png&run_uuid={_run_id(runs, rec.key)}")
        assert status == 200 and png == Path(rec.image).read_bytes()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err and "Traceback" not in out
    assert url in out
    with socket.socket() as s:  # the server's whole process group is gone
        assert s.connect_ex(("127.0.0.1", port)) != 0


def _run_id(runs: list[dict], key: str) -> str:
    return next(r["info"]["run_id"] for r in runs
                if any(t["key"] == KEY_TAG and t["value"] == key for t in r["data"].get("tags", [])))


def _children_environ(pid: int) -> list[dict]:
    """The environment (and command line, as ``_cmdline``) of each direct child of ``pid``."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if f"PPid:\t{pid}\n" not in status.read_text():
                continue
            raw = (status.parent / "environ").read_bytes()
            env = dict(kv.split(b"=", 1) for kv in raw.split(b"\0") if b"=" in kv)
            env[b"_cmdline"] = (status.parent / "cmdline").read_bytes()
            out.append(env)
        except OSError:
            continue
    return out
