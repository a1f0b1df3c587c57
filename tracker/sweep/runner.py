"""``tracker run``: turn a plan into images, recording every run so nothing is lost or redone.

``run_prepared`` is the in-process executor (also one rank of an ``accelerate launch``) of a plan prepared once
by ``tracker.sweep.preparation``: its orchestration reads as numbered steps; torch, diffusers and mlflow are
imported only once there is work to do. ``Sweep`` records what a sweep generates (here, and on the Ray driver).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path
from typing import Any, Iterator, Sequence

from tracker.version import __version__
from tracker.engine import batches
from tracker.sweep import accelerate_rank as distributed, preparation
from tracker.sweep.preparation import Prepared
from tracker.experiment import plan
from tracker.engine.batches import BatchHooks
from tracker.errors import ModelError
from tracker.textfmt import NoBar
from tracker.experiment.model import ExperimentSpec
from tracker.experiment.plan import PlannedRun
from tracker.experiment.settings import COMPILE_OFF
from tracker.workspace import WorkspaceConfig

AUTO_BATCH_MAX = 8  # batch_size: auto starts here (or at the group size) and halves on out-of-memory
VERSION_KEYS = ("python", "torch", "diffusers", "transformers", "accelerate")


@dataclass(frozen=True)
class RunOptions:
    max_runs: int | None = plan.DEFAULT_MAX_RUNS
    device: str | None = None  # overrides the file's device
    retry_failed: bool = False
    from_key: str | None = None
    progress: bool = True
    command: str | None = None  # what started the sweep, as recorded [default: the command line]


@dataclass
class SweepSummary:
    experiment: str
    planned: int
    done: int = 0
    skipped: int = 0  # already done
    failed: int = 0  # failed in this sweep
    failed_earlier: int = 0  # failed in an earlier sweep and left so (not retried without --retry-failed)
    seconds: float = 0.0
    images_dir: Path | None = None
    sweep_id: int | None = None
    mlflow_waiting: int = 0
    mlflow_error: str | None = None
    mlflow_url: str | None = None  # the experiment's runs in the MLflow UI
    failures: list[tuple[str, str]] = field(default_factory=list)
    keys: tuple[str, ...] = ()  # the plan's run keys, in plan order
    busy_seconds: float = 0.0  # inside pipeline calls
    warmup_seconds: float = 0.0  # compile warm-up calls (compile setting), apart from per-image times

    @property
    def idle_fraction(self) -> float | None:
        """The share of sweep wall time outside pipeline calls (the accelerator idle)."""
        return max(0.0, 1.0 - self.busy_seconds / self.seconds) if self.seconds > 0 and self.busy_seconds else None

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        idle = self.idle_fraction
        return {"planned": self.planned, "done": self.done, "skipped": self.skipped, "failed": self.failed,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 4),
                "idle_fraction": round(idle, 4) if idle is not None else None,
                "warmup_seconds": round(self.warmup_seconds, 3) if self.warmup_seconds else None}


def run_prepared(ws: WorkspaceConfig, prepared: Prepared, options: RunOptions = RunOptions(),
                 pipeline=None, engine=None) -> SweepSummary:
    """The in-process executor: generate every planned run not done yet. ``pipeline``: a
    ``tracker.engine.userpipe.UserPipeline`` for runs whose model is its name. ``engine``: an ``Engine`` to use
    instead of a new one (bench/gpu_standin.py passes one whose pipeline stands in for a GPU); the CLI never does."""
    from tracker.sweep import claims, claim_loop as work
    from tracker.store.runstore import Store

    # 1. The experiment is parsed and planned (``preparation.prepare``). Under accelerate launch this process is
    #    one rank: its device, no progress bar and no MLflow unless it is rank 0.
    rank = None
    if distributed.launched():
        rank = distributed.rank(options.device)
        options = replace(options, device=rank.device, progress=options.progress and rank.is_main)
        ws = replace(ws, mlflow_enabled=ws.mlflow_enabled and rank.is_main)
    exp, the_plan, file, where = prepared.experiment, prepared.plan, prepared.file, prepared.where
    summary = SweepSummary(exp.name, planned=len(the_plan.runs), images_dir=ws.images_dir / exp.name,
                           keys=tuple(r.key for r in the_plan.runs))

    # 2. Find the work: runs not done yet (failed ones too with --retry-failed).
    ws.ensure()
    store = Store.open(ws.db_url, home=ws.home)
    try:
        found = preparation.find_work_in(store, prepared, options)
        todo = found.todo

        # 3. Start the MLflow worker now: its imports overlap the model loading below.
        sink = mlflow_sink(ws, exp.name)
        try:
            # 4. Load every pipeline the work needs (model, VAE, scheduler, dtype, device): a missing model or
            #    a bad option fails here, before the store records anything.
            if any(r.settings.compile != COMPILE_OFF for r in todo):
                speed_cache_dir(ws.home)  # compile: inductor's artefacts stay in the workspace
            engine = engine or _engine(options, prepared.base_dir, pipeline)
            engine.inputs_dir = ws.inputs_dir  # image-conditioned runs read their inputs from the workspace
            try:
                for group in ordered_groups(todo):
                    engine.prepare(group[0].settings)
                engine.check_prompts(todo)  # tokenizer checks now, not between batches
            except ModelError as e:
                raise ModelError(f"{where}: {e}") from None  # name the file, as spec errors do

            # 5. Record the experiment and the sweep; insert missing runs as pending.
            environment = engine.environment()
            status = preparation.start_sweep(store, prepared, options, found, summary, engine.device_for(exp.settings),
                                             environment, {"prompt-tracker": __version__,
                                                           **{k: environment.get(k) for k in VERSION_KEYS}})
            sweep_id = summary.sweep_id
        except BaseException:
            if sink is not None:
                sink.close()
            raise

        # 6. Log to MLflow in the background, off the critical path; retry runs an outage left unsynced.
        if sink is not None:
            from tracker.mlflow.mapping import environment_tags

            sink.start_sweep(sweep_id, str(file) if file is not None else None, environment_tags(environment))
            for rec in store.unsynced(exp.name):
                if rec.status == "done" and rec.key in status:
                    sink.submit_key(exp.name, rec.key)

        # 7. Generate, cheapest switches innermost; the writing stage records each run while the next
        #    batch generates (tracker.sweep.writer). This process is one worker of the experiment: it claims
        #    batch-sized groups in the store (tracker.sweep.claims), so concurrent workers share the plan.
        worker = claims.register(store, sweep_id, engine.device_for(exp.settings),
                                 rank.name if rank else worker_name())
        sweep = Sweep(ws, store, engine, sink, sweep_id, summary, claimed=True)
        try:
            with progress_bar(len(todo), exp.name, options.progress) as bar:
                sweep.bar = bar
                sweep.writer = writer_for(ws, store, sink, engine, exp.settings, sweep, scorer_for(store, exp, engine))
                try:
                    if todo:
                        work.generate_claimed(store, list(ordered_groups(todo)), worker, AUTO_BATCH_MAX,
                                              sweep.run_group, summary, gate=sweep.calling)
                finally:
                    sweep.writer.close()  # drains: what was generated is written, also on Ctrl-C
            if sink is not None and rank is not None:  # rank 0 logs the other ranks' runs too
                for key in claims.unsynced_by_others(store, exp.name, worker):
                    sink.submit_key(exp.name, key)
        except BaseException as e:  # Ctrl-C, SIGTERM, a write that failed (disk full, read-only), a lost store
            lost = _store_lost(store)
            sweep.interrupted(worker)
            if lost is not None and not isinstance(e, KeyboardInterrupt):
                raise lost from e  # "no such table" from a store deleted under us: say what happened
            raise
        claims.finish(store, worker, "failed" if summary.failed else "done", done=summary.done, failed=summary.failed)
        sweep.finish("failed" if summary.failed else "done")
    finally:
        if engine is not None:
            engine.close()  # a user's pipeline goes back as it came
        store.close()
    return summary


_CACHE_DIRS: dict[str, str] = {}  # the cache folders this process set (a user's own setting is kept)


def speed_cache_dir(home: Path) -> None:
    """compile: inductor's and triton's compiled artefacts go to the workspace, so a second sweep reuses them.

    A folder the user chose is kept; inductor's own default (``<tmp>/torchinductor_<user>``, which inductor
    writes into the environment once it has run) is not a choice."""
    import getpass
    import os
    import re
    import tempfile

    try:
        user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    defaults = {"TORCHINDUCTOR_CACHE_DIR": os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")}
    for var, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton")):
        if os.environ.get(var) in (None, _CACHE_DIRS.get(var), defaults.get(var)):
            os.environ[var] = _CACHE_DIRS[var] = str(home / "cache" / sub)


def worker_name() -> str | None:
    """``TRACKER_WORKER_NAME`` (set by ``--workers``), else the store's default host:pid."""
    return os.environ.get("TRACKER_WORKER_NAME") or None



