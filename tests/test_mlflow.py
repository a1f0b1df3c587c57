"""MLflow logging against a real local MLflow store (SQLite + artifact folder in tmp_path).

Runs are made through a real run store with real PNGs; one test drives a real ``tracker run``.
Faults are injected only where MLflow or the store must fail: a tracking URI on a closed port.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from tracker.mlflow import client as mlflow_client, mapping, sync as mlflow_sync, ui
from tracker.experiment import plan, parse as spec
from tracker.mlflow.mapping import KEY_TAG, PARENT_TAG
from tracker.mlflow.worker import MlflowSink
from tracker.workspace import WorkspaceConfig

# mlflow 3.17's SQL store uses an ORM option SQLAlchemy 2.1 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

EXPERIMENT = """\
name: {name}
model: tiny
prompt: "portrait photo of {{{{ age }}}} warrior chief"
negative_prompt: "blurry"
axes:
  age: {{old: "a old", young: "a young"}}
seeds: [1, 2]
scheduler: PNDM
steps: 2
size: 64x64
"""


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, created once (its migrations take seconds) and copied per test."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def ws(tmp_path, mlflow_template, monkeypatch) -> WorkspaceConfig:
    """The workspace the ``cli`` fixture uses (TRACKER_HOME=tmp_path/home), with a fresh MLflow store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    return WorkspaceConfig(home=home, db_url=f"sqlite:///{home / 'tracker.db'}")


def make_sweep(ws: WorkspaceConfig, name: str = "chief", prompt_suffix: str = "") -> tuple[int, Path, list]:
    """A finished sweep in a real run store: 4 done runs, each with a real PNG. Returns (sweep, file, records)."""
    from tracker.store.runstore import Store

    path = ws.home.parent / f"{name}.yaml"
    path.write_text(EXPERIMENT.format(name=name).replace("warrior chief", "warrior chief" + prompt_suffix))
    exp = spec.parse_file(path)
    runs = plan.expand(exp).runs
    with Store.open(ws.db_url) as store:
        store.save_experiment(name, str(path), exp.source)
        sweep = store.start_sweep(name, {"planned": len(runs), "device": "cpu",
                                         "environment": {"torch_version": "2.13", "device_name": "cpu"}})
        store.plan_runs(sweep, runs)
        for i, r in enumerate(runs):
            store.mark_running(name, [r.key], sweep)
            img = ws.image_path(name, r.key)
            img.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (40 * i, 100, 200)).save(img)
            store.mark_done(name, r.key, image=str(img), image_sha256=hashlib.sha256(img.read_bytes()).hexdigest(),
                            seconds=0.5 + i, seconds_per_step=0.25, peak_memory_bytes=3 * 2**20, batch_size_used=1,
                            device="cpu", scheduler_config={"_class_name": "PNDMScheduler"})
        store.finish_sweep(sweep, {"done": len(runs), "failed": 0, "seconds": 4.0, "images_per_second": 1.0})
        return sweep, path, store.runs(name)


def log_sweep(ws: WorkspaceConfig, sweep: int, path: Path, records: list, uri: str | None = None) -> mlflow_client.SyncSummary:
    sink = MlflowSink(uri or ws.mlflow_tracking_uri, records[0].experiment, ws.db_url, ws.mlflow_artifacts_dir)
    sink.start_sweep(sweep, str(path), {"env.torch_version": "2.13", "env.device_name": "cpu"})
    for rec in records:
        sink.submit(rec)
    sink.finish_sweep({"planned": len(records), "done": len(records), "failed": 0, "seconds": 4.0,
                       "images_per_second": 1.0})
    return sink.close()


def client(ws: WorkspaceConfig):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=ws.mlflow_tracking_uri)


def runs_by_key(ws: WorkspaceConfig, name: str) -> dict[str, list]:
    c = client(ws)
    exp = c.get_experiment_by_name(name)
    out: dict[str, list] = {}
    for run in c.search_runs([exp.experiment_id], max_results=1000):
        key = run.data.tags.get(KEY_TAG)
        if key:
            out.setdefault(key, []).append(run)
    return out


def store_records(ws: WorkspaceConfig, name: str) -> list:
    from tracker.store.runstore import Store

    with Store.open(ws.db_url) as store:
        return store.runs(name)


