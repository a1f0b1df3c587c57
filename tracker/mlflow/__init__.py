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
