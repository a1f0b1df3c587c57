"""A sweep's experiment, parsed and planned once (``prepare``), and the steps every executor that records runs
shares: ``find_work`` (what is not done yet, also for ``--dry-run``) and ``start_sweep`` (the experiment, the sweep
and its runs in the store). ``tracker.sweep.driver`` prepares; the executors (``runner``, ``pool``,
``ray_cluster``) take the result. No torch.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from tracker.errors import SpecError
from tracker.experiment import plan, parse as spec
from tracker.experiment.model import ExperimentSpec
from tracker.experiment.plan import PlannedRun
from tracker.workspace import WorkspaceConfig

if TYPE_CHECKING:
    from tracker.sweep.runner import RunOptions, SweepSummary


def load_experiment(path: "str | Path | ExperimentSpec", from_key: str | None, db_url: str,
                    home: Path | None = None) -> ExperimentSpec:
    """Parse the file (or take a parsed ExperimentSpec) and, for ``--from KEY`` / ``seeds: {from: KEY}``, take
    that run's seed and settings."""
    from tracker.metrics import available

    exp = path if isinstance(path, ExperimentSpec) else spec.parse_file(path, metric_names=available())
    key = from_key or exp.seeds_from
    if key:
        from tracker.store.runstore import Store

        with Store.open(db_url, create=False, home=home) as store:  # the run must be there: create nothing
            base = store.get_run(key)
        exp = spec.with_base_run(exp, base.seed, base.settings().to_dict())
    return exp


@dataclass(frozen=True)
class Prepared:
    """An experiment parsed and planned once for one sweep: what every executor is given."""

    experiment: ExperimentSpec
    plan: plan.Plan
    file: Path | None  # the experiment file on disk (None: an ExperimentSpec built in Python)
    where: str  # what errors name: the file as given, else the experiment's path or name

    @property
    def base_dir(self) -> Path | None:
        """Relative model and VAE folders in the file resolve here."""
        return self.file.parent if self.file is not None else self.experiment.base_dir


def prepare(ws: WorkspaceConfig, source: "str | Path | ExperimentSpec", options: "RunOptions") -> Prepared:
    """Parse the file (or take a parsed ExperimentSpec), apply ``--from KEY`` and expand the plan: the one place a
    sweep reads its experiment (a bad file fails here, before anything is written)."""
    exp = load_experiment(source, options.from_key, ws.db_url, ws.home)
    where = exp.path or exp.name if isinstance(source, ExperimentSpec) else str(source)
    return Prepared(exp, plan.expand(exp, max_runs=options.max_runs), _source_file(source, exp), where)


@dataclass(frozen=True)
class DryRun:
    plan: plan.Plan
    todo: tuple[PlannedRun, ...]  # the runs a run would generate
    done: int = 0  # already done (skipped)
    failed_earlier: int = 0  # failed before and not retried (without --retry-failed)


@dataclass(frozen=True)
class Work:
    """What a sweep has to do: the one rule ``run`` and ``--dry-run`` share."""

    todo: list[PlannedRun]
    done: int  # planned runs already done, skipped
    failed_earlier: int  # planned runs that failed before, left alone without --retry-failed
    lost: list[str]  # done runs whose image is gone: made again
    in_mlflow: list[str]  # done runs whose image is only in MLflow: not made again
    status: dict[str, str]


def find_work(records, runs: Sequence[PlannedRun], retry_failed: bool) -> Work:
    """The planned ``runs`` to generate given the stored ``records``: pending or interrupted ones, done ones whose
    image is lost, and failed ones with ``retry_failed``; the others are counted as done or failed earlier."""
    status = {r.key: r.status for r in records}
    lost, in_mlflow = lost_images(records, {r.key for r in runs})  # a stat per done run: cheap
    status.update(dict.fromkeys(lost, "pending"))
    redo = ("pending", "running", "failed") if retry_failed else ("pending", "running")
    todo = [r for r in runs if status.get(r.key, "pending") in redo]
    failed_earlier = 0 if retry_failed else sum(status.get(r.key) == "failed" for r in runs)
    return Work(todo, len(runs) - len(todo) - failed_earlier, failed_earlier, lost, in_mlflow, status)


def dry_run(ws: WorkspaceConfig, path: "str | Path | ExperimentSpec", options: "RunOptions") -> DryRun:
    """What ``tracker run`` would do with the same options, reading the store only if it is there (nothing is
    written): the same rule (``find_work``) as the run."""
    prepared = prepare(ws, path, options)
    records: list = []
    if ws.has_store():
        from tracker.store.runstore import Store

        with Store.open(ws.db_url, home=ws.home) as store:
            records = store.runs(prepared.experiment.name)
    work = find_work(records, prepared.plan.runs, options.retry_failed)
    return DryRun(prepared.plan, tuple(work.todo), work.done, work.failed_earlier)