def parents(ws: WorkspaceConfig, name: str) -> list:
    c = client(ws)
    exp = c.get_experiment_by_name(name)
    return c.search_runs([exp.experiment_id], "tags.`tracker.kind` = 'sweep'")


def test_a_sweep_becomes_one_parent_with_one_child_per_image(ws, tmp_path):
    sweep, path, records = make_sweep(ws)
    result = log_sweep(ws, sweep, path, records)
    assert (result.logged, result.waiting, result.error) == (4, 0, None)

    c = client(ws)
    exp = c.get_experiment_by_name("chief")
    # artifacts live in the workspace, not in the current directory
    assert exp.artifact_location == (ws.mlflow_artifacts_dir / "chief").as_uri()
    [parent] = parents(ws, "chief")
    assert parent.data.tags["env.torch_version"] == "2.13" and parent.data.tags["tracker.sweep_id"] == str(sweep)
    assert parent.data.metrics["images"] == 4 and parent.data.metrics["failed"] == 0
    assert parent.data.metrics["images_per_second"] == 1.0 and parent.info.status == "FINISHED"
    # per sweep and per image under different names
    assert parent.data.metrics["sweep_seconds"] == 4.0 and "seconds" not in parent.data.metrics
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs, not GenAI
    assert [a.path for a in c.list_artifacts(parent.info.run_id)] == ["chief.yaml"]
    assert Path(c.download_artifacts(parent.info.run_id, "chief.yaml", str(tmp_path))).read_text() == path.read_text()

    children = runs_by_key(ws, "chief")
    assert sorted(children) == sorted(r.key for r in records)
    for rec in records:
        [run] = children[rec.key]
        d = run.data
        assert d.tags[PARENT_TAG] == parent.info.run_id and run.info.status == "FINISHED"
        assert d.params["seed"] == str(rec.seed) and d.params["scheduler"] == "PNDMScheduler (PLMS)"
        assert d.params["axis.age"] == rec.axes["age"] and d.params["axis.seed"] == str(rec.seed)
        assert (d.params["steps"], d.params["width"], d.params["height"], d.params["dtype"]) == ("2", "64", "64", "float32")
        assert (d.params["model"], d.params["vae"], d.params["attention_slicing"]) == ("tiny", "default", "false")
        assert d.params["guidance_scale"] == "7.5" and d.params["batch_size_used"] == "1"
        assert d.tags["tracker.prompt"] == rec.prompt and d.tags["tracker.negative_prompt"] == "blurry"
        assert d.tags["tracker.scheduler_class"] == "PNDMScheduler"
        assert d.metrics["seconds"] == rec.seconds and d.metrics["seconds_per_step"] == 0.25
        assert d.metrics["peak_memory_bytes"] == 3 * 2**20 and "images_per_second" not in d.metrics
        names = {a.path for a in c.list_artifacts(run.info.run_id)}
        assert names == {f"{rec.key}.png", "recipe.json", "images"}
        # log_image's entries: the image card and the image grid read these
        assert d.tags["mlflow.loggedImages"].lower() == "true"
        images = [a.path for a in c.list_artifacts(run.info.run_id, "images")]
        assert len(images) == 2 and all(p.startswith("images/image+step+0+timestamp+") for p in images)
        assert sorted(p.endswith("+compressed.webp") for p in images) == [False, True]
        png = Path(c.download_artifacts(run.info.run_id, f"{rec.key}.png", str(tmp_path)))
        assert png.read_bytes() == Path(rec.image).read_bytes()
        recipe = json.loads(Path(c.download_artifacts(run.info.run_id, "recipe.json", str(tmp_path))).read_text())
        assert recipe["key"] == rec.key and recipe["prompt"] == rec.prompt and recipe["seed"] == rec.seed

    # the UI's filters: by axis label and scheduler
    hits = c.search_runs([exp.experiment_id], "params.scheduler = 'PNDMScheduler (PLMS)' and params.`axis.age` = 'old'")
    assert {r.data.tags[KEY_TAG] for r in hits} == {r.key for r in records if r.axes["age"] == "old"}

    # the store knows each run reached MLflow, and which MLflow run is the sweep's parent
    for rec in store_records(ws, "chief"):
        assert rec.mlflow_synced and rec.mlflow_run_id == children[rec.key][0].info.run_id
    from tracker.store.runstore import Store
    with Store.open(ws.db_url) as store:
        assert store.sweep(sweep)["mlflow_run_id"] == parent.info.run_id
        assert store.unsynced("chief") == []