def _engine(options: RunOptions, base_dir: Path | None, pipeline=None):
    """Relative model and VAE folders in the file resolve against the file's folder, as in spec."""
    from tracker.engine.core import Engine

    return Engine(device=options.device, base_dir=base_dir, pipeline=pipeline)


def mlflow_sink(ws: WorkspaceConfig, experiment: str):
    """The MLflow logging process of a sweep (``tracker.mlflow.worker.MlflowSink``), or None with MLflow off."""
    if not ws.mlflow_enabled:
        return None
    from tracker.mlflow.worker import MlflowSink

    return MlflowSink(ws.mlflow_tracking_uri, experiment, ws.db_url, ws.mlflow_artifacts_dir, home=ws.home)


def scorer_for(store, exp: ExperimentSpec, engine):
    """The experiment's metrics: the writing stage scores each image after it is written, before MLflow gets it."""
    if not exp.metrics:
        return None
    from tracker.metrics.scoring import Scorer

    return Scorer(store, exp.name, exp.metrics, exp.metric_options, engine.device_for(exp.settings))


def writer_for(ws, store, sink, engine, settings, sweep: "Sweep", scorer=None):
    """The writing stage; on a CPU sweep its threads run at a lower priority than generation's."""
    from tracker.sweep.writer import Writer

    cpu = engine.device_for(settings) == "cpu"
    return Writer(ws, store, sink, sweep.written, lambda run, error, timing: sweep.fail(run, error, **timing),
                  nice=10 if cpu else 0, scorer=scorer, gate=sweep.calling)


