"""Reproduce an image from its recipe, and check a sample of an experiment for drift.

A run is rebuilt from one of three sources: the ``prompt-tracker`` recipe chunk of a PNG the tracker
wrote, the run store (by key), or an AUTOMATIC1111 ``parameters`` chunk from another tool (mapped by
``tracker.reproduce.a1111``). What a PNG says is checked by ``tracker.reproduce.trust``. The run is generated again through the
shared batch executor and its pixels are compared with the original image's.

torch/diffusers load only in ``regenerate`` (through ``tracker.engine.core``), so the mapping and comparison
code stays importable and testable without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from tracker.engine import batches
from tracker.images import pngmeta
from tracker.reproduce.a1111 import run_from_a1111
from tracker.errors import ModelError, TrackerError
from tracker.experiment.plan import PlannedRun
from tracker.reproduce.trust import Trust, checked_settings


@dataclass(frozen=True)
class RunSource:
    """What to reproduce: the run, the image to compare with, and what we know about how it was made."""

    run: PlannedRun
    origin: str  # "recipe" (a tracker PNG), "store" (by key) or "a1111" (a parameters chunk only)
    reference: Path | None  # the original image
    original: Mapping[str, Any] = field(default_factory=dict)  # environment, model_revision, device_used, batch size
    notes: tuple[str, ...] = ()  # A1111 items not mapped, one line each
    model_hash: str | None = None  # A1111 "Model hash", compared with the model revision where we can


@dataclass(frozen=True)
class Drift:
    """How far a regenerated image is from the original, in 8-bit pixel levels."""

    identical: bool
    max_abs: int
    mean_abs: float
    differing: int  # pixels (any channel) that differ
    pixels: int
    reason: str | None = None  # e.g. a size mismatch or a missing image, when no pixels were compared

    @classmethod
    def failed(cls, reason: str) -> "Drift":
        """No pixels compared (no image made, original missing): counts as drift."""
        return cls(False, 0, 0.0, 0, 0, reason=reason)

    def describe(self) -> str:
        if self.reason:
            return f"differs: {self.reason}"
        if self.identical:
            return f"identical: all {self.pixels} pixels match"
        return (f"differs: max abs pixel difference {self.max_abs}, mean {self.mean_abs:.4f} "
                f"({self.differing} of {self.pixels} pixels differ)")

    def to_json(self) -> dict[str, Any]:
        return {"identical": self.identical, "max_abs": self.max_abs, "mean_abs": round(self.mean_abs, 6),
                "differing": self.differing, "pixels": self.pixels, "reason": self.reason}



# ---------------------------------------------------------------------------------------------- sources



def run_from_recipe(recipe: Mapping[str, Any], where: str = "recipe", trust: Trust | None = None,
                    notes: list[str] | None = None, base_dir: Path | None = None) -> PlannedRun:
    """Rebuild the PlannedRun a ``prompt-tracker`` recipe was made from (``PlannedRun.from_recipe``), every
    setting checked like an experiment file (``checked_settings``)."""
    notes = [] if notes is None else notes
    return PlannedRun.from_recipe(recipe, where,
                                  lambda values: checked_settings(values, where, trust or Trust(), notes, base_dir))


def original_facts(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """What a recipe says of where its image was made: environment, model revision, device, batch size."""
    return {
        "environment": recipe.get("environment") or {},
        "model_revision": recipe.get("model_revision"),
        "device_used": recipe.get("device_used") or recipe.get("device"),
        "batch_size_used": recipe.get("batch_size_used"),
    }


def from_png(path: str | Path, model: str | None = None, trust: Trust | None = None,
             model_by_hash=None) -> RunSource:
    """A PNG: its recipe when it has one, else its A1111 ``parameters`` chunk; compared with its own pixels.

    What the PNG says is checked like an experiment file; safety and cost come from ``trust`` (the command line).
    ``model_by_hash``: finds a single-file model by an A1111 ``Model hash`` (``a1111.models_by_hash``).
    """
    from dataclasses import replace

    path = Path(path)
    trust = trust or Trust()
    if model:
        trust = replace(trust, model=model)
    text, recipe = pngmeta.read_png(path, max_pixels=trust.max_pixels)
    if recipe is not None:
        notes: list[str] = []
        run = run_from_recipe(recipe, str(path), trust, notes, base_dir=path.parent)
        return RunSource(run, "recipe", path, original_facts(recipe), tuple(notes))
    if text is None:
        with pngmeta.open_png(path) as im:
            others = sorted(pngmeta.chunks(im))
        comfy = " (its ComfyUI workflow chunks are not supported)" if {"prompt", "workflow"} & set(others) else ""
        raise TrackerError(f"{path}: has no {pngmeta.RECIPE_CHUNK} or {pngmeta.PARAMETERS_CHUNK} metadata{comfy}; "
                           "nothing says how it was made")
    params = pngmeta.parse_a1111(text)
    run, notes = run_from_a1111(params, where=str(path), base_dir=path.parent, trust=trust,
                                model_by_hash=model_by_hash)
    return RunSource(run, "a1111", path, {}, tuple(notes), params.settings.get("Model hash"))


def from_store(store, key: str, model: str | None = None, images=None) -> RunSource:
    """A run of the store by key (or unique prefix); compared with its stored image, found by ``images``
    (``tracker.mlflow.fetch.Images``: the workspace, else MLflow's artifact store) when given."""
    rec = store.get_run(key)
    if rec.status != "done" or not rec.image:
        raise TrackerError(f"run {rec.key} of experiment {rec.experiment!r} is {rec.status} and has no image; "
                           f"run the experiment first (tracker run)")
    reference, notes = Path(rec.image), ()
    if images is not None:
        found = images.locate(rec, modified_ok=True)  # an edited original: the comparison says how far it moved
        if found.path is None:
            raise TrackerError(f"run {rec.key}: {found.problem}; nothing to compare with")
        reference = found.path
        if found.origin == "mlflow":
            notes = (f"the original image was read from MLflow run {rec.mlflow_run_id} at {images.uri} "
                     "(its sha256 matches the run store's)",)
        elif found.state is not None:  # edited since it was made: compared all the same, and said so
            notes = (edited_note(rec),)
    environment = store.sweep(rec.sweep_id).get("environment") if rec.sweep_id is not None else None
    recipe = rec.to_recipe(environment=environment)
    run = rec.planned()  # the stored run as planned (PlannedRun.from_recipe(recipe) reads the same back)
    return RunSource(_with_settings(run, model=model) if model else run, "store", reference, original_facts(recipe), notes)


def looks_like_path(target: str) -> bool:
    return target.lower().endswith(".png") or "/" in target or "\\" in target or Path(target).exists()



def _with_settings(run: PlannedRun, **changes: Any) -> PlannedRun:
    from dataclasses import replace

    return replace(run, settings=replace(run.settings, **changes))


# ---------------------------------------------------------------------------------------------- pixels


def compare(original, regenerated) -> Drift:
    """Pixel drift between two images (compared as 8-bit RGB)."""
    import numpy as np

    a, b = original.convert("RGB"), regenerated.convert("RGB")
    if a.size != b.size:
        return Drift(False, 255, 255.0, a.size[0] * a.size[1], a.size[0] * a.size[1],
                     reason=f"size {b.size[0]}x{b.size[1]} instead of {a.size[0]}x{a.size[1]}")
    d = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    differing = int(d.any(axis=-1).sum())
    return Drift(differing == 0, int(d.max()), float(d.mean()), differing, a.size[0] * a.size[1])


def environment_warnings(original: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One line per fact that differs from when the image was made: versions, device, CUDA, model revision."""
    then_env, now_env = dict(original.get("environment") or {}), dict(current.get("environment") or {})
    if "device" not in then_env and original.get("device_used"):
        then_env["device"] = original["device_used"]
    now_env.setdefault("device", current.get("device_used"))
    then_env["model revision"] = original.get("model_revision")
    now_env["model revision"] = current.get("model_revision")
    return [f"{k} differs: {then_env[k]} when the image was made, {now_env[k]} now"
            for k in then_env if then_env[k] is not None and now_env.get(k) is not None
            and str(then_env[k]) != str(now_env[k])]


# ---------------------------------------------------------------------------------------------- generating


def regenerate(engine, runs: Sequence[PlannedRun], batch_sizes: Mapping[str, int | None] | None = None) -> dict:
    """Generate ``runs`` again through the shared batch executor (``tracker.engine.batches``); returns key -> ImageResult.

    A run first made in a batch of N is made again in a batch of N: batch size shifts float results by
    ~1e-6, which can flip an 8-bit pixel, while the companions in the batch do not matter (each image has
    its own generator). Runs sharing settings and batch size fill one batch; a short batch is padded by
    repeating its first run. A run that cannot be generated comes back without an image, with its error.
    """
    batch_sizes = batch_sizes or {}
    groups: dict[tuple, list[PlannedRun]] = {}
    for run in runs:
        n = max(1, int(batch_sizes.get(run.key) or 1))
        groups.setdefault((run.settings, n, bool(run.negative_prompt)), []).append(run)
    collected = Collected()
    for (_, n, _), group in groups.items():
        batches.execute(engine, group, n, collected, pad=True)
    return collected.images


@dataclass(frozen=True)
class _NoImage:
    """A run the executor could not generate: no image, and why."""

    key: str
    error: str
    image: None = None


class Collected(batches.BatchHooks):
    """The images of a regeneration by key (the first one of each run)."""

    def __init__(self) -> None:
        self.images: dict[str, Any] = {}

    def done(self, runs: Sequence[PlannedRun], result) -> None:
        for img in result.images:
            self.images.setdefault(img.key, img)

    def failed(self, run: PlannedRun, error: str) -> None:
        self.images.setdefault(run.key, _NoImage(run.key, error))


def new_engine(device: str | None, inputs_dir: Path | None = None):
    """An Engine on ``device`` for regenerating runs (torch and diffusers load here); ``inputs_dir``: the
    workspace's input images (image-conditioned runs)."""
    from tracker.engine.core import Engine

    engine = Engine(device=device)
    engine.inputs_dir = inputs_dir
    return engine


def check_inputs(run: PlannedRun, inputs_dir: Path | None, where: str) -> None:
    """Every input image of ``run`` is in the workspace (by its sha256), or one line saying which is missing."""
    from tracker.experiment import inputs

    for field_name, sha in inputs.hashes_of(run.settings):
        inputs.require(inputs_dir, sha, field_name, where)


def current_facts(engine, run: PlannedRun) -> dict[str, Any]:
    """The same facts of this machine's engine for ``run``, to compare with ``original_facts``."""
    return {"environment": engine.environment(), "model_revision": engine.model_revision(run.settings.model),
            "device_used": engine.device_for(run.settings)}


@dataclass(frozen=True)
class Reproduction:
    source: RunSource
    drift: Drift
    warnings: tuple[str, ...]
    device: str
    error: str | None = None  # the engine made no image (e.g. NaN in output)


def reproduce(source: RunSource, device: str | None = None, engine=None, save: Path | None = None,
              inputs_dir: Path | None = None) -> Reproduction:
    """Generate the source's run again and compare it with the original image. ``inputs_dir``: where the
    workspace keeps input images (an img2img run's source image, by its sha256)."""
    if source.reference is None:
        raise TrackerError("no original image to compare with")
    check_inputs(source.run, inputs_dir if engine is None else engine.inputs_dir or inputs_dir, str(source.reference))
    reference = pngmeta.open_png(source.reference)  # fail on a missing original before loading a model
    engine = engine or new_engine(device, inputs_dir)
    run = source.run
    try:
        current = current_facts(engine, run)
    except ModelError as e:
        if device:
            raise
        raise ModelError(f"{e}; or pass --device to regenerate elsewhere (the pixels may then differ)") from None
    warnings = environment_warnings(source.original, current)
    now_hash = pngmeta.short_hash(current["model_revision"])
    if source.model_hash and now_hash and source.model_hash != now_hash \
            and not _same_file_hash(source.model_hash, run.settings.model):
        warnings.append(f"model hash differs: {source.model_hash} in the PNG, {now_hash} now")
    result = regenerate(engine, [run], {run.key: source.original.get("batch_size_used")})[run.key]
    if result.image is None:
        drift = Drift.failed(f"no image was generated: {result.error}")
        return Reproduction(source, drift, tuple(warnings), current["device_used"], result.error)
    if save is not None:
        recipe = run.to_recipe(model_revision=current["model_revision"], scheduler_config=engine.scheduler_config(),
                               environment=current["environment"], device_used=current["device_used"])
        pngmeta.save_png(result.image, save, recipe)
    with reference:
        drift = compare(reference, result.image)
    return Reproduction(source, drift, tuple(warnings), current["device_used"])


def _same_file_hash(model_hash: str, model: str) -> bool:
    """A1111's older 8-digit ``Model hash`` of a single file (not a prefix of its sha256) names it too."""
    from tracker.experiment import model_refs, single_file

    ref = model_refs.resolve(model)
    return ref.kind == "file" and Path(ref.location).is_file() and len(model_hash.strip()) == 8 \
        and single_file.matches_hash(Path(ref.location), model_hash)


def edited_note(rec) -> str:
    """An original image edited after its sweep wrote it: a difference may be that edit, not drift."""
    return (f"run {rec.key}: its original image {Path(rec.image).name} was modified since it was made (its sha256 "
            f"differs from the run store's): a difference may be that edit, not drift; tracker check lists such images")


def describe_run(run: PlannedRun) -> str:
    s = run.settings
    scheduler = s.scheduler_choice.label("the model's scheduler")
    return (f"seed {run.seed}, {scheduler}, {s.steps} steps, CFG {s.guidance_scale:g}, "
            f"{s.width}x{s.height}, model {s.model}, {s.dtype}")