def test_unreachable_mlflow_loses_nothing_and_sync_logs_each_key_once(ws, cli, capsys):
    sweep, path, records = make_sweep(ws)
    down = f"http://127.0.0.1:{closed_port()}"
    result = log_sweep(ws, sweep, path, records, uri=down)
    assert (result.logged, result.waiting) == (0, 4)
    assert "Connection refused" in result.error or "connect" in result.error.lower()
    assert f"MLflow at {down} failed" in capsys.readouterr().err
    assert all(not r.mlflow_synced for r in store_records(ws, "chief"))

    res = cli("sync", "chief", "--mlflow-uri", down, "-q")
    assert res.code == 1 and "4 runs still waiting" in res.out

    res = cli("sync", "chief", "-q")  # the workspace's own store
    assert res.code == 0 and "logged 4 runs" in res.out, res.out + res.err
    res = cli("sync", "-q")
    assert res.code == 0 and "nothing to sync" in res.out

    children = runs_by_key(ws, "chief")
    assert sorted(children) == sorted(r.key for r in records) and all(len(v) == 1 for v in children.values())
    # the sweep never reached MLflow, so sync made a parent for it
    [parent] = parents(ws, "chief")
    assert parent.info.run_name.startswith("sync ") and parent.data.metrics["images"] == 4
    assert {v[0].data.tags[PARENT_TAG] for v in children.values()} == {parent.info.run_id}
    assert [a.path for a in client(ws).list_artifacts(parent.info.run_id)] == ["chief.yaml"]
    assert all(r.mlflow_synced for r in store_records(ws, "chief"))


def test_a_run_in_mlflow_whose_store_write_was_lost_is_reused(ws, cli):
    sweep, path, records = make_sweep(ws)
    assert log_sweep(ws, sweep, path, records).logged == 4
    first = {k: v[0].info.run_id for k, v in runs_by_key(ws, "chief").items()}
    import sqlite3
    with sqlite3.connect(ws.home / "tracker.db") as db:  # fault: MLflow has the runs, the store forgot
        db.execute("UPDATE runs SET mlflow_synced_at = NULL, mlflow_run_id = NULL")
    res = cli("sync", "chief", "-q")
    assert res.code == 0 and "logged 4 runs" in res.out
    again = runs_by_key(ws, "chief")
    assert {k: [r.info.run_id for r in v] for k, v in again.items()} == {k: [v] for k, v in first.items()}
    assert {r.key: r.mlflow_run_id for r in store_records(ws, "chief")} == first
    assert len(parents(ws, "chief")) == 1  # the sweep's own parent was found, no "sync" parent


def test_a_full_queue_never_blocks_and_leaves_runs_for_sync(ws):
    sweep, path, records = make_sweep(ws)
    sink = MlflowSink(ws.mlflow_tracking_uri, "chief", ws.db_url, ws.mlflow_artifacts_dir, queue_size=1)
    sink.start_sweep(sweep, str(path), {})
    for rec in records:  # the child is still importing mlflow: one run in flight, the others wait for sync
        sink.submit(rec)
    result = sink.close()
    assert result.logged + result.waiting == 4 and result.waiting >= 2
    assert len([r for r in store_records(ws, "chief") if not r.mlflow_synced]) == result.waiting
    assert mlflow_sync.sync(ws, "chief", progress=False).logged == result.waiting
    assert all(len(v) == 1 for v in runs_by_key(ws, "chief").values()) and len(runs_by_key(ws, "chief")) == 4


def test_attach_artifacts_to_the_latest_sweep(ws, tmp_path):
    sweep, path, records = make_sweep(ws)
    log_sweep(ws, sweep, path, records)
    report = tmp_path / "report"
    (report / "grids").mkdir(parents=True)
    (report / "index.html").write_text("<html></html>")
    Image.new("RGB", (8, 8)).save(report / "grids" / "seed-1.png")
    rid = mlflow_client.attach_artifacts(ws, "chief", [report], "report")
    [parent] = parents(ws, "chief")
    assert rid == parent.info.run_id
    c = client(ws)
    assert {a.path for a in c.list_artifacts(rid, "report")} == {"report/index.html", "report/grids"}
    assert [a.path for a in c.list_artifacts(rid, "report/grids")] == ["report/grids/seed-1.png"]

    assert mlflow_client.attach_artifacts(replace(ws, mlflow_enabled=False), "chief", [report], "report") is None
    down = replace(ws, mlflow_uri=f"http://127.0.0.1:{closed_port()}")
    assert mlflow_client.attach_artifacts(down, "chief", [report], "report") is None
    assert mlflow_client.attach_artifacts(ws, "no-such-experiment", [report], "report") is None


