"""A stored run: the planned run (``tracker.plan.PlannedRun``) plus its result, as the run store hands it out.

``to_recipe`` gives the same recipe shape as the PNG chunk (``PlannedRun.to_recipe``); ``planned`` and
``settings`` give back what was planned. Pure: no SQLAlchemy (``tracker.store`` reads and writes the rows).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, Mapping

from tracker.plan import PlannedRun
from tracker.schedulers import SchedulerChoice
from tracker.settings import SETTING_NAMES, Settings, lora_settings


def aware_utc(t: datetime | None) -> datetime | None:
    """A naive UTC time from the database as an aware one."""
    return t.replace(tzinfo=timezone.utc) if t is not None and t.tzinfo is None else t


def _jsonable(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


@dataclass(frozen=True)
class RunRecord:
    """One row of the runs table, with its experiment's name."""

    key: str
    experiment: str
    status: str
    prompt: str
    negative_prompt: str
    prompt_template: str | None
    negative_template: str | None
    axes: dict[str, str]
    seed: int
    model: str
    model_revision: str | None
    vae: str
    scheduler: str
    scheduler_options: dict[str, Any]
    scheduler_config: dict[str, Any] | None
    steps: int
    guidance_scale: float
    width: int
    height: int
    dtype: str
    device: str | None
    generator_device: str | None
    attention_slicing: bool
    vae_slicing: bool
    vae_tiling: bool
    cpu_offload: bool
    batch_size: int | str  # the planned setting: a number or "auto"
    batch_size_used: int | None
    allow_pickle: bool
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    seconds: float | None
    seconds_per_step: float | None
    peak_memory_bytes: int | None
    image: str | None  # the PNG's path (the store resolves a stored relative path against the workspace home)
    image_sha256: str | None
    sweep_id: int | None
    mlflow_run_id: str | None
    mlflow_synced: bool
    mlflow_synced_at: datetime | None = None
    plan_index: int | None = None
    compile: str | None = None  # the compile setting; None for runs recorded before it existed ("off")
    prompt_syntax: str | None = None  # None: plain
    lora: list[dict[str, Any]] | None = None
    image_size: int | None = None  # the image file's size and mtime (ns) when written; None before 0008
    image_mtime_ns: int | None = None
    deterministic: bool | None = None  # the setting; None for runs recorded before it existed (off)
    attention: str | None = None  # the attention setting; None for runs recorded before it existed ("default")

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "RunRecord":
        row = dict(row)
        values = {f.name: row[f.name] for f in fields(cls) if f.name in row}  # the runs columns of the same name
        bs = row["batch_size"]
        values.update(
            experiment=row["experiment"], axes=dict(row["axes"] or {}),
            scheduler_options=dict(row["scheduler_options"] or {}),
            batch_size=int(bs) if isinstance(bs, str) and bs.isdigit() else bs,
            image=row["image_path"], mlflow_synced=row["mlflow_synced_at"] is not None,
            started_at=aware_utc(row["started_at"]), finished_at=aware_utc(row["finished_at"]),
            mlflow_synced_at=aware_utc(row["mlflow_synced_at"]),
        )
        for name, f in Settings.__dataclass_fields__.items():  # on/off settings come back from SQL as 0/1
            if isinstance(f.default, bool) and values.get(name) is not None:
                values[name] = bool(values[name])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-ready. ``batch_size`` is the batch size used; the setting is ``batch_size_planned``."""
        out = {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}
        out["batch_size_planned"] = self.batch_size
        out["batch_size"] = self.batch_size_used
        return out

    def to_recipe(self, environment: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The run's recipe (``PlannedRun.to_recipe``) with what the store knows of its result: the same shape as
        the PNG's chunk, so ``PlannedRun.from_recipe`` reads either. ``environment``: its sweep's."""
        return self.planned().to_recipe(
            model_revision=self.model_revision, scheduler_config=self.scheduler_config, environment=environment,
            device_used=self.device, batch_size_used=self.batch_size_used, seconds=self.seconds,
            seconds_per_step=self.seconds_per_step, peak_memory_bytes=self.peak_memory_bytes)

    @property
    def scheduler_choice(self) -> SchedulerChoice:
        """The scheduler as planned; ``.made_with(self.scheduler_config)`` is the class that actually ran."""
        return SchedulerChoice(self.scheduler, tuple(sorted(self.scheduler_options.items())))

    def settings(self) -> Settings:
        # the Settings fields, as stored; a setting the run was recorded without (an older run) takes its default
        values = {name: v for name in SETTING_NAMES if (v := getattr(self, name)) not in (None, "")}
        values.update(scheduler_options=tuple(sorted(self.scheduler_options.items())), lora=lora_settings(self.lora),
                      device=self.device or "auto", generator_device=self.generator_device or "cpu")
        return Settings(**values)

    def planned(self) -> PlannedRun:
        return PlannedRun(
            key=self.key, index=self.plan_index or 0, experiment=self.experiment, axes=tuple(self.axes.items()),
            prompt=self.prompt, negative_prompt=self.negative_prompt,
            prompt_template=self.prompt_template if self.prompt_template is not None else self.prompt,
            negative_template=self.negative_template if self.negative_template is not None else self.negative_prompt,
            seed=self.seed, settings=self.settings(),
        )
