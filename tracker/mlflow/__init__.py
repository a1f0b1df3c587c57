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

Modules: ``mapping`` (record -> params, tags, metrics; pure), ``client`` (``ExperimentClient``, one
connection per experiment, and ``tracker sync``), ``worker`` (``MlflowSink`` and its child process) and
``ui`` (``tracker ui`` and run links). ``mlflow`` is imported only inside functions (it costs ~1.7 s), so
this package is cheap to import; it never shadows the real ``mlflow`` (absolute imports only).
"""

from __future__ import annotations

from tracker.mlflow.client import HTTP_ENV, ExperimentClient, SyncSummary, attach_artifacts, sync
from tracker.mlflow.mapping import (KEY_TAG, PARENT_TAG, child_metrics, child_params, child_tags, environment_tags,
                                    limit, run_name, scheduler_class)
from tracker.mlflow.ui import UI_DEFAULT_URL, run_url, serve_ui, server_command, server_env, stop_process_group, wait_for_health
from tracker.mlflow.worker import MlflowSink

__all__ = [
    "HTTP_ENV", "ExperimentClient", "SyncSummary", "attach_artifacts", "sync", "KEY_TAG", "PARENT_TAG",
    "child_metrics", "child_params", "child_tags", "environment_tags", "limit", "run_name", "scheduler_class",
    "UI_DEFAULT_URL", "run_url", "serve_ui", "server_command", "server_env", "stop_process_group", "wait_for_health", "MlflowSink",
]


def __getattr__(name: str):
    """MLflow's own limits (``MAX_PARAM_LENGTH``, ``MAX_TAG_LENGTH``, ``MAX_PER_BATCH``), read from mlflow."""
    from tracker.mlflow import mapping

    return getattr(mapping, name)
