"""One MLflow connection for one experiment (``ExperimentClient``: parents, children, synced marks), and
what uses it in the foreground: report attachments (``tracker sync`` is ``tracker.mlflow.sync``). ``mlflow`` is imported inside."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from tracker.mlflow.mapping import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, IMAGE_KEY, KEY_TAG, PARENT_TAG, as_text,
                                    child_metrics, child_params, child_tags, environment_tags, limit, run_name,
                                    sweep_metrics)
from tracker.workspace import WorkspaceConfig, safe_join

if TYPE_CHECKING:
    from tracker.store.records import RunRecord
    from tracker.store.runstore import Store


HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # one bar per downloaded image otherwise
}
LINKED_PROMPTS_TAG = "mlflow.linkedPrompts"  # MLflow's run tag: the prompt versions a run used (JSON list)
PROMPTS_LINKED_TAG = "tracker.prompts_linked"  # experiment tag: every run logged before the registry is linked
_REGISTRY_NOTED: set[str] = set()  # tracking URIs whose missing Prompt Registry this process has noted
LOGGED_IMAGES_TAG = "mlflow.loggedImages"  # MLflow sets it on a run that has ``log_image`` images
# MLflow error codes that blame one request (a bad value), not the server: the next run may still log.
_BAD_REQUEST_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                      "INVALID_STATE", "BAD_REQUEST"}


@dataclass(frozen=True)
class SyncSummary:
    """What reached MLflow: ``logged`` runs, ``waiting`` runs left unsynced, the first ``error`` if any."""

    logged: int = 0
    waiting: int = 0
    error: str | None = None
    uri: str = ""
    rescored: int = 0  # runs already in MLflow whose metric values (tracker score) were logged again
    experiment_id: str | None = None  # the MLflow experiment the runs went to (one experiment synced), for a link
    prompts_linked: int = 0  # runs already in MLflow linked to their prompt versions by this sync
    note: str | None = None  # why the Prompt Registry was not used, if it was not

    def message(self, experiment: str | None = None) -> str:
        where = f" at {self.uri}" if self.uri else ""
        text = f"logged {self.logged} run{'s' * (self.logged != 1)} to MLflow{where}"
        if self.rescored:
            text += f"; updated the metrics of {self.rescored} run{'s' * (self.rescored != 1)}"
        if self.prompts_linked:
            text += (f"; linked {self.prompts_linked} earlier run{'s' * (self.prompts_linked != 1)} to their prompt "
                     f"versions in the Prompt Registry")
        if self.waiting:
            text += (f"; {self.waiting} run{'s' * (self.waiting != 1)} still waiting"
                     + (f" ({self.error})" if self.error else "")
                     + f"; run `tracker sync{' ' + experiment if experiment else ''}` when MLflow is reachable")
        return text


def prompt_name(experiment: str, kind: str) -> str:
    """The registry name of an experiment's prompt (``kind`` "prompt") or negative template: ``<experiment>.<kind>``,
    with what MLflow does not allow in a prompt name (letters, digits, ``-``, ``_``, ``.``) as ``-``."""
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{experiment}.{kind}")


def linked_prompts(current: str | None, new: list[dict[str, str]]) -> list[dict[str, str]]:
    """A run's ``mlflow.linkedPrompts`` entries with ``new`` added (each name and version once)."""
    try:
        have = json.loads(current) if current else []
    except ValueError:
        have = []
    have = [h for h in have if isinstance(h, dict)] if isinstance(have, list) else []
    return have + [n for n in new if n not in have]


def _no_registry(e: BaseException) -> bool:
    """An answer that says the server or store has no Prompt Registry (an older MLflow, a file store)."""
    text = str(e).lower()
    return getattr(e, "error_code", None) in ("ENDPOINT_NOT_FOUND", "FEATURE_DISABLED", "NOT_IMPLEMENTED") \
        or "404" in text or "not found for url" in text or "not supported" in text or "not implemented" in text


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ms(t: datetime | None) -> int:
    return int(t.timestamp() * 1000) if t is not None else _now_ms()


def short_error(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def is_outage(e: BaseException) -> bool:
    """True when MLflow itself is unreachable or failing (stop trying), False for one bad request."""
    return getattr(e, "error_code", None) not in _BAD_REQUEST_CODES


def warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def is_local_store(uri: str) -> bool:
    """A database or folder on this machine (artifacts then belong in the workspace), not a server."""
    return not uri.startswith(("http://", "https://", "databricks"))


def connect(tracking_uri: str):
    """An ``MlflowClient`` for ``tracking_uri`` with short HTTP retries and MLflow's chatter off."""
    for k, v in HTTP_ENV.items():
        os.environ.setdefault(k, v)
    import logging

    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no "Creating initial MLflow database tables"
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri)


