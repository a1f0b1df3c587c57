"""Scheduler names: diffusers class names and the sampler names people know from AUTOMATIC1111.

Pure: no diffusers import. ``resolve`` turns what a user wrote into a canonical class name plus the
options the alias implies; ``sampler_name`` goes back the other way for PNG metadata.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from tracker.errors import SpecError

# The 13 schedulers the diffusers tutorial lists as compatible with Stable Diffusion, plus DPMSolverSDE,
# which also works but needs the optional package ``torchsde``.
SCHEDULERS: tuple[str, ...] = (
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
)

DEFAULT = "default"  # keep the scheduler the checkpoint ships with

_KARRAS = {"use_karras_sigmas": True}

# AUTOMATIC1111 sampler name -> (class, options). Follows the table in the diffusers docs
# ("Schedulers" > "Mapping A1111/k-diffusion samplers to diffusers").
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", _KARRAS),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", **_KARRAS}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", _KARRAS),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", _KARRAS),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", _KARRAS),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", _KARRAS),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "PLMS": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
}


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


_LOOKUP: dict[str, tuple[str, dict[str, Any]]] = {}
for _cls in SCHEDULERS:
    _LOOKUP[_norm(_cls)] = (_cls, {})
    _LOOKUP[_norm(_cls.removesuffix("Scheduler"))] = (_cls, {})
for _alias, _target in ALIASES.items():
    _LOOKUP.setdefault(_norm(_alias), _target)


def known_names() -> list[str]:
    """Every name ``resolve`` accepts, short class names first, then the A1111 aliases."""
    return [c.removesuffix("Scheduler") for c in SCHEDULERS] + list(ALIASES)


def resolve(name: str, options: Mapping[str, Any] | None = None, *, path: str | None = None,
            field: str = "scheduler", line: int | None = None) -> tuple[str, dict[str, Any]]:
    """Return ``(class_name, options)`` for a scheduler name; the alias's options come first, the user's win."""
    if not isinstance(name, str) or not name.strip():
        raise SpecError(path, field, f"must be a scheduler name but is {name!r}", line)
    if _norm(name) == DEFAULT:
        return DEFAULT, dict(options or {})
    hit = _LOOKUP.get(_norm(name))
    if hit is None:
        close = difflib.get_close_matches(name, known_names(), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpecError(path, field, f"unknown scheduler {name!r}{hint}; known: {', '.join(known_names())}", line)
    cls, implied = hit
    return cls, {**implied, **dict(options or {})}


def sampler_name(cls: str, options: Mapping[str, Any] | None = None) -> tuple[str, str | None]:
    """The A1111 sampler name and schedule type (``"Karras"`` or None) for a class and its options."""
    options = dict(options or {})
    karras = bool(options.get("use_karras_sigmas"))
    sde = options.get("algorithm_type") == "sde-dpmsolver++"
    for alias, (target, implied) in ALIASES.items():
        if target != cls or "Karras" in alias:
            continue
        if (implied.get("algorithm_type") == "sde-dpmsolver++") != sde:
            continue
        return alias, ("Karras" if karras else None)
    return cls.removesuffix("Scheduler"), ("Karras" if karras else None)
