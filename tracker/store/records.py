"""A stored run: the planned run (``tracker.experiment.plan.PlannedRun``, with its ``Settings``) plus its result, as the run
store hands it out.

``RunRecord.run`` is the planned run; the record adds what happened (status, timings, image, MLflow ids ...).
Every planned value reads on the record as well (``record.steps``, ``record.prompt``, ``record.axes`` as a
dict ...): one attribute per ``PlannedRun`` and ``Settings`` field, made from the field lists, so a new setting
needs no edit here; an older run's row may hold no value for a later setting or a template: it reads as None
on the record (``unrecorded``) and as its default in ``run``. ``stored_values`` is the planned run as the runs
table holds it and ``RunRecord.from_row`` reads it back. ``to_recipe`` gives the same recipe shape as the PNG
chunk (``PlannedRun.to_recipe``).
Pure: no SQLAlchemy (``tracker.store.runstore`` reads and writes the rows).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, Mapping

from tracker.experiment.plan import PlannedRun
from tracker.experiment.schedulers import SchedulerChoice
from tracker.experiment.settings import SETTING_NAMES, Settings, call_settings, from_json, lora_settings

# the planned run's values outside its Settings, as the record and the runs table name them
RUN_NAMES = ("key", "experiment", "axes", "prompt", "negative_prompt", "prompt_template", "negative_template",
             "seed", "plan_index")
# stored values that read back as given when NULL (an older run recorded no value): None on the record, the
# default (or the prompt, for a template) in ``run``; axes and scheduler options read as {} instead
_MAY_BE_UNRECORDED = tuple(n for n in RUN_NAMES + SETTING_NAMES if n not in ("axes", "scheduler_options"))
_PLANNED_NAMES = frozenset(RUN_NAMES + SETTING_NAMES)
_ON_OFF = tuple(name for name, f in Settings.__dataclass_fields__.items() if isinstance(f.default, bool))


def aware_utc(t: datetime | None) -> datetime | None:
    """A naive UTC time from the database as an aware one."""
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


def _jsonable(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def stored_values(run: PlannedRun) -> dict[str, Any]:
    """The planned run's runs-table values (``tables.PLAN_COLUMNS``: every Settings field, its JSON form for
    scheduler options and LoRA adapters, plus the prompts, axes, seed and plan position)."""
    return {"axes": dict(run.axes), "prompt": run.prompt, "negative_prompt": run.negative_prompt,
            "prompt_template": run.prompt_template, "negative_template": run.negative_template, "seed": run.seed,
            "plan_index": run.index, **run.settings.to_dict()}


def _planned(values: Mapping[str, Any]) -> tuple[PlannedRun, frozenset[str]]:
    """The planned run from its stored values (``stored_values`` plus key and experiment), and the names the
    values left unrecorded (None). A setting the run was recorded without takes its default."""
    get = values.get
    unrecorded = frozenset([n for n in _MAY_BE_UNRECORDED if get(n) is None])
    settings = from_json({n: v for n in SETTING_NAMES if (v := get(n)) is not None and v != ""})
    for name in _ON_OFF:  # on/off settings come back from SQL as 0/1
        if name in settings:
            settings[name] = bool(settings[name])
    bs = settings.get("batch_size")
    if isinstance(bs, str) and bs.isdigit():
        settings["batch_size"] = int(bs)
    settings.update(scheduler_options=tuple(sorted(dict(values.get("scheduler_options") or {}).items())),
                    lora=lora_settings(values.get("lora")), call=call_settings(values.get("call")))
    prompt, negative = values.get("prompt"), values.get("negative_prompt")
    template, negative_template = values.get("prompt_template"), values.get("negative_template")
    run = PlannedRun(
        key=values.get("key"), index=values.get("plan_index") or 0, experiment=values.get("experiment"),
        axes=tuple(dict(values.get("axes") or {}).items()), prompt=prompt, negative_prompt=negative,
        prompt_template=template if template is not None else prompt,
        negative_template=negative_template if negative_template is not None else negative,
        seed=values.get("seed"), settings=Settings(**settings))
    return run, unrecorded


@dataclass(frozen=True, init=False)
class RunRecord:
    """One row of the runs table, with its experiment's name: the planned run plus its result.

    Made from a ``run`` or, as before, from the planned values one by one (``RunRecord(key=..., steps=...)``);
    ``dataclasses.replace(record, steps=4)`` gives the record of a run planned with that value.
    """

    run: PlannedRun
    status: str
    error: str | None = None
    model_revision: str | None = None
    scheduler_config: dict[str, Any] | None = None
    device: str | None = None  # the device the run used; the setting (e.g. "auto") until it ran
    batch_size_used: int | None = None  # ``batch_size`` is the setting: a number or "auto"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None
    seconds_per_step: float | None = None
    peak_memory_bytes: int | None = None
    image: str | None = None  # the PNG's path (the store resolves a stored relative path against the workspace home)
    image_sha256: str | None = None
    image_size: int | None = None  # the image file's size and mtime (ns) when written; None before 0008
    image_mtime_ns: int | None = None
    sweep_id: int | None = None
    mlflow_run_id: str | None = None
    mlflow_synced: bool = False
    mlflow_synced_at: datetime | None = None
    plan_version: str | None = None  # the newest version of its experiment's plan the run was part of (0011)
    unrecorded: frozenset[str] = frozenset()  # planned values the row holds none for (an older run): read as None

    def __init__(self, run: PlannedRun | None = None, status: str = "pending", *,
                 unrecorded: frozenset[str] | None = None, **values: Any) -> None:
        result = {name: values.pop(name, f.default) for name, f in _RESULT_FIELDS.items()}
        unknown = sorted(values.keys() - _PLANNED_NAMES)
        if unknown:
            raise TypeError(f"RunRecord() got unexpected keyword arguments {unknown}")
        if run is None or values:  # the planned run from its values (over the given run's, when both are given)
            given = self._values(run, unrecorded or frozenset()) if run is not None else {}
            run, unrecorded = _planned({**given, **values, "device": result["device"]})
        self.__dict__.update(run=run, status=status, **result, unrecorded=frozenset(unrecorded or ()))

    @staticmethod
    def _values(run: PlannedRun, unrecorded: frozenset[str]) -> dict[str, Any]:
        values = {"key": run.key, "experiment": run.experiment, **stored_values(run)}
        return {n: None if n in unrecorded else v for n, v in values.items()}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "RunRecord":
        row = dict(row)
        run, unrecorded = _planned(row)
        values = {"run": run, "status": row["status"], **{name: row.get(name) for name in _RESULT_FIELDS},
                  "unrecorded": unrecorded}
        values.update(image=row["image_path"], mlflow_synced=row["mlflow_synced_at"] is not None,
                      started_at=aware_utc(row["started_at"]), finished_at=aware_utc(row["finished_at"]),
                      mlflow_synced_at=aware_utc(row["mlflow_synced_at"]))
        record = cls.__new__(cls)
        record.__dict__.update(values)  # the fields as __init__ sets them, without rebuilding the run
        return record

    def to_json(self) -> dict[str, Any]:
        """Every value, JSON-ready: the planned ones (None where unrecorded), the result, ``run`` (the planned run,
        ``PlannedRun.to_dict``). ``batch_size`` is the batch size used; the setting is ``batch_size_planned``."""
        out = {**self._values(self.run, self.unrecorded), "status": self.status}
        out.update({name: _jsonable(getattr(self, name)) for name in _RESULT_FIELDS})
        out.update(input_image=self.run.settings.image or None)  # ``image`` is the PNG made; this, the input's sha256
        out.update(batch_size_planned=out["batch_size"], batch_size=self.batch_size_used,
                   run=self.run.to_dict(), unrecorded=sorted(self.unrecorded))
        return out

    def to_recipe(self, environment: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The run's recipe (``PlannedRun.to_recipe``) with what the store knows of its result: the same shape as
        the PNG's chunk, so ``PlannedRun.from_recipe`` reads either. ``environment``: its sweep's."""
        return self.run.to_recipe(
            model_revision=self.model_revision, scheduler_config=self.scheduler_config, environment=environment,
            device_used=self.device, batch_size_used=self.batch_size_used, seconds=self.seconds,
            seconds_per_step=self.seconds_per_step, peak_memory_bytes=self.peak_memory_bytes)

    @property
    def scheduler_choice(self) -> SchedulerChoice:
        """The scheduler as planned (``scheduler_ran``: the class that actually ran)."""
        return self.run.settings.scheduler_choice

    @property
    def scheduler_ran(self) -> SchedulerChoice:
        """The scheduler that made the image: the planned one, with "default" (or a flow model's equivalent of the
        class) resolved through the scheduler config the engine recorded."""
        return self.run.settings.scheduler_choice.made_with(self.scheduler_config)

    def settings(self) -> Settings:
        """The run's Settings as stored; a setting the run was recorded without (an older run) has its default."""
        return self.run.settings

    def planned(self) -> PlannedRun:
        return self.run


