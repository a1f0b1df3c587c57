"""``tracker sync``: log the done runs that have not reached MLflow, metric values changed since, and links to the
Prompt Registry, through ``tracker.mlflow.client.ExperimentClient``. ``mlflow`` is imported inside."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracker.errors import NotFoundError
from tracker.mlflow.client import (ExperimentClient, SyncSummary, is_outage, open_store, progress_bar, short_error,
                                   warn)
from tracker.workspace import WorkspaceConfig

if TYPE_CHECKING:
    from tracker.store.runstore import Store


def sync(ws: WorkspaceConfig, experiment: str | None, progress: bool = True) -> SyncSummary:
    """Log every done run that has not reached MLflow (of one experiment, or all); safe to repeat."""
    with open_store(ws.db_url, ws.home) as store:
        if experiment is not None and store.experiment(experiment) is None:
            raise NotFoundError(f"no experiment {experiment!r} in the run store {store.url}")
        todo = store.unsynced(experiment)
        if not todo:
            rescored, error = _sync_scores(ws, store, experiment)
            linked, note, eid = _fill_prompts(ws, store, experiment) if error is None else (0, None, None)
            return SyncSummary(uri=ws.mlflow_tracking_uri, rescored=rescored, error=error, prompts_linked=linked,
                               note=note, experiment_id=eid)
        logged, error, ids = 0, None, {}
        bar = progress_bar(len(todo), progress)
        try:
            by_experiment: dict[str, list] = {}
            for rec in todo:
                by_experiment.setdefault(rec.experiment, []).append(rec)
            for name, records in by_experiment.items():
                n, error = _sync_experiment(ws, store, name, records, bar, ids)
                logged += n
                if error is not None and error[1]:
                    break  # an outage: the other experiments would fail the same way
        finally:
            bar.close()
        rescored, score_error = _sync_scores(ws, store, experiment) if error is None else (0, None)
        linked, note, _ = _fill_prompts(ws, store, experiment) if error is None and score_error is None else (0, None, None)
        return SyncSummary(logged, len(todo) - logged, error[0] if error else score_error, ws.mlflow_tracking_uri,
                           rescored, next(iter(ids.values())) if len(ids) == 1 else None, linked, note)


def _fill_prompts(ws: WorkspaceConfig, store: "Store", experiment: str | None) -> tuple[int, str | None, str | None]:
    """Link runs logged before the Prompt Registry was used (``ExperimentClient.fill_prompt_links``), per experiment
    with runs in MLflow: (runs linked, the registry's note or None, the experiment's MLflow id when one)."""
    names = [experiment] if experiment is not None else [e["name"] for e in store.experiments()]
    done, note, eid = 0, None, None
    for name in names:
        if not any(r.mlflow_run_id for r in store.runs(name)):
            continue
        try:
            logger = ExperimentClient(ws.mlflow_tracking_uri, name, store, ws.mlflow_artifacts_dir)
            done += logger.fill_prompt_links()
            eid = logger.experiment_id if experiment is not None else None
        except Exception as e:  # noqa: BLE001 -- MLflow unreachable: linking waits for the next sync
            warn(f"could not link earlier runs of {name} to the Prompt Registry: {short_error(e)}")
            break
        if logger.registry_note:
            note = logger.registry_note
            break
    return done, note, eid


def _sync_scores(ws: WorkspaceConfig, store: "Store", experiment: str | None) -> tuple[int, str | None]:
    """Log metric values that changed after their runs reached MLflow; returns (runs updated, first error)."""
    from tracker.metrics import storage as metric_storage

    by_experiment: dict[str, dict] = {}
    names = [experiment] if experiment is not None else [e["name"] for e in store.experiments()]
    for name in names:
        pending = metric_storage.unsynced(store, name)
        if pending:
            by_experiment[name] = pending
    done = 0
    for name, pending in by_experiment.items():
        try:
            logger = ExperimentClient(ws.mlflow_tracking_uri, name, store, ws.mlflow_artifacts_dir)
            for item in pending.values():
                logger.log_scores(item["mlflow_run_id"], item["metrics"], item["ids"])
                done += 1
            _log_rating_summaries(logger, store, name)
        except Exception as e:  # noqa: BLE001 -- MLflow unreachable: the values stay unsynced
            return done, short_error(e)
    return done, None


def _log_rating_summaries(logger: ExperimentClient, store: "Store", name: str) -> None:
    """Each sweep's judgements (``tracker studio``) as metrics of its parent run, logged again when they change."""
    from tracker.metrics import ratings

    for parent_id, metrics in ratings.sweep_summaries(store, name).items():
        logger.log_metrics(parent_id, metrics)


def _sync_experiment(ws: WorkspaceConfig, store: "Store", name: str, records: list, bar,
                     ids: dict | None = None) -> tuple[int, tuple | None]:
    """Returns (runs logged, (first error, was it an outage) or None); puts the MLflow experiment id in ``ids``."""
    logged, error = 0, None
    try:
        logger = ExperimentClient(ws.mlflow_tracking_uri, name, store, ws.mlflow_artifacts_dir)
        if ids is not None:
            ids[name] = logger.experiment_id
        for rec in records:
            try:
                logger.log_run(rec)
                logged += 1
            except Exception as e:  # noqa: BLE001
                error = error or (short_error(e), is_outage(e))
                if is_outage(e):
                    return logged, error
            finally:
                bar.update(1)
        logger.close_created_parents()
    except Exception as e:  # noqa: BLE001 -- MLflow unreachable: the runs stay unsynced
        error = error or (short_error(e), is_outage(e))
    return logged, error