# ---------------------------------------------------------------------------------------------
# One MLflow connection for one experiment: create parents, log children, mark them synced


class ExperimentClient:
    """Does the MLflow work for one tracker experiment; used by the sink's child process and by ``sync``."""

    def __init__(self, tracking_uri: str, experiment: str, store: "Store", artifacts_dir: Path | None):
        self.client = connect(tracking_uri)
        self.uri, self.experiment, self.store = tracking_uri, experiment, store
        self._environments: dict[int, dict | None] = {}  # sweep id -> its environment (for recipe.json)
        self.artifacts_dir = artifacts_dir if artifacts_dir is not None and is_local_store(tracking_uri) else None
        self._experiment_id: str | None = None
        self.parents: dict[int | None, str] = {}  # sweep id -> parent run id
        self.created_parents: dict[int | None, str] = {}  # parents this logger made for ``sync``
        self._prompt_versions: dict[tuple[str, str], str] = {}  # (prompt name, template) -> its registry version
        self.registry_note: str | None = None  # why the Prompt Registry is not used (said once), else None
        self._inputs_logged: dict[str, set[str]] = {}  # parent run id -> the input images' sha256 logged on it

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
            if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the tracker set it: open on the runs
                self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        location = None
        if self.artifacts_dir is not None:
            folder = safe_join(self.artifacts_dir, self.experiment)
            folder.mkdir(parents=True, exist_ok=True)
            location = folder.as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=location,
                                             tags={"tracker.experiment": self.experiment,
                                                   EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})

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
        cap = limit("MAX_TAG_LENGTH")
        self._log_batch(rid, tags={k: as_text(v, cap) for k, v in tags.items()})
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
        self._log_batch(rid, metrics=sweep_metrics(summary))
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
                **{k: str(sweep[k]) for k in ("host", "command", "device") if sweep.get(k)}}
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
        logged = self.log_unmarked(rec, parent_id)
        self.mark_synced(rec.experiment, [logged])
        return logged[1]

    def log_unmarked(self, rec: "RunRecord", parent_id: str | None = None) -> tuple[str, str, list[int]]:
        """``log_run`` without marking the run synced: ``(key, MLflow run id, metric value ids)`` for
        ``mark_synced``, which marks several runs in one store transaction. Logging a run again is safe (its
        MLflow run is found by its key), so a run logged but not yet marked is at worst logged twice."""
        parent_id = parent_id or self.parent_for(rec)
        self._log_inputs(parent_id, rec)
        existing = self.client.search_runs([self.experiment_id], f"tags.`{KEY_TAG}` = '{rec.key}'", max_results=1)
        params = child_params(rec)
        tags = child_tags(rec)
        linked = self.prompt_versions(rec)
        has_image = False
        if existing:
            run = existing[0]
            rid = run.info.run_id
            params = {k: v for k, v in params.items() if k not in run.data.params}  # params are immutable
            if PARENT_TAG not in run.data.tags:
                tags[PARENT_TAG] = parent_id
            has_image = run.data.tags.get(LOGGED_IMAGES_TAG, "").lower() == "true"
            linked = linked_prompts(run.data.tags.get(LINKED_PROMPTS_TAG), linked)
        else:
            run = self.client.create_run(self.experiment_id, start_time=_ms(rec.started_at),
                                         tags={KEY_TAG: rec.key, PARENT_TAG: parent_id}, run_name=run_name(rec))
            rid = run.info.run_id
        if linked:
            tags[LINKED_PROMPTS_TAG] = json.dumps(linked)
        from tracker.metrics import storage as metric_storage

        scores, score_ids = metric_storage.for_run(self.store, rec.experiment, rec.key)
        self._log_batch(rid, params=params, tags=tags, metrics={**child_metrics(rec), **scores},
                        timestamp=_ms(rec.finished_at))
        if rec.image and Path(rec.image).is_file():
            self.client.log_artifact(rid, rec.image)  # the PNG itself, with its recipe chunks (``fetch`` reads it)
            if not has_image:
                self._log_image(rid, rec)
        self.client.log_dict(rid, rec.to_recipe(environment=self._environment(rec.sweep_id)), "recipe.json")
        self.client.set_terminated(rid, "FINISHED", end_time=_ms(rec.finished_at))
        return rec.key, rid, list(score_ids)

    # -- the Prompt Registry: each template a prompt version, each run linked to the versions it used --------------

    def prompt_versions(self, rec: "RunRecord") -> list[dict[str, str]]:
        """The registry versions of the run's prompt and negative templates (``{"name", "version"}``, MLflow's
        ``mlflow.linkedPrompts`` entries), registering a template the first time it is seen; [] once the registry
        turned out not to be there (``registry_note`` says why, once)."""
        out = []
        for kind, template in (("prompt", rec.prompt_template), ("negative_prompt", rec.negative_template)):
            if self.registry_note is not None:
                return []
            if not template or not template.strip():
                continue
            name = prompt_name(self.experiment, kind)
            version = self._prompt_versions.get((name, template))
            if version is None:
                try:
                    version = self._register(name, template, kind)
                except Exception as e:  # noqa: BLE001 -- a store or server without the registry: runs still log
                    if not is_outage(e) or _no_registry(e):
                        self._registry_unavailable(e)
                        return []
                    raise
                self._prompt_versions[(name, template)] = version
            out.append({"name": name, "version": version})
        return out

    def _register(self, name: str, template: str, kind: str) -> str:
        """The version of prompt ``name`` whose template is ``template``: an existing one, else a new version."""
        from mlflow.exceptions import MlflowException

        try:
            versions = list(self.client.search_prompt_versions(name, max_results=1000))
        except MlflowException as e:
            if getattr(e, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise
            versions = []
        for v in sorted(versions, key=lambda v: int(v.version)):
            if v.template == template:
                return str(v.version)
        from tracker.prompts.templating import variables

        axes = sorted(variables(template))
        made = self.client.register_prompt(
            name, template, commit_message=f"{self.experiment}: the {kind.replace('_', ' ')} template",
            tags={"tracker.experiment": self.experiment, "tracker.kind": kind, "tracker.axes": ", ".join(axes)})
        return str(made.version)

    def _registry_unavailable(self, e: BaseException) -> None:
        self.registry_note = (f"MLflow at {self.uri} has no Prompt Registry ({short_error(e)}); runs are logged "
                              f"without links to their prompt templates")
        if self.uri not in _REGISTRY_NOTED:
            _REGISTRY_NOTED.add(self.uri)
            warn(self.registry_note)

    def fill_prompt_links(self) -> int:
        """Link the experiment's image runs already in MLflow without prompt links (logged before the tracker used
        the registry) to their templates' versions, from the template tags they were logged with; returns how many.
        Done once per experiment (its ``tracker.prompts_linked`` tag), since new runs are linked as they log."""
        exp = self.client.get_experiment(self.experiment_id)
        if exp.tags.get(PROMPTS_LINKED_TAG) == "true":
            return 0
        done, token = 0, None
        while True:
            page = self.client.search_runs([self.experiment_id], "tags.`tracker.kind` = 'image'", max_results=500,
                                           page_token=token)
            for run in page:
                t = run.data.tags
                if LINKED_PROMPTS_TAG in t:
                    continue
                from types import SimpleNamespace

                rec = SimpleNamespace(prompt_template=t.get("tracker.prompt_template") or t.get("tracker.prompt"),
                                      negative_template=t.get("tracker.negative_template"))
                linked = self.prompt_versions(rec)
                if self.registry_note is not None:
                    return done
                if linked:
                    self.client.set_tag(run.info.run_id, LINKED_PROMPTS_TAG, json.dumps(linked))
                    done += 1
            token = page.token
            if not token:
                break
        self.client.set_experiment_tag(self.experiment_id, PROMPTS_LINKED_TAG, "true")
        return done

    def _log_inputs(self, parent_id: str, rec: "RunRecord") -> None:
        """A run's input images on its sweep's parent run, once per sha256: ``inputs/<sha256>.<ext>``."""
        from tracker.experiment.inputs import find, hashes_of

        for h in [h for _, h in hashes_of(rec.run.settings)]:
            if parent_id not in self._inputs_logged:  # what the parent has already (another process, an earlier sync)
                self._inputs_logged[parent_id] = {Path(a.path).name.split(".")[0]
                                                  for a in self.client.list_artifacts(parent_id, "inputs")}
            if h not in self._inputs_logged[parent_id] and (path := find(self.store.home / "inputs", h)):
                self.client.log_artifact(parent_id, str(path), "inputs")
                self._inputs_logged[parent_id].add(h)

    def _log_image(self, run_id: str, rec: "RunRecord") -> None:
        """The image through ``log_image`` (key ``image``, step 0): MLflow's image card and its "Image grid"
        compare view read these (``images/`` artifacts and the ``mlflow.loggedImages`` tag), captioned there with
        the run's name (its axis labels) and params."""
        from PIL import Image

        with Image.open(rec.image) as im:
            im.load()
            self.client.log_image(run_id, im.convert("RGB"), key=IMAGE_KEY, step=0,
                                  timestamp=_ms(rec.finished_at), synchronous=True)

    def mark_synced(self, experiment: str, logged: Sequence[tuple[str, str, list[int]]]) -> None:
        """Mark runs ``log_unmarked`` logged as synced: one transaction (and one for their metric values)."""
        from tracker.metrics import storage as metric_storage

        self.store.mark_synced_many(experiment, [(key, rid) for key, rid, _ in logged])
        score_ids = [i for _, _, ids in logged for i in ids]
        if score_ids:
            metric_storage.mark_synced(self.store, score_ids)

    def _environment(self, sweep_id: int | None) -> dict | None:
        """The sweep's environment (for the recipe), read once per sweep."""
        if sweep_id is None:
            return None
        if sweep_id not in self._environments:
            self._environments[sweep_id] = self.store.sweep(sweep_id).get("environment")
        return self._environments[sweep_id]

    def log_scores(self, run_id: str, scores: Mapping[str, float], ids: list[int]) -> None:
        """Metric values scored again after the run reached MLflow (``tracker score``): logged, then marked."""
        from tracker.metrics import storage as metric_storage

        self._log_batch(run_id, metrics=scores)
        metric_storage.mark_synced(self.store, ids)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        """Metric values of a run (a sweep's parent: its rating summary), logged now."""
        self._log_batch(run_id, metrics=metrics)

    def _log_batch(self, run_id: str, params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None,
                   metrics: Mapping[str, float] | None = None, timestamp: int | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        ts = timestamp or _now_ms()
        p = [Param(k, v) for k, v in (params or {}).items()]
        t = [RunTag(k, v) for k, v in (tags or {}).items()]
        m = [Metric(k, v, ts, 0) for k, v in (metrics or {}).items()]
        per_batch = limit("MAX_PER_BATCH")
        while p or t or m:
            self.client.log_batch(run_id, metrics=m[:per_batch], params=p[:per_batch], tags=t[:per_batch])
            p, t, m = p[per_batch:], t[per_batch:], m[per_batch:]


@contextmanager
def open_store(db_url: str, home: Path | None = None) -> Iterator["Store"]:
    from tracker.store.runstore import Store

    store = Store.open(db_url, create=False, home=home)  # sync and attach read the store; a mistyped --db creates none
    try:
        yield store
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# progress, report attachments


def progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    # disable=None: tqdm hides the bar when stderr is not a terminal
    return tqdm(total=total, desc="syncing to MLflow", unit="run", file=sys.stderr,
                disable=None if enabled else True, leave=False)


def attach_artifacts(ws: WorkspaceConfig, experiment: str, paths: list[Path], artifact_path: str) -> str | None:
    """Attach files (a folder: its contents) under ``artifact_path`` of the latest sweep's parent run.

    Returns the MLflow run id, or None when MLflow is off, unreachable or has no sweep of the experiment.
    """
    if not ws.mlflow_enabled:
        return None
    with open_store(ws.db_url, ws.home) as store:
        parents = [s["mlflow_run_id"] for s in reversed(store.sweeps(experiment)) if s.get("mlflow_run_id")]
        if not parents:
            return None
        try:
            logger = ExperimentClient(ws.mlflow_tracking_uri, experiment, store, ws.mlflow_artifacts_dir)
            rid = next((r for r in parents if logger._exists(r)), None)
            if rid is None:
                return None
            for p in map(Path, paths):
                if p.is_dir():
                    logger.client.log_artifacts(rid, str(p), artifact_path)
                else:
                    logger.client.log_artifact(rid, str(p), artifact_path)
        except Exception as e:  # noqa: BLE001 -- the report exists on disk either way
            warn(f"could not attach {artifact_path} to MLflow at {ws.mlflow_tracking_uri}: {short_error(e)}")
            return None
        return rid