class _Planned:
    """``record.<name>``: the planned run's value as the store holds it (None where unrecorded): axes, scheduler
    options, LoRA adapters and call arguments in their JSON form (dicts, a list). Read once per record, then kept."""

    def __init__(self, name: str):
        self.name = name
        self.__doc__ = f"the planned {name}"

    def __get__(self, record: "RunRecord | None", owner: type | None = None) -> Any:
        if record is None:
            return self
        name, run = self.name, record.run
        if name in record.unrecorded:
            value = None
        elif name == "axes":
            value = dict(run.axes)
        elif name == "plan_index":
            value = run.index
        elif name in RUN_NAMES:
            value = getattr(run, name)
        elif name == "scheduler_options":
            value = dict(run.settings.scheduler_options)
        elif name == "lora":
            value = [dict(a) for a in run.settings.lora]
        elif name == "call":
            value = run.settings.call_kwargs()
        else:
            value = getattr(run.settings, name)
        record.__dict__[name] = value  # a frozen record's run never changes: later reads are plain lookups
        return value


# the result's fields (between ``run``, ``status`` and ``unrecorded``)
_RESULT_FIELDS = {f.name: f for f in fields(RunRecord) if f.name not in ("run", "status", "unrecorded")}
for _name in RUN_NAMES + SETTING_NAMES:
    if _name not in RunRecord.__dataclass_fields__:
        setattr(RunRecord, _name, _Planned(_name))
