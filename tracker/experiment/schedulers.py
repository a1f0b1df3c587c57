"""Scheduler names: diffusers class names and the sampler names people know from AUTOMATIC1111.

Pure: no diffusers import. ``resolve`` turns what a user wrote into a canonical class name plus the
options the alias implies; ``sampler_name`` goes back the other way for PNG metadata. ``SchedulerChoice``
(class name and options) is a run's scheduler as one object: every display is formatted from it. An
experiment's scheduler names are resolved once, when the file is parsed (``settings``' normalizer makes the
``SchedulerChoice``); ``plan`` puts the user's ``scheduler_options`` over the alias's; ``Settings.scheduler_choice``
reads it back from the run's two fields without resolving again.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
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

# Flow-matching models (SD3, Flux, Qwen-Image, ...) ship FlowMatchEulerDiscreteScheduler; these two take its
# config too. The engine refuses a scheduler of one family on a model of the other
# (``tracker.engine.loading``: the model scheduler's ``compatibles``).
FLOW_SCHEDULERS: tuple[str, ...] = (
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "FlowMatchLCMScheduler",
)

# On a flow-matching model, an A1111 sampler name (or the DDPM-family class it resolves to) that has a flow
# equivalent runs as that equivalent: "Euler" on Flux is FlowMatchEulerDiscrete, as in Forge and ComfyUI,
# where a flow model's "euler" sampler steps along the model's own flow sigmas. The options go with it
# (use_karras_sigmas, ...); the record's scheduler config names the class that ran.
FLOW_EQUIVALENTS: dict[str, str] = {
    "EulerDiscreteScheduler": "FlowMatchEulerDiscreteScheduler",
    "HeunDiscreteScheduler": "FlowMatchHeunDiscreteScheduler",
}
# The A1111 sampler name written for a flow scheduler (the name Forge writes for the same sampler); others
# (FlowMatchLCM) are written as their short class name, which ``resolve`` reads back.
FLOW_SAMPLERS: dict[str, str] = {"FlowMatchEulerDiscreteScheduler": "Euler", "FlowMatchHeunDiscreteScheduler": "Heun"}
# A flow model's own sigmas, evenly spaced in time, are A1111/Forge's "Simple" schedule.
FLOW_SCHEDULE = "Simple"


def for_model(cls: str, model_scheduler: str) -> str:
    """The class that runs for ``cls`` on a model whose own scheduler is ``model_scheduler``: the flow
    equivalent of a DDPM-family class on a flow-matching model (``FLOW_EQUIVALENTS``), else ``cls``."""
    if model_scheduler in FLOW_SCHEDULERS:
        return FLOW_EQUIVALENTS.get(cls, cls)
    return cls

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
for _cls in SCHEDULERS + FLOW_SCHEDULERS:
    _LOOKUP[_norm(_cls)] = (_cls, {})
    _LOOKUP[_norm(_cls.removesuffix("Scheduler"))] = (_cls, {})
for _alias, _target in ALIASES.items():
    _LOOKUP.setdefault(_norm(_alias), _target)


def known_names() -> list[str]:
    """Every name ``resolve`` accepts, short class names first, then the A1111 aliases."""
    return [c.removesuffix("Scheduler") for c in SCHEDULERS + FLOW_SCHEDULERS] + list(ALIASES)


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


# AUTOMATIC1111's schedule types (modules/sd_schedulers.py) that diffusers' schedulers have as an option.
# "Uniform" is A1111's name for the model's own evenly spaced sigmas, what diffusers does without an option.
SCHEDULE_OPTIONS: dict[str, str] = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas",
                                    "Beta": "use_beta_sigmas"}
UNIFORM = "Uniform"
# Schedule types read as the model's own sigmas: Uniform (A1111), Simple (A1111 1.9+, Forge, ComfyUI: the model's
# sigmas evenly spaced, what a flow-matching scheduler does without an option).
OWN_SIGMAS = (UNIFORM, FLOW_SCHEDULE)
# A1111 1.9+ writes and reads "Schedule type: Automatic" as each sampler's own default
# (the 'scheduler' option of samplers_k_diffusion in modules/sd_samplers_kdiffusion.py); samplers not
# listed default to the model's own sigmas (Uniform).
A1111_AUTOMATIC: dict[str, str] = {
    "DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2S a": "Karras", "DPM2": "Karras", "DPM2 a": "Karras",
    "DPM++ 2M SDE": "Exponential", "DPM++ 3M SDE": "Exponential",
}


def _schedule(options: Mapping[str, Any]) -> str | None:
    return next((name for name, opt in SCHEDULE_OPTIONS.items() if options.get(opt)), None)


def sampler_name(cls: str, options: Mapping[str, Any] | None = None) -> tuple[str, str | None]:
    """The A1111 sampler name and schedule type (``"Karras"``, ``"Exponential"``, ``"Beta"``; None for the
    model's own sigmas) for a class and its options."""
    options = dict(options or {})
    schedule = _schedule(options)
    if cls in FLOW_SAMPLERS:
        return FLOW_SAMPLERS[cls], schedule
    sde = options.get("algorithm_type") == "sde-dpmsolver++"
    for alias, (target, implied) in ALIASES.items():
        if target != cls or "Karras" in alias:
            continue
        if (implied.get("algorithm_type") == "sde-dpmsolver++") != sde:
            continue
        return alias, schedule
    return cls.removesuffix("Scheduler"), schedule


def a1111_schedule(cls: str, options: Mapping[str, Any] | None = None) -> str:
    """The ``Schedule type`` to write: always explicit, since A1111 1.9+ reads a missing one as "Automatic"
    (Karras for DPM++ 2M); ``Uniform`` where diffusers uses the model's own sigmas (``Simple`` for a flow
    scheduler)."""
    return sampler_name(cls, options)[1] or own_schedule(cls)


def own_schedule(cls: str) -> str:
    """The Schedule type of a scheduler without a sigma option: Simple for a flow-matching one, else Uniform."""
    return FLOW_SCHEDULE if cls in FLOW_SCHEDULERS else UNIFORM


def a1111_known(sampler: str) -> bool:
    """Whether ``resolve`` reads ``sampler`` back (what the PNG's ``Sampler`` may say)."""
    return _norm(sampler) in _LOOKUP


def schedule_options(sampler: str, schedule: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """Options for an A1111 ``Schedule type`` read with ``sampler``: (options, None), or (None, note) when
    diffusers has no such schedule. "Automatic" is the sampler's own default in A1111 1.9+; a missing
    schedule type (infotext before 1.9) means the model's own sigmas."""
    if schedule == "Automatic":
        schedule = A1111_AUTOMATIC.get(sampler.replace(" Karras", ""), UNIFORM)
    if schedule in (None, "", *OWN_SIGMAS):
        return {}, None
    if schedule in SCHEDULE_OPTIONS:
        return {SCHEDULE_OPTIONS[schedule]: True}, None
    return None, f"Schedule type: {schedule} (not supported, ignored)"


@dataclass(frozen=True)
class SchedulerChoice:
    """A scheduler as a run uses it: the diffusers class name (or ``DEFAULT``, the checkpoint's own) and its
    options, with every way the tracker shows it. The one place "default" is special-cased."""

    class_name: str = DEFAULT
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, name: str, options: Mapping[str, Any] | None = None) -> "SchedulerChoice":
        """From what a user wrote (class name, short name, A1111 alias or "default") and explicit options."""
        class_name, merged = resolve(name, options)
        return cls(class_name, tuple(sorted(merged.items())))

    @property
    def is_default(self) -> bool:
        return self.class_name == DEFAULT

    @property
    def short(self) -> str:
        """``PNDM`` for ``PNDMScheduler``; ``default`` stays."""
        return self.class_name.removesuffix("Scheduler")

    def made_with(self, scheduler_config: Mapping[str, Any] | None) -> "SchedulerChoice":
        """The class that actually ran: "default" resolved through the scheduler config the engine recorded."""
        ran = str((scheduler_config or {}).get("_class_name") or "")
        if ran and (self.is_default or (ran != self.class_name and FLOW_EQUIVALENTS.get(self.class_name) == ran)):
            return SchedulerChoice(ran, self.options)  # "default", or a flow model's equivalent of the class
        return self

    def sampler(self) -> tuple[str, str | None] | None:
        """A1111's (Sampler, Schedule type or None for the model's own sigmas); None for "default"."""
        return None if self.is_default else sampler_name(self.class_name, dict(self.options))

    @property
    def schedule_type(self) -> str | None:
        """The ``Schedule type`` to write (explicit ``Uniform`` for the model's own sigmas); None for "default"."""
        pair = self.sampler()
        return None if pair is None else (pair[1] or own_schedule(self.class_name))

    @property
    def a1111(self) -> str:
        """One string: ``DPM++ 2M Karras``; ``default`` for the checkpoint's own."""
        return self.label()

    def label(self, default: str = DEFAULT) -> str:
        """The A1111 sampler and schedule type as one string, or ``default`` (the caller's words) for "default"."""
        pair = self.sampler()
        if pair is None:
            return default
        return f"{pair[0]} {pair[1]}" if pair[1] else pair[0]

    def extra_options(self) -> dict[str, Any]:
        """The options the A1111 sampler name and schedule type do not already say."""
        pair = self.sampler()
        if pair is None or not a1111_known(pair[0]):
            return dict(self.options)
        _, implied = resolve(pair[0])
        said = set(SCHEDULE_OPTIONS.values())  # the Schedule type says these
        return {k: v for k, v in self.options if k not in said and implied.get(k) != v}

    def describe(self, default: str = DEFAULT) -> str:
        """``DPMSolverMultistepScheduler (DPM++ 2M Karras)``; ``default`` (or the caller's words) for "default"."""
        return default if self.is_default else f"{self.class_name} ({self.a1111})"

    __str__ = describe  # a scheduler axis value or bundle shown in full (the report's axis headers)
