"""MLflow logging: every sweep becomes a parent MLflow run, every image a child run under it.

Mapping (one MLflow experiment per tracker experiment, same name):
- parent run per ``tracker run`` (a sweep): the experiment file as an artifact, library versions and
  device as tags, summary metrics (images, images_per_second, failed, seconds ...);
- child run per image (tag ``mlflow.parentRunId``): the settings and each axis label (``axis.<name>``) as
  params, so the MLflow UI can filter ``params.scheduler = 'PNDM'`` or ``params.`axis.age` = 'old'``;
  the run key, prompts and full scheduler class as tags; timings as metrics; the PNG and the full
  recipe (``recipe.json``) as artifacts.

Off the critical path: logging a run costs ~50 ms on local SQLite and ~0.4 s over HTTP (and importing
mlflow ~1.7 s), so the runner hands run keys to ``MlflowSink``, which logs them from a child process
(a thread would hold the GIL the generating thread needs; see the sink's notes) and never waits.
Too many runs in flight or an outage leave runs marked unsynced in the run store, and ``sync``
(``tracker sync``) logs them later. Idempotent: an image's MLflow run is looked up by its
``tracker.key`` tag before one is created, so no run key ever gets two MLflow runs.

``mlflow`` is imported only inside functions (it costs ~1.7 s); this module is cheap to import.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from tracker.errors import NotFoundError
from tracker.workspace import Workspace, safe_join

if TYPE_CHECKING:
    from tracker.store import RunRecord, Store

KEY_TAG = "tracker.key"
PARENT_TAG = "mlflow.parentRunId"
# MLflow's own limits (mlflow.utils.validation), copied so that this module does not import mlflow.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_PER_BATCH = 100  # params or tags per log_batch call
# Environment for mlflow's HTTP client: fail within seconds instead of retrying for minutes.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1",
}
# MLflow error codes that blame one request (a bad value), not the server: the next run may still log.
_BAD_REQUEST_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                      "INVALID_STATE", "BAD_REQUEST"}
DRAIN_BAR_AFTER_S = 1.0  # close() shows a "syncing to MLflow" bar when draining takes longer than this
UI_DEFAULT_URL = "http://127.0.0.1:5000"  # where ``tracker ui`` serves a local store by default
_STOP = ("stop",)


@dataclass(frozen=True)
class SyncSummary:
    """What reached MLflow: ``logged`` runs, ``waiting`` runs left unsynced, the first ``error`` if any."""

    logged: int = 0
    waiting: int = 0
    error: str | None = None
    uri: str = ""

    def message(self, experiment: str | None = None) -> str:
        where = f" at {self.uri}" if self.uri else ""
        text = f"logged {self.logged} run{'s' * (self.logged != 1)} to MLflow{where}"
        if self.waiting:
            text += (f"; {self.waiting} run{'s' * (self.waiting != 1)} still waiting"
                     + (f" ({self.error})" if self.error else "")
                     + f"; run `tracker sync{' ' + experiment if experiment else ''}` when MLflow is reachable")
        return text


# ---------------------------------------------------------------------------------------------
# The mapping from a run record to MLflow params, tags and metrics (pure)


def scheduler_class(rec: "RunRecord") -> str:
    """The scheduler class that made the image ("default" resolved through the stored scheduler config)."""
    if rec.scheduler == "default" and rec.scheduler_config:
        return str(rec.scheduler_config.get("_class_name") or rec.scheduler)
    return rec.scheduler


def child_params(rec: "RunRecord") -> dict[str, str]:
    """Params people filter on in the MLflow UI; the scheduler as its short name ('PNDM')."""
    from tracker import schedulers

    cls = scheduler_class(rec)
    sampler, schedule = schedulers.sampler_name(cls, rec.scheduler_options)
    params: dict[str, Any] = {
        "seed": rec.seed, "model": rec.model, "scheduler": cls.removesuffix("Scheduler"),
        "sampler": f"{sampler} {schedule}" if schedule else sampler,
        "steps": rec.steps, "guidance_scale": rec.guidance_scale, "width": rec.width, "height": rec.height,
        "vae": rec.vae, "dtype": rec.dtype, "batch_size": rec.batch_size, "batch_size_used": rec.batch_size_used,
        "attention_slicing": rec.attention_slicing, "vae_slicing": rec.vae_slicing, "vae_tiling": rec.vae_tiling,
        "cpu_offload": rec.cpu_offload, "device": rec.device, "generator_device": rec.generator_device,
    }
    if rec.scheduler_options:
        params["scheduler_options"] = json.dumps(rec.scheduler_options, sort_keys=True)
    params.update({f"axis.{name}": label for name, label in rec.axes.items()})
    return {k: _text(v, MAX_PARAM_LENGTH) for k, v in params.items() if v is not None}


def child_tags(rec: "RunRecord") -> dict[str, str]:
    """The key, the full prompts (tags hold 8000 characters, params 6000) and the full scheduler class."""
    tags = {
        KEY_TAG: rec.key, "tracker.experiment": rec.experiment, "tracker.kind": "image",
        "tracker.sweep_id": rec.sweep_id, "tracker.prompt": rec.prompt, "tracker.negative_prompt": rec.negative_prompt,
        "tracker.prompt_template": rec.prompt_template, "tracker.negative_template": rec.negative_template,
        "tracker.scheduler_class": scheduler_class(rec), "tracker.model_revision": rec.model_revision,
        "tracker.image_sha256": rec.image_sha256,
        "mlflow.note.content": _note(rec),
    }
    return {k: _text(v, MAX_TAG_LENGTH) for k, v in tags.items() if v is not None}


def child_metrics(rec: "RunRecord") -> dict[str, float]:
    metrics = {
        "seconds": rec.seconds, "seconds_per_step": rec.seconds_per_step,
        "peak_memory_mb": rec.peak_memory_bytes / 2**20 if rec.peak_memory_bytes is not None else None,
        "images_per_second": 1.0 / rec.seconds if rec.seconds else None,
    }
    return {k: float(v) for k, v in metrics.items() if v is not None}


def run_name(rec: "RunRecord") -> str:
    """What the MLflow run list shows: the axis labels, e.g. "age=old seed=1"."""
    labels = " ".join(f"{k}={v}" for k, v in rec.axes.items())
    return _text(labels or rec.key, 250)


def _note(rec: "RunRecord") -> str:
    """The run's description in the MLflow UI: prompt and negative prompt, readable."""
    text = f"**prompt:** {rec.prompt}"
    if rec.negative_prompt:
        text += f"\n\n**negative prompt:** {rec.negative_prompt}"
    return text + f"\n\nrun key `{rec.key}`"


