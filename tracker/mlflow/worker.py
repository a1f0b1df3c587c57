"""The runner's non-blocking handle on MLflow: ``MlflowSink`` sends run keys to a child process (the
worker, ``_worker_main``), which logs them with an ``ExperimentClient`` and never makes the runner wait.

Why a process and not a thread: the MLflow client is pure Python (SQLAlchemy ORM, JSON, HTTP), and a
thread running it holds the GIL that the generating thread needs between its torch calls. Measured
on a 2-core CPU (torch 1 thread, 12 images of ~0.35 s): a logging thread (mlflow import + 12 runs)
made generation 2.2-2.5 s slower, almost all of its own CPU time; the same work in a child process
cost nothing measurable. The child gets one JSON line per item on stdin and answers one line per
run on its own pipe; the parent only writes ~60 bytes per run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tracker.mlflow.client import HTTP_ENV, ExperimentClient, SyncSummary, is_outage, progress_bar, short_error, warn

if TYPE_CHECKING:
    from tracker.store.records import RunRecord
    from tracker.store.runstore import Store


DRAIN_BAR_AFTER_S = 1.0  # close() shows a "syncing to MLflow" bar when draining takes longer than this


class MlflowSink:
    """Logs one sweep to MLflow from a child process; the runner never waits for MLflow.

    At most ``queue_size`` runs are in flight; more (or any after MLflow failed) are left unsynced
    and counted as waiting for ``tracker sync``. After the first outage the child stops trying for
    the rest of the sweep. ``close`` drains. The child opens its own ``Store`` on ``db_url`` and
    reads each run from it by key, so records never cross the process boundary.
    """

    def __init__(self, tracking_uri: str, experiment: str, db_url: str, artifacts_dir: Path | None,
                 queue_size: int = 256, home: Path | None = None):
        self.uri, self.experiment, self.db_url, self.artifacts_dir = tracking_uri, experiment, db_url, artifacts_dir
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._logged = self._waiting = self._in_flight = 0
        self._error: str | None = None
        self._experiment_id: str | None = None  # MLflow's id of the experiment, once the child has it
        self._down = threading.Event()
        self._summary: dict | None = None
        self._closed = False
        self._proc = self._reader = None
        try:
            self._proc = _start_worker({"uri": tracking_uri, "experiment": experiment, "db_url": db_url,
                                        "home": str(home) if home is not None else None,
                                        "artifacts_dir": str(artifacts_dir) if artifacts_dir is not None else None})
        except OSError as e:
            self._fail(f"cannot start the MLflow worker: {e}")
            return
        self._reader = threading.Thread(target=self._read, name="tracker-mlflow-replies", daemon=True)
        self._reader.start()

    # -- the runner's side (never waits for MLflow) --------------------------------------------

    def start_sweep(self, sweep_id: int, spec_path: str | None, tags: dict[str, str]) -> None:
        """Create the sweep's parent run (with the experiment file and ``tags``) in the background."""
        self._send({"op": "sweep", "sweep_id": sweep_id, "spec_path": spec_path, "tags": dict(tags)})

    def adopt(self, sweep_id: int) -> None:
        """Log the runs of another sweep (a worker process's) under this sink's parent run, and record that
        parent as the sweep's MLflow run (``tracker run --workers``: one parent for the whole pool)."""
        self._send({"op": "adopt", "sweep_id": sweep_id})

    @property
    def down(self) -> bool:
        """MLflow failed during this sweep: nothing more is sent."""
        return self._down.is_set()

    def room(self) -> int:
        """How many more runs ``submit`` would send now (0 once MLflow is down)."""
        with self._lock:
            return 0 if self._down.is_set() or self._proc is None else max(0, self.queue_size - self._in_flight)

    def submit(self, record: "RunRecord") -> None:
        """Log one finished run in the background; when MLflow is down or too far behind it waits for sync."""
        self.submit_key(record.experiment, record.key)

    def submit_key(self, experiment: str, key: str) -> None:
        """``submit`` by key: the child reads the run from the store, so the caller need not."""
        self.submit_keys(experiment, [key])

    def submit_keys(self, experiment: str, keys: Sequence[str]) -> None:
        """``submit_key`` of several runs (a batch) in one message: the child logs each, then marks them all
        synced in one store transaction (fewer commits beside the sweep's own)."""
        with self._lock:
            if self._down.is_set() or self._proc is None:
                self._waiting += len(keys)
                return
            send = list(keys[:max(0, self.queue_size - self._in_flight)])
            self._waiting += len(keys) - len(send)
            self._in_flight += len(send)
        if send and not self._send({"op": "runs", "experiment": experiment, "keys": send}):
            with self._lock:
                self._in_flight -= len(send)
                self._waiting += len(send)

    def finish_sweep(self, summary: dict) -> None:
        """Remember the sweep's summary (images, images_per_second, failed, seconds); logged at close."""
        self._summary = dict(summary)

    def close(self) -> SyncSummary:
        """Drain (a "syncing to MLflow" bar when that takes a while) and say what reached MLflow."""
        if not self._closed and self._proc is not None:
            if self._summary is not None:
                self._send({"op": "finish", "summary": self._summary})
            self._closed = True
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._drain()
            rc = self._proc.wait()
            with self._lock:
                if self._in_flight:  # the child died without answering for these runs
                    self._waiting += self._in_flight
                    self._in_flight = 0
                    self._error = self._error or f"the MLflow worker exited with status {rc}"
        self._closed = True
        with self._lock:
            return SyncSummary(self._logged, self._waiting, self._error, self.uri, experiment_id=self._experiment_id)

    def _send(self, message: dict) -> bool:
        if self._proc is None or self._closed:
            return False
        try:
            with self._send_lock:  # the sweep's writing threads submit concurrently: one whole line each
                self._proc.stdin.write(json.dumps(message) + "\n")
                self._proc.stdin.flush()
            return True
        except (OSError, ValueError) as e:  # the child is gone
            self._fail(f"the MLflow worker stopped: {e}")
            return False

    def _drain(self) -> None:
        started, bar = time.monotonic(), None
        try:
            while self._reader.is_alive():
                self._reader.join(0.2)
                if bar is None and self._reader.is_alive() and time.monotonic() - started > DRAIN_BAR_AFTER_S:
                    bar = progress_bar(self._in_flight, True)
                    base = self._in_flight
                if bar is not None:
                    bar.n = max(0, base - self._in_flight)
                    bar.refresh()
        finally:
            if bar is not None:
                bar.close()

    # -- replies from the child ------------------------------------------------------------------

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                if msg.get("experiment_id"):
                    self._experiment_id = str(msg["experiment_id"])
                if "logged" in msg:
                    self._logged += 1
                    self._in_flight -= 1
                elif "waiting" in msg:
                    self._waiting += 1
                    self._in_flight -= 1
            if msg.get("error"):
                self._fail(msg["error"], down=msg.get("down", True))

    def _fail(self, error: str, down: bool = True) -> None:
        with self._lock:
            self._error = self._error or error
        if down and not self._down.is_set():
            self._down.set()
            warn(f"MLflow at {self.uri} failed ({error}); runs of this sweep wait for `tracker sync {self.experiment}`")


