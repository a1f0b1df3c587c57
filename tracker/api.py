"""The Python API: the same experiments, store, reports and reproduction as the CLI, from a notebook or script.

    import tracker

    exp = tracker.Experiment.from_yaml("examples/warrior-chief.yaml")     # or from_dict({...}), or keywords
    result = tracker.run(exp, home="my-home", mlflow=False)               # -> SweepResult
    result.runs.to_pandas()                                               # one row per run
    ws = tracker.open("my-home")
    ws.grid("warrior-chief", rows="age", cols="seed")                     # a PIL image; HTML in Jupyter
    ws.reproduce(result.runs[0].key).identical

    tracker.run(exp, pipeline=pipe)        # your own diffusers pipeline object: fine-tunes, LoRAs, ...

The CLI (``tracker/commands``) calls these same functions; there is no second code path. Nothing heavy is
imported at module level: torch/diffusers load when images are generated, pandas in ``to_pandas``.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tracker.experiment import model, plan, parse as spec
from tracker.errors import NotFoundError, SpecError, UsageError
from tracker.images.grid import DEFAULT_MAX_PIXELS as GRID_MAX_PIXELS, REPORT_MAX_PIXELS
from tracker.results import ExperimentInfo, ExperimentList, Run, RunList, SweepResult, grid_image
from tracker.workspace import WorkspaceConfig

PathLike = str | os.PathLike
GRID_GAP = 16  # pixels between stacked grids


# ---------------------------------------------------------------------------------------------- experiments


class Experiment:
    """An experiment: prompt templates, named axes, seeds and settings, as in an experiment file.

    Three ways to make one, all validated by the same parser as the YAML file (bad input raises
    ``tracker.errors.SpecError`` naming the field and value)::

        Experiment.from_yaml("examples/warrior-chief.yaml")
        Experiment.from_dict({"name": "ages", "prompt": "a {{ age }} chief", "axes": {"age": ["old", "young"]}})
        Experiment("a {{ age }} chief", name="ages", axes={"age": ["old", "young"]}, seeds=[1], steps=20)
    """

    spec: model.ExperimentSpec

    def __init__(self, prompt: str | Mapping[str, str] | None = None, *, name: str | None = None,
                 negative_prompt: str | Mapping[str, str] | None = None, axes: Mapping[str, Any] | None = None,
                 seeds: Any = None, zip: Sequence[Sequence[str]] | None = None, exclude: Sequence[Mapping] | None = None,
                 grid: Mapping[str, str] | None = None, description: str | None = None,
                 base_dir: PathLike | None = None, **settings: Any):
        fields = {"name": name, "description": description, "prompt": prompt, "negative_prompt": negative_prompt,
                  "axes": axes, "seeds": seeds, "zip": zip, "exclude": exclude, "grid": grid}
        data = {k: v for k, v in fields.items() if v is not None}
        data.update(settings)
        self.spec = Experiment.from_dict(data, base_dir=base_dir).spec

    @classmethod
    def _of(cls, exp: model.ExperimentSpec) -> "Experiment":
        out = cls.__new__(cls)
        out.spec = exp
        return out

    @classmethod
    def from_yaml(cls, path: PathLike) -> "Experiment":
        """Read an experiment file; relative model folders resolve against its folder."""
        from tracker.metrics import available

        return cls._of(spec.parse_file(path, metric_names=available()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: PathLike | None = None,
                  where: str | None = None) -> "Experiment":
        """The fields of an experiment file as a dict (``name`` is required: it names the experiment in the
        store). Relative model folders resolve against ``base_dir`` (default: the current folder)."""
        import yaml

        if not isinstance(data, Mapping):
            raise SpecError(where or "<dict>", None, f"must be a mapping of fields but is {type(data).__name__}")
        where = where or f"<experiment {data.get('name', '?')}>"
        if "name" not in data:
            raise SpecError(where, "name", "is required for an experiment built in Python (it names the experiment "
                                           "in the store and its image folder)")
        try:
            text = yaml.safe_dump(_plain(dict(data), where), sort_keys=False, allow_unicode=True, width=10_000)
        except yaml.YAMLError as e:  # what _plain let through and YAML still cannot write
            raise SpecError(where, None, f"cannot be written as an experiment file: {e}") from None
        base = Path(base_dir if base_dir is not None else os.getcwd()).resolve()
        from tracker.metrics import available

        try:
            return cls._of(spec.parse(text, where, default_name=str(data["name"]), base_dir=base,
                                      metric_names=available()))
        except SpecError as e:  # line numbers of the generated YAML mean nothing to the caller
            raise SpecError(e.path, e.field, e.detail) from None

    # -- what it holds
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def source(self) -> str:
        """The experiment as YAML (what the store keeps and the report reads)."""
        return self.spec.source

    @property
    def axes(self) -> dict[str, tuple[str, ...]]:
        """Axis name -> labels, in expansion order (``seed`` last)."""
        return {a.name: a.labels for a in self.spec.axes}

    def to_dict(self) -> dict[str, Any]:
        from tracker.experiment.yamlfile import load

        return dict(load(self.spec.source, self.spec.path or self.name).data or {})

    def replace(self, **changes: Any) -> "Experiment":
        """A copy with some fields changed, e.g. ``exp.replace(steps=[10, 20], name="steps-study")``."""
        return Experiment.from_dict({**self.to_dict(), **changes}, base_dir=self.spec.base_dir)

    def plan(self, max_runs: int | None = plan.DEFAULT_MAX_RUNS) -> plan.Plan:
        """The expanded plan: every run with its key, labels, prompt and settings (nothing is generated)."""
        return plan.expand(self.spec, max_runs=max_runs)

    def __len__(self) -> int:
        return len(self.plan(max_runs=None).runs)

    def __repr__(self) -> str:
        axes = ", ".join(f"{a.name} ({len(a.values)})" for a in self.spec.axes)
        return f"<Experiment {self.name}: axes {axes}>"

    # -- with a user's pipeline object
    def for_pipeline(self, user) -> model.ExperimentSpec:
        """This experiment on a user's pipeline (``tracker.engine.userpipe.UserPipeline``): its model becomes the
        pipeline's fingerprint name, its dtype the pipeline's; size and device default to the pipeline's own."""
        for a in self.spec.axes:
            varied = {k for v in a.values for k, _ in v.settings} & {"model", "dtype"}
            if varied:
                raise UsageError(f"{self.name}: axis {a.name!r} varies {', '.join(sorted(varied))}, but pipeline= "
                                 f"runs one pipeline object as it is; drop that axis or run without pipeline=")
        data = self.to_dict()
        data["model"], data["dtype"] = user.model, user.dtype
        if not {"size", "width", "height"} & set(data):
            data["size"] = f"{user.size[0]}x{user.size[1]}"
        data.setdefault("device", user.device)
        return Experiment.from_dict(data, base_dir=self.spec.base_dir, where=self.spec.path).spec