def environment_tags(environment: Mapping[str, Any] | None) -> dict[str, str]:
    """A sweep's library versions and device as parent-run tags (``env.<name>``)."""
    return {f"env.{k}": _text(v, MAX_TAG_LENGTH) for k, v in (environment or {}).items() if v is not None}


def _text(v: Any, limit: int) -> str:
    if isinstance(v, bool):
        v = "true" if v else "false"
    s = v if isinstance(v, str) else str(v)
    return s if len(s) <= limit else s[:limit - 1] + "…"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(t: datetime | None) -> int:
    return int(t.timestamp() * 1000) if t is not None else _now_ms()


def _short_error(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _is_outage(e: BaseException) -> bool:
    """True when MLflow itself is unreachable or failing (stop trying), False for one bad request."""
    return getattr(e, "error_code", None) not in _BAD_REQUEST_CODES


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def _is_local_store(uri: str) -> bool:
    """A database or folder on this machine (artifacts then belong in the workspace), not a server."""
    return not uri.startswith(("http://", "https://", "databricks"))


# ---------------------------------------------------------------------------------------------
# One MLflow connection for one experiment: create parents, log children, mark them synced


class _Logger:
    """Does the MLflow work for one tracker experiment; used by the sink's child process and by ``sync``."""

    def __init__(self, tracking_uri: str, experiment: str, store: "Store", artifacts_dir: Path | None):
        for k, v in HTTP_ENV.items():
            os.environ.setdefault(k, v)
        import logging

        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables"
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.uri, self.experiment, self.store = tracking_uri, experiment, store
        self.artifacts_dir = artifacts_dir if artifacts_dir is not None and _is_local_store(tracking_uri) else None
        self._experiment_id: str | None = None
        self.parents: dict[int | None, str] = {}  # sweep id -> parent run id
        self.created_parents: dict[int | None, str] = {}  # parents this logger made for ``sync``

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._get_or_create_experiment()
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = None
        if self.artifacts_dir is not None:
            folder = safe_join(self.artifacts_dir, self.experiment)
            folder.mkdir(parents=True, exist_ok=True)
            location = folder.as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=location,
                                             tags={"tracker.experiment": self.experiment})

    # -- parents (sweeps) --------------------------------------------------------------------

    def open_sweep(self, sweep_id: int | None, spec_path: str | None, tags: Mapping[str, str],
                   name: str | None = None) -> str:
        """Create the sweep's parent run with its tags and the experiment file; record its id in the store."""
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        run = self.client.create_run(
            self.experiment_id, run_name=name or f"sweep {sweep_id} {when}",
            tags={"tracker.kind": "sweep", "tracker.experiment": self.experiment,
                  **({"tracker.sweep_id": str(sweep_id)} if sweep_id is not None else {})})
        rid = run.info.run_id
        self._log_batch(rid, tags={k: _text(v, MAX_TAG_LENGTH) for k, v in tags.items()})
        self._log_experiment_file(rid, spec_path)
        if sweep_id is not None:
            self.store.update_sweep(sweep_id, mlflow_run_id=rid)
        self.parents[sweep_id] = rid
        return rid

    def _log_experiment_file(self, run_id: str, spec_path: str | None) -> None:
        if spec_path and Path(spec_path).is_file():
            self.client.log_artifact(run_id, spec_path)
            return
        saved = self.store.experiment(self.experiment) or {}
        if saved.get("source_text"):
            name = Path(saved.get("source_path") or f"{self.experiment}.yaml").name
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / name
                path.write_text(saved["source_text"], encoding="utf-8")
                self.client.log_artifact(run_id, str(path))

    def close_sweep(self, sweep_id: int | None, summary: Mapping[str, Any], status: str = "FINISHED") -> None:
        rid = self.parents.get(sweep_id)
        if rid is None:
            return
        metrics = {"images" if k == "done" else k: float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._log_batch(rid, metrics=metrics)
        self.client.set_terminated(rid, status)

    def parent_for(self, rec: "RunRecord") -> str:
        """The parent for a record: its sweep's parent run when MLflow has it, else a new "sync" parent."""
        if rec.sweep_id in self.parents:
            return self.parents[rec.sweep_id]
        sweep = self.store.sweep(rec.sweep_id) if rec.sweep_id is not None else {}
        rid = sweep.get("mlflow_run_id")
        if rid and self._exists(rid):
            self.parents[rec.sweep_id] = rid
            return rid
        when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        tags = {**environment_tags(sweep.get("environment")),
                **{k: _text(sweep[k], MAX_TAG_LENGTH) for k in ("host", "command", "device") if sweep.get(k)}}
        rid = self.open_sweep(rec.sweep_id, None, tags, name=f"sync {when}"
                              + (f" (sweep {rec.sweep_id})" if rec.sweep_id is not None else ""))
        self.created_parents[rec.sweep_id] = rid
        return rid

    def close_created_parents(self) -> None:
        """Give the parents ``sync`` made the summary metrics their sweeps recorded, and end them."""
        for sweep_id in list(self.created_parents):
            sweep = self.store.sweep(sweep_id) if sweep_id is not None else {}
            summary = {k: sweep.get(k) for k in ("planned", "done", "skipped", "failed", "seconds", "images_per_second")
                       if sweep.get(k) is not None}
            self.close_sweep(sweep_id, summary)
            del self.created_parents[sweep_id]

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as e:
            if getattr(e, "error_code", None) in _BAD_REQUEST_CODES:
                return False
            raise
        return run.info.lifecycle_stage == "active" and run.info.experiment_id == self.experiment_id

    # -- children (images) -------------------------------------------------------------------

    def log_run(self, rec: "RunRecord", parent_id: str | None = None) -> str:
        """Log one image run (reusing the MLflow run its key already has) and mark it synced in the store."""
        parent_id = parent_id or self.parent_for(rec)
        existing = self.client.search_runs([self.experiment_id], f"tags.`{KEY_TAG}` = '{rec.key}'", max_results=1)
        params = child_params(rec)
        tags = child_tags(rec)
        if existing:
            run = existing[0]
            rid = run.info.run_id
            params = {k: v for k, v in params.items() if k not in run.data.params}  # params are immutable
            if PARENT_TAG not in run.data.tags:
                tags[PARENT_TAG] = parent_id
        else:
            run = self.client.create_run(self.experiment_id, start_time=_ms(rec.started_at),
                                         tags={KEY_TAG: rec.key, PARENT_TAG: parent_id}, run_name=run_name(rec))
            rid = run.info.run_id
        self._log_batch(rid, params=params, tags=tags, metrics=child_metrics(rec), timestamp=_ms(rec.finished_at))
        if rec.image and Path(rec.image).is_file():
            self.client.log_artifact(rid, rec.image)
        self.client.log_dict(rid, rec.to_json(), "recipe.json")
        self.client.set_terminated(rid, "FINISHED", end_time=_ms(rec.finished_at))
        self.store.mark_synced(rec.experiment, rec.key, rid)
        return rid

    def _log_batch(self, run_id: str, params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None,
                   metrics: Mapping[str, float] | None = None, timestamp: int | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        ts = timestamp or _now_ms()
        p = [Param(k, v) for k, v in (params or {}).items()]
        t = [RunTag(k, v) for k, v in (tags or {}).items()]
        m = [Metric(k, v, ts, 0) for k, v in (metrics or {}).items()]
        while p or t or m:
            self.client.log_batch(run_id, metrics=m[:MAX_PER_BATCH], params=p[:MAX_PER_BATCH], tags=t[:MAX_PER_BATCH])
            p, t, m = p[MAX_PER_BATCH:], t[MAX_PER_BATCH:], m[MAX_PER_BATCH:]


@contextmanager
def _open_store(db_url: str) -> Iterator["Store"]:
    from tracker.store import Store

    store = Store.open(db_url)
    try:
        yield store
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# The sink: the runner's non-blocking handle on a background logging process
#
# Why a process and not a thread: the MLflow client is pure Python (SQLAlchemy ORM, JSON, HTTP), and a
# thread running it holds the GIL that the generating thread needs between its torch calls. Measured
# on a 2-core CPU (torch 1 thread, 12 images of ~0.35 s): a logging thread (mlflow import + 12 runs)
# made generation 2.2-2.5 s slower, almost all of its own CPU time; the same work in a child process
# cost nothing measurable. The child gets one JSON line per item on stdin and answers one line per
# run on its own pipe; the parent only writes ~60 bytes per run.


class MlflowSink:
    """Logs one sweep to MLflow from a child process; the runner never waits for MLflow.

    At most ``queue_size`` runs are in flight; more (or any after MLflow failed) are left unsynced
    and counted as waiting for ``tracker sync``. After the first outage the child stops trying for
    the rest of the sweep. ``close`` drains. The child opens its own ``Store`` on ``db_url`` and
    reads each run from it by key, so records never cross the process boundary.
    """

    def __init__(self, tracking_uri: str, experiment: str, db_url: str, artifacts_dir: Path | None,
                 queue_size: int = 256):
        self.uri, self.experiment, self.db_url, self.artifacts_dir = tracking_uri, experiment, db_url, artifacts_dir
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._logged = self._waiting = self._in_flight = 0
        self._error: str | None = None
        self._down = threading.Event()
        self._summary: dict | None = None
        self._closed = False
        self._proc = self._reader = None
        try:
            self._proc = _start_worker({"uri": tracking_uri, "experiment": experiment, "db_url": db_url,
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

    def submit(self, record: "RunRecord") -> None:
        """Log one finished run in the background; when MLflow is down or too far behind it waits for sync."""
        self.submit_key(record.experiment, record.key)

    def submit_key(self, experiment: str, key: str) -> None:
        """``submit`` by key: the child reads the run from the store, so the caller need not."""
        with self._lock:
            full = self._in_flight >= self.queue_size
            if self._down.is_set() or full or self._proc is None:
                self._waiting += 1
                return
            self._in_flight += 1
        if not self._send({"op": "run", "experiment": experiment, "key": key}):
            with self._lock:
                self._in_flight -= 1
                self._waiting += 1

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
            return SyncSummary(self._logged, self._waiting, self._error, self.uri)

    def _send(self, message: dict) -> bool:
        if self._proc is None or self._closed:
            return False
        try:
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
                    bar = _bar(self._in_flight, True)
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
            _warn(f"MLflow at {self.uri} failed ({error}); runs of this sweep wait for `tracker sync {self.experiment}`")


def _start_worker(config: dict):
    """Start the logging child in its own session: Ctrl-C in the terminal must not cut a drain short."""
    import subprocess

    root = str(Path(__file__).resolve().parent.parent)
    env = {**HTTP_ENV, **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-c", "from tracker.mlflow_log import _worker_main; _worker_main()", json.dumps(config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8", env=env, start_new_session=True)


def _worker_main() -> None:
    """The child: one item per stdin line until EOF; one reply line per run on the original stdout."""
    import signal
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.nice(19)  # logging may wait; generation must not (torch's threads stall when this takes a core)
    except OSError:
        pass
    replies = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the replies
    sys.stdout = sys.stderr
    warnings.simplefilter("ignore")
    config = json.loads(sys.argv[1])
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
        self.logger: _Logger | None = None
        self.down = False
        self.sweep_id: int | None = None

    def handle(self, item: dict) -> None:
        op = item["op"]
        if op == "sweep":
            self.sweep_id = item["sweep_id"]
        try:
            if self.down:
                raise _Skipped()
            logger = self._logger()
            if op == "sweep":
                logger.open_sweep(item["sweep_id"], item["spec_path"], item["tags"])
            elif op == "run":
                logger.log_run(self.store.get_run(item["key"], item["experiment"]))
                self.reply({"logged": item["key"]})
            elif op == "finish":
                logger.close_created_parents()
                summary = item["summary"]
                logger.close_sweep(self.sweep_id, summary, "KILLED" if summary.get("status") == "interrupted" else "FINISHED")
        except _Skipped:
            if op == "run":
                self.reply({"waiting": item["key"]})
        except Exception as e:  # noqa: BLE001 -- any failure leaves the run for `tracker sync`
            outage = _is_outage(e)
            self.down = self.down or outage
            self.reply({**({"waiting": item["key"]} if op == "run" else {}), "error": _short_error(e), "down": outage})

    def warm_up(self) -> None:
        """Pay the fixed costs before the first run arrives: importing mlflow (~1.5 s) and the tracking
        store's first contact (schema checks). Reads only; an outage here is found again by the first item."""
        try:
            logger = self._logger()
            logger.client.get_experiment_by_name(logger.experiment)
        except Exception:  # noqa: BLE001 -- handled when the sweep's items arrive
            pass

    def _logger(self) -> _Logger:
        if self.logger is None:
            from tracker.store import Store

            c = self.config
            self.store = Store.open(c["db_url"])
            self.logger = _Logger(c["uri"], c["experiment"], self.store,
                                  Path(c["artifacts_dir"]) if c["artifacts_dir"] else None)
        return self.logger

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


class _Skipped(Exception):
    """MLflow is down for this sweep: the item is answered as waiting, not sent."""


# ---------------------------------------------------------------------------------------------
# tracker sync, report attachments, links


def sync(ws: Workspace, experiment: str | None, progress: bool = True) -> SyncSummary:
    """Log every done run that has not reached MLflow (of one experiment, or all); safe to repeat."""
    with _open_store(ws.db_url) as store:
        if experiment is not None and store.experiment(experiment) is None:
            raise NotFoundError(f"no experiment {experiment!r} in the run store {store.url}")
        todo = store.unsynced(experiment)
        if not todo:
            return SyncSummary(uri=ws.mlflow_tracking_uri)
        logged, error = 0, None
        bar = _bar(len(todo), progress)
        try:
            by_experiment: dict[str, list] = {}
            for rec in todo:
                by_experiment.setdefault(rec.experiment, []).append(rec)
            for name, records in by_experiment.items():
                n, error = _sync_experiment(ws, store, name, records, bar)
                logged += n
                if error is not None and error[1]:
                    break  # an outage: the other experiments would fail the same way
        finally:
            bar.close()
        return SyncSummary(logged, len(todo) - logged, error[0] if error else None, ws.mlflow_tracking_uri)


def _sync_experiment(ws: Workspace, store: "Store", name: str, records: list, bar) -> tuple[int, tuple | None]:
    """Returns (runs logged, (first error, was it an outage) or None)."""
    logged, error = 0, None
    try:
        logger = _Logger(ws.mlflow_tracking_uri, name, store, ws.mlflow_artifacts_dir)
        for rec in records:
            try:
                logger.log_run(rec)
                logged += 1
            except Exception as e:  # noqa: BLE001
                error = error or (_short_error(e), _is_outage(e))
                if _is_outage(e):
                    return logged, error
            finally:
                bar.update(1)
        logger.close_created_parents()
    except Exception as e:  # noqa: BLE001 -- MLflow unreachable: the runs stay unsynced
        error = error or (_short_error(e), _is_outage(e))
    return logged, error


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    # disable=None: tqdm hides the bar when stderr is not a terminal
    return tqdm(total=total, desc="syncing to MLflow", unit="run", file=sys.stderr,
                disable=None if enabled else True, leave=False)


def attach_artifacts(ws: Workspace, experiment: str, paths: list[Path], artifact_path: str) -> str | None:
    """Attach files (a folder: its contents) under ``artifact_path`` of the latest sweep's parent run.

    Returns the MLflow run id, or None when MLflow is off, unreachable or has no sweep of the experiment.
    """
    if not ws.mlflow_enabled:
        return None
    with _open_store(ws.db_url) as store:
        parents = [s["mlflow_run_id"] for s in reversed(store.sweeps(experiment)) if s.get("mlflow_run_id")]
        if not parents:
            return None
        try:
            logger = _Logger(ws.mlflow_tracking_uri, experiment, store, ws.mlflow_artifacts_dir)
            rid = next((r for r in parents if logger._exists(r)), None)
            if rid is None:
                return None
            for p in map(Path, paths):
                if p.is_dir():
                    logger.client.log_artifacts(rid, str(p), artifact_path)
                else:
                    logger.client.log_artifact(rid, str(p), artifact_path)
        except Exception as e:  # noqa: BLE001 -- the report exists on disk either way
            _warn(f"could not attach {artifact_path} to MLflow at {ws.mlflow_tracking_uri}: {_short_error(e)}")
            return None
        return rid


def run_url(ws: Workspace, record: "RunRecord") -> str | None:
    """A link to the run in the MLflow UI, or None when it is not in MLflow (or MLflow is off).

    Uses the UI's direct run route (``#/runs/<id>``), which finds the experiment itself, so no call to
    MLflow is needed. A local store is served by ``tracker ui`` at its default address.
    """
    if not ws.mlflow_enabled or not record.mlflow_run_id:
        return None
    uri = ws.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
    elif _is_local_store(uri):
        base = UI_DEFAULT_URL
    else:
        return None
    return f"{base}/#/runs/{record.mlflow_run_id}"


# ---------------------------------------------------------------------------------------------
# tracker ui: the MLflow UI for the workspace's store


def server_command(backend_uri: str, artifacts_dir: Path, host: str, port: int) -> list[str]:
    """``mlflow server`` for a store: one worker (answers in ~10 s instead of ~22 s), bound to ``host``.

    Experiments the tracker creates keep their artifacts at a local path, which the server reads
    directly; ``--artifacts-destination`` is where experiments made in the UI put theirs.
    """
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
            "--artifacts-destination", str(artifacts_dir), "--host", host, "--port", str(port), "--workers", "1"]


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


def serve_ui(ws: Workspace, host: str, port: int, echo=print) -> int:
    """Run the MLflow UI for the workspace's store until Ctrl-C or SIGTERM; returns the exit status."""
    import signal
    import socket
    import subprocess

    from tracker.errors import TrackerError, UsageError

    uri = ws.mlflow_tracking_uri
    if not _is_local_store(uri):
        echo(f"MLflow at {uri} serves its own UI: open {uri}")
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
        proc = subprocess.Popen(server_command(uri, ws.mlflow_artifacts_dir, host, port), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        echo(f"MLflow UI: {url}  (store {uri}; starting, Ctrl-C to stop)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            echo(f"warning: listening on {host}: anyone who can reach this machine can read and change the runs")
        if wait_for_health(url, 300, lambda: proc.poll() is None):
            echo(f"ready: {url}")
        rc = proc.wait()
        raise TrackerError(f"mlflow server stopped with status {rc}; see {log_path}")
    except KeyboardInterrupt:
        echo("stopping the MLflow UI ...")
        return 0
    finally:
        stop_process_group(proc)
        signal.signal(signal.SIGTERM, previous)