def _start_worker(config: dict):
    """Start the logging child in its own session: Ctrl-C in the terminal must not cut a drain short.

    Its settings (the store's URL, which may hold a database password, and the tracking URI) go as the first
    line of its stdin pipe, never on its command line (``ps`` shows that to every local user) nor in its
    environment."""
    import subprocess

    root = str(Path(__file__).resolve().parents[2])
    env = {**HTTP_ENV, **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tracker.mlflow.worker import _worker_main; _worker_main()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8", env=env, start_new_session=True)
    try:
        proc.stdin.write(json.dumps(config) + "\n")
        proc.stdin.flush()
    except OSError:
        proc.kill()
        proc.wait()
        raise
    return proc


def _worker_main() -> None:
    """The child: its settings on the first stdin line, then one item per line until EOF; one reply line per run on the original stdout."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from tracker.engine.cpu import background_process

    background_process()  # logging may wait; generation must not (torch's threads stall when this takes a core)
    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the replies
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")
    config = json.loads(sys.stdin.readline())  # the settings: the first line (see _start_worker)
    worker = _Worker(config, lambda msg: replies.write(json.dumps(msg) + "\n"))
    worker.warm_up()  # while the parent loads its models
    try:
        for line in sys.stdin:
            worker.handle(json.loads(line))
    finally:
        worker.close()
    # Every write above is committed. Skip the interpreter's teardown (mlflow's exit hooks cost ~0.7 s),
    # which the sweep would otherwise wait for.
    replies.flush()
    os._exit(0)


class _Worker:
    """The child's state: one Store, one MLflow connection, stopped for good after an outage."""

    def __init__(self, config: dict, reply):
        self.config, self.reply = config, reply
        self.store: "Store | None" = None
        self.logger: ExperimentClient | None = None
        self.down = False
        self.sweep_id: int | None = None

    def handle(self, item: dict) -> None:
        op = item["op"]
        if op == "runs":
            self._runs(item["experiment"], item["keys"])
            return
        if op == "sweep":
            self.sweep_id = item["sweep_id"]
        try:
            if self.down:
                raise _Skipped()
            logger = self._logger()
            if op == "sweep":
                logger.open_sweep(item["sweep_id"], item["spec_path"], item["tags"])
                self.reply({"experiment_id": logger.experiment_id})
            elif op == "adopt":
                rid = logger.parents.get(self.sweep_id)
                if rid is not None:
                    logger.parents[item["sweep_id"]] = rid
                    self.store.update_sweep(item["sweep_id"], mlflow_run_id=rid)
            elif op == "finish":
                logger.close_created_parents()
                summary = item["summary"]
                logger.close_sweep(self.sweep_id, summary, "KILLED" if summary.get("status") == "interrupted" else "FINISHED")
        except _Skipped:
            pass
        except Exception as e:  # noqa: BLE001 -- any failure leaves the runs for `tracker sync`
            self._failed(e)

    def _runs(self, experiment: str, keys: list[str]) -> None:
        """A batch's runs: each logged to MLflow (one reply each), then all marked synced in one transaction.
        A run that fails waits for `tracker sync`; one logged but not marked is found by its key next time."""
        logged = []
        for key in keys:
            try:
                if self.down:
                    raise _Skipped()
                logged.append(self._logger().log_unmarked(self.store.get_run(key, experiment)))
                self.reply({"logged": key})
            except _Skipped:
                self.reply({"waiting": key})
            except Exception as e:  # noqa: BLE001
                self._failed(e, key)
        if logged:
            try:
                self.logger.mark_synced(experiment, logged)
            except Exception as e:  # noqa: BLE001 -- logged, not marked: the next sync finds them by key
                self._failed(e)

    def _failed(self, e: Exception, key: str | None = None) -> None:
        outage = is_outage(e)
        self.down = self.down or outage
        self.reply({**({"waiting": key} if key is not None else {}), "error": short_error(e), "down": outage})

    def warm_up(self) -> None:
        """Pay the fixed costs before the first run arrives: importing mlflow (~1.5 s) and the tracking
        store's first contact (schema checks). Reads only; an outage here is found again by the first item."""
        try:
            logger = self._logger()
            logger.client.get_experiment_by_name(logger.experiment)
        except Exception:  # noqa: BLE001 -- handled when the sweep's items arrive
            pass

    def _logger(self) -> ExperimentClient:
        if self.logger is None:
            from tracker.store.runstore import Store

            c = self.config
            self.store = Store.open(c["db_url"], home=c.get("home"))
            self.logger = ExperimentClient(c["uri"], c["experiment"], self.store,
                                  Path(c["artifacts_dir"]) if c["artifacts_dir"] else None)
        return self.logger

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


class _Skipped(Exception):
    """MLflow is down for this sweep: the item is answered as waiting, not sent."""