def claim_name(store, exp: ExperimentSpec, file: Path | None) -> None:
    """Refuse a second experiment file claiming a name this store already keeps for another file: their runs
    would pool in one experiment (effects, grids, scores) without a word. The same experiment may come back from
    another path (the file moved or renamed, another machine's checkout, an ExperimentSpec built in Python): only a
    recorded file that still exists, still names this experiment and says something else is another file."""
    info = store.experiment(exp.name)
    if file is None or info is None or not info.get("source_path"):
        return
    old = Path(info["source_path"])
    if str(old) == str(file):
        return
    try:
        text = old.read_text(encoding="utf-8")
        import yaml

        data = yaml.safe_load(text)
    except Exception:  # noqa: BLE001 -- gone, unreadable, or not YAML any more: not a rival claim
        return
    name = data.get("name", old.stem) if isinstance(data, dict) else None
    if text == exp.source or name != exp.name:
        return
    raise SpecError(str(file), "name", f"{exp.name!r} is already the experiment of {old} in this store (another "
                                       f"file); give this file its own name, or edit and run {old.name} itself")


def _source_file(path: "str | Path | ExperimentSpec", exp: ExperimentSpec) -> Path | None:
    """The experiment file on disk, if there is one (an ExperimentSpec built in Python has none)."""
    if not isinstance(path, ExperimentSpec):
        return Path(path).resolve()
    return Path(exp.path).resolve() if exp.path and Path(exp.path).is_file() else None


def find_work_in(store, prepared: Prepared, options: "RunOptions") -> Work:
    """``find_work`` on the store's records of the experiment, after ``claim_name`` (another file's name is
    refused before anything is written)."""
    claim_name(store, prepared.experiment, prepared.file)
    return find_work(store.runs(prepared.experiment.name), prepared.plan.runs, options.retry_failed)


def start_sweep(store, prepared: Prepared, options: "RunOptions", work: Work, summary: "SweepSummary",
                device: str, environment: dict, versions: dict | None = None) -> dict[str, str]:
    """Record the experiment and the sweep, insert missing runs as pending, requeue lost images (and failed runs
    with --retry-failed), count what is skipped; returns the runs' stored status. Every executor that records
    runs (in process, the Ray driver) starts its sweep here."""
    exp, the_plan, file = prepared.experiment, prepared.plan, prepared.file
    store_inputs(exp, store.home)
    store.save_experiment(exp.name, str(file) if file is not None else None, exp.source, the_plan.version)
    record: dict = {"command": options.command or " ".join(["tracker", *sys.argv[1:]]), "host": socket.gethostname()}
    if versions is not None:
        record["versions"] = versions
    summary.sweep_id = store.start_sweep(exp.name, {**record, "device": device, "environment": environment,
                                                    "planned": len(the_plan.runs)})
    status = store.plan_runs(summary.sweep_id, the_plan.runs, the_plan.version)
    if work.lost or work.in_mlflow:
        import logging

        log = logging.getLogger("tracker")
        if work.lost:
            log.warning(f"{len(work.lost)} done runs of {exp.name} lost their image; generating them again")
            store.mark_pending(exp.name, work.lost)
        if work.in_mlflow:
            log.warning(f"{len(work.in_mlflow)} done runs of {exp.name} have no image in this workspace but were "
                        f"logged to MLflow, where report, grid and reproduce read them; not made again "
                        f"(`tracker check --fix {exp.name}` then `tracker run` makes them here)")
    if options.retry_failed:
        store.mark_pending(exp.name, [r.key for r in work.todo if status.get(r.key) == "failed"])
    summary.skipped, summary.failed_earlier = work.done, work.failed_earlier
    return status


def store_inputs(exp: ExperimentSpec, home: Path) -> None:
    """The experiment's input images into the workspace, once each by their sha256 (``<home>/inputs``): what the
    engine, reproduce and the report read from then on. Every sweep that records runs stores them first."""
    if exp.inputs:
        from tracker.experiment import inputs

        inputs.store(exp.inputs.values(), Path(home) / "inputs")


def lost_images(records, keys: set[str]) -> tuple[list[str], list[str]]:
    """Done runs (of ``keys``) whose image file is not in this workspace (one stat each), as (lost, in MLflow).
    Lost ones are generated again. Not a run logged to MLflow (``mlflow_run_id``): its PNG is in MLflow's
    artifact store, where report, grid and reproduce read it (team mode: another machine made it); the sweep
    says so in one line, and ``tracker check --fix`` queues such runs when they should be made here."""
    gone = [r for r in records if r.status == "done" and r.key in keys and not (r.image and Path(r.image).is_file())]
    return [r.key for r in gone if not r.mlflow_run_id], [r.key for r in gone if r.mlflow_run_id]