def ordered_groups(runs: Sequence[PlannedRun]) -> Iterator[list[PlannedRun]]:
    """Runs sharing every pipeline setting form one group; groups sorted so model, then VAE, then dtype switch least.
    Runs with a negative prompt and runs without one never share a group: no negative prompt is not "" to a
    pipeline (SDXL's zero embeddings, FLUX's true CFG), so a batch holds one kind (``Engine.generate``)."""
    def order(r: PlannedRun) -> tuple:
        s = r.settings
        return (s.model, s.vae, s.dtype, s.allow_pickle, s.device, repr(s.pipeline_key()), bool(r.negative_prompt))

    for _, grp in groupby(sorted(runs, key=lambda r: (order(r), r.index)), key=order):
        yield list(grp)


def _store_lost(store) -> Exception | None:
    from tracker.errors import StoreError

    try:
        store.check_file()
    except StoreError as e:
        return e
    return None


# ---------------------------------------------------------------------------------------------
# One sweep: generate groups through the batch executor, hand batches to the writing stage


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass(eq=False)
class Sweep(BatchHooks):
    """Everything one sweep's generation touches, with what it does: ``run_group`` (one group of runs sharing
    their settings, through the batch executor ``tracker.engine.batches``), ``record`` (a finished batch, handed to
    the writing stage, ``tracker.sweep.writer``), ``written`` / ``fail`` (a run done or failed), ``finish`` and
    ``interrupted``. Where the groups come from is the caller's (``run_prepared``: the groups this worker
    claims, ``tracker.sweep.claim_loop``; ``tracker.sweep.ray_cluster``: what the actors send back)."""

    ws: WorkspaceConfig
    store: Any  # tracker.store.runstore.Store
    engine: Any  # tracker.engine.core.Engine (raydist: what the actors knew of it)
    sink: Any  # tracker.mlflow.MlflowSink | None
    sweep_id: int
    summary: SweepSummary
    bar: Any = field(default_factory=NoBar)  # progress: anything with update(n)
    writer: Any = None  # tracker.sweep.writer.Writer: submit(runs, result, facts), fail(run, error), close()
    began: float = field(default_factory=time.perf_counter)  # time.perf_counter() when generation began
    claimed: bool = False  # the runs are this worker's claims: running already, and they stay so while retried
    fits: dict = field(default_factory=dict)  # settings -> batch size that fitted after out of memory (batches)
    facts: Any = None  # (settings, BatchFacts) of the last batch recorded; None: read them again
    # set from the first denoiser call of a batch (the engine's ``denoising``) until the batch is done, and when
    # no call is next: the writing stage and the next claim wait for it (briefly), so their Python does not
    # take the GIL from the generating thread's work between two calls
    calling: threading.Event = field(default_factory=_set_event)

    def __post_init__(self) -> None:
        if hasattr(self.engine, "denoising"):
            self.engine.denoising = self.calling

    def run_group(self, group: Sequence[PlannedRun]) -> None:
        """Generate one group in batches (``batch_size: auto`` starts at the group size, at most AUTO_BATCH_MAX);
        an out-of-memory error halves the batch and retries it; later groups with those settings start there."""
        settings = group[0].settings
        batch = min(len(group), AUTO_BATCH_MAX) if settings.batch_size == "auto" else settings.batch_size
        batches.execute(self.engine, list(group), batch, self, fits=self.fits)

    # -- the batch executor's hooks ----------------------------------------------------------------

    def started(self, runs: Sequence[PlannedRun]) -> None:
        if not self.claimed:
            self.store.mark_running(runs[0].experiment, [r.key for r in runs], self.sweep_id)

    def given_back(self, runs: Sequence[PlannedRun]) -> None:
        if not self.claimed:
            self.store.mark_pending(runs[0].experiment, [r.key for r in runs])

    def halved(self, runs: Sequence[PlannedRun], batch: int, error: BaseException) -> None:
        self.store.add_event(self.sweep_id, "oom", f"out of memory at batch size {batch}; retrying at {batch // 2}",
                             {"keys": [r.key for r in runs], "batch_size": batch})

    def done(self, runs: Sequence[PlannedRun], result) -> None:
        self.calling.clear()  # until the next call denoises, the generating thread's work comes first
        self.record(runs, result)
        self.store.check_file()  # one stat per batch: a deleted tracker.db must not swallow the sweep

    def failed(self, run: PlannedRun, error: str) -> None:
        self.writer.fail(run, error)

    # -- recording -------------------------------------------------------------------------------

    def record(self, chunk: Sequence[PlannedRun], result) -> None:
        """Hand a batch to the writing stage: it writes each image atomically, then marks its run done (a
        killed process never leaves a done run without its image)."""
        from tracker.sweep.writer import BatchFacts

        self.summary.busy_seconds += result.seconds + result.warmup_seconds
        self.summary.warmup_seconds += result.warmup_seconds
        # the runs of a chunk share their settings: what the engine knows of them is the same for each, and
        # for each batch of those settings (read once: it would take ~2 ms between two pipeline calls)
        engine, settings = self.engine, chunk[0].settings
        if self.facts is None or self.facts[0] != settings:
            self.facts = (settings, BatchFacts(
                scheduler_config=engine.scheduler_config(), device=engine.device_for(settings),
                environment=engine.environment(), revision=engine.model_revision_later(settings.model),
                pipeline=engine.pipeline_info(settings.model),
                vae_revision=getattr(engine, "vae_revision_later", lambda vae: None)(settings.vae)))
        self.writer.submit(list(chunk), result, self.facts[1])

    def written(self, run: PlannedRun) -> None:
        """The writing stage marked the run done (its image is durable)."""
        self.summary.done += 1
        self.bar.update(1)

    def fail(self, run: PlannedRun, error: str, **timing) -> None:
        self.store.mark_failed(run.experiment, run.key, error, **timing)
        self.summary.failed += 1
        self.summary.failures.append((run.key, error))
        self.bar.update(1)

    def finish(self, status: str) -> None:
        """Close the sweep in the store and MLflow."""
        summary = self.summary
        summary.seconds = time.perf_counter() - self.began
        if status != "interrupted":
            self.store.check_file()
        self.store.finish_sweep(self.sweep_id, {**summary.to_dict(), "status": status})
        if self.sink is not None:
            self.sink.finish_sweep({**summary.to_dict(), "status": status})
            result = self.sink.close()
            summary.mlflow_waiting = getattr(result, "waiting", 0)
            summary.mlflow_error = getattr(result, "error", None)
            from tracker.mlflow.ui import experiment_url

            summary.mlflow_url = experiment_url(self.ws, getattr(result, "experiment_id", None))

    def interrupted(self, worker=None) -> None:
        """This sweep's unfinished runs become pending again and the sweep ends ``interrupted``. Best effort:
        when the store itself is what failed, the next ``tracker run`` resets them (runs left running)."""
        from tracker.sweep import claims

        try:
            if worker is not None:
                claims.finish(self.store, worker, "interrupted", done=self.summary.done,  # the runs it holds go
                              failed=self.summary.failed)  # back to pending
            self.store.reset_stale(self.summary.experiment, sweep_id=self.sweep_id)
            self.finish("interrupted")
        except Exception:  # the original error is the one to report
            if self.sink is not None:
                self.sink.close()


