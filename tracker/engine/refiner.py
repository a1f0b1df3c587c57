"""The SDXL base + refiner hand-off ("ensemble of expert denoisers" in diffusers' SDXL guide), for
``tracker.engine.conditioning``: loading a refiner pipeline beside its base, and the two calls.

``load`` reads a refiner (a pipeline whose ``__call__`` takes ``denoising_start`` and ``image``: SDXL's img2img) like a
model, sharing the base's ``text_encoder_2`` and VAE where its own are the same model (their config.json on disk are
equal), as the guide passes them. ``hand_off`` calls the base with ``denoising_end`` and ``output_type="latent"``, then
the refiner with ``denoising_start`` and ``image=latents``, the same seeded generators, the run's VAE (where shared)
and a fresh scheduler of the run's class and options.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from tracker.engine.load_errors import (_describe, _first_line, _is_missing, _missing_error, _pickle_error,
                                        _quiet_loading, _safetensors_refused)
from tracker.errors import ConditioningError

SHARED_WITH_REFINER = ("text_encoder_2", "vae")  # what diffusers' SDXL guide passes from the base to the refiner
# The base call's arguments the refiner does not get: its image is the base's latents, and the inputs are the base's.
HANDED_OVER = ("image", "width", "height", "denoising_end", "strength", "mask_image", "control_image",
               "ip_adapter_image")
_STAMPS = ("_diffusers_version", "transformers_version", "_name_or_path", "dtype", "torch_dtype")


def call_parameters(pipe_or_class: Any) -> frozenset[str]:
    """The keyword parameters of a pipeline's ``__call__``."""
    cls = pipe_or_class if isinstance(pipe_or_class, type) else type(pipe_or_class)
    return frozenset(inspect.signature(cls.__call__).parameters)


def component_config(location: str, component: str) -> dict | None:
    """A component's config.json (version stamps dropped) from a local folder or the Hub cache; None if unreadable."""
    path: Any = Path(location) / component / "config.json"
    try:
        if not Path(location).is_dir():  # a Hub id (a single file's path is no repo id: ValueError, not shared)
            from huggingface_hub import try_to_load_from_cache

            path = try_to_load_from_cache(location, f"{component}/config.json")
            if not isinstance(path, str):
                return None
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {k: v for k, v in data.items() if k not in _STAMPS}


def load(name: str, ref: Any, base: Any, base_location: str | None, kw: dict) -> Any:
    """The refiner ``name`` (a ``ModelRef``), with ``from_pretrained`` keywords ``kw``, sharing what it can."""
    import diffusers

    if ref.kind == "file":
        raise ConditioningError(f"refiner {name!r}: single-file refiners are not loaded; give a diffusers folder "
                                f"or Hub id")
    shared = {}
    for part in SHARED_WITH_REFINER:
        mine = component_config(ref.location, part)
        if base_location and mine is not None and mine == component_config(base_location, part) \
                and getattr(base, part, None) is not None:
            shared[part] = getattr(base, part)
    try:
        with _quiet_loading():
            pipe = diffusers.DiffusionPipeline.from_pretrained(ref.location, **shared, **kw)
    except Exception as e:  # noqa: BLE001 - one line
        if kw.get("use_safetensors") and _safetensors_refused(e):
            raise _pickle_error("refiner", ref) from None
        if _is_missing(e):
            raise _missing_error("refiner", ref, e) from None
        raise ConditioningError(f"refiner {name!r}: {_describe(ref)} could not be loaded: {_first_line(e)}") from None
    if not {"denoising_start", "image"} <= call_parameters(pipe):
        raise ConditioningError(f"refiner {name!r}: {type(pipe).__name__} cannot take over latents (its call has "
                                f"no denoising_start/image); give an SDXL refiner (StableDiffusionXLImg2ImgPipeline)")
    pipe.set_progress_bar_config(disable=True)
    pipe._tracker_shared = tuple(shared)
    return pipe


def hand_off(pipe: Any, refiner: Any, base: Any, kwargs: dict, timing: dict, denoising_end: float,
             denoising_start: float | None) -> Any:
    """``pipe`` (the base or a variant of it) runs to ``denoising_end``, ``refiner`` from ``denoising_start``
    (``denoising_end`` when None) on its latents; returns the refiner's output."""
    from tracker.engine.loading import seed_steps

    params = call_parameters(refiner)
    kw = dict(kwargs)
    output_type = kw.pop("output_type", "np")
    if "prompt" not in kw:
        raise ConditioningError("refiner: the refiner encodes the prompts with its own text encoder; weighted "
                                "prompts (prompt_syntax a1111/compel) are not handed over: use prompt_syntax: plain")
    latents = pipe(**kw, denoising_end=denoising_end, output_type="latent", **timing).images
    if "vae" in refiner._tracker_shared:
        refiner.vae = base.vae  # the run's VAE (a swapped one too)
    refiner.scheduler = type(base.scheduler).from_config(base.scheduler.config)  # the run's scheduler, fresh
    seed_steps(refiner.scheduler, kw["generator"])
    rkw = {k: v for k, v in kw.items() if k in params and k not in HANDED_OVER}
    start = denoising_start if denoising_start is not None else denoising_end
    return refiner(**rkw, image=latents, denoising_start=start, output_type=output_type,
                   **{k: v for k, v in timing.items() if k in params})
