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
    kind: str  # "builtin" | "local" | "hub"
    location: str  # folder path for builtin/local, repo id for hub


def builtin_path(name: str) -> Path:
    return MODELS_DIR / name


def resolve(name: str, base_dir: Path | None = None) -> ModelRef:
    """Classify a model name: a built-in name, an existing local folder, or a hub id."""
    if name in BUILTIN:
        return ModelRef(name, "builtin", str(builtin_path(name)))
    p = Path(name).expanduser()
    if not p.is_absolute() and base_dir is not None and (base_dir / p).is_dir():
        p = base_dir / p
    if p.is_dir() or name.startswith((".", "/", "~")):
        return ModelRef(name, "local", str(p.resolve()))
    return ModelRef(name, "hub", name)
