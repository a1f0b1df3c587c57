"""The mapping from a run record to MLflow params, tags and metrics (pure; mlflow is imported only for
its own length limits, when a value is cut to them)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Mapping

from tracker.experiment.settings import SETTING_NAMES

if TYPE_CHECKING:
    from tracker.store.records import RunRecord


KEY_TAG = "tracker.key"
# MLflow's own limits, by our name -> their name in mlflow.utils.validation
_MLFLOW_LIMITS = {"MAX_PARAM_LENGTH": "MAX_PARAM_VAL_LENGTH", "MAX_TAG_LENGTH": "MAX_TAG_VAL_LENGTH",
                  "MAX_PER_BATCH": "MAX_PARAMS_TAGS_PER_BATCH"}
PARENT_TAG = "mlflow.parentRunId"
_NOT_PARAMS = ("scheduler", "scheduler_options", "lora", "allow_pickle", "call")  # formatted below; a safety switch


def limit(name: str) -> int:
    """One of MLflow's own limits (``MAX_PARAM_LENGTH``, ``MAX_TAG_LENGTH``, ``MAX_PER_BATCH``), read from
    ``mlflow.utils.validation`` when first needed: the runner imports this module and must not pay for mlflow."""
    from mlflow.utils import validation

    return getattr(validation, _MLFLOW_LIMITS[name])


def scheduler_class(rec: "RunRecord") -> str:
    """The scheduler class that made the image ("default" resolved through the stored scheduler config)."""
    return rec.scheduler_ran.class_name


def child_params(rec: "RunRecord") -> dict[str, str]:
    """Params people filter on in the MLflow UI; the scheduler that ran in full, class and A1111 name
    ('DPMSolverMultistepScheduler (DPM++ 2M Karras)': 2M, 2M Karras and 2M SDE Karras stay apart)."""
    choice = rec.scheduler_ran
    # every setting as recorded (a new one becomes a param by itself), then the ones shown another way
    from tracker.experiment.inputs import CONDITIONING, unused

    # an image-conditioning setting joins only where the run uses it, read from the run's Settings (the record's
    # ``image`` is the PNG it made; the setting ``image`` is the input's sha256)
    settings, planned = rec.run.settings, rec.run.settings.to_dict()
    params: dict[str, Any] = {name: planned[name] if name in CONDITIONING else getattr(rec, name)
                              for name in SETTING_NAMES if name not in _NOT_PARAMS and not unused(settings, name)}
    params.update({k: json.dumps(v, sort_keys=True) for k, v in params.items() if isinstance(v, (list, dict))})
    params.update(seed=rec.seed, scheduler=choice.describe(), sampler=choice.a1111, batch_size_used=rec.batch_size_used,
                  deterministic=bool(rec.deterministic), prompt_syntax=rec.prompt_syntax or "plain")
    if rec.scheduler_options:
        params["scheduler_options"] = json.dumps(rec.scheduler_options, sort_keys=True)
    if rec.lora:  # A1111's style: "name:scale" per adapter
        params["lora"] = ", ".join(f"{a['name']}:{a['scale']:g}" for a in rec.lora)
    for name, value in (rec.call or {}).items():  # one param per call argument: call.max_sequence_length = 512
        params[f"call.{name}"] = json.dumps(value) if isinstance(value, (list, tuple, type(None))) else value
    params.update({f"axis.{name}": label for name, label in rec.axes.items()})
    cap = limit("MAX_PARAM_LENGTH")
    return {k: as_text(v, cap) for k, v in params.items() if v is not None}


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
    cap = limit("MAX_TAG_LENGTH")
    return {k: as_text(v, cap) for k, v in tags.items() if v is not None}


# One image's timings, named as the run store, ``tracker runs`` and ``to_pandas()`` name them. A sweep's parent run
# has its own names (``SWEEP_METRICS``), so no name means per image on one run and per sweep on another.
IMAGE_METRICS = ("seconds", "seconds_per_step", "peak_memory_bytes")
# The sweep summary's fields -> the parent run's metric names.
SWEEP_METRICS = {"planned": "planned", "done": "images", "skipped": "skipped", "failed": "failed",
                 "seconds": "sweep_seconds", "images_per_second": "images_per_second"}
IMAGE_KEY = "image"  # the key of every image run's ``log_image``: one image card and one image-grid column


def child_metrics(rec: "RunRecord") -> dict[str, float]:
    """The image's timings (``IMAGE_METRICS``); the experiment's metric values are added by the client."""
    return {k: float(v) for k in IMAGE_METRICS if (v := getattr(rec, k)) is not None}


def sweep_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """A sweep summary as the parent run's metrics (``SWEEP_METRICS``; anything else numeric under its own name)."""
    return {SWEEP_METRICS.get(k, k): float(v) for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "status"}


def run_name(rec: "RunRecord") -> str:
    """What the MLflow run list and image cards show: the axis labels, e.g. "age=old seed=1"."""
    labels = " ".join(f"{k}={v}" for k, v in rec.axes.items())
    return as_text(labels or rec.key, 250)


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI: what the experiment page opens with
EXPERIMENT_KIND = "custom_model_development"  # "Machine learning": runs, charts and image grids, not GenAI traces


def _note(rec: "RunRecord") -> str:
    """The run's description in the MLflow UI: prompt and negative prompt, readable."""
    text = f"**prompt:** {rec.prompt}"
    if rec.negative_prompt:
        text += f"\n\n**negative prompt:** {rec.negative_prompt}"
    return text + f"\n\nrun key `{rec.key}`"


def environment_tags(environment: Mapping[str, Any] | None) -> dict[str, str]:
    """A sweep's library versions and device as parent-run tags (``env.<name>``); the client cuts them to
    MLflow's tag limit when it logs them (the runner calls this without importing mlflow)."""
    return {f"env.{k}": as_text(v) for k, v in (environment or {}).items() if v is not None}


def as_text(v: Any, cap: int | None = None) -> str:
    if isinstance(v, bool):
        v = "true" if v else "false"
    s = v if isinstance(v, str) else str(v)
    return s if cap is None or len(s) <= cap else s[:cap - 1] + "…"