def test_run_url_links_the_ui():
    ws = WorkspaceConfig(home=Path("/tmp/x"), db_url="sqlite://")
    rec = type("R", (), {"mlflow_run_id": "abc"})()
    assert ui.run_url(ws, rec) == "http://127.0.0.1:5000/#/runs/abc"
    assert ui.run_url(replace(ws, mlflow_uri="http://mlf:8080/"), rec) == "http://mlf:8080/#/runs/abc"
    assert ui.run_url(replace(ws, mlflow_enabled=False), rec) is None
    assert ui.run_url(ws, type("R", (), {"mlflow_run_id": None})()) is None
    # an experiment's link opens its runs table (MLflow 3's bare experiment route opens the GenAI overview)
    from tracker.mlflow.ui import experiment_url, experiments_url

    assert experiment_url(ws, "7") == "http://127.0.0.1:5000/#/experiments/7/runs"
    assert experiments_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000/#/experiments"
    assert experiment_url(replace(ws, mlflow_enabled=False), "7") is None


def test_long_prompts_fit_tags_and_params_stay_within_limits(ws):
    _, _, records = make_sweep(ws, prompt_suffix=", " + "very detailed " * 520)  # ~7300 characters
    rec = records[0]
    assert len(rec.prompt) > mapping.limit("MAX_PARAM_LENGTH")
    assert mapping.child_tags(rec)["tracker.prompt"] == rec.prompt  # tags hold it whole
    huge = replace(rec, prompt="x" * 9000, axes={**rec.axes, "style": "y" * 7000})
    assert len(mapping.child_tags(huge)["tracker.prompt"]) == mapping.limit("MAX_TAG_LENGTH")
    assert len(mapping.child_params(huge)["axis.style"]) == mapping.limit("MAX_PARAM_LENGTH")
    # the scheduler the checkpoint ships with is named by its class
    default = replace(rec, scheduler="default", scheduler_config={"_class_name": "DPMSolverMultistepScheduler"})
    assert mapping.child_params(default)["scheduler"] == "DPMSolverMultistepScheduler (DPM++ 2M)"
    karras = replace(default, scheduler="DPMSolverMultistepScheduler", scheduler_options={"use_karras_sigmas": True})
    assert mapping.child_params(karras)["sampler"] == "DPM++ 2M Karras"
    # the param tells 2M, 2M Karras and 2M SDE Karras apart
    sde = replace(karras, scheduler_options={"use_karras_sigmas": True, "algorithm_type": "sde-dpmsolver++"})
    assert [mapping.child_params(r)["scheduler"] for r in (default, karras, sde)] == [
        "DPMSolverMultistepScheduler (DPM++ 2M)", "DPMSolverMultistepScheduler (DPM++ 2M Karras)",
        "DPMSolverMultistepScheduler (DPM++ 2M SDE Karras)"]


def test_tracker_run_logs_every_image(cli, ws, write_yaml):
    path = write_yaml(EXPERIMENT.format(name="live"), "live.yaml")
    res = cli("run", path, "-q")
    assert res.code == 0, res.err
    records = store_records(ws, "live")
    assert len(records) == 4 and all(r.mlflow_synced for r in records)
    children = runs_by_key(ws, "live")
    [parent] = parents(ws, "live")
    assert sorted(children) == sorted(r.key for r in records)
    for rec in records:
        [run] = children[rec.key]
        assert run.info.run_id == rec.mlflow_run_id and run.data.tags[PARENT_TAG] == parent.info.run_id
        assert run.data.params["scheduler"] == "PNDMScheduler (PLMS)" and run.data.metrics["seconds"] > 0
    assert parent.data.metrics["images"] == 4 and "live.yaml" in {a.path for a in client(ws).list_artifacts(parent.info.run_id)}
    # a second run does nothing new and makes no second MLflow run
    assert cli("run", path, "-q").code == 0
    assert all(len(v) == 1 for v in runs_by_key(ws, "live").values())