@contextlib.contextmanager
def progress_bar(total: int, name: str, enabled: bool):
    """A bar with runs done/total, images/s and ETA (tqdm's rate and remaining time); warnings print above it."""
    if not enabled or total == 0:
        yield NoBar()
        return
    import logging

    from tqdm.auto import tqdm  # a notebook widget in Jupyter, a text bar on a terminal
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger("tracker")]), \
            tqdm(total=total, desc=name, unit="img", dynamic_ncols=True, file=sys.stderr,
                 bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| {rate_fmt} ETA {remaining} ({elapsed})") as bar:
        yield bar


def format_summary(s: SweepSummary) -> str:
    earlier = f"{s.failed_earlier} failed earlier (use --retry-failed), " if s.failed_earlier else ""
    lines = [f"{s.experiment}: {s.done} done, {s.skipped} skipped (already done), {earlier}{s.failed} failed "
             f"of {s.planned} planned in {s.seconds:.1f} s"
             + (f" ({s.images_per_second:.2f} images/s)" if s.done else "")
             + (f"; {s.idle_fraction:.1%} of it outside pipeline calls (idle)" if s.idle_fraction is not None else "")
             + (f"; compile warm-up {s.warmup_seconds:.1f} s" if s.warmup_seconds else "")]
    for key, err in s.failures[:10]:
        lines.append(f"  failed {key}: {err}")
    if len(s.failures) > 10:
        lines.append(f"  ... and {len(s.failures) - 10} more (tracker runs {s.experiment} --status failed)")
    if s.images_dir is not None:
        lines.append(f"images: {s.images_dir}")
    if s.mlflow_url and s.done:
        lines.append(f"MLflow: {s.mlflow_url}")
    if s.mlflow_waiting:
        lines.append(f"warning: {s.mlflow_waiting} runs did not reach MLflow"
                     + (f" ({s.mlflow_error})" if s.mlflow_error else "") + f"; run `tracker sync {s.experiment}` later")
    return "\n".join(lines)
