"""``tracker ui`` (the MLflow UI for the workspace's store) and links to runs in it."""

from __future__ import annotations

import os
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from tracker.mlflow.client import is_local_store
from tracker.workspace import WorkspaceConfig

if TYPE_CHECKING:
    from tracker.store.records import RunRecord


UI_DEFAULT_URL = "http://127.0.0.1:5000"  # where ``tracker ui`` serves a local store by default


def ui_base(ws: WorkspaceConfig) -> str | None:
    """Where the workspace's MLflow UI is: ``--mlflow-ui-url``, the tracking server itself, or (a local store) where
    ``tracker ui`` serves it; None when MLflow is off or has no UI the tracker knows of."""
    if not ws.mlflow_enabled:
        return None
    uri = ws.mlflow_tracking_uri
    if ws.mlflow_ui_url:
        return ws.mlflow_ui_url.rstrip("/")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    if is_local_store(uri):
        return ui_url(ws.home)
    return None


# MLflow 3's UI routes (its ``routes`` in the bundled JavaScript): the experiment list, one experiment's runs
# table (``#/experiments/<id>`` alone opens the overview tab, GenAI traces first), and one run.
EXPERIMENTS_ROUTE = "#/experiments"


def experiments_url(base: str) -> str:
    """The UI's experiment list."""
    return f"{base.rstrip('/')}/{EXPERIMENTS_ROUTE}"


def experiment_runs_url(base: str, experiment_id: str) -> str:
    """One experiment's runs table (the "Runs" tab)."""
    return f"{base.rstrip('/')}/{EXPERIMENTS_ROUTE}/{experiment_id}/runs"


def run_url(ws: WorkspaceConfig, record: "RunRecord") -> str | None:
    """A link to the run in the MLflow UI, or None when it is not in MLflow (or MLflow is off).

    Uses the UI's direct run route (``#/runs/<id>``), which finds the experiment itself and redirects to the run's
    page under it, so no call to MLflow is needed. A local store is served by ``tracker ui`` at its default address.
    """
    if not record.mlflow_run_id:
        return None
    base = ui_base(ws)
    return None if base is None else f"{base}/#/runs/{record.mlflow_run_id}"


def experiment_url(ws: WorkspaceConfig, experiment_id: str | None) -> str | None:
    """A link to an experiment's runs in the MLflow UI (what ``tracker run`` and ``tracker sync`` print)."""
    base = ui_base(ws)
    return None if base is None or not experiment_id else experiment_runs_url(base, experiment_id)


UI_URL_FILE = "mlflow-ui.url"  # ``tracker ui`` writes the address it serves; report links default to it


def ui_url(home: Path) -> str:
    """The address ``tracker ui`` last served this workspace's store at (its --port), else the default."""
    try:
        st = (home / UI_URL_FILE).stat()
    except OSError:
        return UI_DEFAULT_URL
    return _read_ui_url(str(home / UI_URL_FILE), st.st_mtime_ns)


@lru_cache(maxsize=16)
def _read_ui_url(path: str, mtime_ns: int) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return UI_DEFAULT_URL
    return text if text.startswith(("http://", "https://")) and len(text) < 300 else UI_DEFAULT_URL


# ---------------------------------------------------------------------------------------------
# tracker ui: the MLflow UI for the workspace's store


def server_command(artifacts_dir: Path, host: str, port: int) -> list[str]:
    """``mlflow server`` for a store: one worker (answers in ~10 s instead of ~22 s), bound to ``host``.

    Experiments the tracker creates keep their artifacts at a local path, which the server reads
    directly; ``--artifacts-destination`` is where experiments made in the UI put theirs. The store's URI
    (which may hold a database password) is not on the command line, where every local user can read it:
    ``server_env`` gives it to the server in its environment, which only its owner can read.
    """
    return [sys.executable, "-m", "mlflow", "server",
            "--artifacts-destination", str(artifacts_dir), "--host", host, "--port", str(port), "--workers", "1"]


def server_env(backend_uri: str, base: "dict[str, str] | None" = None) -> dict[str, str]:
    """The ``mlflow server`` process's environment: ``base`` (this process's) with the backend store's URI
    (``MLFLOW_BACKEND_STORE_URI``, what ``--backend-store-uri`` reads) and without MLflow 3's job runner (six huey
    consumers, ~1.4 GB, serving nothing the UI needs)."""
    return {**(os.environ if base is None else base), "MLFLOW_BACKEND_STORE_URI": backend_uri,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def wait_for_health(url: str, timeout: float, alive=lambda: True) -> bool:
    """Poll ``url``/health until it answers 200 (True), ``alive()`` turns false or ``timeout`` passes (False)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def stop_process_group(proc, timeout: float = 20.0) -> None:
    """SIGTERM the server's process group (uvicorn and its worker), SIGKILL what is left after ``timeout``."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def serve_ui(ws: WorkspaceConfig, host: str, port: int, echo=print) -> int:
    """Run the MLflow UI for the workspace's store until Ctrl-C or SIGTERM; returns the exit status."""
    import signal
    import socket
    import subprocess

    from tracker.errors import TrackerError, UsageError

    uri = ws.mlflow_tracking_uri
    if not is_local_store(uri):
        echo(f"MLflow at {uri} serves its own UI: open {experiments_url(uri)}")
        return 0
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror}); choose another port with --port") from None
    ws.ensure()
    ws.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    log_path = ws.home / "mlflow-ui.log"
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(server_command(ws.mlflow_artifacts_dir, host, port), stdout=log, env=server_env(uri),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    # our own handlers for both: a background job of a non-interactive shell starts with SIGINT ignored
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        from tracker.fsutil import atomic_file

        with atomic_file(ws.home / UI_URL_FILE, "w", encoding="utf-8") as fh:
            fh.write(url + "\n")
        echo(f"MLflow UI: {experiments_url(url)}  (store {uri}; starting, Ctrl-C to stop)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            echo(f"warning: listening on {host}: anyone who can reach this machine can read and change the runs")
        if wait_for_health(url, 300, lambda: proc.poll() is None):
            echo(f"ready: {experiments_url(url)}")
        rc = proc.wait()
        raise TrackerError(f"mlflow server stopped with status {rc}; see {log_path}")
    except KeyboardInterrupt:
        echo("stopping the MLflow UI ...")
        return 0
    finally:
        stop_process_group(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
