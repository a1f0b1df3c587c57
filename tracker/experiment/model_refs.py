"""Where models live. Pure: reads JSON configs, never imports torch or diffusers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

BUILTIN: dict[str, str] = {
    "tiny": "A tiny Stable Diffusion pipeline with random weights (fast; images are noise).",
    "shapes": "A small pipeline trained on coloured shapes; its images follow the prompt.",
}

DEFAULT_MODEL = "tiny"
DEFAULT_SIZE = (512, 512)
# The ``model`` of runs made with a pipeline object the user passed in (``tracker.run(exp, pipeline=pipe)``):
# this prefix plus a fingerprint of its components (tracker.engine.userpipe). The tracker cannot load such a model.
USER_PIPELINE_PREFIX = "pipeline:"


def is_user_pipeline(name: str) -> bool:
    return isinstance(name, str) and name.startswith(USER_PIPELINE_PREFIX)


@dataclass(frozen=True)
class ModelRef:
    name: str  # what the experiment file says
    kind: str  # "builtin" | "local" | "hub" | "file" (a single-file checkpoint or VAE: tracker.experiment.single_file)
    location: str  # folder path for builtin/local, repo id for hub, the file's absolute path for file
    config: str | None = None  # file: the ``config:`` given with it (a folder or Hub id), None: inferred


def builtin_path(name: str) -> Path:
    return MODELS_DIR / name


def resolve(name: str, base_dir: Path | None = None) -> ModelRef:
    """Classify a model name: a built-in name, a single weights file, an existing local folder, or a hub id."""
    from tracker.experiment import single_file

    if name in BUILTIN:
        return ModelRef(name, "builtin", str(builtin_path(name)))
    if single_file.is_single_file(name):
        file, config = single_file.split(name)
        return ModelRef(name, "file", str(single_file.locate(file, base_dir)), config)
    p = Path(name).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).is_dir():
        p = base_dir / p
    if p.is_dir() or name.startswith((".", "/", "~")):
        return ModelRef(name, "local", str(p.resolve()))
    return ModelRef(name, "hub", name)


def config_ref(name: str, base_dir: Path | None = None) -> ModelRef:
    """Where a model's diffusers configs are: the model itself, or for a single file the folder or Hub id its
    config comes from (``single_file.checkpoint_config``; raises ``single_file.SingleFileError`` when none)."""
    from tracker.experiment import single_file

    ref = resolve(name, base_dir)
    if ref.kind != "file":
        return ref
    cfg = single_file.checkpoint_config(name, base_dir)
    if cfg.hub:
        return ModelRef(cfg.location, "hub", cfg.location)
    return ModelRef(cfg.location, "local", cfg.location)