def _plain(value: Any, where: str, field: str | None = None) -> Any:
    """Python values as YAML-safe plain data: tuples and ranges become lists, paths strings, numpy scalars numbers.
    Anything else (an object, bytes, a set, whose order is not the user's) is a SpecError naming the field, never
    the YAML library's exception."""
    def sub(key: Any) -> str:
        return f"{field}.{key}" if field else str(key)

    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            k = os.fspath(k) if isinstance(k, os.PathLike) else k
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise SpecError(where, field, f"keys must be text but one is {type(k).__name__} {k!r}")
            out[k] = _plain(v, where, sub(k))
        return out
    if isinstance(value, (list, tuple, range)):
        return [_plain(v, where, f"{field}[{i}]" if field else f"[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "item") and callable(value.item) and type(value).__module__.startswith("numpy"):
        return _plain(value.item(), where, field)  # numpy scalars
    kind = "a set (give a list: its order is the order of the runs)" if isinstance(value, (set, frozenset)) \
        else f"a {type(value).__name__}"
    raise SpecError(where, field, f"must be text, a number, a list or a mapping but is {kind}: {value!r:.80}")


def _experiment(experiment: "Experiment | model.ExperimentSpec | Mapping | PathLike") -> Experiment:
    if isinstance(experiment, Experiment):
        return experiment
    if isinstance(experiment, model.ExperimentSpec):
        return Experiment._of(experiment)
    if isinstance(experiment, Mapping):
        return Experiment.from_dict(experiment)
    if isinstance(experiment, (str, os.PathLike)):
        return Experiment.from_yaml(experiment)
    raise UsageError(f"expected an Experiment, a dict or an experiment file path, not {type(experiment).__name__}")


# ---------------------------------------------------------------------------------------------- running


def run(experiment: "Experiment | Mapping | PathLike", *, pipeline: Any = None, home: "PathLike | Workspace | None" = None,
        mlflow: bool | str = True, progress: bool = True, device: str | None = None,
        max_runs: int | None = plan.DEFAULT_MAX_RUNS, retry_failed: bool = False, from_key: str | None = None,
        db: str | None = None) -> SweepResult:
    """Generate every run of ``experiment`` that is not done yet in the workspace ``home``.

    ``pipeline``: any diffusers text-to-image pipeline object you built (fine-tuned weights, LoRAs, a custom
    class). The tracker swaps schedulers and VAEs on it as on its own and gives it back as it came; its
    runs are keyed by a fingerprint of its components and their recipes say they were made with your
    pipeline (``reproduce`` then needs the same object again). ``mlflow``: True (the workspace's store or
    ``MLFLOW_TRACKING_URI``), False, or a tracking URI. ``progress``: a progress bar (a widget in Jupyter).
    """
    from tracker.engine import userpipe
    from tracker.sweep import driver, runner

    ws = _workspace(home, db=db, mlflow=mlflow)
    exp = _experiment(experiment)  # an experiment file is parsed here, once; errors and the store name the file
    user = userpipe.wrap(pipeline) if pipeline is not None else None
    target = exp.for_pipeline(user) if user is not None else exp.spec
    from_file = isinstance(experiment, (str, os.PathLike)) and user is None
    options = runner.RunOptions(max_runs=max_runs, device=device, retry_failed=retry_failed, from_key=from_key,
                                progress=progress, command=None if from_file else
                                f"tracker.run({exp.name!r}{', pipeline=' + type(pipeline).__name__ if user else ''})")
    summary = driver.run(ws.config, target, options, driver.InProcess(pipeline=user))
    return sweep_result(ws, summary)


def sweep_result(ws: "Workspace", summary) -> SweepResult:
    """A runner.SweepSummary as a SweepResult, with the sweep's runs read back from the store."""
    runs = ws._runs_by_keys(summary.experiment, summary.keys)
    return SweepResult(experiment=summary.experiment, planned=summary.planned, done=summary.done,
                       skipped=summary.skipped, failed=summary.failed, seconds=summary.seconds,
                       failures=tuple(summary.failures), runs=runs, workspace=ws,
                       mlflow_waiting=summary.mlflow_waiting, sweep_id=summary.sweep_id, summary=summary)


# ---------------------------------------------------------------------------------------------- workspace


def open(home: "PathLike | None" = None, *, db: str | None = None, mlflow: bool | str = True) -> "Workspace":  # noqa: A001
    """The workspace at ``home`` (default: ``TRACKER_HOME``, else ``./.tracker``): query runs, draw grids,
    write reports, reproduce images. Opening creates nothing."""
    return _workspace(home, db=db, mlflow=mlflow)


def _workspace(home: Any, db: str | None = None, mlflow: bool | str = True) -> "Workspace":
    if isinstance(home, Workspace):
        return home if mlflow is True else Workspace(_with_mlflow(home.config, mlflow))
    if isinstance(home, WorkspaceConfig):
        return Workspace(_with_mlflow(home, mlflow))
    config = WorkspaceConfig.from_options(home=os.fspath(home) if home is not None else None, db=db)
    return Workspace(_with_mlflow(config, mlflow))


def _with_mlflow(config: WorkspaceConfig, mlflow: bool | str) -> WorkspaceConfig:
    if mlflow is True:
        return config
    if mlflow is False or mlflow is None:
        return replace(config, mlflow_enabled=False)
    return replace(config, mlflow_uri=str(mlflow), mlflow_enabled=True)


class Workspace:
    """One workspace folder: the run store, images, MLflow store and reports (``tracker.open(home)``)."""

    def __init__(self, config: WorkspaceConfig):
        self.config = config

    @property
    def home(self) -> Path:
        return self.config.home

    def __repr__(self) -> str:
        return f"<tracker workspace {self.home}>"

    # -- the store
    def _has_store(self) -> bool:
        return self.config.has_store()

    def _store(self):
        """The run store; reading never creates one (``Store.open`` names the missing store and the option)."""
        from tracker.store.runstore import Store

        return Store.open(self.config.db_url, create=False, home=self.config.home)

    def experiments(self) -> ExperimentList:
        """Every experiment in the store: runs per status and the last sweep."""
        if not self._has_store():
            return ExperimentList()
        with self._store() as store:
            items = store.experiments()
        return ExperimentList(ExperimentInfo.from_store(e) for e in items)

    def runs(self, experiment: str | None = None, *, where: Mapping[str, Any] | Iterable[str] | None = None,
             status: str | Iterable[str] | None = None, all_versions: bool = False) -> RunList:
        """Stored runs of ``experiment`` (all experiments when None), in plan order. ``where``: axis labels
        that must match, ``{"age": "young", "seed": 1}`` or ``["age=young"]``, or metric conditions such as
        ``["shapes>=0.5"]`` (<, <=, >, >=, =, !=); ``status``: done, failed, ... Only the runs of each
        experiment's current plan (its file as last run), as effects and the report show them, unless
        ``all_versions`` (runs of earlier versions of the file too)."""
        from tracker.metrics import split_where, storage

        with self._store() as store:
            if experiment is not None and store.experiment(experiment) is None:
                names = [e["name"] for e in store.experiments()]
                raise NotFoundError(f"no experiment {experiment!r} in the run store; "
                                    + (f"known: {', '.join(names)}" if names else "it is empty"))
            axis_items, conditions = split_where(_where_items(where), list(storage.names(store, experiment)))
            filters = plan.parse_where(axis_items, known_axes(store, experiment)) if axis_items else None
            records = store.runs(experiment, status=status, where=filters, current=not all_versions)
            found = self._with_metrics(store, records)
            return RunList([r for r in found if all(c(r.metrics) for c in conditions)])

    def _runs_by_keys(self, experiment: str, keys: Sequence[str]) -> RunList:
        if not self._has_store():
            return RunList([])
        with self._store() as store:
            by_key = {r.key: r for r in store.runs(experiment)}
            return RunList(self._with_metrics(store, [by_key[k] for k in keys if k in by_key]))

    @staticmethod
    def _with_metrics(store, records) -> list[Run]:
        """Runs with their stored metric values (those that apply)."""
        from tracker.metrics import storage

        values: dict[tuple[str, str], dict[str, float]] = {}
        for name in {r.experiment for r in records}:
            for key, scores in storage.values(store, name).items():
                values[(name, key)] = {k: v for k, v in scores.items() if v is not None}
        return [Run(r, values.get((r.experiment, r.key), {})) for r in records]

    def run(self, key: str, experiment: str | None = None) -> Run:
        """One run by its key or a unique prefix of it."""
        with self._store() as store:
            return self._with_metrics(store, [store.get_run(key, experiment)])[0]

    # -- grids and reports
    def grid(self, experiment: str, *, rows: str | None = None, cols: str | None = None,
             where: Mapping[str, Any] | Iterable[str] | None = None, max_pixels: int = GRID_MAX_PIXELS):
        """A labelled grid of the experiment's images as a PIL image (rows x columns, like ``tracker grid``);
        axes left varying give one grid per combination, stacked. Jupyter shows it as an HTML table with
        inline thumbnails and the same labels."""
        from PIL import Image

        from tracker.images import grid as gridimage
        from tracker.report.grids import grid_specs

        specs = [spec for _, spec in grid_specs(self.config, experiment, rows, cols, _where_items(where))]
        images = [gridimage.compose(s, max_pixels)[0] for s in specs]
        width = max(im.width for im in images)
        canvas = Image.new("RGB", (width, sum(im.height for im in images) + GRID_GAP * (len(images) - 1)),
                           gridimage.BACKGROUND)
        y = 0
        for im in images:
            canvas.paste(im, (0, y))
            y += im.height + GRID_GAP
        return grid_image(canvas, specs)

    def write_grids(self, experiment: str, out: PathLike, *, rows: str | None = None, cols: str | None = None,
                    where: Mapping[str, Any] | Iterable[str] | None = None, max_pixels: int = GRID_MAX_PIXELS,
                    attach_mlflow: bool = True) -> tuple[list, str | None]:
        """Write the grid PNG(s) (``tracker grid``); returns what was written and a warning line, if any."""
        from tracker.report.attach import attach_to_mlflow
        from tracker.report.grids import write_grids

        written = write_grids(self.config, experiment, rows, cols, _where_items(where), Path(out), max_pixels)
        warning = attach_to_mlflow(self.config, experiment, [(g.path, "grids") for g in written]) \
            if attach_mlflow else None
        return written, warning

    def report(self, experiment: str, out: PathLike | None = None, *, rows: str | None = None,
               cols: str | None = None, max_pixels: int = REPORT_MAX_PIXELS, attach_mlflow: bool = True) -> Path:
        """Write the HTML report folder (``tracker report``) and return the path of its index.html."""
        return self.build_report(experiment, out, rows=rows, cols=cols, max_pixels=max_pixels,
                                 attach_mlflow=attach_mlflow)[0]

    def build_report(self, experiment: str, out: PathLike | None = None, *, rows: str | None = None,
                     cols: str | None = None, max_pixels: int = REPORT_MAX_PIXELS, attach_mlflow: bool = True):
        """``report`` plus the report's data and a warning line when attaching it to MLflow failed."""
        from tracker.report.attach import attach_to_mlflow, mlflow_files
        from tracker.report.html import build

        config = self.config if attach_mlflow else replace(self.config, mlflow_enabled=False)
        index, data = build(config, experiment, rows=rows, cols=cols,
                            out=Path(out) if out is not None else None, max_pixels=max_pixels)
        warning = attach_to_mlflow(config, experiment, mlflow_files(index))
        return index, data, warning

    # -- reproducing
    def reproduce(self, target: str | PathLike, *, pipeline: Any = None, device: str | None = None,
                  model: str | None = None, save: PathLike | None = None,
                  on_source: Callable[[Any], None] | None = None, trust: Any = None):
        """Generate a run again (by key or unique prefix, or from a PNG) and compare the pixels with its image.
        A run made with your own pipeline object needs that object again: ``pipeline=pipe``. ``model``: use
        another model (e.g. for a PNG from another tool); ``on_source(source)`` is told what will be made."""
        from tracker.reproduce import regenerate as rp
        from tracker.engine import userpipe

        if isinstance(target, os.PathLike) or rp.looks_like_path(str(target)):
            source = rp.from_png(target, model=model, trust=trust,  # trust: what only the caller may decide
                                 model_by_hash=self._models_by_hash)
        else:
            from tracker.mlflow.fetch import Images

            with self._store() as store:
                source = rp.from_store(store, str(target), model=model, images=Images(self.config))
        if on_source is not None:
            on_source(source)
        engine = None
        if pipeline is not None:
            from tracker.engine.core import Engine

            user = userpipe.wrap(pipeline)
            if user.model != source.run.settings.model:
                raise UsageError(f"run {source.run.key} was made with {source.run.settings.model!r}, but the pipeline "
                                 f"passed is {user.model!r} (its components differ)")
            engine = Engine(device=device, pipeline=user)
            engine.inputs_dir = self.config.inputs_dir
        try:
            return rp.reproduce(source, device=device, engine=engine, save=Path(save) if save else None,
                                inputs_dir=self.config.inputs_dir)
        finally:
            if engine is not None:
                engine.close()

    def _models_by_hash(self, model_hash: str) -> str | None:
        """The single-file model of the run store whose sha256 an A1111 ``Model hash`` names (None: none)."""
        from tracker.reproduce.a1111 import models_by_hash

        if not self._has_store():
            return None
        h = model_hash.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{8,64}", h):
            return None
        with self._store() as store:
            candidates = store.models_with_revision("sha256:" + (h if len(h) >= 10 else ""))
        return models_by_hash(candidates)(h)

    def verify(self, experiment: str, sample: int = 8, device: str | None = None):
        """Regenerate a seeded sample of done runs and store the pixel drift with the latest sweep."""
        from tracker.reproduce import verify as vf
        from tracker.mlflow.fetch import Images

        with self._store() as store:
            return vf.verify(store, experiment, sample=sample, device=device, images=Images(self.config))


def _where_items(where: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    """``{"age": "young", "seed": 1}`` or ``["age=young", "seed=1"]`` -> ``["age=young", "seed=1"]``."""
    if not where:
        return []
    if isinstance(where, Mapping):
        return [f"{k}={v}" for k, v in where.items()]
    if isinstance(where, str):
        return [where]
    return [str(w) for w in where]


def known_axes(store, experiment: str | None) -> dict[str, list[str]]:
    """Axis -> labels the store knows for ``experiment`` (for all experiments when None)."""
    if experiment is not None:
        return store.axes(experiment)
    out: dict[str, list[str]] = {}
    for e in store.experiments():
        for name, labels in store.axes(e["name"]).items():
            have = out.setdefault(name, [])
            have.extend(lab for lab in labels if lab not in have)
    return out