def test_the_mlflow_worker_gets_the_database_password_on_no_command_line_or_environment(pg_url, tmp_path):
    """A team store's URL holds a password. The MLflow worker process gets its settings through its stdin pipe:
    no process's command line (what ``ps`` shows every local user) and not the worker's environment hold it, and
    the worker still logs (read from the real process listing, /proc/<pid>/cmdline and environ)."""
    import uuid

    from tracker.store.runstore import Store

    secret = f"pw{uuid.uuid4().hex}"
    url = pg_url.replace("postgres@", f"postgres:{secret}@")  # the test cluster trusts any password
    with Store.open(url) as store:
        sweep = store.start_sweep("chief", {"planned": 0})
    sink = MlflowSink(f"sqlite:///{tmp_path / 'mlflow.db'}", "chief", url, tmp_path / "artifacts")
    try:
        proc = Path(f"/proc/{sink._proc.pid}")
        deadline = time.monotonic() + 30
        while b"_worker_main" not in (proc / "cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.05)  # read mid-exec (the new program's arguments not in place yet) it is empty
        assert b"_worker_main" in (proc / "cmdline").read_bytes()  # it is the worker, still running
        assert secret.encode() not in (proc / "environ").read_bytes()
        leaks = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if secret.encode() in cmdline.read_bytes():
                    leaks.append(cmdline.read_bytes().replace(b"\0", b" ")[:200])
            except OSError:
                continue
        assert leaks == []
        sink.start_sweep(sweep, None, {})
    finally:
        result = sink.close()
    assert result.error is None, result.error  # it read its settings and opened the store


def test_prompt_templates_become_registry_versions_and_runs_link_to_theirs(ws, monkeypatch, capsys):
    """An MLflow without the Prompt Registry: one note and the runs still log; `tracker sync` later links those
    runs; a changed template is a new version, and each run links the versions it used."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tracker.mlflow.client import ExperimentClient
    from tracker.store.runstore import Store

    def too_old(self, *a, **kw):  # what an MLflow 2.x server answers for the registry's endpoints
        raise MlflowException("API request to endpoint /api/2.0/mlflow/registered-models/create failed with "
                              "error code 404 != 200", error_code="ENDPOINT_NOT_FOUND")

    sweep, path, records = make_sweep(ws)
    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "register_prompt", too_old)
        with Store.open(ws.db_url) as store:
            logger = ExperimentClient(ws.mlflow_tracking_uri, "chief", store, ws.mlflow_artifacts_dir)
            for rec in records:
                logger.log_run(rec)
    err = capsys.readouterr().err
    assert err.count("has no Prompt Registry") == 1, err
    runs = runs_by_key(ws, "chief")
    assert len(runs) == 4 and not any("mlflow.linkedPrompts" in r.data.tags for [r] in runs.values())

    result = mlflow_sync.sync(ws, "chief", progress=False)  # nothing unsynced: it links the earlier runs
    assert (result.logged, result.prompts_linked, result.note) == (0, 4, None)
    assert mlflow_sync.sync(ws, "chief", progress=False).prompts_linked == 0  # once

    _, _, later = make_sweep(ws, prompt_suffix=", tribal")  # the template changed: a new version
    new = [r for r in later if "tribal" in r.prompt_template]
    assert log_sweep(ws, sweep + 1, path, new).logged == 4

    c = client(ws)
    prompt = sorted((v.version, v.template) for v in c.search_prompt_versions("chief.prompt"))
    assert prompt == [(1, "portrait photo of {{ age }} warrior chief"),
                      (2, "portrait photo of {{ age }} warrior chief, tribal")]
    [negative] = c.search_prompt_versions("chief.negative_prompt")
    assert (negative.version, negative.template) == (1, "blurry")
    assert c.get_prompt_version("chief.prompt", 1).tags["tracker.axes"] == "age"
    for key, [run] in runs_by_key(ws, "chief").items():
        linked = json.loads(run.data.tags["mlflow.linkedPrompts"])
        version = "2" if "tribal" in run.data.tags["tracker.prompt_template"] else "1"
        assert linked == [{"name": "chief.prompt", "version": version},
                          {"name": "chief.negative_prompt", "version": "1"}], key
